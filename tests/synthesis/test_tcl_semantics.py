"""Tcl/SDC semantic checks: documented signatures, the shipped design's objects, numeric sanity.

Every script here was written for this project, against the shipped design (``cf_top``:
inputs clk, rst_n, en, b[7:0], op[2:0]; outputs result[7:0], zero, wrap; instances
u_counter and u_alu; registers result and u_counter/count).
"""

from __future__ import annotations

import subprocess

import pytest

from synthesis import signatures, validate
from synthesis.signatures import (TYPES, design_from_json, mine_signatures, parse_synopsis, signature_table,
                                  synopsis_candidates, tcl_value)
from synthesis.validate import Settings, Validator, command_lists, tcl_checker_problem

TOOLS = pytest.mark.tools("yosys", "tclsh", "bwrap")


@pytest.fixture(scope="module")
def v() -> Validator:
    return Validator(Settings(timeout_s=20))


# ------------------------------------------------------------------ good scripts pass

GOOD_SDC = """\
# cf_top at 125 MHz: I/O budgets, reset and a two-cycle path from the counter to the result.
set period 8.0
create_clock -name core_clk -period $period -waveform [list 0 [expr {$period / 2}]] [get_ports clk]
set_clock_uncertainty -setup 0.25 [get_clocks core_clk]
set_clock_uncertainty -hold 0.05 [get_clocks core_clk]
set_clock_transition 0.1 [all_clocks]
set data_in [get_ports {en b[*] op[*]}]
set_input_delay -max 2.0 -clock core_clk $data_in
set_input_delay -min -0.2 -clock core_clk $data_in
set_output_delay 1.5 -clock core_clk [all_outputs]
set_false_path -from [get_ports rst_n]
set_multicycle_path 2 -setup -from [get_cells u_counter] -to [get_pins {result_reg[*]/D}]
set_multicycle_path 1 -hold -from [get_cells u_counter] -to [get_pins {result_reg[*]/D}]
set_max_delay 6.0 -from [get_ports {op[*]}] -to [get_ports zero]
set_driving_cell -lib_cell BUF_X2 -pin Z [all_inputs -no_clocks]
set_input_transition 0.08 [get_ports rst_n]
set_load 0.02 [all_outputs]
set_max_fanout 16 [current_design]
set_max_transition 0.5 [current_design]
foreach reg [get_cells -hier *count_reg*] { set_false_path -hold -to $reg }
proc io_budget {p frac} { return [expr {$p * $frac}] }
set_output_delay [io_budget $period 0.25] -clock core_clk -add_delay [get_ports wrap]
"""


@TOOLS
def test_correct_sdc_for_the_shipped_design_is_accepted(v: Validator) -> None:
    assert v.check_tcl(GOOD_SDC, "sdc") is None, v.detail


@TOOLS
@pytest.mark.parametrize(("script", "tool"), [
    # OpenSTA: clocks may come from an SDC file the script reads; the design is linked by name.
    ("read_liberty cells.lib\nread_verilog netlist.v\nlink_design cf_top\nread_sdc cf_top.sdc\n"
     "report_checks -path_delay min_max -from [get_ports {b[*]}] -to [get_clocks core_clk] -digits 3\n"
     "report_checks -group_count 5 -format full_clock_expanded > timing.rpt\nreport_tns -digits 4\n"
     "report_pulse_width_checks > pulse.rpt\n", "opensta"),
    # OpenROAD: documented options, abbreviations as parse_key_args takes them (-verb).
    ("global_placement -density 0.65 -timing_driven\ndetailed_placement -max_displacement {500 100}\n"
     "check_placement -verb\nset_routing_layers -signal metal2-metal6\nglobal_route -congestion_iterations 50\n",
     "openroad"),
    # A submodule linked as the top: its own ports are the objects.
    ("link_design cf_alu\nset_load 0.01 [get_ports {y[*] zero}]\n", "opensta"),
])
def test_correct_tool_scripts_are_accepted(v: Validator, script: str, tool: str) -> None:
    assert v.check_tcl(script, tool) is None, v.detail


