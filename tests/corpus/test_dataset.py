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


def test_doc_examples_grounded_without_classifier_triage() -> None:
    row = {"source": "opensta", "tool": "opensta", "url": "http://x/sta.html", "title": "OpenSTA",
           "section_path": ["OpenSTA", "report_checks"], "text": "report_checks prints the worst path.", "license": "GPL-3.0"}
    (qa,) = doc_examples(row, "timing_analysis")  # router examples come from corpus.router, not from here
    assert qa["messages"][2]["content"] == row["text"] and "report_checks" in qa["messages"][1]["content"]
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
    assert "Blinks an LED" in text and "Inputs: `clk`" in text and "Outputs: `led` (1 bit, reg)" in text
    assert "`N` (default 4)" in text and "It instantiates: `counter`." in text


def test_module_stage_counts_skips_without_triage() -> None:
    rows = [mod(), mod(keep=False), mod(parse_ok=False), mod(comment="x"), mod(repo="r2", name="blink2")]
    out = ModuleStage(min_comment_chars=20, max_error_share=0.1)(from_rows(rows, MODULES_SCHEMA, stage="test"))
    skips = Counter(s for s in out.column("skip").to_pylist() if s)
    assert skips == {"not_kept_by_dedup": 1, "parse_error": 1, "description_too_short": 1}
    examples = [json.loads(e) for e in out.column("example").to_pylist() if e]
    assert len(examples) == 6 and not [e for e in examples if e["phase"] == "triage" or e["task"] == "route"]
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
    assert "contaminated:rtllm:text_13gram+canonical" in by_group["r1"]  # write/explain/complete carry the reference
    assert by_group["clean"] == [None] * 3  # write, explain, complete (router examples come from corpus.router)


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


# --------------------------------------------------------------------------- issue 13: specs, packages, doc questions

PKG = """package apb_pkg;
  parameter int DATA_W = 32;
  function automatic bit is_register(input logic [3:0] offset);
    return offset == 4'h0;
  endfunction
endpackage"""


def test_spec_is_more_than_the_header() -> None:
    """Ports with direction and width, parameters (not localparams), submodules, the author's port comments."""
    src = ("module fifo #(parameter W = 8) (\n  input clk,\n  input [W-1:0] din, // data written when push is high\n"
           "  output reg [7:0] dout\n);\n  localparam D = 4;\n  ram u_ram (.clk(clk));\nendmodule")
    row = mod(name="fifo", source=src, comment="fifo: a first-in first-out buffer of four words for one clock domain.",
              parameters=[{"name": "W", "default": "8", "kind": "parameter"}, {"name": "D", "default": "4", "kind": "localparam"}],
              ports=[{"name": "clk", "direction": "input", "type": ""}, {"name": "din", "direction": "input", "type": "[W-1:0]"},
                     {"name": "dout", "direction": "output", "type": "reg [7:0]"}], instances=["ram"])
    user = module_examples(row)[0]["messages"][1]["content"]
    assert "- din: input, W bits: data written when push is high" in user and "- dout: output, 8 bits" in user
    assert "- clk: input, 1 bit" in user and "W (default 8)" in user and "D (default" not in user
    assert "Instantiates: ram" in user and "Behaviour:\nA first-in first-out buffer" in user


def test_explanation_does_not_repeat_the_name_prefix() -> None:
    for comment in ("blink: Blinks an LED slowly for a power-on indicator.", "blink - Blinks an LED slowly for a power-on indicator.",
                    "Module blink: blinks an LED slowly for a power-on indicator."):
        answer = module_examples(mod(comment=comment))[1]["messages"][2]["content"]
        assert answer.startswith("Blinks an LED slowly"), answer
    assert "Inputs: `clk` (1 bit)." in module_examples(mod())[1]["messages"][2]["content"]


def test_undescribable_modules_are_skipped() -> None:
    """A comment that only names the module and its ports does not specify behaviour."""
    assert module_skip_reason(mod(comment="blink module: clk led N blink module"), 20, 0.1) == "description_too_short"
    assert module_skip_reason(mod(comment="Blinks an LED once every 2**N clock cycles."), 20, 0.1) is None


