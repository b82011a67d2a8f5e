"""Functional benchmarks given as local checkouts: problems, prompts, answer extraction.

Layouts (the public repositories as cloned; see ``/work/shared/notes/benchmarks.md``):

- VerilogEval v2 (NVlabs/verilog-eval ``main``): ``dataset_spec-to-rtl/`` and
  ``dataset_code-complete-iccad2023/``, each with ``ProbNNN_name_{prompt.txt,ref.sv,test.sv}``.
  ``benchmarks.verilog_eval_v2`` names the checkout (every ``dataset_*`` directory in it is a
  task) or one ``dataset_*`` directory. The answer is a module ``TopModule``; ``test.sv`` (module
  ``tb``) instantiates it beside ``RefModule``. Compiled as the upstream harness does
  (``iverilog -Wall -Winfloop -Wno-timescale -g2012 -s tb``), run with ``vvp -n``; a pass prints
  ``Mismatches: 0 in N samples``. Benchmark keys: ``verilog_eval_v2/spec-to-rtl`` and
  ``verilog_eval_v2/code-complete``.
- RTLLM (hkust-zhiyao/RTLLM, v1.1 or v2.0): every directory below ``benchmarks.rtllm`` holding
  ``design_description.txt`` is a design, with ``testbench.v`` and ``verified_<name>.v`` (the
  reference); other files there (reference vectors read by the testbench) go into the
  simulation directory too. The answer is the module the testbench instantiates (``rtllm_top``: v2.0
  names its references ``verified_<design>``, the testbench ``<design>``). A pass prints
  ``Your Design Passed`` (any case). Benchmark key ``rtllm``.

A checkout is read as untrusted input: a local one is walked without following directory links
(a link to ``/`` or a loop would walk the host), and every file read must be a regular file inside
the checkout (a link leaving it is refused: the file would land in the simulation directory),
at most ``MAX_FILE_BYTES``, and UTF-8 text where text is expected. A problem with a bad or missing
file is skipped, with its reason, into the ``skipped`` list the loaders take (the job reports
them); a path that is not a directory, or one holding no usable problem, is a ``BenchmarkError``.

A problem is a plain dict (shipped to Ray tasks): ``key``, ``benchmark``, ``id``, ``harness``,
``top``, ``prompt`` (the text shown to the model), ``header`` (code-complete: the module header
the completion continues), ``answer_file``, ``files`` (what the simulation directory holds
besides the answer), ``compile_argv``, ``pass_regex``, ``fail_regex``, ``verdict_regex`` and
``reference`` (the reference solution as an answer: VerilogEval's ``RefModule`` renamed
``TopModule``). A run passes when its output holds the pass marker exactly once, no failure
line, and (where a benchmark has one) exactly one verdict line (``evaluation.simulate``).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import stat
from collections.abc import Sequence
from typing import Any

import pyarrow.fs as pafs

from chipforge import fs
from chipforge.vocab import SYSTEM_PROMPTS

PROMPT_VERSION = "eval-prompts@v1"
V2_PASS = r"Mismatches:\s*0\s+in\s+\d+\s+samples"
# The line VerilogEval's testbench prints once with its result, passing or not: an answer that
# prints a forged "Mismatches: 0" beside the testbench's real line fails (two verdict lines).
V2_VERDICT = r"Mismatches:\s*\d+\s+in\s+\d+\s+samples"
RTLLM_PASS = r"(?i)your\s+design\s+passed"
# What RTLLM's testbenches print when a check fails (their banners and per-check lines), so a
# forged "Your Design Passed" beside a real failure does not pass.
# A count may print as ``x`` (an undriven answer leaves the testbench's counter unknown).
# Linear in the output (an answer controls part of it): one ``=`` on each side stands for a
# banner of any length, and the first count holds no ``/`` (``=+`` and ``\S+`` backtracked
# quadratically over a long run of ``=`` or ``/``: minutes for 50 kB of output).
RTLLM_FAIL = (r"(?i)=\s*(?:error|failed)\s*=|test\s+completed\s+with\s+[^\s/]+\s*(?:/\s*\S+\s*)?"
              r"(?:failures|errors)|\btest\s+failed\b|\bfailed\s+at\b")
SMOKE_PASS = "TEST PASSED"
SMOKE_FAIL = "TEST FAILED"
# A prompt, reference or testbench larger than this skips its problem; a larger other file in an
# RTLLM design directory (reference vectors) is not copied.
MAX_FILE_BYTES = 4 * 1024 * 1024
_V2_FILE = re.compile(r"(?:^|/)(Prob\d+_[^/]+)_prompt\.txt$")
_MODULE = re.compile(r"\bmodule\s+([A-Za-z_][A-Za-z0-9_$]*)")
# A design-unit declaration (not the word "module" in prose) and the keyword that ends one.
MODULE_DECL = re.compile(r"\b(?:module|macromodule|interface|package|program)\s+[A-Za-z_][A-Za-z0-9_$]*\s*(?:#|\(|;)")
# What a module body continuation (code-complete) has and prose does not.
# Checked per ``;``-separated segment (``has_body``): one pattern with ``[^;]*;`` rescans the rest
# of the text from every keyword, quadratic on a long answer without semicolons.
_BODY_KEYWORD = re.compile(r"\b(?:assign|always\w*|wire|reg|logic|initial|case|if|for)\b")
UNIT_END = re.compile(r"\bend(?:module|interface|package|program)\b")
# Possessive info string, which never holds a backtick (CommonMark): linear on any answer (a
# backtracking one was quadratic on a long line after an unclosed fence).
_FENCE = re.compile(r"```[ \t]*+([A-Za-z0-9_+.-]*+)[^\n`]*+\n(.*?)(?:```|\Z)", re.S)
_VERILOG_LANGS = {"", "verilog", "systemverilog", "sv", "v", "vlog"}


class BenchmarkError(ValueError):
    """A benchmark path that does not hold the layout it was given as."""


def v2_task(dataset_dir_name: str) -> str:
    """``dataset_spec-to-rtl`` → ``spec-to-rtl``; ``dataset_code-complete-iccad2023`` → ``code-complete``."""
    name = dataset_dir_name.removeprefix("dataset_")
    return "code-complete" if name.startswith("code-complete") else name


def rename_module(code: str, old: str, new: str) -> str:
    return re.sub(rf"\b{re.escape(old)}\b", new, code)


def module_header(code: str, top: str) -> str | None:
    """``module <top> ( ... );`` of ``code`` (the interface a completion continues), or None."""
    m = re.search(rf"\bmodule\s+{re.escape(top)}\b.*?\)\s*;", code, re.S)
    return code[m.start() : m.end()] + "\n" if m else None


def _base(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


class BadFile(BenchmarkError):
    """A file of one problem that cannot be used (the problem is skipped, this is its reason)."""


class TooLarge(BadFile):
    """A file larger than ``MAX_FILE_BYTES``."""


def _local(path: str) -> str | None:
    """The absolute local path of ``path`` (``file://`` too); None for object storage."""
    return None if fs.is_uri(path) else fs.resolve(path)[1]


def _check_dir(path: str, flag: str) -> None:
    """``path`` must exist and be a directory (else a ``BenchmarkError`` naming ``flag``)."""
    filesystem, inner = fs.resolve(path)
    kind = filesystem.get_file_info(inner).type
    if kind == pafs.FileType.NotFound:
        raise BenchmarkError(f"{flag}: {path!r} does not exist")
    if kind != pafs.FileType.Directory:
        raise BenchmarkError(f"{flag}: {path!r} is not a directory (expected a checkout)")


def _is_dir(path: str) -> bool:
    filesystem, inner = fs.resolve(path)
    return filesystem.get_file_info(inner).type == pafs.FileType.Directory


def _list_tree(root: str) -> list[str]:
    """Every file below ``root`` (in ``fs.listdir``'s form). A local tree is walked without
    following directory links: pyarrow's recursive listing follows them, so a link to ``/`` walked
    the whole host (``/proc`` included) and a link loop ran until the path was too long."""
    local = _local(root)
    if local is None:
        return fs.listdir(root, recursive=True, files_only=True)
    out = []
    for d, _dirs, files in os.walk(local, followlinks=False):
        out += [os.path.join(d, f) for f in files]
    return sorted(out)


def read_checkout_file(path: str, root: str, *, text: bool = True) -> str | bytes:
    """The content of ``path``, a file of the checkout ``root``; ``BadFile`` naming it when it is a
    link leaving the checkout, not a regular file (a FIFO would block the read forever), larger
    than ``MAX_FILE_BYTES`` or, with ``text``, not UTF-8."""
    local, local_root = _local(path), _local(root)
    name = fs.relative(path, root) if local is None else os.path.relpath(local, local_root)
    if local is None:
        filesystem, inner = fs.resolve(path)
        info = filesystem.get_file_info(inner)
        if info.type != pafs.FileType.File:
            raise BadFile(f"{name}: not a regular file")
        if (info.size or 0) > MAX_FILE_BYTES:
            raise TooLarge(f"{name}: {info.size} bytes, larger than {MAX_FILE_BYTES}")
        raw = fs.read_bytes(path)
    else:
        real, real_root = os.path.realpath(local), os.path.realpath(local_root)
        if os.path.commonpath([real, real_root]) != real_root:
            raise BadFile(f"{name}: a link leaving the checkout (to {real})")
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise BadFile(f"{name}: cannot be read ({exc.strerror or exc})") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise BadFile(f"{name}: not a regular file")
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise TooLarge(f"{name}: larger than {MAX_FILE_BYTES} bytes")
    if not text:
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadFile(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _skip(skipped: list[dict[str, str]], benchmark: str, pid: str, reason: str) -> None:
    skipped.append({"benchmark": benchmark, "problem": pid, "reason": reason})


def _none_left(flag: str, what: str, path: str, skipped: list[dict[str, str]]) -> BenchmarkError:
    reasons = "; ".join(f"{s['problem']}: {s['reason']}" for s in skipped[:5])
    more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
    return BenchmarkError(f"{flag}: no {what} under {path!r}"
                          + (f"; {len(skipped)} skipped: {reasons}{more}" if skipped else ""))


def load_verilog_eval_v2(path: str, tasks: Sequence[str] = ("spec-to-rtl", "code-complete"),
                         skipped: list[dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """Every problem of the VerilogEval v2 checkout (or single ``dataset_*`` directory) at ``path``.

    A problem whose prompt, reference or testbench is missing or unusable (see the module doc), or
    whose id another directory of the same task already gave, is appended to ``skipped``.
    """
    flag = "benchmarks.verilog_eval_v2"
    _check_dir(path, flag)
    mine: list[dict[str, str]] = []
    if _base(path).startswith("dataset_"):
        dirs = [path.rstrip("/")]
    else:
        dirs = [p for p in fs.listdir(path) if _base(p).startswith("dataset_") and _is_dir(p)]
    problems: list[dict[str, Any]] = []
    seen: dict[str, str] = {}  # problem key -> the directory it was read from
    for d in sorted(dirs):
        task = v2_task(_base(d))
        if task not in tasks:
            continue
        benchmark = f"verilog_eval_v2/{task}"
        files = {_base(p): p for p in fs.listdir(d)}
        for name in sorted(files):
            m = _V2_FILE.search(name)
            if not m:
                continue
            pid = m.group(1)
            missing = [f"{pid}_{s}" for s in ("ref.sv", "test.sv") if f"{pid}_{s}" not in files]
            if missing:
                _skip(mine, benchmark, pid, f"no {' or '.join(missing)} in {_base(d)}")
                continue
            key = f"{benchmark}/{pid}"
            if key in seen:  # two dataset_* directories of one task (rows of one key would collide)
                _skip(mine, benchmark, pid, f"also in {seen[key]}; the problem there is kept")
                continue
            try:
                prompt, ref, test = (read_checkout_file(files[f"{pid}_{s}"], path)
                                     for s in ("prompt.txt", "ref.sv", "test.sv"))
            except BadFile as exc:
                _skip(mine, benchmark, pid, str(exc))
                continue
            seen[key] = _base(d)
            problems.append(v2_problem(benchmark, task, pid, prompt, ref, test))
    if skipped is not None:
        skipped += mine
    if not problems:
        raise _none_left(flag, f"VerilogEval v2 problems (dataset_*/ProbNNN_name_{{prompt.txt,ref.sv,test.sv}}) "
                               f"for tasks {list(tasks)}", path, mine)
    return problems


def v2_problem(benchmark: str, task: str, pid: str, prompt: str, ref: str, test: str) -> dict[str, Any]:
    header = None
    if task == "code-complete":
        header = module_header(prompt, "TopModule") or module_header(rename_module(ref, "RefModule", "TopModule"),
                                                                    "TopModule")
    return {
        "key": f"{benchmark}/{pid}", "benchmark": benchmark, "id": pid, "harness": "verilogeval", "task": task,
        "top": "TopModule", "prompt": prompt, "header": header, "answer_file": "TopModule.sv",
        "files": {"test.sv": test, "ref.sv": ref},
        "compile_argv": ["iverilog", "-Wall", "-Winfloop", "-Wno-timescale", "-g2012", "-s", "tb", "-o", "sim.vvp",
                         "test.sv", "ref.sv", "TopModule.sv"],
        "pass_regex": V2_PASS, "fail_regex": None, "verdict_regex": V2_VERDICT,
        "reference": rename_module(ref, "RefModule", "TopModule"),
    }


def load_rtllm(path: str, skipped: list[dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """Every RTLLM design (a directory with ``design_description.txt``) below ``path``.

    A design without a testbench or a ``verified_*`` reference, or with an unusable file (see the
    module doc), is appended to ``skipped``.
    """
    flag = "benchmarks.rtllm"
    _check_dir(path, flag)
    mine: list[dict[str, str]] = []
    by_dir: dict[str, list[str]] = {}
    for p in _list_tree(path):
        by_dir.setdefault(p.rsplit("/", 1)[0], []).append(p)
    problems = []
    for d, files in sorted(by_dir.items()):
        names = {_base(f): f for f in files}
        if "design_description.txt" not in names:
            continue
        pid = fs.relative(d, path) or _base(d)
        refs = sorted(n for n in names if n.startswith("verified_") and n.endswith((".v", ".sv")))
        tb = names.get("testbench.v") or names.get("testbench.sv")
        if not refs or not tb:
            _skip(mine, "rtllm", pid, "no " + " and no ".join(
                w for w, ok in (("testbench.v", tb), ("verified_*.v reference", refs)) if not ok))
            continue
        tb_name = _base(tb)
        try:
            reference = read_checkout_file(names[refs[0]], path)
            prompt, testbench = (read_checkout_file(names[n], path) for n in ("design_description.txt", tb_name))
            data: dict[str, str | bytes] = {}
            for n, f in names.items():
                if n in {"design_description.txt", tb_name} or n in refs or n.lower() in {"makefile", "readme.md"}:
                    continue
                try:
                    raw = read_checkout_file(f, path, text=False)
                except TooLarge:  # not copied: the testbench may not read it
                    continue
                data[n] = raw.decode("utf-8", "replace") if _is_text(raw) else raw
        except BadFile as exc:
            _skip(mine, "rtllm", pid, str(exc))
            continue
        top, reference = rtllm_top(reference, testbench,
                                   [_base(d), refs[0].removeprefix("verified_").rsplit(".", 1)[0]])
        problems.append({
            "key": f"rtllm/{pid}", "benchmark": "rtllm", "id": pid, "harness": "rtllm", "task": "rtllm", "top": top,
            "prompt": prompt, "header": None, "answer_file": f"{top}.v",
            "files": {tb_name: testbench, **data},
            "compile_argv": ["iverilog", "-g2012", "-o", "sim.vvp", tb_name, f"{top}.v"],
            "pass_regex": RTLLM_PASS, "fail_regex": RTLLM_FAIL, "verdict_regex": None, "reference": reference,
        })
    if skipped is not None:
        skipped += mine
    if not problems:
        raise _none_left(flag, "RTLLM designs (<design>/design_description.txt with testbench.v and verified_*.v)",
                         path, mine)
    return problems


def _identifier(name: str) -> str:
    return rf"(?<![A-Za-z0-9_$]){re.escape(name)}(?![A-Za-z0-9_$])"


def rtllm_top(reference: str, testbench: str, names: Sequence[str]) -> tuple[str, str]:
    """(the module an RTLLM design's answer must define, its reference with that module so named).

    The answer's module is the one the testbench instantiates. RTLLM v2.0 names most references
    ``verified_<design>`` while its testbench instantiates ``<design>`` (a few by yet another name:
    ``multi_pipe_4bit/verified_multi_pipe_4bit.v`` holds ``verified_multi_pipe``), and a reference
    may define helper modules first (``asyn_fifo``: ``dual_port_RAM``). So: a reference module the
    testbench uses is the top as it is; else the reference's top module (a ``verified_`` one, else
    one no other module instantiates) is renamed to the first of its own name less ``verified_``
    and ``names`` (the design's directory, its reference file's name) that the testbench uses.
    Taking the first module of the reference, as before, asked every model for a module named
    ``verified_<design>`` that the testbench never instantiates: not even the reference passed.
    """
    code, tb = _strip_comments(reference), _strip_comments(testbench)
    modules = _MODULE.findall(code)
    in_tb = set(_MODULE.findall(tb))

    def instantiated(name: str) -> bool:
        return name not in in_tb and re.search(_identifier(name), tb) is not None

    for m in modules:
        if instantiated(m):
            return m, reference
    if not modules:
        return names[-1], reference
    tops = ([m for m in modules if m.startswith("verified_")]
            or [m for m in modules if len(re.findall(_identifier(m), code)) == 1] or modules)
    top = tops[-1]
    for name in (top.removeprefix("verified_"), *names):
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", name) and instantiated(name):
            return name, rename_module(reference, top, name)
    return top, reference


def _is_text(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in raw


def has_body(text: str) -> bool:
    """Whether ``text`` reads like a module body (``endmodule``, or a statement keyword before a
    ``;``), in time linear in its length."""
    if re.search(r"\bendmodule\b", text):
        return True
    return any(_BODY_KEYWORD.search(segment) for segment in text.split(";")[:-1])


def _strip_comments(code: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", " ", code, flags=re.S)


def selected(pid: str, patterns: Sequence[str] | None) -> bool:
    """Whether problem ``pid`` matches one of ``patterns`` (fnmatch, or a substring; None: all)."""
    return not patterns or any(fnmatch.fnmatch(pid, pat) or pat in pid for pat in patterns)


def select(problems: list[dict[str, Any]], patterns: Sequence[str] | None, limit: int | None) -> list[dict[str, Any]]:
    """Problems whose id matches one of ``patterns`` (fnmatch; None: all), at most ``limit`` of each benchmark."""
    out, per = [], {}
    for p in sorted(problems, key=lambda p: p["key"]):
        if not selected(p["id"], patterns):
            continue
        if limit is not None and per.get(p["benchmark"], 0) >= limit:
            continue
        per[p["benchmark"]] = per.get(p["benchmark"], 0) + 1
        out.append(p)
    return out


# ----------------------------------------------------------------------------- prompts

def messages(problem: dict[str, Any]) -> list[dict[str, str]]:
    """The chat shown to every model for ``problem`` (the same for the base and each specialist)."""
    system = SYSTEM_PROMPTS["rtl_design"]
    top = problem["top"]
    if problem.get("messages"):
        return json.loads(json.dumps(problem["messages"]))
    if problem.get("task") == "code-complete":
        user = (f"Complete this Verilog module. Answer with the whole module, from `module {top}` to `endmodule`, "
                f"in one ```verilog block.\n\n```verilog\n{problem['prompt'].rstrip()}\n```")
    else:
        user = (f"Write a Verilog module from this specification.\n\n{problem['prompt'].rstrip()}\n\n"
                f"Answer with the complete Verilog code of module {top} in one ```verilog block.")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def extract_verilog(text: str | None, top: str | None = None, header: str | None = None) -> str | None:
    """The Verilog of a model's answer, or None when it holds none.

    Fenced blocks tagged as Verilog (or untagged) that contain ``module``; else the text from the
    first ``module`` to the last ``endmodule``; VerilogEval's ``[BEGIN]``/``[DONE]`` markers are
    honoured. With a ``header`` (code-complete), an answer that is only a module body is appended
    to the header. A missing final ``endmodule`` (output cut at max_tokens) is added back, so the
    compiler, not the extractor, judges what is left.
    """
    if not text or not text.strip():
        return None
    m = re.search(r"\[BEGIN\](.*?)(?:\[DONE\]|\Z)", text, re.S)
    if m:
        text = m.group(1)
    blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in _VERILOG_LANGS]
    with_module = [b for b in blocks if MODULE_DECL.search(b)]
    code: str | None
    if with_module:
        code = "\n".join(b.rstrip() for b in with_module) + "\n"
    elif MODULE_DECL.search(text):
        start = MODULE_DECL.search(text).start()
        ends = [e.end() for e in UNIT_END.finditer(text)]
        code = text[start : ends[-1]] + "\n" if ends and ends[-1] > start else text[start:]
    elif header and has_body(blocks[0] if blocks else text):
        code = header + (blocks[0] if blocks else text)
    else:
        return None
    if header and top and not re.search(rf"\bmodule\s+{re.escape(top)}\b", code):
        code = header + code
    last_module = [mm.start() for mm in re.finditer(r"\bmodule\b", code)]
    if last_module and not re.search(r"\bendmodule\b", code[last_module[-1] :]):
        code = code.rstrip() + "\nendmodule\n"
    return code