@TOOLS
def test_placeholder_runs_are_not_judged(v: Validator) -> None:
    """Procedures are probed with placeholder arguments and empty loops run once with "":
    neither may turn a correct script into a rejection."""
    script = ("create_clock -period 10 [get_ports clk]\n"
              "proc constrain_input {port delay} { set_input_delay $delay -clock clk [get_ports $port] }\n"
              "foreach p {} { set_load 0.1 [get_ports $p] }\n")
    assert v.check_tcl(script, "sdc") is None, v.detail
    # ... but a call with real arguments is judged.
    assert v.check_tcl(script + "constrain_input data_in 1.0\n", "sdc") == "tcl/no_such_port"


# ------------------------------------------------------------------ rejections, with reasons

REJECT = [
    # (script, reason, words the detail must name)
    ("create_clock -name clk -period 10 -frequency 100 [get_ports clk]\n", "tcl/unknown_option",
     ["-frequency", "create_clock"]),
    ("create_clock -name clk -period 10 [get_ports clock]\n", "tcl/no_such_port", ["clock", "clk"]),
    ("create_clock -name clk -period 10 [get_ports clk]\nset_output_delay 1 -clock clk [get_ports result_valid]\n",
     "tcl/no_such_port", ["result_valid"]),
    ("create_clock -name core -period 10 [get_ports clk]\nset_input_delay 2 -clock sys_clk [all_inputs]\n",
     "tcl/no_such_clock", ["sys_clk", "core"]),
    ("create_clock -name core -period 10 [get_ports clk]\nset_clock_uncertainty 0.1 [get_clocks clk_fast]\n",
     "tcl/no_such_clock", ["clk_fast"]),
    ("set_input_delay 2 -clock clk [get_ports en]\ncreate_clock -name clk -period 10 [get_ports clk]\n",
     "tcl/no_such_clock", ["clk"]),  # used before it is created
    ("create_clock -name clk -period 10 [get_ports clk]\nset_input_delay -1.5 -clock clk [get_ports en]\n",
     "tcl/negative_value", ["-1.5"]),
    ("create_clock -name clk -period 10 [get_ports clk]\nset_max_delay -2 -from [get_ports b] -to [get_ports zero]\n",
     "tcl/negative_value", ["-2"]),
    ("create_clock -name clk -period 10 [get_ports clk]\nset_load -0.05 [all_outputs]\n", "tcl/negative_value",
     ["-0.05"]),
    ("create_clock -name clk -period 10 [get_ports clk]\nset_clock_uncertainty -0.1 [get_clocks clk]\n",
     "tcl/negative_value", ["-0.1"]),
    ("create_clock -name clk -period 0 [get_ports clk]\n", "tcl/nonpositive_value", ["-period", "0"]),
    ("create_clock -name clk -period -5 [get_ports clk]\n", "tcl/nonpositive_value", ["-5"]),
    ("create_clock -name clk -period fast [get_ports clk]\n", "tcl/bad_value", ["fast"]),
    ("create_clock -name clk [get_ports clk] -period\n", "tcl/missing_value", ["-period"]),
    ("create_clock -name clk [get_ports clk]\n", "tcl/missing_option", ["-period"]),
    ("create_clock -name clk -period 10 -waveform {5 1} [get_ports clk]\n", "tcl/bad_value", ["5 1"]),
    ("create_clock -name clk -period 10 [get_ports clk]\nset_false_path -hold\n", "tcl/missing_option", ["-from"]),
    ("create_clock -name clk -period 10 [get_ports clk]\nset_multicycle_path 0 -to [get_ports zero]\n",
     "tcl/nonpositive_value", ["at least 1"]),
    ("create_clock -name clk -period 10 [get_ports clk]\nset_input_delay 12 -clock clk [get_ports en]\n",
     "tcl/delay_exceeds_period", ["12", "10"]),
    ("create_clock -name clk -period 2 [get_ports clk]\nset_clock_uncertainty 2.5 [get_clocks clk]\n",
     "tcl/delay_exceeds_period", ["2.5", "period 2"]),
    ("create_clock -name clk -period 10 [get_ports clk]\nset_output_delay 1 -clock clk [get_ports {b[*]}]\n",
     "tcl/wrong_direction", ["b[", "input"]),
    ("create_clock -name clk -period 10 [get_ports clk]\nset_false_path -to [get_cells u_multiplier]\n",
     "tcl/no_such_cell", ["u_multiplier", "u_alu"]),
    ("create_clock -name clk -period 10 [get_ports clk]\nset_false_path -through [get_pins u_alu/carry]\n",
     "tcl/no_such_pin", ["u_alu/carry"]),
    ("set_load 0.1 [get_nets sum_q]\n", "tcl/no_such_net", ["sum_q"]),
    ("set_load 0.1 result_q\n", "tcl/no_such_object", ["result_q"]),  # a name without a query
    ("set_case_analysis 2 [get_ports {op[0]}]\n", "tcl/bad_value", ["2"]),
    ("create_clock -name clk -period 10 [get_ports clk] [get_ports en]\n", "tcl/extra_argument", ["en"]),
    ("set_load 0.05\n", "tcl/missing_argument", ["objects"]),
    ("set_load [all_outputs]\n", "tcl/bad_value", ["not a number"]),
]


