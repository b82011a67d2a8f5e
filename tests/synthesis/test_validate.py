"""Validators on known-good and known-bad Verilog, Yosys scripts and Tcl/SDC."""

from __future__ import annotations

import json
import os
import re
import time
import uuid

import pyarrow as pa
import pytest

from synthesis import validate
from synthesis.parsing import parse_answer
from synthesis.templates import TEMPLATES
from synthesis.validate import (CANDIDATE_SCHEMA, Settings, ValidateStage, Validator, command_lists,
                                       commands_from_docs, tcl_command_names, validate_row)
from tests.synthesis.conftest import SDC, STA_POWER, VERILOG, YOSYS, good_reply

pytestmark = pytest.mark.tools("iverilog", "vvp", "verilator", "yosys", "tclsh", "bwrap")


class RegexParser:
    """Stand-in for corpus.verilog.VerilogParser until it lands: module/endmodule balance."""

    def parse(self, text: str, path: str = "") -> list[dict]:
        names = re.findall(r"^\s*module\s+(\w+)", text, re.M)
        ok = len(names) == len(re.findall(r"\bendmodule\b", text))
        return [{"name": n, "kind": "module", "parse_ok": ok, "error_line_share": 0.0 if ok else 1.0} for n in names]


def make_parser():
    try:
        from corpus.verilog import VerilogParser
    except ImportError:
        return RegexParser()
    return VerilogParser(grammar="systemverilog")


@pytest.fixture(scope="module")
def v() -> Validator:
    return Validator(Settings(timeout_s=20, sim_timeout_s=2), parser=make_parser())


# ------------------------------------------------------------------------ Verilog

@pytest.mark.parametrize("item", VERILOG, ids=["adder", "counter", "parity"])
def test_good_verilog_with_testbench_passes(v: Validator, item) -> None:
    _, code, tb = item
    assert v.check_verilog(code, tb) is None, v.detail


def test_verilator_warnings_do_not_reject(v: Validator) -> None:
    code = "module cf_w(input [7:0] a, output [3:0] y);\n  assign y = a;\nendmodule\n"  # WIDTH warning
    assert v.check_verilog(code) is None, v.detail


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("module cf_b(input a, output y);\n  assign y = a & nope;\nendmodule\n", "verilog/iverilog"),
        ("module cf_b(input a, output y)\n  assign y = a;\nendmodule\n", None),  # missing ';' — parser or iverilog
        ("wire x;\n", "verilog/no_module"),
        ("module cf_b(output y); initial $system(\"rm -rf /\"); endmodule\n", "verilog/unsafe_system_task"),
        ('module cf_b; integer f; initial f = $fopen("/etc/cf_probe", "w"); endmodule\n', "verilog/unsafe_file_io"),
        ('module cf_b; initial $dumpfile("../up.vcd"); endmodule\n', "verilog/unsafe_file_io"),
        ("module cf_b; reg [7:0] m [0:3]; reg [8*8:1] n; initial $readmemh(n, m); endmodule\n",
         "verilog/unsafe_file_io"),
    ],
)
def test_bad_verilog_is_rejected(v: Validator, code: str, reason: str | None) -> None:
    got = v.check_verilog(code)
    assert got is not None
    if reason is None:
        assert got in {"verilog/parse", "verilog/iverilog"}
    else:
        assert got == reason


def test_failing_testbench_is_rejected(v: Validator) -> None:
    _, code, tb = VERILOG[0]
    assert v.check_verilog(code, tb.replace("9'd300", "9'd301")) == "verilog/sim_fail"
    silent = "module tb; initial begin #1; $finish; end endmodule\n"
    assert v.check_verilog(code, silent) == "verilog/sim_fail"  # no pass marker


def test_simulation_that_never_ends_is_killed_by_the_time_limit(v: Validator) -> None:
    _, code, _ = VERILOG[0]
    forever = "module tb; reg clk = 0; always #1 clk = ~clk; initial $display(\"running\"); endmodule\n"
    t0 = time.perf_counter()
    assert v.check_verilog(code, forever) == "verilog/sim_timeout"
    assert time.perf_counter() - t0 < 2 + 8  # sim limit 2 s, plus compile and lint


# ------------------------------------------------------------------------ Yosys

@pytest.mark.parametrize("item", YOSYS, ids=["stat", "flatten", "check"])
def test_good_yosys_scripts_run_on_the_shipped_design(v: Validator, item) -> None:
    assert v.check_yosys(item[1]) is None, v.detail


