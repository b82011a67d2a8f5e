"""Tool runs on model-written Verilog, each answer in its own bubblewrap sandbox (``synthesis.sandbox``).

``run_problem`` judges one answer to one benchmark or smoke problem: a static safety check of the
answer (``synthesis.validate.verilog_problem``: no file I/O, ``$system``, DPI or includes leaving
the directory), then, in ONE fresh sandbox per answer, a fixed script (``SIM_SCRIPT``, not
model-written) that runs ``iverilog`` with the problem's own command line and, when it succeeds,
``vvp -n`` on the compiled image. Each step has its own wall-clock limit (compile limit,
simulation limit), enforced by the parent as the sandbox's two stages (``sandbox.run``'s
``stages``: the script marks the end of the compile step on a pipe): past either, or past the
output cap, the whole sandbox (PID namespace) is killed, never anything else on the machine. The
sandbox's own limit (both limits plus a margin) stays the backstop. No ``timeout`` process runs
per step: with ``setpriv``, ``bwrap``, ``prlimit`` and ``sh``, those two were a fifth of the
processes started per answer. The compiler's log and exit status go to files that are read back
without following links; the simulation's output is the run's captured (capped) output.

Why one sandbox and not one per tool: each bubblewrap start costs about as much as compiling and
simulating a small problem. The compiled image never leaves the sandbox, so nothing is checked
between the two steps: before, the image was read back into the parent (no-follow, size-capped)
only to carry it into the second sandbox; both steps now run under the same isolation and
limits, and the model-written code only ever runs (in ``vvp``) inside it. Every answer gets
exactly one verdict, ``pass`` or ``fail`` with one class of ``FAILURE_CLASSES``:

- ``engine_error``: the engine returned no answer (the error is the log);
- ``no_code``: no Verilog module in the answer;
- ``unsafe``: the answer calls file I/O, the host or foreign code (not run);
- ``syntax``: the compiler reports a syntax error;
- ``compile``: any other compile or elaboration error (unknown module, ports, types);
- ``timeout``: compilation or simulation killed at its time limit (or for flooding its output,
  or past the run's memory or disk limit: ``sandbox.Limits``);
- ``sim_mismatch``: the simulation finished without the pass marker (wrong outputs, a crash),
  or with a failure line, or with the pass marker or the verdict line more than once (the
  testbench prints each once: an answer that prints a forged marker beside it fails).

The verdict is read from the simulation's output, as VerilogEval's and RTLLM's own harnesses
read it. An answer shares the simulation with the testbench, so one that ends the simulation
itself after printing a forged marker, or forces the testbench's error counter through a
hierarchical name, is not caught: neither harness catches it either.

``verilog_checks`` scores a test-split answer: parses (the corpus parser), compiles
(``iverilog -g2012``) and lints (``verilator --lint-only``), three independent booleans; the
two tools run one after the other in one sandbox (``CHECK_SCRIPT``), each under the compile limit.
"""

from __future__ import annotations

import functools
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
# Exit status of a tool stopped by ``timeout -k`` (124: ended by TERM; 137: KILL after the grace
# second; CHECK_SCRIPT) or by SIGKILL at its CPU limit (137).
TIMEOUT_STATUSES = (124, 137)
COMPILE_LOG, COMPILE_RC = ".cf-compile.log", ".cf-compile.rc"
NO_IMAGE = "no-image"
# argv: sh -c SIM_SCRIPT sh iverilog ARGS... (the problem's compile line, as arguments: nothing
# model-written is ever part of the script). Run with ``stages=(compile limit, simulation limit)``:
# the compile stage starts with the sandbox; the byte the script writes to its stdin (the stage
# pipe, see ``sandbox.run``) once the compiler has finished starts the simulation stage, with its
# own wall-clock limit. The parent enforces both (past either, the whole sandbox is killed), so no
# ``timeout`` process runs per tool. Neither tool gets the stage pipe (``</dev/null``). The
# compiler's status is written only once it has finished, so a missing status file means the
# compile step never ended.
SIM_SCRIPT = f""""$@" </dev/null >{COMPILE_LOG} 2>&1
rc=$?
if [ "$rc" = 0 ] && [ ! -f sim.vvp ]; then rc={NO_IMAGE}; fi
echo "$rc" >{COMPILE_RC}
[ "$rc" = 0 ] || exit 0
echo >&0
exec vvp -n sim.vvp </dev/null
"""
# argv: sh -c CHECK_SCRIPT sh LIMIT_S: compile, then lint, each with its own log and status file.
CHECK_FILES = {tool: (f".cf-{tool}.log", f".cf-{tool}.rc") for tool in ("iverilog", "verilator")}
CHECK_SCRIPT = """t=$1
timeout -k 1 "$t" iverilog -g2012 -o answer.vvp answer.sv >.cf-iverilog.log 2>&1; echo $? >.cf-iverilog.rc
timeout -k 1 "$t" verilator --lint-only --timing -Wno-MULTITOP answer.sv >.cf-verilator.log 2>&1
echo $? >.cf-verilator.rc
"""
MARGIN_S = 5.0  # sandbox wall limit beyond the steps' own limits (CHECK_SCRIPT: and their 1 s grace each)