@TOOLS
@pytest.mark.parametrize(("script", "reason", "words"), REJECT, ids=[f"{r[1][4:]}-{k}" for k, r in enumerate(REJECT)])
def test_wrong_sdc_is_rejected_with_a_clear_reason(v: Validator, script: str, reason: str, words: list[str]) -> None:
    assert v.check_tcl(script, "sdc") == reason, v.detail
    for word in words:
        assert word in v.detail, (word, v.detail)


@TOOLS
@pytest.mark.parametrize(("script", "tool", "reason"), [
    ("global_placement -densty 0.6\n", "openroad", "tcl/unknown_option"),
    ("global_placement -density\n", "openroad", "tcl/missing_value"),
    ("global_placement -bin_grid_count -4\n", "openroad", "tcl/nonpositive_value"),
    ("report_checks -path_delay maximum\n", "opensta", "tcl/bad_value"),
    ("report_checks -digits two\n", "opensta", "tcl/bad_value"),
    ("report_checks -to [get_ports dout]\n", "opensta", "tcl/no_such_port"),
    ("link_design cf_nope\n", "opensta", "tcl/no_such_design"),
    ("link_design cf_alu\nset_load 0.01 [get_ports result]\n", "opensta", "tcl/no_such_port"),  # cf_top's port
    ("repair_timing -hold -hold_margin 0.05 -fix_hold\n", "openroad", "tcl/unknown_option"),
])
def test_wrong_tool_scripts_are_rejected(v: Validator, script: str, tool: str, reason: str) -> None:
    assert v.check_tcl(script, tool) == reason, v.detail


@TOOLS
def test_safety_reasons_come_before_semantic_ones(v: Validator) -> None:
    script = 'create_clock -frequency 1 [get_ports nope]\neval [string reverse "di cexe"]\n'
    assert v.check_tcl(script, "sdc") == "tcl/unsafe_command", v.detail


def test_checker_events_decide_in_order() -> None:
    bad = "BAD {unknown_option create_clock -freq: not a documented option}\nDONE 1\n"
    assert tcl_checker_problem(bad, "sdc") == validate.Rejection(
        "tcl/unknown_option", "create_clock -freq: not a documented option")
    assert tcl_checker_problem("BAD {made_up something}\nDONE 1\n", "sdc").reason == "tcl/semantic"
    assert tcl_checker_problem("BAD {no_such_port x}\nDENY exec\nDONE 1\n", "sdc").reason == "tcl/unsafe_command"
    assert tcl_checker_problem("DONE 3\n", "sdc") is None


# ------------------------------------------------------------------ the shipped table

