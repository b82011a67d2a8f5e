"""Decontamination against the tiny benchmark assets written for this project."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest

from corpus.decontam import BenchmarkIndex, normalise_tokens, strip_comments

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
