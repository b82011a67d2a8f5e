"""Fuzz the answer checks with generated hostile Yosys/Tcl/Verilog snippets (issue 8).

A seeded generator combines the known escape forms (shell commands, wrappers, file I/O,
dynamic Tcl dispatch, macros, token pasting, comments, quoting, nesting) with random junk.
Every snippet goes through the static checks (fast path, no tools): none may raise and every
one whose hostile command is live must be rejected. A seeded sample then goes through the
full validator (``validate_row``: real yosys/tclsh/iverilog in the sandbox). Throughout, a
canary file outside any sandbox directory must stay unchanged, its secret must never appear
in a rejection detail, and the canary path (``/tmp/chipforge_canary_<pid>``) must never be
created.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from synthesis.validate import Settings, Validator, tcl_problem, validate_row, verilog_problem, yosys_problem
from tests.synthesis.conftest import good_reply
from tests.synthesis.test_validate import RegexParser

pytestmark = pytest.mark.tools("iverilog", "vvp", "verilator", "yosys", "tclsh", "bwrap")

SEED = 8
N_YOSYS = 1500
N_TCL = 1500
N_VERILOG = 1000
N_JSON = 300
SAMPLE = {"yosys": 20, "tcl": 60, "verilog": 15, "benign": 8}
READ = "read_verilog cf_counter.v cf_alu.v cf_top.v\n"


@dataclass
class Canary:
    secret: str
    file: str  # holds ``secret``; outside every sandbox directory
    new: str  # must never be created
    other_new: str  # a second must-not-exist path, in the canary directory


@pytest.fixture()
def fuzz_canary() -> Iterator[Canary]:
    d = Path(tempfile.mkdtemp(prefix="cf-fuzz-canary-"))
    d.chmod(0o755)
    secret = f"CFFUZZ{uuid.uuid4().hex}"
    f = d / "secret.txt"
    f.write_text(secret + "\n")
    f.chmod(0o644)
    before = f.stat().st_mtime_ns
    new = Path(f"/tmp/chipforge_canary_{os.getpid()}")
    new.unlink(missing_ok=True)
    c = Canary(secret, str(f), str(new), str(d / "created.txt"))
    try:
        yield c
        assert f.read_text() == secret + "\n" and f.stat().st_mtime_ns == before, "canary file modified"
        assert not new.exists(), f"{new} was created"
        assert not Path(c.other_new).exists(), f"{c.other_new} was created"
    finally:
        new.unlink(missing_ok=True)
        shutil.rmtree(d, ignore_errors=True)


def pick(rng: random.Random, items):
    return items[rng.randrange(len(items))]


def junk_line(rng: random.Random, alphabet: str) -> str:
    """Random characters; never ends with a backslash (that would join it to the next line)."""
    text = "".join(pick(rng, alphabet) for _ in range(rng.randrange(0, 24)))
    return text.rstrip("\\")


# ================================================================================ Yosys

def yosys_payloads(c: Canary) -> list[str]:
    # Half name no path: those must be caught by the command rules, not the path rule.
    return [f"touch {c.new}", f"cat {c.file} 1>&2", f"cp {c.file} {c.new}", f"sh -c 'cat {c.file} > {c.new}'",
            f"head -3 {c.file}", f"touch {c.other_new}", "id", "sh -c id", "touch made_by_exec", "cat cf_top.v",
            "python3 -c 1", "env"]


def yosys_forms(c: Canary, p: str) -> list[str]:
    return [
        f"exec -- {p}", f"!{p}", f"tee -q exec -- {p}", f"debug exec -- {p}", f"trace exec -- {p}",
        f"tee -q -o x.log debug trace exec -- {p}", f"equiv_opt -assert !{p}", f'"exec" -- {p}',
        f"show -format 'ps;{p}'", f"show -viewer '{p}'", f"show -format svg -prefix '$({p})'",
        f"write_verilog {c.new}", f"tee -o {c.new} stat", f"tee -a {c.other_new} stat", f"read_verilog {c.file}",
        f"script {c.file}", f"read -incdir {os.path.dirname(c.file)}",
        f"read_verilog -I{os.path.dirname(c.file)} cf_top.v",
        f"abc -exe {p.split()[0]}", f"abc -script +read_blif,{c.file}", f"write_file {c.new} x",
        f"write_json {c.new}", f"log -o {c.new} x", f"hierarchy -libdir {os.path.dirname(c.file)}",
        f"write_verilog ../../../..{c.new}", f"write_verilog +/../../../..{c.new}", f"sim -r {c.file}",
        f"plugin -i {c.file}", f"tcl {c.file}", f"bugpoint -script {c.file}", f"connect_rpc -exec {p}",
        f"read_verilog <<EOT\n`include \"{c.file}\"\nEOT", f"scratchpad -set abc.exe {p.split()[0]}",
        "scratchpad -set abc.script x.abc", "tee -q -s abc.script log +strash",
    ]


# Prefixes that keep the hostile command live on its line.
YOSYS_PREFIXES = ["", "   ", "\t", "lbl: ", "log a#; ", "log x;", "opt; ", "log \"a b\"; ", "stat;; ",
                  "log a \\\nb; ", "log a # c\r", "begin:\t", "tee -q ", "debug ", "trace "]
YOSYS_SUFFIXES = ["", " ", " # trailing", ";", ";;", "\r", " ; stat"]
YOSYS_BENIGN = ["stat", "proc; opt", "synth -top cf_top", "opt_clean -purge", "hierarchy -top cf_top",
                "select -module cf_top t:$add %ci", "log done", "check", "flatten", "memory", "tee -q -o r.txt stat"]


def gen_yosys(rng: random.Random, c: Canary) -> str:
    lines = [READ]
    for _ in range(rng.randrange(0, 3)):
        lines.append(pick(rng, YOSYS_BENIGN if rng.random() < 0.7 else [junk_line(rng, "ab #;\"'\\\r:!$-/")]) + "\n")
    form = pick(rng, yosys_forms(c, pick(rng, yosys_payloads(c))))
    lines.append(pick(rng, YOSYS_PREFIXES) + form + pick(rng, YOSYS_SUFFIXES) + "\n")
    for _ in range(rng.randrange(0, 2)):
        lines.append(pick(rng, YOSYS_BENIGN) + "\n")
    return "".join(lines)


# ================================================================================== Tcl

def tcl_payloads(c: Canary) -> list[str]:
    return [f"exec touch {c.new}", f"open {c.new} w", f"file delete {c.file}", f"source {c.file}",
            f"exec cat {c.file}", f"file copy {c.file} {c.other_new}", "socket localhost 1", "load x.so",
            "cd /", f"glob {os.path.dirname(c.file)}/*"]


# How the command word is written: literal, escaped, or computed at run time.
def tcl_name_forms(name: str) -> list[tuple[str, bool]]:
    """(spelling, static_visible): computed spellings can only be caught by running the script."""
    rev = name[::-1]
    hexed = "".join(f"\\x{ord(ch):02x}" for ch in name[:2]) + name[2:]
    return [(name, True), (f"::{name}", True), (f'"{name}"', True), (hexed, True), (f"{{{name}}}", True),
            (f"[string reverse {rev}]", False), (f'[join {{{name[:2]} {name[2:]}}} ""]', False),
            (f"[format %s%s {name[:2]} {name[2:]}]", False), (f"[string map {{Q {name[0]}}} Q{name[1:]}]", False)]


def tcl_wrap(rng: random.Random, body: str, level: int) -> str:
    """``body`` inside a random script-running construct. Every form keeps the payload live
    in real Tcl or is one the checker runs anyway (``if 0``, an uncalled ``proc``)."""
    if level == 0 and not re.search(r"[\[\]{};$\"\\]", body) and rng.random() < 0.3:
        # A command prefix is a list, not a script: only a plain payload stays live in it.
        return f"lsort -command {{{body}}} {{b a}}"
    forms = [
        "eval {{{b}}}", "uplevel #0 {{{b}}}", "if 1 {{{b}}}", "if 0 {{{b}}}",
        "if {{[llength [get_ports x]] == 7}} {{{b}}}",
        "while 0 {{{b}}}", "for {{}} 0 {{}} {{{b}}}", "catch {{{b}}}", "catch {{lindex; {b}}}", "try {{{b}}}",
        "try {{set x 1}} on error {{m}} {{{b}}}", "apply {{{{}} {{{b}}}}}", "namespace eval ns {{{b}}}",
        "after 0 {{{b}}}", "subst {{[{b}]}}", "set r [{b}]", "proc p {{}} {{{b}}}", "proc p {{a}} {{{b}}}; p 1",
        "foreach i {{}} {{{b}}}", "switch a {{a {{{b}}}}}", "switch -glob -- b {{a {{}} default {{{b}}}}}",
        "dict for {{k v}} {{}} {{{b}}}", "dict with d {{{b}}}", "lmap x {{}} {{{b}}}",
        "puts \"[{b}]\"", "set_load 0.1 [{b}]", "trace add variable x write {{{b}}}; set x 1",
        "interp eval {{}} {{{b}}}", "{b}",
    ]
    return pick(rng, forms).format(b=body)


TCL_BENIGN = ["create_clock -period 10 [get_ports clk]", "set_input_delay 2 -clock clk [all_inputs]",
              "set_load 0.05 [all_outputs]", "puts ok", "set x [llength [get_cells *]]", "# a comment",
              "foreach p [all_outputs] { set_load 0.1 $p }", "if {$x > 0} { puts many }"]


def gen_tcl(rng: random.Random, c: Canary) -> tuple[str, bool]:
    """A hostile Tcl script and whether its command name is statically visible."""
    payload = pick(rng, tcl_payloads(c))
    name, rest = payload.split(" ", 1) if " " in payload else (payload, "")
    spelled, visible = pick(rng, tcl_name_forms(name))
    if rng.random() < 0.15:  # through a variable
        body, visible = f"set c {spelled}; $c {rest}", visible
    elif spelled.startswith("[") and rng.random() < 0.5:
        body = f"eval {spelled} {rest}"
    else:
        body = f"{spelled} {rest}".strip()
    for level in range(rng.randrange(1, 4)):
        body = tcl_wrap(rng, body, level)
    lines = [pick(rng, TCL_BENIGN) for _ in range(rng.randrange(0, 3))]
    if rng.random() < 0.2:
        lines.append(junk_line(rng, "ab {}[]\";$\\#"))
    lines.insert(rng.randrange(len(lines) + 1), body)
    return "\n".join(lines) + "\n", visible


# ============================================================================== Verilog

def verilog_calls(c: Canary) -> list[str]:
    return [f'f = $fopen("{c.new}", "w");', f'f = $fopenr("{c.file}");', f'f = $fopenw("{c.new}");',
            f'$readmemh("{c.file}", m);', f'$writememh("{c.new}", m);', f'$dumpfile("{c.new}");',
            f'$system("touch {c.new}");', f'r = $fgets(line, f);', f'r = $fscanf(f, "%s", line);',
            f'$readmemb("{c.file}", m);', f'f = $fopen("{c.other_new}", "a");']


def verilog_obfuscate(rng: random.Random, call: str) -> tuple[str, str]:
    """(defines, statement) spelling the call's system task in a random way."""
    dollar = call.index("$")
    paren = call.index("(", dollar)
    name = call[dollar + 1 : paren]
    head, tail = call[:dollar], call[paren:]
    k = rng.randrange(1, len(name)) if len(name) > 1 else 1
    forms = [
        ("", f"{head}${name}{tail}"),
        ("", f"{head}${name}/**/{tail}"),
        ("", f"{head}${name} // c\n {tail}"),
        ("", f"{head}${name}\n\t{tail}"),
        (f"`define T ${name}\n", f"{head}`T{tail}"),
        (f"`define T(x) $``x\n", f"{head}`T({name}){tail}"),
        (f"`define T(x) ${name[:k]}``x\n", f"{head}`T({name[k:]}){tail}"),
        (f"`define A ${name}\n`define T `A\n", f"{head}`T{tail}"),
        (f"`define T(a, b) a``b\n", f"{head}`T(${name[:k]}, {name[k:]}){tail}"),
        (f"`ifdef NOPE\n`else\n`define T ${name}\n`endif\n", f"{head}`T{tail}"),
        (f"`define T ${name}\\\n\n", f"{head}`T{tail}"),
    ]
    return pick(rng, forms)