def test_shell_escape_is_rejected_before_running(v: Validator, tmp_path) -> None:
    marker = f"/tmp/cf-escape-{uuid.uuid4().hex}"
    script = f"read_verilog cf_top.v\n!touch {marker}\nstat\n"
    assert v.check_yosys(script) == "yosys/shell_escape"
    assert not os.path.exists(marker)
    assert v.check_yosys(f"read_verilog cf_top.v; !touch {marker}") == "yosys/shell_escape"
    assert v.check_yosys(f"read_verilog cf_top.v\nexec -- touch {marker}\n") == "yosys/shell_escape"
    assert not os.path.exists(marker)


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ("read_verilog cf_top.v\ntee -o /tmp/cf-out.txt stat\n", "yosys/path_outside_cwd"),
        ("read_verilog cf_top.v\nwrite_verilog ../netlist.v\n", "yosys/path_outside_cwd"),
        ("read_verilog cf_top.v\ncd ..\n", "yosys/path_outside_cwd"),
        ("read_verilog /etc/passwd\n", "yosys/path_outside_cwd"),
        ("script ~/evil.ys\n", "yosys/path_outside_cwd"),
        ("read_verilog cf_top.v\nwrite_json sub/../../x.json\n", "yosys/path_outside_cwd"),
        ("plugin -i evil.so\nread_verilog cf_top.v\n", "yosys/forbidden_command"),
        ("read_verilog cf_top.v\nshow -viewer xdot\n", "yosys/forbidden_command"),
        ("read_verilog cf_top.v\nabc -exe ./abc\n", "yosys/forbidden_command"),
        ("read_verilog cf_counter.v cf_alu.v cf_top.v\nsynth -top cf_missing\n", "yosys/error"),
        ("read_verilog cf_top.v\nno_such_pass\n", "yosys/error"),
        ("read_verilog other.v\n", "yosys/no_design"),
    ],
)
def test_bad_yosys_scripts(v: Validator, script: str, reason: str) -> None:
    assert v.check_yosys(script) == reason


# ------------------------------------------------------------------------ Tcl / SDC

def test_tcl_command_scan_sees_nested_commands() -> None:
    script = ("create_clock -period 10 [get_ports clk] ;# comment\n"
              "foreach p [all_outputs] { set_load 0.1 $p }\n"
              "if {[llength [get_cells]] > 0} then { puts ok } elseif {1} { report_wns } else { report_tns }\n"
              "proc f {a} { return [report_checks] }\n"
              "set x \"[all_inputs] and more\"\n")
    assert sorted(tcl_command_names(script)) == sorted([
        "get_ports", "create_clock", "all_outputs", "foreach", "set_load", "if", "get_cells", "llength", "puts",
        "report_wns", "report_tns", "proc", "report_checks", "return", "all_inputs", "set"])


@pytest.mark.parametrize("item", SDC, ids=["io", "false_path", "loads"])
def test_good_sdc_passes(v: Validator, item) -> None:
    assert v.check_tcl(item[1], "sdc") is None, v.detail


@pytest.mark.parametrize("item", STA_POWER, ids=["activity", "vcd"])
def test_good_opensta_passes(v: Validator, item) -> None:
    assert v.check_tcl(item[1], "opensta") is None, v.detail


@pytest.mark.parametrize(
    ("script", "tool", "reason"),
    [
        ("create_clock -period 10 [get_ports clk]\nreport_checks\n", "sdc", "tcl/unknown_command"),  # not SDC
        ("foreach p [all_outputs] { set_magic_load $p }\n", "sdc", "tcl/unknown_command"),
        ("create_clock -period 10 [get_ports clk\n", "sdc", "tcl/syntax"),
        ("create_clock -period 10 {[get_ports clk]\n", "sdc", "tcl/syntax"),
        ("set f [open /etc/passwd w]\n", "opensta", "tcl/unsafe_command"),
        ("exec rm -rf /tmp/x\n", "openroad", "tcl/unsafe_command"),
        ("source /etc/evil.tcl\n", "openroad", "tcl/unsafe_command"),
        ("set c exec\n$c ls\n", "openroad", "tcl/dynamic_command"),
        ("# only a comment\n", "sdc", "tcl/empty"),
    ],
)
def test_bad_tcl_is_rejected(v: Validator, script: str, tool: str, reason: str) -> None:
    assert v.check_tcl(script, tool) == reason


def test_openroad_accepts_opensta_and_sdc_commands(v: Validator) -> None:
    assert v.check_tcl("create_clock -period 5 [get_ports clk]\nglobal_placement\nreport_checks\n", "openroad") is None


