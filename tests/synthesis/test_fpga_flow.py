"""The grounded FPGA flow (yosys synth_ice40 + nextpnr-ice40): report parsing on the tool's real
output, diagnoses of deliberately broken inputs, answers whose numbers are the report's, the
cache, the example schema, and the synthesis job's optional source (run, or skipped and counted).

Every flow here runs the real tools on small Verilog written for these tests.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from synthesis import fpga_flow, sandbox
from synthesis.fpga_flow import FlowCase

pytestmark = pytest.mark.tools("yosys", "nextpnr-ice40")

ACC = """// test design: an 8-bit input accumulated into a 12-bit register, with a registered parity flag.
module t_acc(input clk, input rst, input [7:0] d, output reg [11:0] acc, output reg par);
  always @(posedge clk) begin
    if (rst) begin acc <= 12'd0; par <= 1'b0; end
    else begin acc <= acc + {4'd0, d}; par <= ^acc; end
  end
endmodule
"""
ACC_BROKEN = ACC.replace("output reg par);", "output reg par)")  # the header loses its semicolon
WIDE_MUL = """module t_mul(input clk, input [15:0] a, input [15:0] b, output reg [31:0] p);
  always @(posedge clk) p <= a * b;
endmodule
"""
FILES = (("t_acc.v", ACC),)

PASSING = FlowCase("t_acc-hx1k-60", FILES, "t_acc", "hx1k", "tq144", 60.0)
FAULTS = {
    "syntax_error": FlowCase("t-syntax", (("t_acc.v", ACC_BROKEN),), "t_acc"),
    "unconstrained_io": FlowCase("t-unconstrained", FILES, "t_acc", pcf="set_io clk 21\n", allow_unconstrained=False),
    "bad_pin": FlowCase("t-badpin", FILES, "t_acc", pcf="set_io clk NOPE7\n"),
    "timing_fail": FlowCase("t-timing", FILES, "t_acc", freq_mhz=900.0, timing_allow_fail=False),
    "too_big": FlowCase("t-big", (("t_mul.v", WIDE_MUL),), "t_mul", "lp384", "qn32"),
}


@pytest.fixture(autouse=True)
def _unsandboxed_where_the_kernel_forbids(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inputs are this file's own; where bwrap cannot isolate, run them with rlimits only."""
    if sandbox.isolation()["mode"] == "none":
        monkeypatch.setattr(sandbox, "_unsandboxed_allowed", True)


@pytest.fixture(scope="module")
def passing() -> dict:
    if sandbox.isolation()["mode"] == "none":
        sandbox._unsandboxed_allowed = True
    return fpga_flow.run_flow(PASSING)


@pytest.fixture(scope="module")
def faults() -> dict[str, dict]:
    if sandbox.isolation()["mode"] == "none":
        sandbox._unsandboxed_allowed = True
    return {name: fpga_flow.run_flow(case) for name, case in FAULTS.items()}


def numbers(text: str) -> set[float]:
    return {float(x) for x in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?", text)}


# --------------------------------------------------------------------------- parsing real output

def test_report_parsed_from_real_nextpnr_output_agrees_with_its_json_report(passing):
    assert passing["ok"], passing.get("errors") or passing["synthesis"]["errors"]
    # The log's utilisation table and the --report JSON are two renderings of the same numbers.
    js = passing["json_report"]
    assert set(passing["utilisation"]) == set(js["utilization"])
    for res, u in passing["utilisation"].items():
        assert (u["used"], u["available"]) == (js["utilization"][res]["used"], js["utilization"][res]["available"])
    # The accumulator's 12 + 1 flip-flops need logic cells; synthesis counted the cells that produce them.
    assert passing["utilisation"]["ICESTORM_LC"]["used"] >= 13
    assert sum(n for t, n in passing["synthesis"]["cells"].items() if t.startswith("SB_DFF")) == 13
    (clock, f), = passing["fmax"].items()
    assert "clk" in clock and f["target_mhz"] == 60.0
    assert f["achieved_mhz"] == pytest.approx(js["fmax"][clock]["achieved_mhz"], abs=0.01)
    assert f["pass"] == (f["achieved_mhz"] >= f["target_mhz"])
    assert clock in passing["fmax_placement"]


def test_critical_path_wirelength_routing_and_globals(passing):
    (clock, _), = passing["fmax"].items()
    path = next(p for p in passing["critical_paths"] if p["clock"] == clock)
    assert path["logic_ns"] + path["routing_ns"] == pytest.approx(path["total_ns"], abs=0.15)
    assert path["start"] and path["end"] and path["nets"]
    assert sum(n["delay_ns"] for n in path["nets"]) == pytest.approx(path["routing_ns"], abs=0.1 * len(path["nets"]))
    pl = passing["placement"]
    assert 0 < pl["wirelength"] < pl["random_wirelength"] and pl["cells"] > 0
    assert passing["routing"]["complete"] and passing["routing"]["arcs"] > 0
    assert any(g["net"].startswith("clk") for g in passing["globals"])
    assert {d["to"] for d in passing["max_delay"]} <= {"<async>", f"posedge {clock}"}


def test_parse_nextpnr_ignores_what_is_not_a_report():
    parsed = fpga_flow.parse_nextpnr("Info: Packing IOs..\nWarning: something odd\nERROR: it broke\n")
    assert parsed["utilisation"] == {} and parsed["fmax"] == {} and parsed["critical_paths"] == []
    assert parsed["errors"] == ["it broke"] and parsed["warnings"] == ["something odd"]


# --------------------------------------------------------------------------- answers = report

def test_every_kind_is_built_and_its_numbers_are_the_reports(passing):
    examples = {e.task: e for e in fpga_flow.examples_for(passing)}
    assert set(examples) == {"fpga_utilisation_report", "fpga_wirelength_report", "fpga_global_promotion",
                             "fpga_timing_closure", "fpga_critical_path_report"}
    (clock, f), = passing["fmax"].items()
    path = next(p for p in passing["critical_paths"] if p["clock"] == clock)
    lc = passing["utilisation"]["ICESTORM_LC"]

    util = examples["fpga_utilisation_report"]
    assert (util.facts["lc_used"], util.facts["lc_available"]) == (lc["used"], lc["available"])
    assert f"{lc['used']} of the {lc['available']} logic cells" in util.answer
    assert f"{lc['available'] - lc['used']} logic cells remain" in util.answer

    timing = examples["fpga_timing_closure"]
    slack = 1000 / f["target_mhz"] - 1000 / f["achieved_mhz"]
    assert timing.facts["fmax"] == f["achieved_mhz"] and timing.facts["slack_ns"] == round(slack, 2)
    assert f"{f['achieved_mhz']:.2f} MHz" in timing.answer and f"{slack:+.2f} ns" in timing.answer
    assert ("meets timing" in timing.answer) == f["pass"]

    cp = examples["fpga_critical_path_report"]
    worst = max(path["nets"], key=lambda n: n["delay_ns"])
    assert cp.facts["worst_net"] == worst["net"] and f"{worst['delay_ns']} ns" in cp.answer
    assert f"{path['logic_ns']} ns to logic and {path['routing_ns']} ns to" in cp.answer

    wl = examples["fpga_wirelength_report"]
    assert {passing["placement"]["wirelength"], passing["placement"]["random_wirelength"],
            passing["routing"]["arcs"]} <= numbers(wl.answer)


def test_answers_follow_the_report_not_a_fixed_text(passing):
    """A report with a failing clock must flip the verdict and the slack's sign."""
    (clock, f), = passing["fmax"].items()
    failing = json.loads(json.dumps(passing))
    failing["fmax"][clock] = {"achieved_mhz": f["target_mhz"] / 2, "target_mhz": f["target_mhz"], "pass": False}
    ex = fpga_flow.timing_example(failing)
    assert "does not meet timing" in ex.answer and ex.facts["slack_ns"] < 0
    assert f"{f['target_mhz'] / 2:.2f} MHz" in ex.answer


def test_no_prompt_contains_its_answer(passing, faults):
    for rep in [passing, *faults.values()]:
        for ex in fpga_flow.examples_for(rep):
            words = ex.answer.split()
            grams = {" ".join(words[i:i + 8]) for i in range(len(words) - 7)}
            shared = [g for g in grams if g in " ".join(ex.user.split())]
            assert not shared, (ex.task, shared[:2])


# --------------------------------------------------------------------------- broken inputs

@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_broken_input_is_diagnosed_from_the_tools_own_log(faults, fault):
    rep = faults[fault]
    assert not rep["ok"]
    (ex,) = fpga_flow.examples_for(rep)
    assert ex.task == "fpga_log_diagnosis" and ex.facts["cause"] == fault
    assert ex.phase == fpga_flow.DIAGNOSIS_PHASE[fault]
    log_errors = rep["synthesis"]["errors"] if fault == "syntax_error" else rep["errors"]
    assert log_errors and all(e in ex.user for e in log_errors)  # the tool's own lines, verbatim


def test_diagnosis_numbers_are_the_logs(faults):
    syn = fpga_flow.examples_for(faults["syntax_error"])[0]
    assert faults["syntax_error"]["stage_failed"] == "synthesis"
    line = int(re.search(r"t_acc\.v:(\d+):", faults["syntax_error"]["synthesis"]["errors"][0])[1])
    assert syn.facts["line"] == line and f"line {line} of t_acc.v" in syn.answer

    big = faults["too_big"]
    ex = fpga_flow.examples_for(big)[0]
    lc = big["utilisation"]["ICESTORM_LC"]
    assert lc["used"] > lc["available"]
    assert (ex.facts["used"], ex.facts["available"]) == (lc["used"], lc["available"])
    assert f"needs {lc['used']} ICESTORM_LC" in ex.answer and f"has {lc['available']}" in ex.answer

    tf = faults["timing_fail"]
    ex = fpga_flow.examples_for(tf)[0]
    (clock, f), = tf["fmax"].items()
    assert not f["pass"] and ex.facts["fmax"] == f["achieved_mhz"] and ex.facts["target"] == 900.0
    assert f"at most {int(f['achieved_mhz'])} MHz" in ex.answer

    io = fpga_flow.examples_for(faults["unconstrained_io"])[0]
    port = re.search(r"IO '([^']+)' is unconstrained", faults["unconstrained_io"]["errors"][0])[1]
    assert port != "clk" and io.facts["port"] == port and f"port {port} has none" in io.answer

    pin = fpga_flow.examples_for(faults["bad_pin"])[0]
    assert pin.facts == {"pin": "NOPE7", "line": 1, "cause": "bad_pin"}


def test_unrecognised_failure_yields_no_example(faults):
    odd = json.loads(json.dumps(faults["bad_pin"]))
    odd["errors"] = ["something nobody has seen before"]
    assert fpga_flow.diagnosis_example(odd) is None


# --------------------------------------------------------------------------- cache, rows, job

def test_results_are_cached_per_case_in_process_and_on_disk(passing, tmp_path, monkeypatch):
    case = FlowCase("t_acc-hx1k-33", FILES, "t_acc", "hx1k", "tq144", 33.0)
    first = fpga_flow.run_flow(case, cache_dir=str(tmp_path))
    assert first["freq_mhz"] == 33.0 and list(tmp_path.glob("*.json"))
    assert case.key(fpga_flow.tool_versions()) != PASSING.key(fpga_flow.tool_versions())

    def no_tools(*_a, **_k):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(sandbox, "run", no_tools)
    assert fpga_flow.run_flow(case, cache_dir=str(tmp_path)) is first
    monkeypatch.setattr(fpga_flow, "_MEMO", {})
    assert fpga_flow.run_flow(case, cache_dir=str(tmp_path))["fmax"] == first["fmax"]


def test_rows_fit_the_example_schema_with_tool_provenance(passing, faults):
    from corpus.schema import EXAMPLES_SCHEMA, from_rows

    rows = fpga_flow.example_rows([passing, *faults.values()])
    groups = {r.pop("group") for r in rows}
    assert groups == {f"fpga_flow:{c.name}" for c in [PASSING, *FAULTS.values()]}
    table = from_rows(rows, EXAMPLES_SCHEMA, stage="test")
    assert table.num_rows == len(rows) == 5 + len(FAULTS)
    version = fpga_flow.tool_versions()["nextpnr-ice40"]
    for r in rows:
        assert version in r["provenance"]["generator"] and r["provenance"]["generator"].startswith(fpga_flow.FLOW_NAME)
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
    assert {r["phase"] for r in fpga_flow.example_rows([passing], {"routing"})} == {"routing"}


class _Job:
    def __init__(self) -> None:
        self.said: list[str] = []

    def progress(self, text: str) -> None:
        self.said.append(text)


def _cfg(**fpga):
    from pipelines.synthesis import SynthesizeConfig

    return SynthesizeConfig(dataset_dir=None, fpga_flow=fpga, phases={
        "placement": {"quota": 5}, "routing": {"quota": 5}, "timing_analysis": {"quota": 5}})


def test_job_source_keeps_filters_and_counts(passing, faults, monkeypatch):
    from pipelines.synthesis import Filters, Tally, add_fpga_flow_rows

    monkeypatch.setattr(fpga_flow, "default_cases", lambda: [PASSING, *FAULTS.values()])
    cfg = _cfg(enabled=True, max_per_phase=2)
    tally = Tally(list(cfg.phases))
    info = add_fpga_flow_rows(cfg, tally, Filters(cfg), {}, _Job())
    assert info["skipped"] is None and info["runs"][PASSING.name] == "ok"
    assert info["runs"]["t-syntax"] == "synthesis" and info["runs"]["t-big"] == "pnr"
    kept = Counter(r["phase"] for r in tally.rows)
    assert kept == Counter(info["kept"]) and all(n <= 2 for n in kept.values()) and kept["placement"] == 2
    tight = _cfg(enabled=True, max_per_phase=40)
    tight.phases["timing_analysis"].quota = 1
    small = Tally(list(tight.phases))
    add_fpga_flow_rows(tight, small, Filters(tight), {}, _Job())
    assert small.kept["timing_analysis"] == 1  # never more than the phase's quota
    assert "synthesis" not in kept  # the syntax diagnosis belongs to a phase this config does not ask for
    for phase in cfg.phases:
        assert tally.generated[phase] == tally.kept[phase] + sum(tally.rejected[phase].values())
    assert {r["split"] for r in tally.rows} <= {"train", "validation"}


def test_job_source_is_skipped_and_counted_without_nextpnr(monkeypatch):
    from pipelines.synthesis import Filters, Tally, add_fpga_flow_rows

    monkeypatch.setattr(fpga_flow, "NEXTPNR", "nextpnr-ice40-not-installed")
    cfg = _cfg(enabled=True)
    tally, job = Tally(list(cfg.phases)), _Job()
    info = add_fpga_flow_rows(cfg, tally, Filters(cfg), {}, job)
    assert "nextpnr-ice40-not-installed not installed" in info["skipped"]
    assert info["skipped_cases"] == len(fpga_flow.default_cases()) and not tally.rows
    assert any("fpga_flow skipped" in s for s in job.said)
    off = add_fpga_flow_rows(_cfg(), Tally(["placement"]), Filters(_cfg()), {}, job)
    assert off["skipped"].startswith("disabled")