def gen_verilog(rng: random.Random, c: Canary) -> tuple[str, str]:
    """(design, testbench) where the testbench calls a file/host task."""
    defines, stmt = verilog_obfuscate(rng, pick(rng, verilog_calls(c)))
    if rng.random() < 0.1:
        defines += pick(rng, [f'`include "{c.file}"\n', f'`define P "{c.file}"\n`include `P\n',
                              '`include "../../etc/passwd"\n'])
    design = "module cf_q(input a, output y);\n  assign y = a;\nendmodule\n"
    tb = (f"{defines}module tb;\n  integer f, r; reg [7:0] m [0:3]; reg [8*64:1] line;\n  initial begin\n"
          f"    {stmt}\n    $display(\"TEST PASSED\");\n    $finish;\n  end\nendmodule\n")
    return design, tb


# ================================================================================= JSON

def gen_json(rng: random.Random) -> str:
    kind = rng.randrange(5)
    depth = rng.randrange(10, 3000)
    if kind == 0:
        return '{"instruction": "q", "answer": ' + "[" * depth + "]" * depth + "}"
    if kind == 1:
        return '{"instruction": "q", "answer": "x", "testbench": ' + '{"a":' * depth + "1" + "}" * depth + "}"
    if kind == 2:
        return "{" + '"' * rng.randrange(1, 50) + "[" * depth
    if kind == 3:
        return "```json\n" + '{"instruction": ' + "[" * depth + "\n```"
    return "".join(pick(rng, '{}[]",:\\ x`\n') for _ in range(rng.randrange(1, 400)))


