"""Models and engines: the registry's specialists and their bases, the transformers + PEFT worker
(perplexity against a direct computation with the model, adapters switched per row, the same
rendered prompt for every model), and the vLLM engine built with every adapter as a LoRA
request (never executed: no GPU here)."""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa
import pytest

from evaluation.models import (OUTPUT_SCHEMA, PROMPT_SCHEMA, ModelSpec, ModelWorker, lora_names, resolve_models,
                               vllm_reply, vllm_request)


def registry(entries: dict[str, tuple[str, str]]) -> dict[str, Any]:
    return {"version": 1, "specialists": {p: {"phase": p, "base_model": b, "adapter_path": a}
                                          for p, (b, a) in entries.items()}}


def test_resolve_models_one_base_and_several() -> None:
    specs = resolve_models(registry({"rtl_design": ("/m/base", "/a/rtl"), "triage": ("/m/base", "/a/tri")}),
                           phases=None, default_base="tiny", base_override=None, engine="hf")
    assert [(s.name, s.kind, s.base) for s in specs] == [("base", "base", "base"),
                                                         ("rtl_design", "specialist", "base"),
                                                         ("triage", "specialist", "base")]
    two = resolve_models(registry({"rtl_design": ("/m/coder", "/a/rtl"), "triage": ("/m/chat", "/a/tri")}),
                         phases=None, default_base="tiny", base_override=None, engine="hf")
    assert {s.name: s.base for s in two} == {"base:chat": "base:chat", "base:coder": "base:coder",
                                             "rtl_design": "base:coder", "triage": "base:chat"}
    only = resolve_models(registry({"rtl_design": ("/m/b", "/a/rtl"), "triage": ("/m/b", "/a/tri")}),
                          phases=["triage"], default_base="tiny", base_override=None, engine="openai",
                          openai_model="qwen", openai_adapter_name="{base}:{phase}")
    assert [(s.name, s.served_name) for s in only] == [("base", "qwen"), ("triage", "qwen:triage")]
    assert [s.name for s in resolve_models(None, phases=None, default_base="tiny", base_override=None,
                                           engine="hf")] == ["base"]


def prompt_row(model: str, messages: list[dict[str, str]], kind: str = "generation", row_id: str | None = None,
               **kw: Any) -> dict[str, Any]:
    return {"row_id": row_id or f"{model}-{kind}", "prompt_id": "p1", "kind": kind, "suite": "rtl_design",
            "item_id": "e1", "model": model, "sample": -1, "messages_json": json.dumps(messages),
            "temperature": kw.get("temperature", 0.0), "top_p": 1.0, "max_tokens": kw.get("max_tokens", 12),
            "seed": 0, "target_json": "{}"}


CHAT = [{"role": "system", "content": "You write Verilog."},
        {"role": "user", "content": "Write a 4-bit register named reg9."},
        {"role": "assistant", "content": "```verilog\nmodule reg9(input clk, input [3:0] d, output reg [3:0] q);\n"
                                         "  always @(posedge clk) q <= d;\nendmodule\n```"}]


@pytest.fixture(scope="module")
def worker(specialists: dict[str, Any]) -> ModelWorker:
    return ModelWorker(str(specialists["base"]), {p: str(a) for p, a in specialists["adapters"].items()},
                       ["base"], max_length=512, loss_batch_size=2)


