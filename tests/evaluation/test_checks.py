"""Verdicts on benchmark and smoke problems, in the sandbox: the reference passes everything; a syntax
error, a wrong output and a simulation that never ends are each classed correctly; a killed
simulation takes nothing else on the machine with it (a bystander ``vvp`` outside the sandbox lives).
These call the check stage's functions directly (no Ray); the job tests run them as Ray tasks."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation import benchmarks as bench
from evaluation import smoke
from evaluation.checks import SMALL_SCHEMA, check_batch, check_row, parse_phase
from evaluation.models import OUTPUT_SCHEMA, engine_row
from evaluation.simulate import SimSettings, excerpt, run_problem, verilog_checks
from tests.evaluation.conftest import answer_for

pytestmark = pytest.mark.tools("iverilog", "vvp", "verilator", "bwrap")
FAST = SimSettings(sim_timeout_s=4.0, compile_timeout_s=30.0)  # generous: the CI machine is shared
PHASES = ["triage", "rtl_design", "synthesis", "placement", "routing", "timing_analysis", "power_analysis"]


def all_problems(v2: Path, rtllm: Path) -> list[dict]:
    suite = smoke.load_suite()
    return (bench.load_verilog_eval_v2(str(v2)) + bench.load_rtllm(str(rtllm))
            + [smoke.problem(i) for i in suite["items"] if i["kind"] == "verilog"])


def row(problem: dict, completion: str | None, model: str = "m", **extra) -> dict:
    base = {"row_id": f"{problem['key']}|{model}", "prompt_id": problem["key"], "kind": "benchmark",
            "suite": problem["benchmark"], "item_id": problem["id"], "model": model, "sample": -1,
            "messages_json": json.dumps(bench.messages(problem)), "temperature": 0.0, "top_p": 1.0,
            "max_tokens": 64, "seed": 0, "target_json": json.dumps({"problem": problem["key"]})}
    return engine_row(base, completion=completion, **extra)


def verdicts(problems: list[dict], how: str) -> dict[str, tuple[str, str | None]]:
    by_key = {p["key"]: p for p in problems}
    out = {}
    for p in problems:
        res = check_row(row(p, answer_for(p, how)), by_key, FAST, PHASES)
        out[p["key"]] = (res["verdict"], res["failure_class"])
    return out


def test_reference_answers_pass_every_problem(v2_checkout: Path, rtllm_checkout: Path) -> None:
    problems = all_problems(v2_checkout, rtllm_checkout)
    assert len(problems) == 3 + 3 + 2 + 4
    got = verdicts(problems, "reference")
    assert got == {p["key"]: ("pass", None) for p in problems}
    # the self-check's raw reference (no extraction) passes too
    by_key = {p["key"]: p for p in problems}
    for p in problems:
        r = row(p, p["reference"], model="reference")
        r["target_json"] = json.dumps({"problem": p["key"], "raw": True})
        assert check_row(r, by_key, FAST, PHASES)["verdict"] == "pass", p["key"]


@pytest.mark.parametrize(("how", "cls"), [("syntax", "syntax"), ("wrong", "sim_mismatch"), ("none", "no_code")])
def test_bad_answers_are_classed(v2_checkout: Path, rtllm_checkout: Path, how: str, cls: str) -> None:
    problems = all_problems(v2_checkout, rtllm_checkout)
    assert verdicts(problems, how) == {p["key"]: ("fail", cls) for p in problems}


def test_an_answer_that_prints_the_pass_marker_itself_fails(v2_checkout: Path, rtllm_checkout: Path) -> None:
    """The testbench still prints its own verdict (a mismatch count, a failure banner): two verdicts, or a
    pass beside a failure, is a failure, whatever the answer printed."""
    problems = all_problems(v2_checkout, rtllm_checkout)
    assert verdicts(problems, "forged") == {p["key"]: ("fail", "sim_mismatch") for p in problems}
    v2 = next(p for p in problems if p["harness"] == "verilogeval")
    res = run_problem(v2, answer_for(v2, "forged").split("```verilog\n")[1].split("```")[0], FAST)
    assert "the testbench prints its verdict once, the output holds 2" in res["log"]


def test_run_wide_limits_are_a_timeout_naming_the_limit(v2_checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer killed for the memory or disk its run took is classed like one killed at its time limit."""
    from synthesis import sandbox

    p = bench.load_verilog_eval_v2(str(v2_checkout))[0]
    real_run = sandbox.run

    def tight(argv, files, *, limits, **kw):  # no disk at all: the first measurement ends the run
        return real_run(argv, files, limits=dataclasses.replace(limits, disk_mb=0), **kw)

    monkeypatch.setattr(sandbox, "run", tight)
    t0 = time.perf_counter()
    res = run_problem(p, answer_for(p, "hang").split("```verilog\n")[1].split("```")[0], FAST)
    assert (res["verdict"], res["failure_class"]) == ("fail", "timeout"), res
    assert "killed: the run's files under /work took" in res["log"]
    assert time.perf_counter() - t0 < FAST.sim_timeout_s  # the disk limit, not the time limit, ended it


