"""Tool runs on model-written Verilog, each one in its own bubblewrap sandbox (``synthesis.sandbox``).

``run_problem`` judges one answer to one benchmark or smoke problem: a static safety check of the
answer (``synthesis.validate.verilog_problem``: no file I/O, ``$system``, DPI or includes leaving
the directory), then ``iverilog`` with the problem's own command line, then ``vvp -n`` on the
compiled image, each in a fresh sandbox directory with a wall-clock limit. A run past its limit
is killed with its whole sandbox (PID namespace), never anything else on the machine. Every
answer gets exactly one verdict, ``pass`` or ``fail`` with one class of ``FAILURE_CLASSES``:

- ``engine_error``: the engine returned no answer (the error is the log);
- ``no_code``: no Verilog module in the answer;
- ``unsafe``: the answer calls file I/O, the host or foreign code (not run);
- ``syntax``: the compiler reports a syntax error;
- ``compile``: any other compile or elaboration error (unknown module, ports, types);
- ``timeout``: compilation or simulation killed at its time limit (or for flooding its output);
- ``sim_mismatch``: the simulation finished without the pass marker (wrong outputs, a crash).

``verilog_checks`` scores a test-split answer: parses (the corpus parser), compiles
(``iverilog -g2012``) and lints (``verilator --lint-only``), three independent booleans.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from synthesis import sandbox

FAILURE_CLASSES = ("engine_error", "no_code", "unsafe", "syntax", "compile", "timeout", "sim_mismatch")
UNSAFE_REASONS = ("verilog/unsafe_system_task", "verilog/unsafe_file_io", "verilog/unknown_system_task",
                  "verilog/dpi", "verilog/unsafe_include")
_SYNTAX = re.compile(r"syntax error|Syntax in assignment|I give up", re.I)


@dataclass(frozen=True)
class SimSettings:
    """Limits of one tool run (plain data: shipped to Ray tasks as a dict)."""

    compile_timeout_s: float = 60.0
    sim_timeout_s: float = 30.0
    memory_mb: int = 2048
    max_output_bytes: int = 4 * 1024 * 1024  # tool output and the compiled image read back
    log_chars: int = 2000

    def limits(self, timeout_s: float) -> sandbox.Limits:
        return sandbox.Limits(timeout_s=timeout_s, memory_mb=self.memory_mb, max_output_bytes=self.max_output_bytes)


def excerpt(text: str, n: int) -> str:
    """At most ``n`` characters of a tool log: its head and its tail."""
    text = (text or "").strip()
    if len(text) <= n:
        return text
    half = max(1, (n - 7) // 2)
    return text[:half] + "\n [...]\n" + text[-half:]


def unsafe_or_refused(code: str) -> tuple[str, str] | None:
    """(failure class, detail) when the static check refuses to run ``code``; None when it may run."""
    from synthesis.validate import verilog_problem

    problem = verilog_problem(code)
    if problem is None:
        return None
    cls = "unsafe" if problem.reason in UNSAFE_REASONS else "compile"
    return cls, f"{problem.reason}: {problem.detail}"


def verdict(passed: bool, failure_class: str | None, log: str, **extra: Any) -> dict[str, Any]:
    return {"verdict": "pass" if passed else "fail", "failure_class": None if passed else failure_class,
            "log": log, **extra}


def run_problem(problem: dict[str, Any], code: str | None, settings: SimSettings) -> dict[str, Any]:
    """Verdict of ``code`` (already extracted from the answer) on ``problem``; see the module doc."""
    n = settings.log_chars
    if not code:
        return verdict(False, "no_code", "no Verilog module found in the answer")
    refused = unsafe_or_refused(code)
    if refused:
        return verdict(False, refused[0], excerpt(refused[1], n))
    files: dict[str, str | bytes] = dict(problem["files"])
    files[problem["answer_file"]] = code
    comp = sandbox.run(problem["compile_argv"], files, limits=settings.limits(settings.compile_timeout_s),
                       collect=["sim.vvp"])
    if comp.timed_out or comp.output_truncated:
        return verdict(False, "timeout", excerpt(f"iverilog killed after {settings.compile_timeout_s:g} s "
                                                 f"(or for flooding its output)\n{comp.output}", n), stage="compile")
    if comp.returncode == 0 and "sim.vvp" in comp.rejected_files:
        return verdict(False, "compile", f"compiled image not read back: {comp.rejected_files['sim.vvp']}",
                       stage="compile")
    if comp.returncode != 0 or "sim.vvp" not in comp.files:
        cls = "syntax" if _SYNTAX.search(comp.output) else "compile"
        return verdict(False, cls, excerpt(comp.output or f"iverilog exit {comp.returncode}", n), stage="compile")
    sim_files = {k: v for k, v in problem["files"].items()}
    sim_files["sim.vvp"] = comp.files["sim.vvp"]
    sim = sandbox.run(["vvp", "-n", "sim.vvp"], sim_files, limits=settings.limits(settings.sim_timeout_s))
    if sim.timed_out or sim.output_truncated:
        why = "output cap" if sim.output_truncated else f"{settings.sim_timeout_s:g} s"
        return verdict(False, "timeout", excerpt(f"vvp killed ({why}); its sandbox and every process in it ended\n"
                                                 f"{sim.output}", n), stage="simulate")
    out = sim.output
    failed = problem.get("fail_regex") and re.search(problem["fail_regex"], out)
    if re.search(problem["pass_regex"], out) and not failed:
        return verdict(True, None, excerpt(out, n), stage="simulate")
    return verdict(False, "sim_mismatch", excerpt(out or f"vvp exit {sim.returncode}, no output", n),
                   stage="simulate")


_PARSER: Any = None


def _parser() -> Any:
    global _PARSER
    if _PARSER is None:
        from corpus.verilog import VerilogParser

        _PARSER = VerilogParser(grammar="systemverilog")
    return _PARSER


def verilog_checks(code: str | None, settings: SimSettings) -> dict[str, Any]:
    """``{"parse", "compile", "lint", "log"}`` for a test-split answer (all False without code)."""
    if not code:
        return {"parse": False, "compile": False, "lint": False, "log": "no Verilog module found in the answer",
                "failure_class": "no_code"}
    refused = unsafe_or_refused(code)
    if refused:
        return {"parse": False, "compile": False, "lint": False, "log": excerpt(refused[1], settings.log_chars),
                "failure_class": refused[0]}
    try:
        units = _parser().parse(code, path="answer.sv")
        parsed = bool(units) and all(u.get("parse_ok", False) for u in units)
    except Exception:  # noqa: BLE001 - parser limits: does not parse
        parsed = False
    files = {"answer.sv": code}
    limits = settings.limits(settings.compile_timeout_s)
    comp = sandbox.run(["iverilog", "-g2012", "-o", "answer.vvp", "answer.sv"], files, limits=limits)
    lint = sandbox.run(["verilator", "--lint-only", "--timing", "-Wno-MULTITOP", "answer.sv"], files, limits=limits)
    log = excerpt(f"iverilog: {comp.output.strip() or 'ok'}\nverilator: {lint.output.strip() or 'ok'}",
                  settings.log_chars)
    compiled = comp.ok
    cls = None if compiled else (
        "timeout" if comp.timed_out else "syntax" if _SYNTAX.search(comp.output) else "compile")
    return {"parse": parsed, "compile": compiled, "lint": lint.ok, "log": log, "failure_class": cls}


def simulator_versions() -> dict[str, str]:
    """The simulator the verdicts depend on (Icarus version matters; see the benchmarks note)."""
    out = dict(sandbox.tool_versions())
    out.pop("tclsh", None)
    vvp = shutil.which("vvp", path=sandbox.SAFE_PATH)
    if vvp is None:
        out["vvp"] = "missing"
    else:
        try:
            p = subprocess.run([vvp, "-V"], capture_output=True, text=True, timeout=10)
            out["vvp"] = ((p.stdout or p.stderr).strip().splitlines() or ["?"])[0]
        except (OSError, subprocess.SubprocessError) as exc:
            out["vvp"] = f"error: {exc}"
    out["simulator"] = "Icarus Verilog (iverilog + vvp)"
    return out