def test_complete_module_header_split() -> None:
    """The header ends at the first ';' outside parentheses (not at the first line with ');'); a
    package has no port header and is skipped with a reason."""
    src = ("module m #(parameter W = 8) (\n  input clk, // ignore ); in a comment\n  output [W-1:0] q\n);\n"
           "  function f(input a); f = a; endfunction\n  assign q = 0;\nendmodule")
    comp = module_examples(mod(name="m", source=src))[2]
    assert comp["task"] == "complete_module"
    assert comp["messages"][1]["content"].endswith("  output [W-1:0] q\n);\n```")
    assert comp["messages"][2]["content"].startswith("```verilog\n  function f(input a);")
    pkg = module_examples(mod(name="apb_pkg", kind="package", source=PKG, ports=[], comment="Shared APB types and register helpers."))
    assert [e.get("task") for e in pkg] == ["write_module", "explain_module", None]
    assert pkg[2]["skip"] == "complete_module_skipped:package_has_no_header"
    assert pkg[0]["messages"][1]["content"].startswith("Write a SystemVerilog package")


def test_doc_question_has_no_answer_text() -> None:
    """No engine: the question is built from the section titles only (issue 13: '(context: <answer>)')."""
    row = {"id": "c1", "source": "opensta", "tool": "opensta", "url": "http://x/sta.html", "title": "OpenSTA",
           "section_path": ["OpenSTA", "report_checks"], "license": "GPL-3.0",
           "text": "```\nreport_checks -path_delay min_max\n```\nreport_checks prints the worst path with each cell delay."}
    (qa,) = doc_examples(row, "timing_analysis")
    user = qa["messages"][1]["content"]
    assert "context" not in user and "```" not in user and "prints the worst path" not in user
    assert '"report_checks" (in "OpenSTA")' in user and "opensta" in user


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    import re

    words = re.findall(r"[a-z0-9_]+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_ngram_check_fires_on_a_copied_answer() -> None:
    """The check below can fail: the old '(context: <first line>)' prompt shares 8-grams with its answer."""
    answer = "report_checks prints the path with the worst setup slack along with each cell delay."
    old = f'In OpenSTA, what does the documentation say about "report_checks"? (context: {answer[:160]})'
    assert ngrams(old, 8) & ngrams(answer, 8)


def test_no_sample_example_prompt_shares_a_long_ngram_with_its_answer(repo_root: Path) -> None:
    """Over the whole bundled sample dataset: no user turn shares an 8-word n-gram with its assistant turn."""
    import pyarrow.dataset as pads

    table = pads.dataset(repo_root / "sample" / "dataset" / "examples", format="parquet", partitioning="hive").to_table(
        columns=["id", "task", "messages"])
    assert table.num_rows > 100
    leaks = []
    for ex_id, task, messages in zip(*(table.column(c).to_pylist() for c in ("id", "task", "messages"))):
        turns = {m["role"]: m["content"] for m in messages}
        shared = ngrams(turns["user"], 8) & ngrams(turns["assistant"], 8)
        if shared:
            leaks.append((ex_id[:12], task, " ".join(sorted(shared)[0])))
    assert not leaks, leaks[:5]


def test_decontam_stage_catches_a_renamed_copy_by_canonical_tokens(tmp_path: Path) -> None:
    """Issue 13: an example whose module is a benchmark reference with every identifier renamed
    and comments dropped shares no word 13-gram, and is still dropped (method ``canonical``)."""
    from tests.corpus.test_decontam import PLANTED_COPY, PLANTED_ID, PLANTED_REF, UNRELATED

    root = tmp_path / "verilog-eval" / "dataset_spec-to-rtl"
    root.mkdir(parents=True)
    (root / f"{PLANTED_ID}_prompt.txt").write_text("Detect 1, 0, 1 on in; pulse found after the final 1.\n")
    (root / f"{PLANTED_ID}_ref.sv").write_text(PLANTED_REF)
    (root / f"{PLANTED_ID}_test.sv").write_text("module tb; endmodule\n")
    rows = [mod(source=PLANTED_COPY, name="pattern_watch", repo="copied"), mod(source=UNRELATED, name="blink_ctrl", repo="clean")]
    tagged = ModuleStage()(from_rows(rows, MODULES_SCHEMA, stage="test"))
    out = DecontamStage([str(tmp_path / "verilog-eval")])(tagged)
    skips = defaultdict(set)
    for g, s in zip(out.column("group").to_pylist(), out.column("skip").to_pylist()):
        skips[g].add(s)
    assert skips["copied"] and all(s == "contaminated:verilogeval-v2:canonical" for s in skips["copied"] if s)
    assert "contaminated:verilogeval-v2:canonical" in skips["copied"]
    assert not any(s and s.startswith("contaminated") for s in skips["clean"])


def test_doc_question_wording_does_not_depend_on_the_checkout_path() -> None:
    """A local doc chunk's id hashes its ``file://`` URL; the bundled sample must come out the same
    from any checkout, so the question's wording may not follow the id."""
    from corpus.dataset import DOC_QUESTIONS, doc_question

    questions = set()
    for root in ("/work/a", "/tmp/b", "/home/c/chipforge", "/srv/d", "/x/e", "/y/f"):
        row = {"id": f"id-of-{root}", "url": f"file://{root}/sample/docs/yosys/synth.md", "source": "yosys-sample",
               "tool": "yosys", "title": "Synthesis", "section_path": ["Synthesis", "ABC"], "text": "Run abc."}
        questions.add(doc_question(row))
    assert len(questions) == 1
    # ... while different sections still get different wordings
    worded = {doc_question({"source": "s", "tool": "t", "section_path": [f"Section {i}"], "text": str(i)})
              for i in range(30)}
    assert len({q.split('"')[0] for q in worded}) == len(DOC_QUESTIONS) > 1


def test_an_example_whose_prompt_shares_its_answer_becomes_a_counted_skip() -> None:
    from corpus.dataset import _tagged, make_example, shares_answer

    comment = "counts the rising edges of the strobe input and wraps at the limit"
    leak = make_example("rtl_design", "write_module", f"Write a module that {comment}.",
                        f"// {comment}\nmodule edge_count(input clk); endmodule", "verilog_code", {}, None)
    clean = make_example("rtl_design", "write_module", "Write a module that counts strobe edges.",
                         "module edge_count(input clk); endmodule", "verilog_code", {}, None)
    assert shares_answer(leak["messages"]) and not shares_answer(clean["messages"])
    out = _tagged([leak, clean], lambda r: "repo1").to_pylist()
    assert [(r["skip"], r["group"], r["example"] is None) for r in out] == [
        ("prompt_shares_answer", "repo1", True), (None, "repo1", False)]


def test_module_stage_ignores_unknown_columns_and_skips_rows_whose_values_do_not_cast() -> None:
    """A corpus from another version (an extra column) or hand-edited (``start_line: "x"``) is read:
    the bad row is a counted ``invalid_row`` skip naming the column and its value, not a failed job."""
    import pyarrow as pa

    table = from_rows([mod(), mod(id="m2", repo="r2", name="blink2")], MODULES_SCHEMA, stage="test")
    table = table.append_column("added_by_a_newer_corpus", pa.array([1.5, 2.5]))
    table = table.set_column(table.schema.get_field_index("start_line"), "start_line", pa.array(["3", "x"]))
    out = ModuleStage(min_comment_chars=20, max_error_share=0.1)(table)
    skips = [(i, s) for i, s in zip(out.column("id").to_pylist(), out.column("skip").to_pylist()) if s]
    assert skips == [("m2", "invalid_row:start_line is not int32 (a string value 'x')")]
    examples = [json.loads(e) for e in out.column("example").to_pylist() if e]
    assert len(examples) == 3 and {e["provenance"]["start_line"] for e in examples} == {3}