# ================================================================================= test

def reply(answer: str, testbench: str | None = None) -> str:
    obj = {"instruction": "Do it.", "answer": answer}
    if testbench is not None:
        obj["testbench"] = testbench
    return json.dumps(obj)


def row(template: str, text: str) -> dict:
    phase, task = template.split("/")
    return {"prompt_id": uuid.uuid4().hex[:8], "round": 0, "phase": phase, "task": task.split("@")[0],
            "template_id": template, "seed_json": "{}", "generated_text": text, "prompt_tokens": 1,
            "completion_tokens": 1}


def test_fuzz_hostile_snippets(fuzz_canary: Canary) -> None:
    canary = fuzz_canary
    rng = random.Random(SEED)
    t0 = time.perf_counter()
    v = Validator(Settings(timeout_s=20, sim_timeout_s=3), parser=RegexParser())
    allowed = v.allowed["openroad"]

    yosys = [gen_yosys(rng, canary) for _ in range(N_YOSYS)]
    for script in yosys:
        problem = yosys_problem(script)
        assert problem is not None, script
        assert canary.secret not in problem.detail

    tcl = [gen_tcl(rng, canary) for _ in range(N_TCL)]
    hidden = []
    for script, visible in tcl:
        problem = tcl_problem(script, allowed, "openroad")  # must not raise
        if visible and problem is None:  # a literal or escaped name: the static scan sees it
            raise AssertionError(f"static Tcl check missed a literal form:\n{script}")
        if problem is None:
            hidden.append(script)
        else:
            assert canary.secret not in problem.detail

    verilog = [gen_verilog(rng, canary) for _ in range(N_VERILOG)]
    for design, tb in verilog:
        problem = verilog_problem(design + "\n" + tb)
        assert problem is not None, tb
        assert canary.secret not in problem.detail

    for _ in range(N_JSON):
        out = validate_row(row("synthesis/yosys_script_topic@v1", gen_json(rng)), v)
        assert out["reason"] and out["reason"].startswith("malformed/"), out
    fast_s = time.perf_counter() - t0

    # ---- a seeded sample through the full validator, real tools in the sandbox
    outs = []
    for script in rng.sample(yosys, SAMPLE["yosys"]):
        outs.append(validate_row(row("synthesis/yosys_script_topic@v1", reply(f"```yosys\n{script}```")), v))
    tcl_sample = hidden[: SAMPLE["tcl"] // 2] + [s for s, _ in rng.sample(tcl, SAMPLE["tcl"] - min(len(hidden),
                                                                                             SAMPLE["tcl"] // 2))]
    assert len(hidden) >= 20, "the generator should produce run-time-only Tcl forms"
    for script in tcl_sample:
        outs.append(validate_row(row("placement/openroad_placement_topic@v1", reply(f"```tcl\n{script}```")), v))
    for design, tb in rng.sample(verilog, SAMPLE["verilog"]):
        outs.append(validate_row(row("rtl_design/module_from_topic@v1", reply(f"```verilog\n{design}```", tb)), v))
    for out in outs:
        assert out["reason"] is not None and not out["reason"].startswith("internal/"), out
        assert out["reason"] != "tool/unavailable", out["detail"]
        assert canary.secret not in (out["detail"] or "")
    # Hostile Tcl that no static scan sees is rejected by the safe-interpreter run.
    hidden_reasons = {o["reason"] for o in outs[SAMPLE["yosys"] : SAMPLE["yosys"] + len(hidden[: SAMPLE["tcl"] // 2])]}
    assert hidden_reasons <= {"tcl/unsafe_command", "tcl/redefines_command"}, hidden_reasons

    # Benign controls still pass through the same path (the checks are not reject-all).
    for k in range(SAMPLE["benign"]):
        script = READ + "\n".join(rng.sample(["proc; opt", "synth -top cf_top", "stat", "check", "flatten"], 3)) + "\n"
        out = validate_row(row("synthesis/yosys_script_topic@v1", reply(f"```yosys\n{script}```")), v)
        assert out["reason"] is None, out
        tcl_ok = "\n".join(rng.sample(TCL_BENIGN[:5], 3)) + "\nglobal_placement -density 0.6\n"
        out = validate_row(row("placement/openroad_placement_topic@v1", reply(f"```tcl\n{tcl_ok}```")), v)
        assert out["reason"] is None, out
    out = validate_row(row("rtl_design/module_from_topic@v1", good_reply("verilog", rng.randrange(3))), v)
    assert out["reason"] is None, out
    total_s = time.perf_counter() - t0
    print(f"fuzz: {N_YOSYS + N_TCL + N_VERILOG + N_JSON} static in {fast_s:.1f}s, "
          f"{len(outs) + 2 * SAMPLE['benign']} full in {total_s - fast_s:.1f}s; {len(hidden)} Tcl forms need the run")


def test_static_checks_never_raise_on_junk() -> None:
    """Random punctuation soup: every static check returns (a rejection or None), never raises."""
    rng = random.Random(SEED + 1)
    for _ in range(3000):
        text = "".join(pick(rng, "ab {}[]\"$\\;#\n\t*:`/'") for _ in range(rng.randrange(0, 200)))
        tcl_problem(text, {"get_ports"}, "sdc")
        yosys_problem(text)
        verilog_problem(text)
