"""Decontamination against the tiny benchmark assets written for this project."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from corpus.decontam import (BenchmarkIndex, CanonicalIndex, ContaminationStage, Decontaminator, canonical_ngrams,
                             count_tokens, load_references, merge_stats, normalise_tokens, strip_comments, sv_tokens)

V2 = "verilogeval-v2/dataset_spec-to-rtl/"


@pytest.fixture(scope="module")
def bench(assets: Path) -> Path:
    return assets / "benchmarks"


@pytest.fixture(scope="module")
def index(bench: Path) -> BenchmarkIndex:
    return BenchmarkIndex.from_paths([str(bench / "verilogeval"), str(bench / "rtllm"), str(bench / "verilogeval-v1")])


def test_each_layout_detected(index: BenchmarkIndex, bench: Path) -> None:
    assert index.problem_ids == [
        "rtllm/parity_accumulator", "rtllm/toggle_counter",
        "verilogeval-v1/byte_reverse_v1", "verilogeval-v1/enable_latch_v1",
        V2 + "Prob001_majority3", V2 + "Prob002_nibble_swap", V2 + "Prob003_sticky_flag",
    ]
    assert len(index) == 7
    assert index.suites == ["rtllm", "verilogeval-v1", "verilogeval-v2"]
    assert index.problems_per_suite() == {"rtllm": 2, "verilogeval-v1": 2, "verilogeval-v2": 3}
    # a parent directory of several suites, and a single v1 file, work too
    assert BenchmarkIndex.from_paths([str(bench)]).problem_ids == index.problem_ids
    single = BenchmarkIndex.from_paths([str(bench / "verilogeval-v1/VerilogEval_Human.jsonl")])
    assert single.problem_ids == ["verilogeval-v1/byte_reverse_v1", "verilogeval-v1/enable_latch_v1"]


def test_planted_reference_caught_reformatted_and_recased(index: BenchmarkIndex, bench: Path) -> None:
    ref = (bench / "rtllm/toggle_counter/verified_toggle_counter.v").read_text()
    planted = "Here is the design:\n" + ref.replace("\n", "   \n").upper() + "\nDone."
    assert index.hits(planted) == ["rtllm/toggle_counter"]
    assert index.contaminated(planted)


def test_reference_with_comments_removed_or_changed_is_caught(index: BenchmarkIndex, bench: Path) -> None:
    ref = (bench / "verilogeval/dataset_spec-to-rtl/Prob003_sticky_flag_ref.sv").read_text()
    assert "/*" in ref
    bare = strip_comments(ref).replace("RefModule", "TopModule")
    assert index.hits(bare) == [V2 + "Prob003_sticky_flag"]
    rewritten = ref.replace("/* clear wins over a simultaneous event */", "// my own note about priority")
    assert index.contaminated(rewritten)


def test_planted_prompt_overlap_caught(index: BenchmarkIndex, bench: Path) -> None:
    q = "Task: the output y is high whenever at least two of the three inputs a, b and c are high."
    assert index.hits(q) == [V2 + "Prob001_majority3"]
    desc = (bench / "rtllm/parity_accumulator/design_description.txt").read_text()
    sentence = " ".join(desc.split()[8:24])  # 16 words from the middle of the description
    assert index.hits(f"User: {sentence}?\nAssistant: sure.") == ["rtllm/parity_accumulator"]


def test_clean_text_and_short_overlap_pass(index: BenchmarkIndex) -> None:
    clean = "module blinky(input clk, output reg led); always @(posedge clk) led <= ~led; endmodule"
    assert index.hits(clean) == [] and not index.contaminated(clean)
    # generic register boilerplate shared with several references is not a 13-gram hit
    counter = ("module my_counter(input clk, input clear, output reg [3:0] n);\n"
               "  always @(posedge clk) begin if (clear) n <= 4'd0; else n <= n + 4'd1; end\nendmodule")
    assert index.hits(counter) == []
    # 12 shared tokens only: below the 13-gram threshold.
    short = " ".join(normalise_tokens("the output y is high whenever at least two of the three")) + " zebra"
    assert not index.contaminated(short)
    assert BenchmarkIndex.from_paths([str(Path(__file__).parents[1] / "assets/benchmarks/rtllm")], n=5).contaminated(
        "input clk, input reset, input")
    assert not index.contaminated("")


def test_testbench_not_indexed(index: BenchmarkIndex, bench: Path) -> None:
    tb = (bench / "verilogeval/dataset_spec-to-rtl/Prob002_nibble_swap_test.sv").read_text()
    assert "Mismatches" in tb
    assert not index.contaminated(tb)


def test_v1_fields_and_index_pickles(index: BenchmarkIndex) -> None:
    row = json.loads((Path(__file__).parents[1] / "assets/benchmarks/verilogeval-v1/VerilogEval_Human.jsonl")
                     .read_text().splitlines()[0])
    assert index.hits("please " + row["detail_description"]) == ["verilogeval-v1/byte_reverse_v1"]
    assert index.hits(row["prompt"] + row["canonical_solution"]) == ["verilogeval-v1/byte_reverse_v1"]
    clone = pickle.loads(pickle.dumps(index))  # Ray actors receive it pickled
    assert clone.hits(row["detail_description"]) == index.hits(row["detail_description"])


def test_bad_paths_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        BenchmarkIndex.from_paths([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/readme.txt").write_text("not a benchmark")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "empty"))):
        BenchmarkIndex.from_paths([str(tmp_path / "empty")])
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"task_id": "a", "prompt": "x"}\n{not json\n')
    with pytest.raises(ValueError, match="broken.jsonl:2"):
        BenchmarkIndex.from_paths([str(bad)])
    with pytest.raises(ValueError, match="n-gram"):
        BenchmarkIndex([], n=0)


# --- Decontamination that survives renaming (canonical token n-grams) ---------------------------

# A VerilogEval-layout reference written for this test (a "101" sequence detector), and the same
# module as a contaminator would ship it: every identifier renamed, comments dropped, reformatted.
PLANTED_REF = """module RefModule (
  input clk,
  input reset,
  input in,
  output reg found
);
  // states of the 101 detector
  parameter IDLE = 2'd0, GOT1 = 2'd1, GOT10 = 2'd2;
  reg [1:0] state, next;

  always @(*) begin
    case (state)
      IDLE:  next = in ? GOT1 : IDLE;    // waiting for the first 1
      GOT1:  next = in ? GOT1 : GOT10;
      GOT10: next = in ? GOT1 : IDLE;
      default: next = IDLE;
    endcase
  end

  /* registered state and a one-cycle pulse on the final 1 */
  always @(posedge clk) begin
    if (reset) state <= IDLE;
    else state <= next;
    found <= (state == GOT10) && in;
  end