def test_shipped_table_is_consistent() -> None:
    table = signatures.shipped()
    cmds = table["commands"]
    allowed, _ = command_lists(source="fallback")
    for name in allowed["sdc"]:
        assert name in cmds, f"SDC command {name} has no documented signature"
    for name, sig in cmds.items():
        for vtype in [*sig["options"].values(), *(a[1] for a in sig["args"])]:
            assert vtype in TYPES or vtype.startswith(signatures.ENUM_PREFIX), (name, vtype)
        assert set(sig["required"]) <= set(sig["options"]), name
        # Each entry is what its synopsis says: mining the synopsis finds no option it lacks.
        parsed = parse_synopsis(sig["synopsis"], require_brackets=False)
        if parsed is not None:
            assert parsed[0] == name
            assert set(parsed[1]["options"]) <= set(sig["options"]), name
    assert cmds["create_clock"]["options"]["-period"] == "positive"
    assert cmds["create_clock"]["required"] == ["-period"] and cmds["create_clock"]["strict"]
    assert cmds["set_input_delay"]["options"]["-clock"] == "clocks"


# ------------------------------------------------------------------ the miner

DOC_PAGE = """\
# Clock gating checks (documentation written for this test)

The ``gate_check_report`` command reports the gating checks of the design.

```tcl
gate_check_report [-clock clock] [-slack_max slack]
                  [-digits digits]
                  [-format full|summary]
                  [> filename]
```

Give ``-verbose`` for every gated register:

```tcl
set_gate_margin [-setup|-hold] \\
    [-clocks clocks] margin [objects]
```

Examples (these are not synopses: values, substitutions and variables):

```tcl
gate_check_report -clock core_clk -digits 3
set_gate_margin -setup 0.2 [get_cells u_gate]
set_gate_margin -hold $m [all_registers]
report_gates [all_registers]
```
"""


def test_miner_reads_synopses_and_skips_examples() -> None:
    types = {"clock": "clocks", "slack": "number", "digits": "nonneg_int", "margin": "number"}
    found = mine_signatures([{"tool": "opensta", "text": DOC_PAGE}], types, commands={"all_registers"})
    assert set(found) == {"gate_check_report", "set_gate_margin"}
    report = found["gate_check_report"]
    assert report["options"] == {"-clock": "clocks", "-slack_max": "number", "-digits": "nonneg_int",
                                 "-format": "string"}
    assert report["args"] == [] and report["required"] == [] and not report["strict"]
    margin = found["set_gate_margin"]
    assert margin["options"] == {"-setup": "flag", "-hold": "flag", "-clocks": "string"}
    assert margin["args"] == [["margin", "number", False], ["objects", "string", True]]
    assert margin["required"] == []


@pytest.mark.parametrize("line", [
    "create_clock -name clk -period 10 [get_ports clk]",
    "set_load 0.02 [all_outputs]",
    "set_driving_cell -lib_cell BUF_X2 [all_inputs]",
    "report_checks -through $pin [-digits digits]",
    "report_checks -from a; report_checks [-digits digits]",
    "global_route",
])
def test_usage_examples_are_not_synopses(line: str) -> None:
    assert parse_synopsis(line, commands={"all_outputs", "all_inputs"}) is None


def test_synopsis_forms() -> None:
    name, sig = parse_synopsis(
        "set_clock_uncertainty [-from|-rise_from from_clock] [-setup] uncertainty [objects]",
        {"from_clock": "clocks", "uncertainty": "nonneg"})
    assert name == "set_clock_uncertainty"
    assert sig["options"] == {"-from": "clocks", "-rise_from": "clocks", "-setup": "flag"}
    assert sig["args"] == [["uncertainty", "nonneg", False], ["objects", "string", True]]
    _, sig = parse_synopsis("set_placement_padding -global|-masters masters [-right site_count] [instances]")
    assert sig["options"]["-global"] == "flag" and sig["options"]["-masters"] == "string"
    assert sig["required"] == ["-global", "-masters"]
    _, sig = parse_synopsis("set_case_analysis 0|1|zero|one pins [-quiet]")
    assert [a[0] for a in sig["args"]] == ["0", "pins"]
    cands = synopsis_candidates("x\n  report_x [-a]\n      [-b b]\nother words\n  pdngen\n    [-skip_trim]\n")
    assert cands == ["x", "report_x [-a] [-b b]", "pdngen [-skip_trim]"]
    assert [parse_synopsis(c) is None for c in cands] == [True, False, False]