def test_never_ending_simulation_is_killed_and_counted_and_nothing_else_dies(
        v2_checkout: Path, rtllm_checkout: Path, tmp_path: Path) -> None:
    problems = [p for p in all_problems(v2_checkout, rtllm_checkout) if p["id"] in {"Prob001_majority3", "counter4",
                                                                                      "toggle_counter"}]
    # bystanders: a vvp and a sleep of this test, outside any sandbox (a pkill vvp would take them)
    p0 = problems[0]
    (tmp_path / "hang.sv").write_text(json.loads(json.dumps(answer_for(p0, "hang"))).split("```verilog\n")[1]
                                      .split("```")[0])
    for name, text in p0["files"].items():
        (tmp_path / name).write_text(text)
    subprocess.run(["iverilog", "-g2012", "-s", "tb", "-o", str(tmp_path / "b.vvp"), str(tmp_path / "test.sv"),
                    str(tmp_path / "ref.sv"), str(tmp_path / "hang.sv")], check=True, capture_output=True)
    bystanders = [subprocess.Popen(["vvp", "-n", str(tmp_path / "b.vvp")], stdout=subprocess.DEVNULL),
                  subprocess.Popen(["sleep", "300"])]
    try:
        t0 = time.perf_counter()
        got = verdicts(problems, "hang")
        wall = time.perf_counter() - t0
        assert got == {p["key"]: ("fail", "timeout") for p in problems}
        assert wall < len(problems) * (FAST.sim_timeout_s + 8)  # killed at the limit, not left running
        time.sleep(0.2)
        assert all(b.poll() is None for b in bystanders), "a process outside the sandbox was killed"
    finally:
        for b in bystanders:
            b.kill()
            b.wait()