def direct_nll(specialists: dict[str, Any], adapter: str | None, messages: list[dict[str, str]]) -> tuple[float, int]:
    """Summed NLL of the assistant reply, computed independently: the full chat's tokens with every
    token of the prompt rendered with add_generation_prompt masked, through the model's own loss."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(specialists["base"])
    model = AutoModelForCausalLM.from_pretrained(specialists["base"])
    if adapter:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages, tokenize=False)
    assert full.startswith(prompt)
    ids = tok(full, add_special_tokens=False)["input_ids"]
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert ids[:n_prompt] == tok(prompt, add_special_tokens=False)["input_ids"]
    labels = [-100] * n_prompt + ids[n_prompt:]
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
    n = len(ids) - n_prompt
    return float(loss) * n, n


def test_loss_and_perplexity_match_a_direct_computation(worker: ModelWorker, specialists: dict[str, Any]) -> None:
    other = [CHAT[0], {"role": "user", "content": "And an 8-bit one?"},
             {"role": "assistant", "content": "module reg8(input clk, input [7:0] d, output reg [7:0] q); endmodule"}]
    rows = [prompt_row(m, c, kind="loss", row_id=f"{m}-{i}") for m in ("base", "rtl_design", "triage")
            for i, c in enumerate([CHAT, other])]
    out = worker(pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA))
    assert out.schema == OUTPUT_SCHEMA
    got = {r["row_id"]: (r["nll_sum"], r["n_tokens"]) for r in out.to_pylist()}
    for m, adapter in (("base", None), ("rtl_design", specialists["adapters"]["rtl_design"])):
        nll0, n0 = direct_nll(specialists, adapter and str(adapter), CHAT)
        nll1, n1 = direct_nll(specialists, adapter and str(adapter), other)
        assert got[f"{m}-0"][1] == n0 and got[f"{m}-1"][1] == n1  # the same assistant tokens
        assert got[f"{m}-0"][0] == pytest.approx(nll0, rel=1e-4) and got[f"{m}-1"][0] == pytest.approx(nll1, rel=1e-4)
        ppl = math.exp((got[f"{m}-0"][0] + got[f"{m}-1"][0]) / (n0 + n1))
        assert ppl == pytest.approx(math.exp((nll0 + nll1) / (n0 + n1)), rel=1e-4)
    # each specialist really runs under its own adapter (trained a few steps: a different loss)
    assert got["rtl_design-0"][0] != pytest.approx(got["base-0"][0], rel=1e-6)
    assert got["triage-0"][0] != pytest.approx(got["rtl_design-0"][0], rel=1e-6)


def test_generation_rows_same_prompt_for_every_model(worker: ModelWorker) -> None:
    rows = [prompt_row(m, CHAT[:2]) for m in ("base", "rtl_design", "triage")]
    rows.append(prompt_row("rtl_design", CHAT[:2], row_id="sampled", temperature=0.9))
    out = worker(pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA)).to_pylist()
    assert [r["row_id"] for r in out] == [r["row_id"] for r in rows]  # order kept
    assert len({r["prompt_sha"] for r in out}) == 1  # one rendered prompt, whatever the model
    assert all(r["engine_error"] is None and isinstance(r["completion"], str) for r in out)
    assert all(0 < r["completion_tokens"] <= 12 for r in out)
    with pytest.raises(KeyError, match="not served"):
        with worker.use("placement"):
            pass


def test_lora_names_local_and_remote() -> None:
    base = ModelSpec("base", "base", "/m/b", "base")
    local = [base, ModelSpec("rtl_design", "specialist", "/m/b", "base", "rtl_design", "/a/rtl/adapter")]
    names, root = lora_names(local)
    assert names == {"rtl_design": "/a/rtl/adapter", "base": "/m/b"} and root is None
    remote = [base, ModelSpec("rtl_design", "specialist", "/m/b", "base", "rtl_design", "s3://bk/sp/rtl/adapter"),
              ModelSpec("triage", "specialist", "/m/b", "base", "triage", "s3://bk/sp/triage/adapter")]
    names, root = lora_names(remote)
    assert root == "s3://bk/sp" and names["rtl_design"] == "rtl/adapter" and names["triage"] == "triage/adapter"
    with pytest.raises(ValueError, match="all be local"):
        lora_names([*local, remote[2]])


def test_vllm_rows_carry_the_lora_and_come_back_under_the_model_name() -> None:
    names = {"base": "/m/b", "rtl_design": "/a/rtl"}
    row = prompt_row("rtl_design", CHAT[:2], temperature=0.7)
    req = vllm_request(row, names)
    assert req["model"] == "/a/rtl" and req["eval_model"] == "rtl_design"
    assert req["sampling_params"] == {"temperature": 0.7, "top_p": 1.0, "max_tokens": 12, "seed": 0}
    assert vllm_request(prompt_row("base", CHAT[:2]), names)["model"] == "/m/b"  # base: no LoRA
    back = vllm_reply({**row, **req, "generated_text": "module x; endmodule", "num_input_tokens": 9,
                       "num_generated_tokens": 4, "prompt": "<rendered>"})
    assert back["model"] == "rtl_design" and back["completion"] == "module x; endmodule"
    assert back["completion_tokens"] == 4 and back["row_id"] == row["row_id"]


@pytest.mark.integration
def test_vllm_engine_is_built_with_every_adapter_never_executed(ray_session: None,
                                                                specialists: dict[str, Any]) -> None:
    from evaluation.models import build_vllm_processor
    from synthesis.engines import VLLMConfig

    specs = resolve_models(json.loads(specialists["registry"].read_text()), phases=None, default_base="tiny",
                           base_override=None, engine="vllm")
    processor, info = build_vllm_processor(VLLMConfig(batch_size=8), specs)
    stages = processor.list_stage_names()
    assert any("vLLM" in s or "VLLM" in s or "Engine" in s for s in stages), stages
    assert info["model_source"] == str(specialists["base"])
    assert info["engine_kwargs"]["enable_lora"] is True and info["engine_kwargs"]["max_loras"] == 2
    assert info["engine_kwargs"]["max_lora_rank"] == 4  # read from the adapters' adapter_config.json
    assert set(info["loras"]) == {"rtl_design", "triage"} and info["dynamic_lora_loading_path"] is None
