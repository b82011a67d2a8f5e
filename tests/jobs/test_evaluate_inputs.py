"""jobs.evaluate's malformed inputs, caught before Ray starts: a benchmark path that is a file, a
checkout with no usable problem, a routing set that cannot be read or holds nothing; benchmark
problems skipped for a bad file are listed (progress line, report.json, summary) while the rest run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from chipforge.config import load_config
from jobs import evaluate as job_module
from pipelines.evaluate import SPEC, EvaluateConfig, load_problems
from tests.evaluation.conftest import SPEC_DIR


def _ray_running() -> bool:
    import ray

    return ray.is_initialized()


def test_benchmark_path_that_is_a_file_or_holds_no_usable_problem_is_a_usage_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("not a checkout")
    started = _ray_running()
    rc = job_module.main(["--output", str(tmp_path / "o"), f"benchmarks.rtllm={tmp_path / 'file'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "benchmarks.rtllm" in err and "is not a directory" in err, err
    spec = tmp_path / "v2" / "dataset_spec-to-rtl"
    spec.mkdir(parents=True)
    (spec / "Prob001_x_prompt.txt").write_text("Implement it.")
    rc = job_module.main(["--output", str(tmp_path / "o"), f"benchmarks.verilog_eval_v2={tmp_path / 'v2'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "benchmarks.verilog_eval_v2" in err and "Prob001_x: no Prob001_x_ref.sv or Prob001_x_test.sv" in err
    assert _ray_running() == started  # refused before Ray starts


@pytest.mark.parametrize(("lines", "says"), [
    (['{"id": "a", "text": "Route me.", "phase": "astrology"}'], "needs a 'text' string and a 'phase' in"),
    ([], "holds no labelled item"),
    (['{"id": "a", "text": "x", "phase": "triage"}', '{"id": "a", "text": "y", "phase": "synthesis"}'],
     "every item needs its own \"id\" string; missing or repeated: ['a']"),
    (['{"text": "x", "phase": "triage"}'], "missing or repeated: [None]"),
    (["not json"], "bad.jsonl:1"),
])
def test_a_routing_set_that_cannot_be_used_is_a_usage_error_naming_it(tmp_path: Path, capsys, lines: list[str],
                                                                      says: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(f"{ln}\n" for ln in lines))
    started = _ray_running()
    rc = job_module.main(["--output", str(tmp_path / "o"), f"routing.eval_path={bad}"])
    err = capsys.readouterr().err
    assert rc == 2 and "routing.eval_path" in err and says in err, err
    assert _ray_running() == started


def test_skipped_benchmark_problems_are_listed_and_the_others_kept(tmp_path: Path) -> None:
    from evaluation.report import summary

    spec = tmp_path / "v2" / "dataset_spec-to-rtl"
    shutil.copytree(SPEC_DIR, spec)
    (spec / "Prob002_nibble_swap_ref.sv").write_bytes(b"module RefModule; // \xff\nendmodule\n")
    cfg = load_config(EvaluateConfig, [f"benchmarks.verilog_eval_v2={tmp_path / 'v2'}"], prog="t",
                      default_config=SPEC.default_config, flags=SPEC.flags)
    problems, skipped = load_problems(cfg)
    assert [p["id"] for p in problems] == ["Prob001_majority3", "Prob003_sticky_flag"]
    assert skipped == [{"benchmark": "verilog_eval_v2/spec-to-rtl", "problem": "Prob002_nibble_swap",
                        "reason": "dataset_spec-to-rtl/Prob002_nibble_swap_ref.sv: not UTF-8 text "
                                  "(invalid start byte at byte 21)"}]
    narrowed = cfg.model_copy(update={"benchmarks": cfg.benchmarks.model_copy(update={"problems": ["Prob001*"]})})
    assert load_problems(narrowed)[1] == []  # a skipped problem outside the selection is not listed
    report = {"models": {}, "model_names": [], "engine": {"name": "hf"}, "simulator": {}, "sandbox": {"mode": "bwrap"},
              "phases": {}, "benchmarks": {}, "side_by_side": [], "benchmark_problems_skipped": skipped,
              "rows": {"total": 0, "judged": 0}, "samples_dir": "s", "report_html": "r"}
    assert ("benchmark problems skipped: 1 (verilog_eval_v2/spec-to-rtl/Prob002_nibble_swap: "
            "dataset_spec-to-rtl/Prob002_nibble_swap_ref.sv: not UTF-8") in summary(report)
    json.dumps(report, allow_nan=False)
