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
  simulation directory too. The answer is the module the reference defines. A pass prints
  ``Your Design Passed`` (any case). Benchmark key ``rtllm``.

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
import re
from collections.abc import Sequence
from typing import Any

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
RTLLM_FAIL = (r"(?i)=+\s*(?:error|failed)\s*=+|test\s+completed\s+with\s+\S+\s*(?:/\s*\S+\s*)?(?:failures|errors)"
              r"|\btest\s+failed\b|\bfailed\s+at\b")
SMOKE_PASS = "TEST PASSED"
SMOKE_FAIL = "TEST FAILED"
MAX_DATA_FILE_BYTES = 4 * 1024 * 1024  # larger files in an RTLLM design directory are not copied
_V2_FILE = re.compile(r"(?:^|/)(Prob\d+_[^/]+)_prompt\.txt$")
_MODULE = re.compile(r"\bmodule\s+([A-Za-z_][A-Za-z0-9_$]*)")
# A design-unit declaration (not the word "module" in prose) and the keyword that ends one.
MODULE_DECL = re.compile(r"\b(?:module|macromodule|interface|package|program)\s+[A-Za-z_][A-Za-z0-9_$]*\s*(?:#|\(|;)")
# What a module body continuation (code-complete) has and prose does not.
_BODY = re.compile(r"\bendmodule\b|\b(?:assign|always\w*|wire|reg|logic|initial|case|if|for)\b[^;]*;", re.S)
UNIT_END = re.compile(r"\bend(?:module|interface|package|program)\b")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
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


def load_verilog_eval_v2(path: str, tasks: Sequence[str] = ("spec-to-rtl", "code-complete")) -> list[dict[str, Any]]:
    """Every problem of the VerilogEval v2 checkout (or single ``dataset_*`` directory) at ``path``."""
    if not fs.exists(path):
        raise BenchmarkError(f"benchmarks.verilog_eval_v2: {path!r} does not exist")
    if _base(path).startswith("dataset_"):
        dirs = [path.rstrip("/")]
    else:
        dirs = [p for p in fs.listdir(path) if _base(p).startswith("dataset_")]
    problems = []
    for d in sorted(dirs):
        task = v2_task(_base(d))
        if task not in tasks:
            continue
        files = {_base(p): p for p in fs.listdir(d)}
        for name in sorted(files):
            m = _V2_FILE.search(name)
            if not m:
                continue
            pid = m.group(1)
            ref, test = files.get(f"{pid}_ref.sv"), files.get(f"{pid}_test.sv")
            if not ref or not test:
                continue
            problems.append(v2_problem(f"verilog_eval_v2/{task}", task, pid, fs.read_text(files[name]),
                                       fs.read_text(ref), fs.read_text(test)))
    if not problems:
        raise BenchmarkError(f"benchmarks.verilog_eval_v2: no VerilogEval v2 problems (dataset_*/ProbNNN_name_"
                             f"{{prompt.txt,ref.sv,test.sv}}) for tasks {list(tasks)} under {path!r}")
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


def load_rtllm(path: str) -> list[dict[str, Any]]:
    """Every RTLLM design (a directory with ``design_description.txt``) below ``path``."""
    if not fs.exists(path):
        raise BenchmarkError(f"benchmarks.rtllm: {path!r} does not exist")
    listed = fs.listdir(path, recursive=True)
    by_dir: dict[str, list[str]] = {}
    for p in listed:
        by_dir.setdefault(p.rsplit("/", 1)[0], []).append(p)
    problems = []
    for d, files in sorted(by_dir.items()):
        names = {_base(f): f for f in files}
        if "design_description.txt" not in names:
            continue
        refs = sorted(n for n in names if n.startswith("verified_") and n.endswith((".v", ".sv")))
        tb = names.get("testbench.v") or names.get("testbench.sv")
        if not refs or not tb:
            continue
        reference = fs.read_text(names[refs[0]])
        m = _MODULE.search(_strip_comments(reference))
        top = m.group(1) if m else refs[0].removeprefix("verified_").rsplit(".", 1)[0]
        data: dict[str, str | bytes] = {}
        for n, f in names.items():
            if n in {"design_description.txt", _base(tb)} or n in refs or n.lower() in {"makefile", "readme.md"}:
                continue
            raw = fs.read_bytes(f)
            if len(raw) <= MAX_DATA_FILE_BYTES:
                data[n] = raw.decode("utf-8", "replace") if _is_text(raw) else raw
        pid = fs.relative(d, path) or _base(d)
        tb_name = _base(tb)
        problems.append({
            "key": f"rtllm/{pid}", "benchmark": "rtllm", "id": pid, "harness": "rtllm", "task": "rtllm", "top": top,
            "prompt": fs.read_text(names["design_description.txt"]), "header": None, "answer_file": f"{top}.v",
            "files": {tb_name: fs.read_text(tb), **data},
            "compile_argv": ["iverilog", "-g2012", "-o", "sim.vvp", tb_name, f"{top}.v"],
            "pass_regex": RTLLM_PASS, "fail_regex": RTLLM_FAIL, "verdict_regex": None, "reference": reference,
        })
    if not problems:
        raise BenchmarkError(f"benchmarks.rtllm: no RTLLM designs (<design>/design_description.txt with testbench.v "
                             f"and verified_*.v) under {path!r}")
    return problems


def _is_text(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in raw


def _strip_comments(code: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", " ", code, flags=re.S)


def select(problems: list[dict[str, Any]], patterns: Sequence[str] | None, limit: int | None) -> list[dict[str, Any]]:
    """Problems whose id matches one of ``patterns`` (fnmatch; None: all), at most ``limit`` of each benchmark."""
    out, per = [], {}
    for p in sorted(problems, key=lambda p: p["key"]):
        if patterns and not any(fnmatch.fnmatch(p["id"], pat) or pat in p["id"] for pat in patterns):
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
    elif header and _BODY.search(blocks[0] if blocks else text):
        code = header + (blocks[0] if blocks else text)
    else:
        return None
    if header and top and not re.search(rf"\bmodule\s+{re.escape(top)}\b", code):
        code = header + code
    last_module = [mm.start() for mm in re.finditer(r"\bmodule\b", code)]
    if last_module and not re.search(r"\bendmodule\b", code[last_module[-1] :]):
        code = code.rstrip() + "\nendmodule\n"
    return code