def test_signature_table_extends_the_shipped_one_from_docs() -> None:
    rows = [{"tool": "opensta", "text": DOC_PAGE},
            {"tool": "openroad", "text": "```\nglobal_placement [-skip_io] [-new_knob value]\n```"},
            {"tool": "yosys", "text": "```\nyosys_only_cmd [-x x]\n```"}]
    table = signature_table(rows)
    assert "gate_check_report" in table and "yosys_only_cmd" not in table
    assert table["global_placement"]["options"]["-new_knob"] == "string"
    assert table["global_placement"]["options"]["-density"] == "string"  # shipped options stay
    assert table["create_clock"]["strict"]
    assert "gate_check_report" not in signature_table(rows, "fallback")


@TOOLS
def test_mined_signatures_reach_the_checker() -> None:
    rows = [{"tool": "openroad", "text": "```tcl\ngate_check_report -digits 3\n```\n\n```\n"
                                          "gate_check_report [-clock clock] [-digits digits]\n```"}]
    allowed, _ = command_lists(rows, "auto")
    vv = Validator(Settings(allowed_commands={k: sorted(s) for k, s in allowed.items()},
                            signatures=signature_table(rows)))
    assert vv.check_tcl("gate_check_report -digits 3\n", "openroad") is None, vv.detail
    assert vv.check_tcl("gate_check_report -digits 3 -verbose\n", "openroad") == "tcl/unknown_option"
    assert "-verbose" in vv.detail


# ------------------------------------------------------------------ the design, read by Yosys

@TOOLS
def test_design_objects_are_read_by_yosys(v: Validator) -> None:
    files = {name: (validate.ASSETS / "design" / name).read_text() for name in validate.DESIGN_FILES}
    objs = signatures.design_objects(files, validate.DESIGN_TOP)
    top = objs["modules"]["cf_top"]
    assert {p: d for p, d in top["ports"].items() if "[" not in p} == {
        "clk": "in", "rst_n": "in", "en": "in", "b": "in", "op": "in", "result": "out", "zero": "out", "wrap": "out"}
    assert "b[7]" in top["ports"] and "b[8]" not in top["ports"]
    assert {"u_alu", "u_counter"} <= set(top["cells"])
    assert {"result_reg[7]", "u_counter/count_reg[0]"} <= set(top["registers"])
    assert {"u_alu/a[0]", "u_counter/clk"} <= set(top["pins"]) and "u_alu/clk" not in top["pins"]
    assert {"count", "u_alu/y"} <= set(top["nets"])
    assert set(objs["modules"]) == {"cf_top", "cf_alu", "cf_counter"}
    assert objs["modules"]["cf_alu"]["registers"] == []


def test_design_from_json_keeps_public_names_only() -> None:
    data = {"modules": {"m": {"ports": {"a": {"direction": "input", "bits": [2, 3]}},
                              "cells": {"$and$x.v:1$1": {"type": "$and", "connections": {}},
                                        "$procdff$9": {"type": "$dff", "connections": {"Q": [5]}}},
                              "netnames": {"q": {"hide_name": 0, "bits": [5]}, "$auto$1": {"hide_name": 1,
                                                                                            "bits": [7]}}}}}
    m = design_from_json(data)["m"]
    assert m["ports"] == {"a": "in", "a[0]": "in", "a[1]": "in"}
    assert m["cells"] == [] and m["registers"] == ["q", "q_reg"] and m["nets"] == ["q"]


@pytest.mark.tools("tclsh")
def test_tcl_values_survive_any_text(tmp_path) -> None:
    """Names from crawled docs are data: whatever they hold, the checker reads them back as written."""
    weird = ["a b", "{", "}x", "[exec id]", "$env", "back\\slash", 'q"uote', "semi;colon", "new\nline", ""]
    (tmp_path / "d.txt").write_text(tcl_value({"names": weird, "k": {"x": weird[:3]}}))
    script = ("set f [open d.txt]; set d [read $f]; close $f\n"
              "foreach n [dict get $d names] { puts [string map {\\n <NL>} $n] }\n")
    out = subprocess.run(["tclsh"], input=script, capture_output=True, text=True, cwd=tmp_path, timeout=10)
    assert out.stdout.split("\n")[:-1] == [w.replace("\n", "<NL>") for w in weird], out.stderr
