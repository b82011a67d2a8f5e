"""Issue 8: the static checks on model-written answers (Yosys, Verilog, Tcl/SDC, JSON).

Every case here was an attack that passed the old checks (or crashed the run). Static
checks are asserted on their own (fast path, no tools) and, where a tool is involved,
through the full validator with the real tool in the sandbox.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import pytest

from synthesis import sandbox, validate
from synthesis.parsing import MAX_JSON_DEPTH, ParseError, parse_answer
from synthesis.validate import (TCL_COVERED, TCL_PURE, Rejection, Settings, TclSyntaxError, TclTooDeep,
                                ValidateStage, Validator, tcl_command_names, tool_detail, validate_row, verilog_problem,
                                vvp_problem, yosys_commands, yosys_problem)
from tests.synthesis.test_validate import RegexParser, make_parser

pytestmark = pytest.mark.tools("iverilog", "vvp", "yosys", "tclsh", "bwrap")

READ = "read_verilog cf_counter.v cf_alu.v cf_top.v\n"


@pytest.fixture(scope="module")
def v() -> Validator:
    return Validator(Settings(timeout_s=20, sim_timeout_s=3), parser=make_parser())


@pytest.fixture()
def outside(tmp_path_factory: pytest.TempPathFactory):
    """A secret file outside any sandbox and a path nothing may create."""
    secret = f"CF-SECRET-{uuid.uuid4().hex}"
    d = tmp_path_factory.mktemp("outside")
    f = d / "secret.txt"
    f.write_text(secret + "\n")
    f.chmod(0o644)
    forbidden = Path(f"/tmp/chipforge_canary_{os.getpid()}_{uuid.uuid4().hex[:6]}")
    yield {"secret": secret, "file": str(f), "forbidden": str(forbidden)}
    assert f.read_text() == secret + "\n"
    assert not forbidden.exists(), f"{forbidden} was created"


def rows(template: str, answer: str, testbench: str | None = None) -> dict:
    reply = {"instruction": "Do it.", "answer": answer}
    if testbench:
        reply["testbench"] = testbench
    return {"prompt_id": "p", "round": 0, "phase": template.split("/")[0], "task": template.split("/")[1].split("@")[0],
            "template_id": template, "seed_json": "{}", "generated_text": json.dumps(reply),
            "prompt_tokens": 1, "completion_tokens": 1}


# ============================================================================ Yosys (1)

@pytest.mark.parametrize(
    ("script", "reason"),
    [
        # '#' is a comment only at the start of a word: `a#;` ends the command, exec runs.
        (READ + "log a#; exec -- sh -c 'id > /tmp/x'\n", "yosys/shell_escape"),
        (READ + "tee -q exec -- id\n", "yosys/shell_escape"),
        (READ + "debug exec -- id\n", "yosys/shell_escape"),
        (READ + "trace exec -- id\n", "yosys/shell_escape"),
        (READ + "tee -q -o x.log debug trace exec -- id\n", "yosys/shell_escape"),
        (READ + 'tee -q "exec" -- id\n', "yosys/shell_escape"),
        (READ + "equiv_opt -assert !id\n", "yosys/shell_escape"),
        (READ + "lbl: !id\n", "yosys/shell_escape"),
        (READ + "begin: exec -- id\n", "yosys/shell_escape"),
        (READ + "log a \\\nb; exec -- id\n", "yosys/shell_escape"),  # continuation line
        (READ + "log a # x\rexec -- id\n", "yosys/shell_escape"),  # \r ends a command inside a line
        (READ + "show -format 'ps;id'\n", "yosys/shell_metachar"),
        (READ + "show -format ps -prefix x\n", "yosys/forbidden_command"),
        (READ + "show\n", "yosys/forbidden_command"),
        (READ + "show -viewer xdot\n", "yosys/forbidden_command"),
        (READ + "script other.ys\n", "yosys/forbidden_command"),
        (READ + "tcl x.tcl\n", "yosys/forbidden_command"),
        (READ + "python x.py\n", "yosys/forbidden_command"),
        (READ + "plugin -i x.so\n", "yosys/forbidden_command"),
        (READ + "bugpoint -script x.ys\n", "yosys/forbidden_command"),
        (READ + "connect_rpc -exec id\n", "yosys/forbidden_command"),
        (READ + "write_file x.v module m; endmodule\n", "yosys/forbidden_command"),
        (READ + "tee -q -o x.v log module m;\n", "yosys/forbidden_command"),
        (READ + "synth -top cf_top\nabc -exe ./abc\n", "yosys/forbidden_command"),
        (READ + "synth -top cf_top\nabc -script x.abc\n", "yosys/forbidden_command"),
        (READ + "synth -top cf_top\nabc9 -script +strash;write_blif,x.blif\n", "yosys/shell_metachar"),
        ("read -incdir /etc\n" + READ, "yosys/path_outside_cwd"),
        ("read_verilog -I/etc cf_top.v\n", "yosys/path_outside_cwd"),
        ("verilog_defaults -add -I../x\n" + READ, "yosys/path_outside_cwd"),
        (READ + "write_verilog /tmp/x.v\n", "yosys/path_outside_cwd"),
        (READ + 'write_verilog "/tmp/x y.v"\n', "yosys/path_outside_cwd"),
        (READ + "tee -o /tmp/log stat\n", "yosys/path_outside_cwd"),
        (READ + "write_json +/../../x.json\n", "yosys/path_outside_cwd"),
        (READ + "write_verilog $(id).v\n", "yosys/shell_metachar"),
        (READ + "write_verilog `id`.v\n", "yosys/shell_metachar"),
        ("read_verilog <<EOT\nmodule m; endmodule\nEOT\n" + READ, "yosys/heredoc"),
        (READ + "sim -r x.vcd\n", "yosys/forbidden_command"),
        (READ + "scratchpad -set abc.exe sh\nsynth -top cf_top\n", "yosys/forbidden_command"),
        (READ + "tee -q -s abc.script log +source,x\nsynth -top cf_top\n", "yosys/forbidden_command"),
        (READ + "log a\x00exec -- id\n", "yosys/control_char"),
    ],
)
def test_yosys_escapes_are_rejected_statically(v: Validator, script: str, reason: str) -> None:
    assert v.yosys_static(script) == reason, v.detail
    assert v.detail and len(v.detail) <= validate.DETAIL_CHARS


def test_yosys_script_that_ran_a_shell_is_rejected_and_runs_nothing(v: Validator, outside) -> None:
    script = READ + f"log a#; exec -- sh -c 'touch {outside['forbidden']}'\nstat\n"
    assert v.check_yosys(script) == "yosys/shell_escape"
    for wrapper in ("tee -q", "debug", "trace", "tee -q debug"):
        assert v.check_yosys(READ + f"{wrapper} exec -- touch {outside['forbidden']}\n") == "yosys/shell_escape"


def test_legitimate_yosys_scripts_still_pass(v: Validator) -> None:
    ok = [
        READ + "synth -top cf_top\nopt_clean -purge; stat\nwrite_verilog -noattr out.v # comment; exec -- id\n",
        READ + "hierarchy -top cf_top\nproc; opt;; memory\ntechmap -map +/techmap.v\nstat\n",
        READ + "synth -top cf_top\nshow -format dot -prefix graph\ntee -q -o report.txt stat\n",
        READ + "select -module cf_top t:$add %ci\nselect -clear\nlog \"done: all good\"\n",
    ]
    for script in ok:
        assert yosys_problem(script) is None, script
    assert v.check_yosys(ok[0]) is None, v.detail
    assert v.check_yosys(ok[2]) is None, v.detail


def test_yosys_command_split_matches_yosys_itself() -> None:
    """``yosys_commands`` splits a tricky script exactly as yosys 0.2x does (``echo on``)."""
    script = ('log a#; log b\nlog "x y"; log c;d\nlbl: log e \\\n f # g; log h\nlog i\rlog j\n'
              'log "k;" l "m"; log n\n   # comment; log o\n:log p\nlog q;; log r\nlog "s t";\nlog u"v w"\n')
    r = sandbox.run(["yosys", "-s", "s.ys"], {"s.ys": "echo on\n" + script}, limits=sandbox.Limits(timeout_s=30))
    assert r.ok, r.output[-500:]
    echoed = [m.group(1) for m in re.finditer(r"^yosys(?: \[[^\]]*\])?> (.*)$", r.stdout, re.M)]
    ours = [" ".join(c.words) for c in yosys_commands(script)]
    assert ours == echoed


def test_yosys_failure_detail_never_carries_outside_content(v: Validator, outside) -> None:
    # The old leak: `exec -- head -3 /etc/passwd 1>&2` put the file's lines into report.json.
    assert v.check_yosys(READ + f"exec -- head -3 {outside['file']} 1>&2\n") == "yosys/shell_escape"
    assert outside["secret"] not in v.detail
    # A failing script's detail keeps only lines about the answer's own files / ERROR lines, capped.
    assert v.check_yosys(READ + "synth -top cf_missing\n") == "yosys/error"
    assert "cf_missing" in v.detail and len(v.detail) <= validate.DETAIL_CHARS
    out = f"root:x:0:0:{outside['secret']}\nscript.ys:3: ERROR: oops\nnoise\n"
    detail = tool_detail(out, ["script.ys"], "yosys exit 1")
    assert outside["secret"] not in detail and "script.ys:3" in detail
    assert tool_detail("x" * 5000, ["x"], "s").__len__() <= validate.DETAIL_CHARS


# ========================================================================== Verilog (5)

MOD = "module cf_b;\n  integer f; reg [7:0] m [0:3];\n  initial begin\n    {}\n  end\nendmodule\n"


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (MOD.replace("{}", 'f = $fopenw("/tmp/x");'), "verilog/unsafe_file_io"),
        (MOD.replace("{}", 'f = $fopenr("/etc/passwd");'), "verilog/unsafe_file_io"),
        (MOD.replace("{}", 'f = $fopen/**/("/tmp/x", "w");'), "verilog/unsafe_file_io"),
        (MOD.replace("{}", 'f = $fopen // c\n ("/tmp/x", "w");'), "verilog/unsafe_file_io"),
        (MOD.replace("{}", '$dumpfile/**/("/tmp/x.vcd");'), "verilog/unsafe_file_io"),
        (MOD.replace("{}", '$dumpfile("wave.vcd");'), "verilog/unsafe_file_io"),
        (MOD.replace("{}", '$readmemb("m.bin", m);'), "verilog/unsafe_file_io"),
        (MOD.replace("{}", '$writememh("m.hex", m);'), "verilog/unsafe_file_io"),
        (MOD.replace("{}", 'f = $fgets(m[0], 32\'h8000_0000);'), "verilog/unsafe_file_io"),
        (MOD.replace("{}", 'f = $fscanf(32\'h8000_0000, "%d", f);'), "verilog/unsafe_file_io"),
        ("`define F(x) $f``x\n" + MOD.replace("{}", 'f = `F(open)("/tmp/x", "w");'), "verilog/unsafe_file_io"),
        # token pasting that leaves no `$name` in the raw text: only the expansion shows $fopen
        ("`define D(x) $``x\n" + MOD.replace("{}", 'f = `D(fopen)("/tmp/x", "w");'), "verilog/unsafe_file_io"),
        ("`define S $sys``tem\n" + MOD.replace("{}", '`S("id");'), "verilog/unknown_system_task"),
        (MOD.replace("{}", '$system("id");'), "verilog/unsafe_system_task"),
        # escaped identifiers may hold quotes and //: `\\q"` is a name, not the start of a string
        (MOD.replace("{}", 'f = \\q" ; f = $fopen("/tmp/x", "w"); f = \\r" ;'), "verilog/unsafe_file_io"),
        (MOD.replace("{}", 'f = \\q// ; f = $fopen("/tmp/x", "w");'), "verilog/unsafe_file_io"),
        # iverilog compiles an escaped name that starts with $ as that system task
        (MOD.replace("{}", 'f = \\$fopen ("/tmp/x", "w");'), "verilog/unsafe_file_io"),
        (MOD.replace("{}", '\\$system ("id");'), "verilog/unsafe_system_task"),
        # iverilog ends an escaped name at a backspace too
        (MOD.replace("{}", 'f = \\q\b;f=$fopen("/tmp/x", "w");'), "verilog/unsafe_file_io"),
        (MOD.replace("{}", '$my_vpi_task(1);'), "verilog/unknown_system_task"),
        ('`include "/etc/passwd"\n' + MOD.replace("{}", ""), "verilog/unsafe_include"),
        ('`include "../x.v"\n' + MOD.replace("{}", ""), "verilog/unsafe_include"),
        ('`define P "/etc/passwd"\n`include `P\n' + MOD.replace("{}", ""), "verilog/unsafe_include"),
        ("`include <stdio.h>\n" + MOD.replace("{}", ""), "verilog/unsafe_include"),
        (MOD.replace("{}", "`UNDEFINED_THING;"), "verilog/undefined_macro"),
        ("`define A `A\n" + MOD.replace("{}", "`A;"), "verilog/preprocess"),
        ('import "DPI-C" function int system(string s);\n' + MOD.replace("{}", ""), "verilog/dpi"),
    ],
)
def test_verilog_file_io_and_system_tasks_after_preprocessing(code: str, reason: str) -> None:
    problem = verilog_problem(code)
    assert problem is not None and problem.reason == reason, problem
    assert len(problem.detail) <= validate.DETAIL_CHARS


def test_verilog_allowed_tasks_and_strings_pass() -> None:
    code = MOD.replace("{}", '$display("$fopen in a string, %0d %t", $clog2(8), $time); $dumpvars(0, cf_b); '
                             '$fdisplay(32\'h8000_0001, "to stdout"); if ($test$plusargs("v")) $finish;')
    assert verilog_problem(code) is None


def test_fopenr_content_never_reaches_the_report(v: Validator, outside) -> None:
    code = "module cf_q(input a, output y); assign y = a; endmodule\n"
    tb = ("module tb; integer f, r; reg [8*64:1] line; initial begin "
          f'f = $fopenr("{outside["file"]}"); r = $fgets(line, f); $display("%s", line); '
          '$display("TEST PASSED"); $finish; end endmodule\n')
    assert v.check_verilog(code, tb) == "verilog/unsafe_file_io"
    assert outside["secret"] not in v.detail


def test_compiled_image_is_checked_for_system_calls() -> None:
    """What vvp will run (``%vpi_call`` names in the image) is checked, not only the source."""
    src = "`define D(x) $``x\nmodule tb; integer f; initial begin f = `D(fopen)(\"x\", \"w\"); $finish; end endmodule\n"
    r = sandbox.run(["iverilog", "-g2012", "-o", "sim.vvp", "tb.v"], {"tb.v": src}, collect=["sim.vvp"])
    assert r.ok, r.output
    problem = vvp_problem(r.files["sim.vvp"].decode())
    assert problem == Rejection("verilog/unsafe_file_io", "$fopen reads or writes files (in the compiled simulation)")
    ok = sandbox.run(["iverilog", "-g2012", "-o", "sim.vvp", "tb.sv"],
                     {"tb.sv": 'module tb; string s = "ab"; initial begin $display("%0d", s.len()); $finish; end '
                               "endmodule\n"}, collect=["sim.vvp"])
    assert ok.ok and vvp_problem(ok.files["sim.vvp"].decode()) is None  # $ivl_string_method$len is fine


# ======================================================================== recursion (8)

def test_json_nested_1000_deep_is_a_rejection_not_a_crash() -> None:
    deep = '{"instruction": "q", "answer": ' + "[" * 1000 + "]" * 1000 + "}"
    with pytest.raises(ParseError) as err:
        parse_answer(deep)
    assert err.value.reason == "too_deep"
    ok_depth = '{"instruction": "q", "answer": "```sdc\\ncreate_clock\\n```", "testbench": null}'
    assert parse_answer(ok_depth).instruction == "q"
    assert MAX_JSON_DEPTH >= 2
    row = rows("synthesis/yosys_script_topic@v1", "x")
    row["generated_text"] = deep
    out = validate_row(row, Validator(parser=RegexParser()))
    assert out["reason"] == "malformed/too_deep"


def test_400_nested_brackets_in_sdc_is_a_rejection(v: Validator) -> None:
    script = "create_clock -period 10 " + "[" * 400 + "get_ports clk" + "]" * 400 + "\n"
    with pytest.raises(TclTooDeep):
        tcl_command_names(script)
    assert issubclass(TclTooDeep, TclSyntaxError)
    assert v.check_tcl(script, "sdc") == "tcl/too_deep"
    out = validate_row(rows("timing_analysis/sdc_constraints_topic@v1", f"```sdc\n{script}```"), v)
    assert out["reason"] == "tcl/too_deep"
    # Deep braces and quotes too, and scanning work stays bounded (no exponential re-reads).
    assert v.check_tcl("if 1 " + "{if 1 " * 300 + "{}" + "}" * 300 + "\n", "sdc") == "tcl/too_deep"
    assert v.tcl_static("eval " + '"[eval ' * 40 + '"' + ']"' * 40 + "\n", "sdc") in {"tcl/too_deep", "tcl/syntax"}


def test_an_unexpected_exception_is_one_rejection(monkeypatch) -> None:
    validator = Validator(parser=RegexParser())

    def boom(*_a, **_k):
        raise RecursionError("maximum recursion depth exceeded " + "x" * 1000)

    monkeypatch.setattr(validator, "check", boom)
    good = rows("synthesis/yosys_script_topic@v1", f"```yosys\n{READ}stat\n```")
    out = validate_row(good, validator)
    assert out["reason"] == "internal/RecursionError" and len(out["detail"]) <= 200
    stage = ValidateStage(parser=RegexParser(), load_parser=False)
    monkeypatch.setattr(stage.validator, "check", boom)
    bad = {**good, "prompt_id": "q", "generated_text": 42}
    table = stage({k: [good[k], bad[k]] for k in good})  # a dict batch may hold anything
    assert [r["reason"] for r in table.to_pylist()] == ["internal/RecursionError", "malformed/not_text"]


# ================================================================================ Tcl (9)

EXEC_FORMS = {
    "eval": "eval exec id\n",
    "apply": "apply {{} {exec id}}\n",
    "lsort_command": "lsort -command {exec} {b a}\n",
    "if_bare_body": "if 1 exec\\ id\n",
    "interp": "interp alias {} x {} exec\nx id\n",
    "uplevel": "uplevel #0 {exec id}\n",
    "namespace": "namespace eval ::x {exec id}\n",
    "after": "after 0 {exec id}\n",
    "trace": "trace add variable x write {exec id}\nset x 1\n",
    "subst": "subst {[exec id]}\n",
    "expand": "{*}{exec id}\n",
    "list_subst": "[list exec] id\n",
    "var_command": "set c exec; $c id\n",
    "rename": "rename exec foo\n",
    "proc": "proc p {} {exec id}\n",
    "open_pipe": 'open "|id"\n',
    "source": "source /etc/passwd\n",
    "load": "load x.so\n",
    "socket": "socket localhost 80\n",
    "file_delete": "file delete x\n",
    "cd": "cd /\n",
    "glob": "glob *\n",
    "backslash_name": "\\x65xec id\n",
}
# Forms no static scan can see: only running the script in the safe interpreter does.
RUNTIME_FORMS = {
    "computed": 'eval [string reverse "di cexe"]\n',
    "false_branch": 'if {[llength [get_ports clk]] == 99} { eval [string reverse "di cexe"] }\n',
    "after_an_error": 'lindex\neval [string reverse "di cexe"]\n',
    "in_catch": 'catch {lindex; eval [string reverse "di cexe"]}\n',
    "uncalled_proc": 'proc p {a} { lindex; eval [string reverse "di cexe"] }\n',
    "while_false": 'while 0 { eval [string reverse "di cexe"] }\n',
    "switch_arm": 'switch x { y { eval [string reverse "di cexe"] } }\n',
    "try_handler": 'try { set x 1 } on error {m} { eval [string reverse "di cexe"] }\n',
    "foreach_empty": 'foreach p {} { eval [string reverse "di cexe"] }\n',
    "lmap_empty": 'lmap p {} { eval [string reverse "di cexe"] }\n',
    "dict_for_empty": 'dict for {k v} {} { eval [string reverse "di cexe"] }\n',
    "dict_with": 'set d {}; dict with d { eval [string reverse "di cexe"] }\n',
    "lsort_one_element": "lsort -command [string reverse cexe] {a}\n",
    "short_circuit": 'set x [expr {0 && [eval [string reverse "di cexe"]]}]\n',
    "if_short_circuit": 'if {1 || [eval [string reverse "di cexe"]]} { set y 1 }\n',
    "ternary": 'set x [expr {1 ? 2 : [eval [string reverse "di cexe"]]}]\n',
    "apply_after_error": 'apply {{} {lindex; eval [string reverse "di cexe"]}}\n',
    "subst_after_error": 'subst {[lindex] [eval [string reverse "di cexe"]]}\n',
    "proc_named_exec": 'if 0 { proc [string reverse cexe] args {} }\neval [string reverse "di cexe"]\n',
    "proc_shadows_if": 'proc if {args} {}\nif 1 { eval [string reverse "di cexe"] }\n',
    "apply_namespace": 'apply {{} { eval [string reverse "di cexe"] } ::tcl}\n',
    "qualified_proc": 'proc ::tcl::mathfunc::f {} { eval [string reverse "di cexe"] }\n',
    "lsort_dynamic": 'lsort -command [string reverse cexe] {b a}\n',
}


@pytest.mark.parametrize("script", list(EXEC_FORMS.values()), ids=list(EXEC_FORMS))
def test_tcl_exec_forms_are_rejected_by_both_checks(v: Validator, script: str) -> None:
    assert v.tcl_static(script, "openroad") in {"tcl/unsafe_command", "tcl/dynamic_command"}, v.detail
    assert v.tcl_dynamic(script, "openroad") in {"tcl/unsafe_command", "tcl/redefines_command"}, v.detail
    assert v.check_tcl(script, "openroad") is not None


@pytest.mark.parametrize("script", list(RUNTIME_FORMS.values()), ids=list(RUNTIME_FORMS))
def test_tcl_runtime_forms_are_caught_by_the_safe_interpreter(v: Validator, script: str) -> None:
    reason = v.check_tcl(script, "opensta")
    assert reason in {"tcl/unsafe_command", "tcl/redefines_command"}, (reason, v.detail)
    assert "exec" in v.detail or "redefines" in v.detail or "escapes" in v.detail


def test_tcl_safe_interpreter_names_the_command_and_passes_good_scripts(v: Validator) -> None:
    assert v.tcl_dynamic('eval [string reverse "di cexe"]\n', "sdc") == "tcl/unsafe_command"
    assert "exec" in v.detail
    assert v.tcl_dynamic("report_checks\n", "sdc") == "tcl/unknown_command" and "report_checks" in v.detail
    good = ("create_clock -name clk -period 10 [get_ports clk]\n"
            "foreach p [all_outputs] { set_load 0.1 $p }\n"
            "if {[llength [get_cells *]] > 0} { puts \"cells: [llength [get_cells *]]\" } else { puts none }\n"
            "proc half {x {d 2}} { return [expr {$x / $d}] }\n"
            "set_input_delay [half 4] -clock clk [all_inputs]\n"
            "dict for {k val} {a 1} { puts \"$k=$val\" }\n"
            "switch -glob -- [current_design] { cf_* { puts top } default { puts other } }\n"
            "puts [format %.2f [expr {1.0 / 3}]] ;# comment; exec id\n"
            "catch {set_max_fanout 16 [current_design]} err\n")
    assert v.tcl_static(good, "sdc") is None, v.detail
    assert v.tcl_dynamic(good, "sdc") is None, v.detail


def test_tcl_checker_run_is_bounded(v: Validator) -> None:
    assert v.check_tcl("proc f {} { f }\nf\n", "sdc") == "tcl/resource_limit"
    assert v.check_tcl("proc f {} { f; f }\nf\n", "sdc") == "tcl/resource_limit"
    assert v.check_tcl("set x 1\nwhile 1 { incr x }\n", "sdc") is None  # bodies run once: no hang
    assert v.check_tcl("set s [string repeat x 200000000]\nset t $s$s$s\n", "sdc") == "tcl/checker_failed"  # 512 MB


def test_semantic_findings_never_hide_an_unsafe_command(v: Validator) -> None:
    """Many wrong options, ports and clocks first, then exec reached at run time: the unsafe
    command is still what the rejection names (semantic findings are capped and come last)."""
    noise = "".join(f"create_clock -period -{k} -freq{k} [get_ports nope{k}]\nset_input_delay 1 -clock c{k} x{k}\n"
                    for k in range(60))
    script = noise + 'eval [string reverse "di cexe"]\n'
    assert v.tcl_dynamic(script, "sdc") == "tcl/unsafe_command", v.detail
    assert "exec" in v.detail


def test_semantic_detail_is_the_answers_own_text(v: Validator) -> None:
    """A semantic rejection explains itself with the script's own words and the design's names only."""
    assert v.check_tcl("set_load 0.1 [get_ports {/etc/passwd}]\n", "sdc") == "tcl/no_such_port"
    assert "/etc/passwd" in v.detail and "root:" not in v.detail
    assert "clk" in v.detail  # the ports the design does have


def test_tcl_checker_lists_match() -> None:
    text = validate.tcl_checker_script()
    covered = set(re.search(r"set covered \{([^}]*)\}", text).group(1).split())
    assert covered == set(TCL_COVERED)
    assert not (TCL_PURE & TCL_COVERED)
    assert not (TCL_PURE & validate.UNSAFE_TCL)
