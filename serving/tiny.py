"""A tiny base model with LoRA specialists trained in-process, and a registry pointing at them.

For the serving tests and ``bench/serve.py``: nothing is downloaded. The base is
``training.tiny``'s random Llama with a tokenizer trained on the given texts; each specialist is
a PEFT LoRA adapter trained for a few AdamW steps on its own text, so greedy outputs differ
between the specialists and the base. The registry is written with ``training.registry``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from chipforge.vocab import SYSTEM_PROMPTS

# A few lines of each phase's vocabulary: what its adapter is trained to continue with.
PHASE_TEXTS: dict[str, str] = {
    "timing_analysis": "The worst negative slack is on the path from reg_a to reg_b; add a multicycle path "
                       "or pipeline the adder. Check setup and hold with report_checks -path_delay min_max.",
    "rtl_design": "module counter(input clk, input rst, output reg [7:0] q); always @(posedge clk) "
                  "if (rst) q <= 0; else q <= q + 1; endmodule",
    "synthesis": "Run yosys: read_verilog top.v; synth -top top; abc -liberty cells.lib; stat; write_verilog net.v",
    "triage": '{"phase": "timing_analysis"}',
}

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_tiny_registry(
    root: str,
    phases: Mapping[str, str] | None = None,
    *,
    steps: int = 12,
    lr: float = 2e-2,
    rank: int = 8,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``root/base``, ``root/adapters/<phase>`` and ``root/registry.json``; return their paths.

    ``phases`` maps phase → training text (default: timing_analysis and rtl_design).
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from serving.engine import peft_quiet
    from training import registry
    from training.tiny import build_tiny_llama, quiet_hf, train_tokenizer

    phases = dict(phases or {p: PHASE_TEXTS[p] for p in ("timing_analysis", "rtl_design")})
    base_dir = os.path.join(root, "base")
    texts = [*phases.values(), *SYSTEM_PROMPTS.values(), "Hello, how do I close timing on my design?"]
    tokenizer = train_tokenizer(texts * 3, vocab_size=400)
    with quiet_hf():
        base = build_tiny_llama(tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=seed)
        base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    reg_path = os.path.join(root, "registry.json")
    adapters = {}
    for i, (phase, text) in enumerate(phases.items()):
        torch.manual_seed(seed + 1 + i)
        model = build_tiny_llama(tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=seed)
        with peft_quiet():
            peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                          target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
        messages = [{"role": "system", "content": SYSTEM_PROMPTS.get(phase, "")},
                    {"role": "user", "content": "Tell me about it."}, {"role": "assistant", "content": text}]
        chat = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        rows = [torch.tensor([list(chat)]), torch.tensor([tokenizer(text)["input_ids"]])]
        opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
        peft_model.train()
        for step in range(steps):
            x = rows[step % len(rows)]
            loss = peft_model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        adapter_dir = os.path.join(root, "adapters", phase)
        with quiet_hf():
            peft_model.save_pretrained(adapter_dir)
        adapters[phase] = adapter_dir
        registry.register(reg_path, phase, base_model=os.path.abspath(base_dir),
                          adapter_path=os.path.abspath(adapter_dir), dataset_version="sha256:test",
                          metrics={"train_loss_last": float(loss.item()), "steps": steps},
                          config={"phase": phase, "lora": {"r": rank}}, run=f"tiny-{phase}")
    return {"root": root, "base": os.path.abspath(base_dir), "adapters": adapters, "registry": reg_path}