@dataclass(frozen=True)
class SimSettings:
    """Limits of one tool run (plain data: shipped to Ray tasks as a dict)."""

    compile_timeout_s: float = 60.0
    sim_timeout_s: float = 30.0
    memory_mb: int = 2048
    max_output_bytes: int = 4 * 1024 * 1024  # captured simulation output; each tool log read back
    log_chars: int = 2000

    def limits(self, timeout_s: float) -> sandbox.Limits:
        return sandbox.Limits(timeout_s=timeout_s, memory_mb=self.memory_mb, max_output_bytes=self.max_output_bytes)


def _seconds(limit_s: float) -> str:
    """A limit as ``timeout`` reads it; never ``0``, which would mean no limit at all."""
    return f"{max(limit_s, 0.001):.3f}"


def _status(files: dict[str, bytes], name: str) -> str | None:
    """A step's exit status as the script wrote it (None: the step never finished)."""
    raw = files.get(name)
    return raw.decode("ascii", "replace").strip() if raw is not None else None


def _timed_out(status: str | int | None) -> bool:
    return str(status) in {str(s) for s in TIMEOUT_STATUSES}


@functools.lru_cache(maxsize=None)
def _installed(tool: str) -> bool:
    return shutil.which(tool, path=sandbox.SAFE_PATH) is not None


