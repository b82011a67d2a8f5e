"""Tool checks for generated examples: nothing is kept that a tool has not checked.

- Verilog: parses with the corpus parser (tree-sitter), compiles with ``iverilog -g2012``,
  lints with ``verilator --lint-only -Wno-fatal --timing`` (warnings pass, errors reject);
  with a testbench, ``vvp`` simulates under a time limit and must print the pass marker.
  File I/O outside the sandbox directory and ``$system`` are rejected before any tool runs.
- Yosys scripts: rejected BEFORE running when they hold a shell escape (``!``), ``exec``,
  ``plugin``/``tcl``/``python``, an external viewer/executable, or any path that is absolute,
  home-relative or climbs with ``..`` (``tee -o``, ``write_*``, ``script``, ``cd ..``); the rest
  runs with ``yosys`` on the shipped design (``assets/design``) and must exit cleanly.
- Tcl (OpenSTA/OpenROAD scripts, SDC): ``tclsh`` checks ``info complete`` in a safe interp;
  every command it would call (top level, ``[...]`` substitutions, bodies of control
  structures) must be plain Tcl or documented by the tool (list from the docs job's chunks
  of that tool, or the shipped fallback list); ``exec``/``open``/``socket``/``file``/``source``
  and dynamic command names reject.

Every tool runs through ``sandbox.run``. A rejection is a short ``area/reason`` string that
the job counts in its report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, Protocol

import pyarrow as pa

from corpus.synthesis import sandbox
from corpus.synthesis.parsing import Answer, ParseError, parse_answer
from corpus.synthesis.templates import FAIL_MARKER, PASS_MARKER, TEMPLATES, Template

ASSETS = resources.files("corpus.synthesis") / "assets"
DESIGN_FILES = ("cf_counter.v", "cf_alu.v", "cf_top.v")
DESIGN_TOP = "cf_top"
DESIGN_PORTS = "clk, rst_n, en, b[7:0], op[2:0] (inputs) and result[7:0], zero, wrap (outputs)"
COMMAND_TOOLS = ("sdc", "opensta", "openroad")

# Rows leaving the validation stage (one per generated answer).
CANDIDATE_SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("round", pa.int32()),
        pa.field("phase", pa.string(), nullable=False),
        pa.field("task", pa.string()),
        pa.field("template_id", pa.string()),
        pa.field("seed_json", pa.string()),
        pa.field("reason", pa.string()),  # null when every check passed
        pa.field("detail", pa.string()),  # tool output excerpt for a rejection
        pa.field("instruction", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("prompt_tokens", pa.int32()),
        pa.field("completion_tokens", pa.int32()),
    ]
)

TCL_BUILTINS = frozenset(
    "set unset puts expr if for foreach while proc return break continue incr append lappend list "
    "llength lindex lrange lsort lsearch lreplace linsert lassign lmap lreverse lrepeat lset concat join "
    "split string format scan regexp regsub array dict catch error info global upvar variable switch "
    "subst eval uplevel try throw namespace apply clock".split()
)
UNSAFE_TCL = frozenset(
    "exec open socket file cd load unload source interp chan fconfigure fcopy glob pwd exit vwait after "
    "encoding package auto_load auto_execok".split()
)

VERILOG_SYSTEM = re.compile(r"\$system\b")
VERILOG_FILE_IO = re.compile(
    r"\$(fopen|readmemh|readmemb|writememh|writememb|dumpfile|sdf_annotate)\s*\(\s*([^,)]*)")
YOSYS_FORBIDDEN = frozenset({"exec", "shell", "plugin", "tcl", "python", "script_tcl"})
YOSYS_FORBIDDEN_OPTS = frozenset({"-viewer", "-exe"})


class Parser(Protocol):
    def parse(self, text: str, path: str = "") -> list[dict[str, Any]]: ...


# ----------------------------------------------------------------------------- Tcl scanning

class TclSyntaxError(ValueError):
    pass


def _match_brace(s: str, i: int) -> int:
    """Index just past the brace that closes the one at ``s[i]``."""
    depth = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise TclSyntaxError("missing close-brace")


def _match_bracket(s: str, i: int) -> int:
    """Index just past the bracket that closes the one at ``s[i]`` (braces nest inside)."""
    depth = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            i = _match_brace(s, i)
            continue
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise TclSyntaxError("missing close-bracket")


@dataclass
class _Word:
    kind: str  # brace | quote | bare
    text: str

    @property
    def literal(self) -> bool:
        return self.kind == "brace" or ("$" not in self.text and "[" not in self.text)


def _word(s: str, i: int, names: list[str]) -> tuple[_Word, int]:
    n = len(s)
    if s.startswith("{*}", i) and i + 3 < n and not s[i + 3].isspace():
        i += 3
    if s[i] == "{":
        end = _match_brace(s, i)
        return _Word("brace", s[i + 1 : end - 1]), end
    if s[i] == '"':
        j = i + 1
        while j < n and s[j] != '"':
            if s[j] == "\\":
                j += 2
                continue
            if s[j] == "[":
                end = _match_bracket(s, j)
                _scan(s[j + 1 : end - 1], names)
                j = end
                continue
            j += 1
        if j >= n:
            raise TclSyntaxError("missing close-quote")
        return _Word("quote", s[i + 1 : j]), j + 1
    j = i
    while j < n and s[j] not in " \t\r\n;":
        if s[j] == "\\":
            j += 2
            continue
        if s[j] == "[":
            end = _match_bracket(s, j)
            _scan(s[j + 1 : end - 1], names)
            j = end
            continue
        j += 1
    return _Word("bare", s[i:j]), j


def _scan_expr(word: _Word, names: list[str]) -> None:
    if word.kind != "brace":
        return  # substitutions of unbraced words were scanned while reading the word
    s, i = word.text, 0
    while i < len(s):
        if s[i] == "\\":
            i += 2
            continue
        if s[i] == "[":
            end = _match_bracket(s, i)
            _scan(s[i + 1 : end - 1], names)
            i = end
            continue
        i += 1


def _scan_body(word: _Word, names: list[str]) -> None:
    if word.kind in {"brace", "quote"}:
        _scan(word.text, names)


def _control(words: list[_Word], names: list[str]) -> None:
    """Recurse into the script/expression arguments of Tcl control structures."""
    name = words[0].text.lstrip(":")
    args = words[1:]
    if name == "if":
        k = 0
        while k < len(args):
            _scan_expr(args[k], names)
            k += 1
            if k < len(args) and args[k].text == "then":
                k += 1
            if k < len(args):
                _scan_body(args[k], names)
                k += 1
            if k < len(args) and args[k].text == "elseif":
                k += 1
                continue
            if k < len(args) and args[k].text == "else":
                k += 1
            if k < len(args):
                _scan_body(args[k], names)
            break
    elif name == "while" and len(args) >= 2:
        _scan_expr(args[0], names)
        _scan_body(args[1], names)
    elif name == "for" and len(args) >= 4:
        _scan_body(args[0], names)
        _scan_expr(args[1], names)
        _scan_body(args[2], names)
        _scan_body(args[3], names)
    elif name in {"foreach", "lmap"} and args:
        _scan_body(args[-1], names)
    elif name == "proc" and len(args) == 3:
        _scan_body(args[2], names)
    elif name in {"catch", "time", "eval", "uplevel", "subst"} and args:
        for a in args[:1] if name == "catch" else args[-1:]:
            _scan_body(a, names)
    elif name == "expr":
        for a in args:
            _scan_expr(a, names)
    elif name == "try" and args:
        _scan_body(args[0], names)
        for k, a in enumerate(args[1:], start=1):
            if a.text == "finally" and k + 1 < len(args):
                _scan_body(args[k + 1], names)
        # handlers: on code vars body / trap pattern vars body
        k = 1
        while k < len(args):
            if args[k].text in {"on", "trap"} and k + 3 < len(args):
                _scan_body(args[k + 3], names)
                k += 4
            else:
                k += 1
    elif name == "dict" and len(args) >= 4 and args[0].text in {"for", "map"}:
        _scan_body(args[3], names)
    elif name == "namespace" and len(args) >= 3 and args[0].text == "eval":
        _scan_body(args[-1], names)
    elif name == "switch" and args:
        last = args[-1]
        if last.kind == "brace":
            inner: list[_Word] = []
            for cmd in _commands(last.text, names):
                inner.extend(cmd)
            for k in range(1, len(inner), 2):
                if inner[k].text != "-":
                    _scan_body(inner[k], names)
        else:
            for k in range(len(args) - 1, 0, -2):
                if args[k].text != "-" and args[k].kind == "brace":
                    _scan_body(args[k], names)


def _commands(script: str, names: list[str]) -> list[list[_Word]]:
    """Split ``script`` into commands (lists of words), scanning ``[...]`` on the way."""
    cmds: list[list[_Word]] = []
    s, i, n = script, 0, len(script)
    while i < n:
        while i < n and (s[i] in " \t\r\n;" or (s[i] == "\\" and i + 1 < n and s[i + 1] == "\n")):
            i += 2 if s[i] == "\\" else 1
        if i >= n:
            break
        if s[i] == "#":
            while i < n and s[i] != "\n":
                i += 2 if s[i] == "\\" else 1
            continue
        words: list[_Word] = []
        while i < n and s[i] not in "\n;":
            if s[i] in " \t\r":
                i += 1
                continue
            if s[i] == "\\" and i + 1 < n and s[i + 1] == "\n":
                i += 2
                continue
            w, i = _word(s, i, names)
            words.append(w)
        if words:
            cmds.append(words)
    return cmds


def _scan(script: str, names: list[str]) -> None:
    for words in _commands(script, names):
        first = words[0]
        names.append(first.text.lstrip(":") if first.literal else "<dynamic>")
        if first.literal:
            _control(words, names)


def tcl_command_names(script: str) -> list[str]:
    """Every command ``script`` would call, in order (``<dynamic>`` for computed names).

    Raises ``TclSyntaxError`` on unbalanced braces, brackets or quotes.
    """
    names: list[str] = []
    _scan(script, names)
    return names


TCL_CHECKER = r"""
set f [open candidate.tcl r]
set text [read $f]
close $f
set safe [interp create -safe]
if {![interp eval $safe [list info complete $text]]} {
    puts "INCOMPLETE"
    exit 3
}
puts "COMPLETE"
"""


# ------------------------------------------------------------------------ command lists

def _fallback(tool: str) -> set[str]:
    text = (ASSETS / "commands" / f"{tool}.txt").read_text()
    return {ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")}


CODE_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
COMMAND_TOKEN = re.compile(r"^[a-z][a-z0-9_]*_[a-z0-9_]+$")


def commands_from_docs(rows: Iterable[Mapping[str, Any]]) -> dict[str, set[str]]:
    """Commands mentioned in code blocks of doc chunks, per tool (``opensta``, ``openroad``).

    A command is the first word of a code line, or the word after ``[``, when it looks like
    an EDA command (lower case with an underscore: ``report_checks``, ``get_ports``).
    """
    found: dict[str, set[str]] = {}
    for row in rows:
        tool = (row.get("tool") or row.get("source") or "").lower()
        if tool not in {"opensta", "openroad"}:
            continue
        for block in CODE_FENCE.findall(row.get("text") or ""):
            for line in block.splitlines():
                words = line.strip().split()
                cands = words[:1] + [w.lstrip("[") for w in words if w.startswith("[")]
                for w in cands:
                    w = w.strip("[];{}")
                    if COMMAND_TOKEN.match(w) and w not in UNSAFE_TCL:
                        found.setdefault(tool, set()).add(w)
    return found


def command_lists(docs_rows: Iterable[Mapping[str, Any]] | None = None, source: str = "auto",
                  min_docs_commands: int = 5) -> tuple[dict[str, set[str]], dict[str, dict[str, Any]]]:
    """Allowed (non-builtin) commands per Tcl flavour, and where each list came from.

    ``source``: ``fallback`` (shipped lists), ``docs`` (docs job output only; a tool with
    fewer than ``min_docs_commands`` found falls back), ``auto`` (docs ∪ fallback).
    OpenROAD embeds OpenSTA, and both accept SDC: the lists nest accordingly.
    """
    docs = commands_from_docs(docs_rows or []) if source != "fallback" else {}
    base: dict[str, set[str]] = {}
    info: dict[str, dict[str, Any]] = {}
    for tool in COMMAND_TOOLS:
        fb = _fallback(tool)
        from_docs = docs.get(tool, set()) if tool != "sdc" else set()
        if source == "docs" and len(from_docs) >= min_docs_commands:
            base[tool], origin = set(from_docs), "docs"
        elif source == "auto" and from_docs:
            base[tool], origin = fb | from_docs, "docs+fallback"
        else:
            base[tool], origin = fb, "fallback"
        info[tool] = {"source": origin, "from_docs": len(from_docs), "n": len(base[tool])}
    allowed = {
        "sdc": base["sdc"],
        "opensta": base["opensta"] | base["sdc"],
        "openroad": base["openroad"] | base["opensta"] | base["sdc"],
    }
    return allowed, info


# --------------------------------------------------------------------------- validator

@dataclass(frozen=True)
class Settings:
    """What the validator needs; plain data so it ships to Ray actors."""

    timeout_s: float = 30.0
    sim_timeout_s: float = 10.0
    memory_mb: int = 2048
    max_output_bytes: int = 256 * 1024
    pass_marker: str = PASS_MARKER
    fail_marker: str = FAIL_MARKER
    grammar: str = "systemverilog"
    allowed_commands: dict[str, list[str]] = field(default_factory=dict)  # tool -> commands

    def limits(self, timeout_s: float | None = None) -> sandbox.Limits:
        return sandbox.Limits(timeout_s=timeout_s or self.timeout_s, memory_mb=self.memory_mb,
                              max_output_bytes=self.max_output_bytes)


def _excerpt(text: str, n: int = 600) -> str:
    text = text.strip()
    return text if len(text) <= n else text[:n] + " ..."


class Validator:
    """Checks one parsed answer against its template; ``check`` returns a reason or None."""

    def __init__(self, settings: Settings | None = None, parser: Parser | None = None) -> None:
        self.settings = settings or Settings()
        self._parser = parser
        self.design = {name: (ASSETS / "design" / name).read_text() for name in DESIGN_FILES}
        allowed = self.settings.allowed_commands or {k: sorted(v) for k, v in command_lists()[0].items()}
        self.allowed = {tool: frozenset(cmds) for tool, cmds in allowed.items()}
        self.detail = ""

    @property
    def parser(self) -> Parser:
        if self._parser is None:
            from corpus.verilog import VerilogParser

            self._parser = VerilogParser(grammar=self.settings.grammar)
        return self._parser

    def _reject(self, reason: str, detail: str = "") -> str:
        self.detail = _excerpt(detail)
        return reason

    # -- Verilog
    def check_verilog(self, code: str, testbench: str | None = None) -> str | None:
        for text in filter(None, (code, testbench)):
            if VERILOG_SYSTEM.search(text):
                return self._reject("verilog/unsafe_system_task", "$system")
            for call, arg in VERILOG_FILE_IO.findall(text):
                arg = arg.strip()
                lit = re.fullmatch(r'"([^"\\]*)"', arg)
                if not lit or lit.group(1).startswith(("/", "~")) or ".." in lit.group(1) or "/" in lit.group(1):
                    return self._reject("verilog/unsafe_file_io", f"${call}({arg})")
        units = self.parser.parse(code, path="answer.sv")
        if not units:
            return self._reject("verilog/no_module", "the corpus parser found no design unit")
        bad = [u.get("name") for u in units if not u.get("parse_ok", False)]
        if bad:
            return self._reject("verilog/parse", f"units with syntax errors: {bad}")
        files = {"design.sv": code}
        argv = ["iverilog", "-g2012", "-o", "sim.vvp", "design.sv"]
        if testbench:
            files["tb.sv"] = testbench
            argv += ["tb.sv", "-s", "tb"]
        r = sandbox.run(argv, files, limits=self.settings.limits(), collect=["sim.vvp"] if testbench else ())
        if not r.ok:
            return self._reject("verilog/iverilog_timeout" if r.timed_out else "verilog/iverilog", r.output)
        lint = sandbox.run(["verilator", "--lint-only", "-Wno-fatal", "--timing", "design.sv"], files,
                           limits=self.settings.limits())
        if not lint.ok:
            return self._reject("verilog/verilator_timeout" if lint.timed_out else "verilog/verilator", lint.output)
        if testbench:
            if "sim.vvp" not in r.files:
                return self._reject("verilog/iverilog", "no simulation image produced")
            sim = sandbox.run(["vvp", "-n", "sim.vvp"], {"sim.vvp": r.files["sim.vvp"]},
                              limits=self.settings.limits(self.settings.sim_timeout_s))
            if sim.timed_out:
                return self._reject("verilog/sim_timeout", sim.output)
            if sim.output_truncated:
                return self._reject("verilog/sim_output_cap", sim.output)
            if self.settings.fail_marker in sim.output or self.settings.pass_marker not in sim.output:
                return self._reject("verilog/sim_fail", sim.output)
        return None

    # -- Yosys
    def yosys_static(self, script: str) -> str | None:
        """Reason a Yosys script may not run at all (shell escape, paths outside cwd), or None."""
        for raw in script.splitlines():
            line = raw.split("#", 1)[0].strip()
            for cmd in filter(None, (c.strip() for c in line.split(";"))):
                if cmd.startswith("!"):
                    return self._reject("yosys/shell_escape", cmd)
                words = cmd.split()
                if words[0] in YOSYS_FORBIDDEN:
                    return self._reject("yosys/shell_escape" if words[0] in {"exec", "shell"}
                                        else "yosys/forbidden_command", cmd)
                if YOSYS_FORBIDDEN_OPTS & set(words):
                    return self._reject("yosys/forbidden_command", cmd)
                for w in words[1:]:
                    w = w.strip("\"'")
                    if w.startswith(("/", "~")) or w == ".." or w.startswith("../") or "/../" in w or w.endswith("/.."):
                        return self._reject("yosys/path_outside_cwd", cmd)
        return None

    def check_yosys(self, script: str) -> str | None:
        reason = self.yosys_static(script)
        if reason:
            return reason
        if not any(name in script for name in DESIGN_FILES):
            return self._reject("yosys/no_design", "the script reads none of the shipped design files")
        r = sandbox.run(["yosys", "-q", "-s", "script.ys"], {**self.design, "script.ys": script},
                        limits=self.settings.limits())
        if r.timed_out:
            return self._reject("yosys/timeout", r.output)
        if r.returncode != 0 or "ERROR:" in r.output:
            return self._reject("yosys/error", r.output)
        return None

    # -- Tcl / SDC
    def check_tcl(self, script: str, tool: str) -> str | None:
        try:
            names = tcl_command_names(script)
        except TclSyntaxError as exc:
            return self._reject("tcl/syntax", str(exc))
        r = sandbox.run(["tclsh", "checker.tcl"], {"checker.tcl": TCL_CHECKER, "candidate.tcl": script},
                        limits=self.settings.limits())
        if not r.ok or "COMPLETE" not in r.stdout or "INCOMPLETE" in r.stdout:
            return self._reject("tcl/syntax", r.output or "tclsh: incomplete script")
        if not names:
            return self._reject("tcl/empty", "no commands")
        allowed = self.allowed.get(tool, frozenset())
        for name in names:
            if name == "<dynamic>":
                return self._reject("tcl/dynamic_command", "a command name computed at run time")
            if name in UNSAFE_TCL:
                return self._reject("tcl/unsafe_command", name)
            if name not in TCL_BUILTINS and name not in allowed:
                return self._reject("tcl/unknown_command", f"{name} is not documented for {tool}")
        return None

    # -- whole answer
    def check(self, answer: Answer, template: Template) -> str | None:
        self.detail = ""
        kinds = {b.kind for b in answer.blocks}
        if "other" in kinds:
            langs = sorted({b.lang for b in answer.blocks if b.kind == "other"})
            return self._reject("code/unsupported_lang", f"cannot validate code tagged {langs}")
        for kind in template.requires:
            if kind not in kinds:
                return self._reject(f"code/missing_{kind}", f"the answer has no ```{kind} block")
        if template.testbench and not answer.testbench:
            return self._reject("verilog/missing_testbench")
        verilog = answer.blocks_of("verilog")
        if verilog:
            reason = self.check_verilog("\n".join(b.code for b in verilog),
                                        answer.testbench if template.testbench else None)
            if reason:
                return reason
        for block in answer.blocks_of("yosys"):
            reason = self.check_yosys(block.code)
            if reason:
                return reason
        for block in answer.blocks:
            if block.kind in {"tcl", "sdc"}:
                tool = "sdc" if block.kind == "sdc" else (template.tool if template.tool in self.allowed else "openroad")
                reason = self.check_tcl(block.code, tool)
                if reason:
                    return reason
        return None


def design_context() -> dict[str, str]:
    """How templates describe the shipped design to the model."""
    return {"files": ", ".join(DESIGN_FILES), "top": DESIGN_TOP, "ports": DESIGN_PORTS}


class ValidateStage:
    """Callable class for ``map_batches``: generated rows → ``CANDIDATE_SCHEMA`` rows.

    Builds the validator (parser, design files, command lists) once per actor.
    """

    def __init__(self, settings: dict[str, Any] | None = None, parser: Parser | None = None,
                 load_parser: bool = True) -> None:
        self.validator = Validator(Settings(**(settings or {})), parser=parser)
        if load_parser:  # once per actor, so a missing parser fails the stage at start-up
            self.validator.parser  # noqa: B018

    def __call__(self, batch: pa.Table | Mapping[str, Sequence[Any]]) -> pa.Table:
        rows = batch.to_pylist() if isinstance(batch, pa.Table) else [
            dict(zip(batch.keys(), vals)) for vals in zip(*batch.values())]
        return pa.Table.from_pylist([validate_row(r, self.validator) for r in rows], schema=CANDIDATE_SCHEMA)


def validate_row(row: Mapping[str, Any], validator: Validator) -> dict[str, Any]:
    """One generated row → one candidate row (``reason`` None means every check passed)."""
    out = {k: _plain(row.get(k)) for k in ("prompt_id", "round", "phase", "task", "template_id", "seed_json",
                                            "prompt_tokens", "completion_tokens")}
    out.update(reason=None, detail=None, instruction=None, answer=None)
    template = TEMPLATES.get(out["template_id"] or "")
    error = _plain(row.get("engine_error"))
    if error:
        out.update(reason="engine/error", detail=_excerpt(str(error)))
        return out
    if template is None:
        out.update(reason="engine/unknown_template", detail=str(out["template_id"]))
        return out
    try:
        answer = parse_answer(_plain(row.get("generated_text")), require_testbench=template.testbench)
    except ParseError as exc:
        out.update(reason=f"malformed/{exc.reason}", detail=_excerpt(exc.detail))
        return out
    try:
        reason = validator.check(answer, template)
    except sandbox.SandboxError as exc:
        reason, validator.detail = "tool/unavailable", str(exc)
    out.update(reason=reason, detail=validator.detail or None, instruction=answer.instruction,
               answer=answer.answer)
    return out


def _plain(value: Any) -> Any:
    """numpy scalars (from numpy batches) → Python values."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (ValueError, AttributeError):
            return value
    return value


def settings_dict(settings: Settings) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(settings)))