def test_command_lists_from_docs_output() -> None:
    rows = [
        {"tool": "openroad", "text": "Run it:\n```tcl\nmy_new_placer -density 0.5\nset x [get_ports a]\n```"},
        {"tool": "opensta", "text": "```\nreport_fancy_slack\nexec_cmd\nputs hi\n```"},
        {"tool": "yosys", "text": "```\nsynth_ice40\n```"},
    ]
    found = commands_from_docs(rows)
    assert found == {"openroad": {"my_new_placer", "get_ports"}, "opensta": {"report_fancy_slack", "exec_cmd"}}
    allowed, info = command_lists(rows, "auto")
    assert "my_new_placer" in allowed["openroad"] and "global_route" in allowed["openroad"]
    assert "report_fancy_slack" in allowed["openroad"] and "report_fancy_slack" not in allowed["sdc"]
    assert info["openroad"]["source"] == "docs+fallback"
    only_fb, info_fb = command_lists(rows, "fallback")
    assert "my_new_placer" not in only_fb["openroad"] and info_fb["openroad"]["source"] == "fallback"
    docs_only, info_docs = command_lists(rows, "docs", min_docs_commands=2)
    assert docs_only["openroad"] >= {"my_new_placer"} and "global_route" not in command_lists(rows, "docs", 2)[0]["sdc"]
    assert info_docs["openroad"]["source"] == "docs" and info_docs["opensta"]["source"] == "docs"
    v = Validator(Settings(allowed_commands={k: sorted(c) for k, c in allowed.items()}), parser=RegexParser())
    assert v.check_tcl("my_new_placer -density 0.5\n", "openroad") is None
    assert v.check_tcl("my_new_placer -density 0.5\n", "opensta") == "tcl/unknown_command"


# ------------------------------------------------------------------------ whole answers and rows

def test_answer_level_rules(v: Validator) -> None:
    yosys_t = TEMPLATES["synthesis/yosys_script_topic@v1"]
    assert v.check(parse_answer(good_reply("yosys", 0)), yosys_t) is None
    assert v.check(parse_answer(good_reply("sdc", 0)), yosys_t) == "code/missing_yosys"
    bash = json.dumps({"instruction": "q", "answer": "```yosys\nread_verilog cf_top.v\n```\n```bash\nls\n```"})
    assert v.check(parse_answer(bash), yosys_t) == "code/unsupported_lang"
    rtl = TEMPLATES["rtl_design/module_from_topic@v1"]
    assert v.check(parse_answer(good_reply("verilog", 1)), rtl) is None
    # Tcl blocks are checked against the template's tool: OpenROAD commands are not OpenSTA's.
    sta = TEMPLATES["timing_analysis/opensta_timing_topic@v1"]
    assert v.check(parse_answer(good_reply("or_place", 0)), sta) == "tcl/unknown_command"


def test_validate_row_and_stage_counts_every_row() -> None:
    def row(pid: str, text: str | None, template: str, error: str | None = None) -> dict:
        return {"prompt_id": pid, "round": 0, "phase": template.split("/")[0], "task": template.split("/")[1],
                "template_id": template, "seed_json": "{}", "generated_text": text, "engine_error": error,
                "prompt_tokens": 10, "completion_tokens": 20}

    ys = "synthesis/yosys_script_topic@v1"
    batch = pa.Table.from_pylist([
        row("a", good_reply("yosys", 1), ys),
        row("b", "not json at all", ys),
        row("c", None, ys, error="http_error: 500"),
        row("d", good_reply("sdc", 0), "timing_analysis/sdc_constraints_topic@v1"),
        row("e", good_reply("yosys", 0), "nope/unknown@v9"),
    ])
    out = ValidateStage(parser=RegexParser())(batch)
    assert out.schema == CANDIDATE_SCHEMA
    got = {r["prompt_id"]: r["reason"] for r in out.to_pylist()}
    assert got == {"a": None, "b": "malformed/not_json", "c": "engine/error", "d": None,
                   "e": "engine/unknown_template"}
    kept = [r for r in out.to_pylist() if r["reason"] is None]
    assert all(r["instruction"] and "```" in r["answer"] for r in kept)
    # numpy-style dict batches work too
    numpy_batch = {k: [r[k] for r in batch.to_pylist()] for k in batch.column_names}
    assert ValidateStage(parser=RegexParser())(numpy_batch).num_rows == 5
    assert validate_row(row("f", good_reply("yosys", 2), ys), Validator(parser=RegexParser()))["reason"] is None
    assert validate.design_context()["top"] == "cf_top"
