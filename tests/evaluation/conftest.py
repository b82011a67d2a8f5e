"""Evaluation fixtures: benchmark checkouts in the VerilogEval v2 / RTLLM layouts (project-written
Verilog from ``tests/assets/benchmarks``), a tiny base model with two LoRA specialists trained a few
steps each (``training.tiny`` + PEFT, registered in ``training.registry``'s format), a tiny dataset
with test splits, fake "models" that answer every problem the same way (reference, syntax error,
wrong output, never-ending simulation) and an OpenAI-compatible server that serves them by name.

The code-complete task is written into a temporary checkout from the spec-to-rtl assets (same
reference and testbench, a comment-and-header prompt as upstream): adding benchmark files under
``tests/assets/benchmarks`` would change the decontamination tests' problem lists.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chat_server import ChatServer

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "benchmarks"
SPEC_DIR = ASSETS / "verilogeval" / "dataset_spec-to-rtl"
RTLLM_DIR = ASSETS / "rtllm"


# ----------------------------------------------------------------------------- benchmarks

def write_v2_checkout(root: Path) -> Path:
    """A VerilogEval v2 checkout: the spec-to-rtl assets plus a code-complete copy of each problem."""
    from evaluation.benchmarks import module_header, rename_module

    spec = root / "dataset_spec-to-rtl"
    shutil.copytree(SPEC_DIR, spec)
    cc = root / "dataset_code-complete-iccad2023"
    cc.mkdir()
    for prompt in sorted(SPEC_DIR.glob("*_prompt.txt")):
        pid = prompt.name[: -len("_prompt.txt")]
        ref = (SPEC_DIR / f"{pid}_ref.sv").read_text()
        header = module_header(rename_module(ref, "RefModule", "TopModule"), "TopModule")
        lines = [ln for ln in prompt.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("-")
                 and "interface" not in ln and "one bit" not in ln]
        comment = "\n".join(f"// {ln.strip()}" for ln in lines)
        (cc / f"{pid}_prompt.txt").write_text(f"{comment}\n\n{header}")
        shutil.copy(SPEC_DIR / f"{pid}_ref.sv", cc / f"{pid}_ref.sv")
        shutil.copy(SPEC_DIR / f"{pid}_test.sv", cc / f"{pid}_test.sv")
    return root


@pytest.fixture(scope="session")
def v2_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_v2_checkout(tmp_path_factory.mktemp("verilog-eval"))


@pytest.fixture(scope="session")
def rtllm_checkout() -> Path:
    return RTLLM_DIR


# ----------------------------------------------------------------------------- fake answers

FORGED_MARKERS = {"verilogeval": "Mismatches: 0 in 20 samples", "rtllm": "===========Your Design Passed===========",
                  "smoke": "TEST PASSED"}

def fenced(code: str) -> str:
    return f"Here is the module.\n\n```verilog\n{code.rstrip()}\n```\n"


def answer_for(problem: dict[str, Any], how: str) -> str:
    """A model answer to ``problem``: ``reference`` passes; ``syntax`` does not parse; ``wrong`` has the
    right interface and undriven outputs; ``hang`` spins at time 0 so the simulation never ends;
    ``forged`` is ``wrong`` and prints the pass marker of the problem's harness itself."""
    from evaluation.benchmarks import module_header

    ref = problem["reference"]
    header = module_header(ref, problem["top"])
    assert header, problem["key"]
    if how == "reference":
        return fenced(ref)
    if how == "syntax":
        return fenced(ref.replace("endmodule", "  assign = ;\nendmodule", 1))
    if how == "wrong":
        return fenced(header + "endmodule\n")
    if how == "hang":
        return fenced(header + "  initial begin : spin\n    forever begin end\n  end\nendmodule\n")
    if how == "forged":  # wrong outputs, and prints the harness's pass marker itself at time 0
        marker = FORGED_MARKERS[problem["harness"]]
        return fenced(header + f'  initial $display("{marker}");\nendmodule\n')
    if how == "none":
        return "I would rather not write Verilog today."
    raise ValueError(how)


# ----------------------------------------------------------------------------- fake models served

