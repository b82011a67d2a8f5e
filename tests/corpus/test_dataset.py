"""Example builders, skip rules and the per-repository cap, without Ray."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from corpus.dataset import (ApplySplits, DecontamStage, ModuleStage, approx_tokens, cap_per_group, doc_examples,
                            module_examples, module_phases, module_skip_reason, to_table)
from corpus.schema import EXAMPLES_SCHEMA, MODULES_SCHEMA, from_rows

SRC = "module blink #(parameter N = 4) (\n  input clk,\n  output reg led\n);\n  reg [N-1:0] c;\n  always @(posedge clk) begin c <= c + 1; led <= &c; end\nendmodule"


def mod(**kw: Any) -> dict[str, Any]:
    row = {"id": "m1", "repo": "r1", "commit": "abc", "path": "rtl/blink.v", "url": "file:///r1", "start_line": 3, "end_line": 9,
           "name": "blink", "comment": "Blinks an LED once every 2**N clock cycles.", "license": "MIT",
           "parameters": [{"name": "N", "default": "4", "kind": "parameter"}],
           "ports": [{"name": "clk", "direction": "input", "type": None}, {"name": "led", "direction": "output", "type": "reg"}],
           "source": SRC, "parse_ok": True, "error_line_share": 0.0, "keep": True}
    row.update(kw)
    return row


def test_module_examples_three_tasks_and_schema() -> None:
    ex = module_examples(mod())
    assert [e["task"] for e in ex] == ["write_module", "explain_module", "complete_module"]
    assert "Blinks an LED" in ex[0]["messages"][1]["content"] and "N (default 4)" in ex[0]["messages"][1]["content"]
    assert ex[2]["messages"][2]["content"].startswith("```verilog\n  reg [N-1:0] c;")
    assert ex[0]["provenance"]["repo"] == "r1" and ex[0]["prompt_tokens"] > 0
    assert len({e["id"] for e in ex}) == 3 and module_examples(mod())[0]["id"] == ex[0]["id"]
    t = to_table(ex)
    assert t.schema == EXAMPLES_SCHEMA and t.num_rows == 3


def test_skip_rules() -> None:
    assert module_skip_reason(mod(), 20, 0.1) is None
    assert module_skip_reason(mod(keep=False), 20, 0.1) == "not_kept_by_dedup"
    assert module_skip_reason(mod(parse_ok=False), 20, 0.1) == "parse_error"
    assert module_skip_reason(mod(error_line_share=0.5), 20, 0.1) == "parse_error"
    assert module_skip_reason(mod(comment="LED"), 20, 0.1) == "description_too_short"


def test_doc_examples_grounded_and_triage() -> None:
    row = {"source": "opensta", "tool": "opensta", "url": "http://x/sta.html", "title": "OpenSTA",
           "section_path": ["OpenSTA", "report_checks"], "text": "report_checks prints the worst path.", "license": "GPL-3.0"}
    qa, route = doc_examples(row, "timing_analysis")
    assert qa["messages"][2]["content"] == row["text"] and "report_checks" in qa["messages"][1]["content"]
    assert route["phase"] == "triage" and route["messages"][2]["content"] == '{"phase": "timing_analysis"}'
    assert qa["provenance"]["section"] == "OpenSTA > report_checks"


def test_cap_per_repository_enforced() -> None:
    rows = [{"id": f"{i:04d}", "phase": "rtl_design", "repo": "big"} for i in range(80)]
    rows += [{"id": f"s{i}", "phase": "rtl_design", "repo": f"small{i % 4}"} for i in range(20)]
    kept, dropped = cap_per_group(rows, "repo", 0.25)
    counts = Counter(r["repo"] for r in kept)
    assert counts["big"] == 25 and dropped == 55
    assert all(counts[f"small{i}"] == 5 for i in range(4))


def test_approx_tokens() -> None:
    assert approx_tokens("") == 0 and approx_tokens("abcd") == 1 and approx_tokens("abcde") == 2


def test_cap_floor_for_few_repositories() -> None:
    one = [{"id": f"{i:03d}", "phase": "rtl_design", "repo": "only"} for i in range(10)]
    assert cap_per_group(one, "repo", 0.25) == (one, 0)  # a 1-repository corpus keeps everything
    two = one + [{"id": f"x{i}", "phase": "rtl_design", "repo": "other"} for i in range(2)]
    kept, dropped = cap_per_group(two, "repo", 0.25)
    assert Counter(r["repo"] for r in kept) == {"only": 6, "other": 2} and dropped == 4  # ceil(12 / 2) each
    assert [r["id"] for r in kept if r["repo"] == "only"] == [f"{i:03d}" for i in range(6)]  # lowest ids


def test_explanation_uses_ports_parameters_instances() -> None:
    text = module_examples(mod(instances=["counter", "counter"]))[1]["messages"][2]["content"]
    assert "Blinks an LED" in text and "Inputs: `clk`" in text and "Outputs: `led` (reg)" in text
    assert "`N` (default 4)" in text and "It instantiates: `counter`." in text


def test_module_stage_counts_skips_and_adds_triage() -> None:
    rows = [mod(), mod(keep=False), mod(parse_ok=False), mod(comment="x"), mod(repo="r2", name="blink2")]
    out = ModuleStage(min_comment_chars=20, max_error_share=0.1)(from_rows(rows, MODULES_SCHEMA, stage="test"))
    skips = Counter(s for s in out.column("skip").to_pylist() if s)
    assert skips == {"not_kept_by_dedup": 1, "parse_error": 1, "description_too_short": 1}
    examples = [json.loads(e) for e in out.column("example").to_pylist() if e]
    assert len(examples) == 8 and Counter(e["task"] for e in examples)["route"] == 2
    route = next(e for e in examples if e["task"] == "route")
    assert route["phase"] == "triage" and json.loads(route["messages"][2]["content"]) == {"phase": "rtl_design"}
    assert set(out.column("group").to_pylist()) == {"r1", "r2"}


class _Pipe:
    """A stand-in classifier pipeline: 'gate' texts are power_analysis with the given probability."""

    classes_ = np.array(["power_analysis", "rtl_design", "triage"])

    def __init__(self, p: float) -> None:
        self.p = p

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return np.array([[self.p, 1 - self.p, 0.0] if "gate" in t else [0.1, 0.2, 0.7] for t in texts])


def test_module_phase_moves_only_when_confident() -> None:
    clf = SimpleNamespace(pipeline=_Pipe(0.9))
    assert module_phases(clf, ["clock gate cell", "chatty question"], 0.6) == ["power_analysis", "rtl_design"]
    assert module_phases(SimpleNamespace(pipeline=_Pipe(0.55)), ["clock gate cell"], 0.6) == ["rtl_design"]


def test_decontam_stage_drops_planted_overlap_keeps_clean(assets: Path) -> None:
    ref = (assets / "benchmarks/rtllm/toggle_counter/verified_toggle_counter.v").read_text()
    planted = mod(source=ref, name="toggle_counter")
    tagged = ModuleStage()(from_rows([planted, mod(repo="clean")], MODULES_SCHEMA, stage="test"))
    out = DecontamStage([str(assets / "benchmarks/rtllm"), str(assets / "benchmarks/verilogeval")])(tagged)
    by_group = defaultdict(list)
    for g, s in zip(out.column("group").to_pylist(), out.column("skip").to_pylist()):
        by_group[g].append(s)
    assert "contaminated:rtllm" in by_group["r1"]  # write/explain/complete carry the reference
    assert by_group["clean"] == [None] * 4


def test_apply_splits_keeps_selected_ids_with_their_group_split() -> None:
    # same text in two repositories: one id, and only the (id, group) pair the driver kept passes
    tagged = ModuleStage()(from_rows([mod(), mod(repo="r2")], MODULES_SCHEMA, stage="test"))
    pairs = list(zip(tagged.column("id").to_pylist(), tagged.column("group").to_pylist()))
    r2 = set(sorted(p for p in pairs if p[1] == "r2")[:2])
    keep = r2 | {next(p for p in pairs if p[1] == "r1" and p[0] not in {k[0] for k in r2})}
    out = ApplySplits({"r1": "train", "r2": "test"}, keep)(tagged)
    assert out.schema == EXAMPLES_SCHEMA and out.num_rows == 3
    assert Counter(zip(out.column("split").to_pylist(), (p["repo"] for p in out.column("provenance").to_pylist()))) == {
        ("test", "r2"): 2, ("train", "r1"): 1}