def require_tools(*names: str) -> None:
    """Raise ``SandboxError`` when a tool the script runs is not installed (as ``sandbox.run`` does
    for its own argv[0]): a missing simulator is the harness's error, not the answer's failure."""
    missing = [t for t in names if not _installed(t)]
    if missing:
        raise sandbox.SandboxError(f"tool(s) {missing} not installed (looked in {sandbox.SAFE_PATH})")


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
    require_tools(problem["compile_argv"][0], "vvp")
    files: dict[str, str | bytes] = dict(problem["files"])
    files[problem["answer_file"]] = code
    ct, st = settings.compile_timeout_s, settings.sim_timeout_s
    argv = ["sh", "-c", SIM_SCRIPT, "sh", *problem["compile_argv"]]
    run = sandbox.run(argv, files, limits=settings.limits(ct + st + MARGIN_S), collect=[COMPILE_LOG, COMPILE_RC],
                      stages=(ct, st))
    status = _status(run.files, COMPILE_RC)
    comp_log = run.files.get(COMPILE_LOG, b"").decode("utf-8", "replace")
    if COMPILE_LOG in run.rejected_files:
        comp_log += f"\n[compiler log not read back: {run.rejected_files[COMPILE_LOG]}]"
    if run.limit_exceeded:
        step = "compile" if status is None else "simulate"
        return verdict(False, "timeout", excerpt(f"killed: {run.limit_exceeded}; its sandbox and every process in it "
                                                 f"ended\n{comp_log if step == 'compile' else run.output}", n),
                       stage=step)
    if status is None or _timed_out(status):
        if status is None and not run.timed_out:  # the script itself failed before the compiler ended
            return verdict(False, "compile", excerpt(f"compile step did not finish (exit {run.returncode})\n"
                                                     f"{run.output}\n{comp_log}", n), stage="compile")
        return verdict(False, "timeout", excerpt(f"iverilog killed after {ct:g} s; its sandbox and every process "
                                                 f"in it ended\n{comp_log}", n), stage="compile")
    if status == NO_IMAGE:
        return verdict(False, "compile", excerpt(f"iverilog exit 0 but no compiled image sim.vvp\n{comp_log}", n),
                       stage="compile")
    if status != "0":
        if COMPILE_LOG in run.rejected_files:  # a compiler flooding its log is stopped like a flooding tool
            return verdict(False, "timeout", excerpt(f"iverilog flooded its log\n{comp_log}", n), stage="compile")
        cls = "syntax" if _SYNTAX.search(comp_log) else "compile"
        return verdict(False, cls, excerpt(comp_log or f"iverilog exit {status}", n), stage="compile")
    if run.timed_out or run.output_truncated or _timed_out(run.returncode):
        why = "output cap" if run.output_truncated else f"{st:g} s"
        return verdict(False, "timeout", excerpt(f"vvp killed ({why}); its sandbox and every process in it ended\n"
                                                 f"{run.output}", n), stage="simulate")
    out = run.output
    passes = len(re.findall(problem["pass_regex"], out))
    failed = problem.get("fail_regex") and re.search(problem["fail_regex"], out)
    verdicts = len(re.findall(problem["verdict_regex"], out)) if problem.get("verdict_regex") else 1
    if passes == 1 and verdicts == 1 and not failed:
        return verdict(True, None, excerpt(out, n), stage="simulate")
    if passes > 1 or verdicts > 1:
        out = (f"the testbench prints its verdict once, the output holds {max(passes, verdicts)} "
               f"(the answer printed one)\n{out}")
    return verdict(False, "sim_mismatch", excerpt(out or f"vvp exit {run.returncode}, no output", n),
                   stage="simulate")


def verilog_checks(code: str | None, settings: SimSettings) -> dict[str, Any]:
    """``{"parse", "compile", "lint", "log"}`` for a test-split answer (all False without code)."""
    if not code:
        return {"parse": False, "compile": False, "lint": False, "log": "no Verilog module found in the answer",
                "failure_class": "no_code"}
    refused = unsafe_or_refused(code)
    if refused:
        return {"parse": False, "compile": False, "lint": False, "log": excerpt(refused[1], settings.log_chars),
                "failure_class": refused[0]}
    from corpus.verilog import shared_parser

    try:
        units = shared_parser().parse(code, path="answer.sv")
        parsed = bool(units) and all(u.get("parse_ok", False) for u in units)
    except Exception:  # noqa: BLE001 - parser limits: does not parse
        parsed = False
    require_tools("iverilog", "verilator", "timeout")
    t = settings.compile_timeout_s
    run = sandbox.run(["sh", "-c", CHECK_SCRIPT, "sh", _seconds(t)], {"answer.sv": code},
                      limits=settings.limits(2 * (t + 1) + MARGIN_S), collect=[f for pair in CHECK_FILES.values()
                                                                                for f in pair])
    logs, status = {}, {}
    for tool, (log_name, rc_name) in CHECK_FILES.items():
        logs[tool] = run.files.get(log_name, b"").decode("utf-8", "replace").strip()
        if log_name in run.rejected_files:
            logs[tool] += f"\n[log not read back: {run.rejected_files[log_name]}]"
        status[tool] = _status(run.files, rc_name)
    log = excerpt(f"iverilog: {logs['iverilog'] or 'ok'}\nverilator: {logs['verilator'] or 'ok'}", settings.log_chars)
    compiled = status["iverilog"] == "0"
    comp_timeout = status["iverilog"] is None or _timed_out(status["iverilog"])
    cls = None if compiled else (
        "timeout" if comp_timeout else "syntax" if _SYNTAX.search(logs["iverilog"]) else "compile")
    return {"parse": parsed, "compile": compiled, "lint": status["verilator"] == "0", "log": log,
            "failure_class": cls}


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