class FakeModels(ChatServer):
    """OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1: the reply depends on the request's
    ``model`` (``behaviour[model]`` names an ``answer_for`` kind) and on the problem its prompt holds."""

    def __init__(self, problems: list[dict[str, Any]], behaviour: dict[str, str]) -> None:
        super().__init__()
        self.problems = problems
        self.behaviour = behaviour
        self.requests: list[dict[str, Any]] = []

    def reply(self, model: str, user: str) -> str:
        how = self.behaviour.get(model, "none")
        flat = re.sub(r"\s+", " ", user)
        for p in self.problems:
            if re.sub(r"\s+", " ", p["prompt"].strip()) in flat:
                return answer_for(p, how)
        return "clk rst_n data valid ready tx CLKS_PER_BIT: see the ports." if how == "reference" else "no idea"

    async def _handle(self, request):
        from aiohttp import web

        payload = await request.json()
        user = next((m["content"] for m in payload.get("messages", []) if m["role"] == "user"), "")
        self.requests.append(payload)
        content = self.reply(payload.get("model", ""), user)
        return web.json_response({"id": "x", "object": "chat.completion", "model": payload.get("model"),
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": len(user.split()), "completion_tokens": 5}})


@pytest.fixture()
def fake_models() -> Iterator[Callable[..., FakeModels]]:
    servers: list[FakeModels] = []

    def start(problems: list[dict[str, Any]], behaviour: dict[str, str]) -> FakeModels:
        servers.append(FakeModels(problems, behaviour).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


# ----------------------------------------------------------------------------- tiny specialists

def example(phase: str, split: str, user: str, answer: str, task: str = "write_module") -> dict[str, Any]:
    import hashlib

    from chipforge.vocab import SYSTEM_PROMPTS

    msgs = [{"role": "system", "content": SYSTEM_PROMPTS[phase]}, {"role": "user", "content": user},
            {"role": "assistant", "content": answer}]
    eid = hashlib.sha256(json.dumps([phase, split, msgs]).encode()).hexdigest()
    return {"id": eid, "phase": phase, "task": task, "messages": msgs, "source": "verilog_code", "split": split,
            "license": "MIT"}


def dataset_rows() -> list[dict[str, Any]]:
    rows = []
    for k in range(6):
        w = 2 + k % 5
        code = (f"module reg{k} (input wire clk, input wire [{w - 1}:0] d, output reg [{w - 1}:0] q);\n"
                f"  always @(posedge clk) q <= d;\nendmodule\n")
        rows.append(example("rtl_design", "train" if k < 3 else "test", f"Write a {w}-bit register named reg{k}.",
                            f"```verilog\n{code}```"))
    qa = [("Which phase handles report_checks slack questions?", "timing_analysis"),
          ("How do I write a parameterised FIFO?", "rtl_design"),
          ("How do I run global_placement with a target density?", "placement"),
          ("What does set_power_activity change?", "power_analysis"),
          ("Which Yosys command maps to a liberty file?", "synthesis")]
    for k, (q, phase) in enumerate(qa):
        rows.append(example("triage", "train" if k < 2 else "test", q, json.dumps({"phase": phase}), task="route"))
    rows.append(example("timing_analysis", "test", "What does report_checks print?",
                        "report_checks prints the worst setup path with each delay and the slack.", task="doc_qa"))
    return rows


def write_dataset(root: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow.parquet as pq

    from corpus.schema import EXAMPLES_SCHEMA, from_rows

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["phase"], r["split"]), []).append(r)
    for (phase, split), rs in groups.items():
        d = root / "examples" / f"phase={phase}" / f"split={split}"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(from_rows(rs, EXAMPLES_SCHEMA, stage="test"), d / "part-00000.parquet")
    return root


def train_adapter(base: Path, rows: list[dict[str, Any]], out: Path, steps: int = 4, seed: int = 0) -> Path:
    """A LoRA adapter on ``base`` after a few AdamW steps on ``rows`` (PEFT format in ``out``)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                      task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    model.train()
    for step in range(steps):
        ids = torch.tensor([tok(texts[step % len(texts)], add_special_tokens=False)["input_ids"]])
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def specialists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``{"root", "base", "dataset", "registry", "adapters": {phase: path}}``: two specialists
    (rtl_design, triage) on one tiny base, registered as ``training.registry.register`` writes them."""
    from training.registry import register
    from training.tiny import save_tiny_model

    root = tmp_path_factory.mktemp("specialists")
    rows = dataset_rows()
    dataset = write_dataset(root / "dataset", rows)
    texts = [m["content"] for r in rows for m in r["messages"]] * 3
    base = Path(save_tiny_model(str(root / "base"), texts, vocab_size=400, hidden_size=32, num_layers=1,
                                num_heads=2, max_position_embeddings=1024))
    registry = root / "registry.json"
    adapters = {}
    for phase in ("rtl_design", "triage"):
        mine = [r for r in rows if r["phase"] == phase and r["split"] == "train"]
        adapters[phase] = train_adapter(base, mine, root / phase / "adapter", seed=len(phase))
        register(str(registry), phase, base_model=str(base), adapter_path=str(adapters[phase]),
                 dataset_version="sha256:test", metrics={"eval_loss": 1.0}, config={"phase": phase})
    return {"root": root, "base": base, "dataset": dataset, "registry": registry, "adapters": adapters}