endmodule
"""
PLANTED_COPY = """module pattern_watch(input sys_clock, input sync_clear, input bit_i, output reg hit_o);
parameter S_A = 2'd0, S_B = 2'd1, S_C = 2'd2;
reg [1:0] cur_q, nxt_d;
always @(*) begin case (cur_q) S_A: nxt_d = bit_i ? S_B : S_A; S_B: nxt_d = bit_i ? S_B : S_C;
S_C: nxt_d = bit_i ? S_B : S_A; default: nxt_d = S_A; endcase end
always @(posedge sys_clock) begin if (sync_clear) cur_q <= S_A; else cur_q <= nxt_d;
hit_o <= (cur_q == S_C) && bit_i; end
endmodule
"""
# Unrelated, though built from the same ingredients (2-bit state, case, clocked reset).
UNRELATED = """// Lamp controller: off until go, on for 200 cycles, then a wait state.
module blink_ctrl(input clk, input rst, input go, output reg [2:0] lamp);
  localparam OFF = 2'd0, ON = 2'd1, WAIT = 2'd2;
  reg [1:0] st;
  reg [7:0] cnt;
  always @(posedge clk) begin
    if (rst) begin st <= OFF; cnt <= 8'd0; end
    else begin
      cnt <= cnt + 8'd1;
      case (st)
        OFF: if (go) st <= ON;
        ON: if (cnt == 8'd200) st <= WAIT;
        WAIT: st <= OFF;
        default: st <= OFF;
      endcase
    end
    lamp <= {st == ON, st == WAIT, st == OFF};
  end
endmodule
"""
PLANTED_ID = "Prob042_seq101"
TINY_REF = "module RefModule(output one);\n  assign one = 1'b1;\nendmodule\n"


@pytest.fixture()
def planted_bench(tmp_path: Path) -> Path:
    """VerilogEval v2 layout (both datasets) with the planted reference and a tiny one."""
    root = tmp_path / "verilog-eval"
    for ds in ("dataset_spec-to-rtl", "dataset_code-complete-iccad2023"):
        d = root / ds
        d.mkdir(parents=True)
        prompt = "Detect the bit sequence 1, 0, 1 on in and pulse found for one cycle after the final 1."
        (d / f"{PLANTED_ID}_prompt.txt").write_text(prompt + "\n")
        (d / f"{PLANTED_ID}_ref.sv").write_text(PLANTED_REF)
        (d / f"{PLANTED_ID}_test.sv").write_text("module tb; endmodule\n")
        (d / "Prob043_one_prompt.txt").write_text("Build a circuit whose output is always high.\n")
        (d / "Prob043_one_ref.sv").write_text(TINY_REF)
    return root


def test_sv_tokens_drop_comments_keep_structure() -> None:
    toks = sv_tokens("// note\nassign y = 8'HF_F + 4 'b10 /* c */ + $clog2(W) + `WIDTH; `ifdef X reg r; `endif")
    assert toks == ["assign", "<id>:y", "=", "8'hff", "+", "4'b10", "+", "$clog2", "(", "<id>:W", ")", "+",
                    "<id>:WIDTH", ";", "`ifdef", "<id>:X", "reg", "<id>:r", ";", "`endif"]
    assert count_tokens(PLANTED_REF) == count_tokens(PLANTED_COPY) >= 40


def test_canonical_ngrams_ignore_names_but_not_structure() -> None:
    ref = canonical_ngrams(PLANTED_REF, 12)
    assert len(ref) > 50 and np.array_equal(ref, canonical_ngrams(PLANTED_COPY, 12))
    # which names repeat is part of the structure: merging two names changes the n-grams
    merged = PLANTED_COPY.replace("S_C", "S_B")
    assert not np.array_equal(ref, canonical_ngrams(merged, 12))
    # a changed literal changes the n-grams around it
    assert len(set(ref.tolist()) - set(canonical_ngrams(PLANTED_COPY.replace("2'd2", "2'd3"), 12).tolist())) >= 12


def test_planted_renamed_reference_caught_by_canonical_not_text(planted_bench: Path) -> None:
    dec = Decontaminator.from_paths([str(planted_bench)])
    ids = [f"verilogeval-v2/{ds}/{PLANTED_ID}" for ds in ("dataset_code-complete-iccad2023", "dataset_spec-to-rtl")]
    # the text 13-gram check catches the verbatim reference but not the renamed copy
    assert dec.text.hits(PLANTED_REF) == ids and dec.text.hits(PLANTED_COPY) == []
    m = dec.check(PLANTED_COPY)
    assert m is not None and m.problem_id == ids[0] and m.methods == ("canonical",) and m.all_ids == ids
    assert dec.canonical.match(PLANTED_COPY) == (ids[0], 1.0)
    # the copy inside a larger file (a wrapper module after it) is still contained
    assert dec.check(PLANTED_COPY + "\n" + UNRELATED) is not None
    both = dec.check(PLANTED_REF)
    assert both is not None and both.methods == ("text_13gram", "canonical")


def test_unrelated_and_tiny_modules_not_flagged(planted_bench: Path, assets: Path) -> None:
    dec = Decontaminator.from_paths([str(planted_bench), str(assets / "benchmarks")])
    assert dec.check(UNRELATED) is None
    # references too small to tell a copy from a coincidence are not indexed by the canonical check
    assert "verilogeval-v2/dataset_spec-to-rtl/Prob043_one" in dec.canonical.skipped
    assert dec.canonical.match("module vdd(output hi); assign hi = 1'b1; endmodule") is None
    # the bundled sample repositories hold no benchmark copy
    from corpus.verilog import VerilogParser

    parser = VerilogParser()
    sample = Path(__file__).parents[2] / "sample/repos"
    units = [u for f in sorted(sample.rglob("*.*v")) for u in parser.parse(f.read_text(), str(f))]
    assert len(units) > 10
    assert [u["name"] for u in units if dec.check(u["source"])] == []


def test_rtllm_and_v1_references_indexed(assets: Path) -> None:
    refs = dict(load_references(str(assets / "benchmarks")))
    assert set(refs) == {"rtllm/parity_accumulator", "rtllm/toggle_counter", "verilogeval-v1/byte_reverse_v1",
                         "verilogeval-v1/enable_latch_v1", V2 + "Prob001_majority3", V2 + "Prob002_nibble_swap",
                         V2 + "Prob003_sticky_flag"}
    assert refs["verilogeval-v1/byte_reverse_v1"].startswith("module top_module (")  # prompt header + solution
    assert refs["verilogeval-v1/byte_reverse_v1"].rstrip().endswith("endmodule")
    idx = CanonicalIndex.from_paths([str(assets / "benchmarks/rtllm")])
    ref = refs["rtllm/toggle_counter"]
    names = sorted({t.split(":", 1)[1] for t in sv_tokens(ref) if t.startswith("<id>:")}, key=len, reverse=True)
    renamed = strip_comments(ref)
    for i, name in enumerate(names):  # longest first, whole words: a one-to-one renaming
        renamed = re.sub(rf"\b{re.escape(name)}\b", f"zz{i}_q", renamed)
    assert renamed != strip_comments(ref) and idx.match(renamed) == ("rtllm/toggle_counter", 1.0)


def test_contamination_stage_marks_rows_and_counts_methods(planted_bench: Path, tmp_path: Path) -> None:
    table = pa.table({"id": ["a", "b", "c", "d"], "source": [PLANTED_COPY, UNRELATED, PLANTED_REF, None]})
    stage = ContaminationStage([str(planted_bench)], stats_dir=str(tmp_path / "stats"))
    out = stage(table)
    pid = f"verilogeval-v2/dataset_code-complete-iccad2023/{PLANTED_ID}"
    assert out.column("contaminated_by").to_pylist() == [pid, None, pid, None]
    assert out.column("id").to_pylist() == ["a", "b", "c", "d"]
    assert stage.last_stats == {"modules": 4, "flagged": 2, "by_method": {"canonical": 1, "text_13gram+canonical": 1},
                                "per_benchmark": {"verilogeval-v2": 2}}
    again = stage(out.slice(0, 2))  # an existing column is overwritten, not duplicated
    assert again.column_names.count("contaminated_by") == 1
    merged = merge_stats(json.loads(p.read_text()) for p in (tmp_path / "stats").glob("*.json"))
    assert merged == {"modules_checked": 6, "contaminated": 3,
                      "by_method": {"canonical": 2, "text_13gram+canonical": 1}, "per_benchmark": {"verilogeval-v2": 3}}
    with pytest.raises(ValueError, match="source"):
        stage(pa.table({"id": ["x"]}))


def test_dataset_and_synthesis_skip_contaminated_modules(tmp_path: Path) -> None:
    """The dataset job's module stage and the synthesis seeds leave out rows with contaminated_by."""
    import pyarrow.parquet as pq

    from corpus.dataset import ModuleStage
    from corpus.schema import MODULES_SCHEMA, from_rows
    from synthesis.seeds import load_module_seeds

    body = "\n".join(f"  assign y{i} = a ^ {i};" for i in range(10))
    row = {"repo": "r", "commit": "c", "path": "rtl/x.v", "url": "u", "start_line": 1, "end_line": 14, "n_lines": 14,
           "kind": "module", "comment": "Spreads the input word over ten outputs, each xored with its index.",
           "license": "MIT", "ports": [{"name": "a", "direction": "input", "type": "[3:0]"}],
           "source": f"module spread(input [3:0] a);\n{body}\nendmodule", "parse_ok": True,
           "error_line_share": 0.0, "keep": True}
    rows = [{**row, "id": "clean", "name": "spread"},
            {**row, "id": "dirty", "name": "spread2", "path": "rtl/y.v", "contaminated_by": "rtllm/adder_8bit"}]
    table = from_rows(rows, MODULES_SCHEMA, stage="test")
    tagged = ModuleStage()(table).to_pylist()
    skips = [t["skip"] for t in tagged if t["skip"]]
    assert skips == ["contaminated_module:rtllm/adder_8bit"]
    assert {t["group"] for t in tagged if not t["skip"]} == {"r"} and len(tagged) > 2
    part = tmp_path / "modules" / "repo=r"
    part.mkdir(parents=True)
    pq.write_table(table, part / "part-0.parquet")
    assert [s["id"] for s in load_module_seeds(str(tmp_path), min_lines=8)] == ["clean"]