def test_each_answer_is_compiled_and_simulated_in_one_sandbox(v2_checkout: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """One bubblewrap start per answer (compile + simulate), and one per test-split check (compile + lint)."""
    from synthesis import sandbox

    calls: list[list[str]] = []
    real_run = sandbox.run

    def counting_run(argv, *args, **kwargs):
        calls.append(list(argv))
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(sandbox, "run", counting_run)
    p = bench.load_verilog_eval_v2(str(v2_checkout / "dataset_spec-to-rtl"))[0]
    for how, cls in (("reference", None), ("syntax", "syntax"), ("wrong", "sim_mismatch")):
        calls.clear()
        res = check_row(row(p, answer_for(p, how)), {p["key"]: p}, FAST, PHASES)
        assert (res["failure_class"], len(calls)) == (cls, 1), how
    calls.clear()
    good = "module m(input a, output y);\n  assign y = ~a;\nendmodule\n"
    assert verilog_checks(good, FAST)["compile"] and len(calls) == 1


def test_compile_and_simulation_keep_their_own_time_limits(v2_checkout: Path) -> None:
    """A compile past its limit is a compile-stage timeout; a hanging simulation is stopped at the
    simulation limit, not at the sandbox's whole budget (compile + simulation + margin)."""
    p = bench.load_verilog_eval_v2(str(v2_checkout / "dataset_spec-to-rtl"))[0]
    code = bench.extract_verilog(answer_for(p, "reference"), p["top"], p.get("header"))
    slow_compile = run_problem(p, code, SimSettings(compile_timeout_s=0.001, sim_timeout_s=30.0))
    assert (slow_compile["failure_class"], slow_compile["stage"]) == ("timeout", "compile")
    hang = bench.extract_verilog(answer_for(p, "hang"), p["top"], p.get("header"))
    t0 = time.perf_counter()
    res = run_problem(p, hang, SimSettings(compile_timeout_s=60.0, sim_timeout_s=2.0))
    assert (res["failure_class"], res["stage"]) == ("timeout", "simulate")
    assert time.perf_counter() - t0 < 2.0 + 1 + 20  # the compile limit (60 s) is not spent on the simulation


def test_a_compile_that_leaves_no_image_is_a_compile_failure(v2_checkout: Path) -> None:
    p = dict(bench.load_verilog_eval_v2(str(v2_checkout / "dataset_spec-to-rtl"))[0])
    p["compile_argv"] = [a if a != "sim.vvp" else "elsewhere.vvp" for a in p["compile_argv"]]
    res = run_problem(p, p["reference"], FAST)
    assert (res["failure_class"], res["stage"]) == ("compile", "compile") and "no compiled image" in res["log"]


def test_unsafe_answers_are_not_run(v2_checkout: Path) -> None:
    p = bench.load_verilog_eval_v2(str(v2_checkout / "dataset_spec-to-rtl"))[0]
    code = ("module TopModule(input a, input b, input c, output y);\n  initial $system(\"id\");\n"
            "  assign y = (a & b) | (b & c) | (a & c);\nendmodule\n")
    res = check_row(row(p, f"```verilog\n{code}```"), {p["key"]: p}, FAST, PHASES)
    assert (res["verdict"], res["failure_class"]) == ("fail", "unsafe") and "$system" in res["log"]


def test_engine_error_rows_are_failures_with_the_error() -> None:
    p = {"key": "k", "benchmark": "b", "id": "i", "top": "TopModule", "prompt": "Make TopModule."}
    res = check_row(row(p, None, engine_error="http_error: 500"), {}, FAST, PHASES)
    assert (res["verdict"], res["failure_class"]) == ("fail", "engine_error") and "500" in res["log"]


def test_verilog_checks_parse_compile_lint() -> None:
    good = "module m(input clk, input [3:0] d, output reg [3:0] q);\n  always @(posedge clk) q <= d;\nendmodule\n"
    assert {k: v for k, v in verilog_checks(good, FAST).items() if k in ("parse", "compile", "lint")} == {
        "parse": True, "compile": True, "lint": True}
    width = "module m(input [7:0] d, output [3:0] q);\n  assign q = d;\nendmodule\n"  # WIDTH: lint fails only
    r = verilog_checks(width, FAST)
    assert (r["parse"], r["compile"], r["lint"]) == (True, True, False)
    broken = verilog_checks("module m(input a, output y)\n assign y = a\nendmodule\n", FAST)
    assert (broken["parse"], broken["compile"], broken["lint"]) == (False, False, False)
    assert verilog_checks(None, FAST)["failure_class"] == "no_code"


def test_routing_answers_and_smoke_text() -> None:
    assert parse_phase('{"phase": "synthesis"}', PHASES) == "synthesis"
    assert parse_phase('sure: {"phase": "timing_analysis"} ok', PHASES) == "timing_analysis"
    assert parse_phase("That is a power analysis question.", PHASES) == "power_analysis"
    assert parse_phase("rtl_design or synthesis", PHASES) == "unparsed"
    assert parse_phase("", PHASES) == "unparsed"
    item = next(i for i in smoke.load_suite()["items"] if i["kind"] == "text")
    base = {"row_id": "r", "prompt_id": "p", "kind": "smoke", "suite": "smoke", "item_id": item["id"], "model": "m",
            "sample": -1, "messages_json": "[]", "target_json": json.dumps(
                {"expect_terms": item["expect_terms"], "reference": item["reference_text"]})}
    good = check_row(engine_row(base, completion=item["reference_text"]), {}, FAST, PHASES)
    assert good["verdict"] == "pass" and good["scores"]["rouge_l"] == pytest.approx(1.0)
    bad = check_row(engine_row(base, completion="It has a clock."), {}, FAST, PHASES)
    assert bad["failure_class"] == "missing_terms" and "rst_n" in bad["scores"]["missing"]


def test_check_batch_writes_one_sample_row_per_prompt_and_model(v2_checkout: Path, tmp_path: Path) -> None:
    probs = bench.load_verilog_eval_v2(str(v2_checkout / "dataset_spec-to-rtl"))
    rows = [row(p, answer_for(p, how), model=how) for p in probs for how in ("reference", "wrong")]
    loss = engine_row({**rows[0], "row_id": "loss1", "kind": "loss"}, nll_sum=3.0, n_tokens=2)
    table = pa.Table.from_pylist(rows + [loss], schema=OUTPUT_SCHEMA)
    small = check_batch(table, problems={p["key"]: p for p in probs}, settings=FAST.__dict__, phases=PHASES,
                        samples_dir=str(tmp_path / "samples"))
    assert small.schema == SMALL_SCHEMA and small.num_rows == 7
    files = list((tmp_path / "samples").glob("part-*.parquet"))
    assert len(files) == 1
    samples = pq.read_table(files[0]).to_pylist()
    assert len(samples) == 6 and {(s["item_id"], s["model"]) for s in samples} == {
        (p["id"], m) for p in probs for m in ("reference", "wrong")}
    assert all(s["log_excerpt"] for s in samples if s["verdict"] == "fail")
    assert {s["verdict"] for s in samples if s["model"] == "reference"} == {"pass"}
    # a retried task rewrites the same file rather than adding a copy
    check_batch(table, problems={p["key"]: p for p in probs}, settings=FAST.__dict__, phases=PHASES,
                samples_dir=str(tmp_path / "samples"))
    assert len(list((tmp_path / "samples").glob("part-*.parquet"))) == 1


def test_excerpt_keeps_head_and_tail() -> None:
    text = "A" * 500 + "B" * 500
    out = excerpt(text, 100)
    assert len(out) <= 110 and out.startswith("A") and out.endswith("B")
