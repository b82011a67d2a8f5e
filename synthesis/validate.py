"""Tool checks for generated examples: nothing is kept that a tool has not checked.

Model-written code is hostile input. The static checks here are a first filter that parses
what the tool parses and *explains* each rejection; the sandbox (``sandbox.run``) is the
security boundary. A rejection is a short ``area/reason`` string that the job counts, plus a
``detail`` of at most ``DETAIL_CHARS`` characters that is either written by the checker or
made of tool-output lines that name the sandbox's own files, so nothing read from outside
the working directory can reach ``report.json``.

- Verilog (``verilog_problem``): every ```include`` names a relative file inside the working
  directory; system tasks are checked on the token stream of the text (comments and strings
  removed, so ``$fopen/**/(`` is ``$fopen``) AND of its ``corpus.preprocess`` expansion
  (macros, token pasting), against an allowlist: file I/O (``$fopen*``, ``$readmem*``,
  ``$writemem*``, ``$dumpfile``, ``$fscanf``, ``$fgets``, ...), ``$system`` and unknown
  (VPI) tasks reject; a preprocessing error or limit rejects; a macro left unexpanded
  rejects. Then the corpus parser (tree-sitter), ``iverilog -g2012`` and ``verilator
  --lint-only`` run; with a testbench, the compiled image's system calls (``%vpi_call``
  names, what ``vvp`` will really run) are checked against the same allowlist before
  ``vvp`` simulates under a time limit and must print the pass marker.
- Yosys scripts (``yosys_problem``): split into commands exactly as Yosys does
  (``yosys_commands``: lines with ``\\`` continuation and ``label:`` prefixes, words split on
  whitespace, ``"..."`` words, ``;`` ending a command only at a word's end, ``#`` a comment
  only at a word's start, ``!`` a shell only at a line's start); shell escapes, commands that
  run programs or other scripts (``exec``, ``shell``, ``script``, ``tcl``, ``plugin``, ``show``
  unless ``-format dot``, ``-exe``/``-script``/``-viewer`` options, ...), here-documents and
  ``write_file`` reject, and wrapper commands (``tee``, ``debug``, ``trace``, ``equiv_opt``)
  are checked recursively on the command they run. Every word is checked as a potential path
  (absolute, ``~``, ``..`` anywhere, also after ``-I``/``=``) and for shell metacharacters
  (`````, ``$(``, ``|``, ``&``, ``>``, ``<``, inner ``;``). The rest runs with ``yosys`` on the
  shipped design (``assets/design``) and must exit cleanly.
- Tcl (OpenSTA/OpenROAD scripts, SDC): ``tcl_problem`` is a bounded static pass over Tcl's
  word syntax (``tcl_command_names``) that gives a readable reason (syntax, nesting, unsafe
  or unknown command, computed command names, unsafe command names used as words); then
  ``assets/tcl_checker.tcl`` EXECUTES the script with ``tclsh`` (in the sandbox) inside a
  safe interpreter where only pure Tcl and recording aliases of the allowed tool commands
  exist, every branch and loop body runs once, and anything else that is reached (``exec``
  via ``eval``, ``apply``, ``subst``, ``lsort -command``, ``$c``, ...) is reported by name.
  That run decides. It also checks what the script MEANS (``synthesis.signatures``): every
  documented command's options against its signature (``assets/signatures.json``, extended
  from the docs job's chunks: an invented option, an option without its value, a value that
  is not a number, a negative load or transition, a zero period are rejections), its object
  names against the shipped design as Yosys reads it (``get_ports nope`` or ``-from u_nope``
  is ``tcl/no_such_port``/``no_such_cell``/...), clocks against those the SDC created
  before use, and a few rules (an input delay that is negative without ``-min`` or not less
  than its clock's period, an input delay on an output port, an exception with no
  ``-from``/``-to``/``-through``, a setup multicycle of 0).

Every parse of model output is bounded (size, nesting, work), and ``validate_row`` turns any
unexpected exception into the rejection ``internal/<ExceptionType>``: one bad reply is one
rejection, never an error that ends the run.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, Protocol

import pyarrow as pa

from synthesis import sandbox, signatures
from synthesis.parsing import Answer, ParseError, parse_answer
from synthesis.templates import FAIL_MARKER, PASS_MARKER, TEMPLATES, Template

ASSETS = resources.files("synthesis") / "assets"
DESIGN_FILES = ("cf_counter.v", "cf_alu.v", "cf_top.v")
DESIGN_TOP = "cf_top"
DESIGN_PORTS = "clk, rst_n, en, b[7:0], op[2:0] (inputs) and result[7:0], zero, wrap (outputs)"
COMMAND_TOOLS = ("sdc", "opensta", "openroad")
DETAIL_CHARS = 300  # a rejection detail is at most this long
MAX_CODE_CHARS = 64_000  # one code block (Verilog, Yosys or Tcl) checked at most this long

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
        pa.field("detail", pa.string()),  # checker summary or tool lines about the answer's own files
        pa.field("instruction", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("prompt_tokens", pa.int32()),
        pa.field("completion_tokens", pa.int32()),
    ]
)


class Parser(Protocol):
    def parse(self, text: str, path: str = "") -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Rejection:
    """Why a piece of code is not kept: ``reason`` is counted, ``detail`` explains it."""

    reason: str
    detail: str = ""


def cap(text: str, n: int = DETAIL_CHARS) -> str:
    """``text`` stripped and cut to ``n`` characters (with `` ...`` when cut)."""
    text = text.strip()
    return text if len(text) <= n else text[: max(0, n - 4)] + " ..."


def tool_detail(output: str, own_files: Iterable[str], summary: str, *, extra: re.Pattern[str] | None = None) -> str:
    """A rejection detail from tool output that cannot carry content from outside the sandbox.

    Keeps only the lines that name one of ``own_files`` (the files the validator put in the
    sandbox) or match ``extra`` (e.g. Yosys's ``ERROR:`` lines), capped; ``summary`` (written
    by the checker) when no line qualifies.
    """
    names = [n for n in own_files if n]
    kept = [ln.strip() for ln in output.splitlines()
            if any(n in ln for n in names) or (extra is not None and extra.search(ln))]
    text = " | ".join(ln for ln in kept if ln)
    return cap(f"{summary}: {text}" if text else summary)


# ============================================================================== Verilog

# System tasks and functions a design or testbench may call: printing to stdout, time,
# maths, randomness, assertions, plusargs, $dumpvars into the sandbox's dump.vcd. The
# $f* printing tasks are safe because $fopen is not: the only open descriptors are
# stdout/stderr.
VERILOG_SAFE_TASKS = frozenset(
    """
    display displayb displayh displayo write writeb writeh writeo strobe strobeb strobeh strobeo
    monitor monitorb monitorh monitoro monitoron monitoroff
    fdisplay fdisplayb fdisplayh fdisplayo fwrite fwriteb fwriteh fwriteo fstrobe fstrobeb fstrobeh fstrobeo
    fmonitor fmonitorb fmonitorh fmonitoro fflush fclose
    finish stop exit time stime realtime printtimescale timeformat
    random urandom urandom_range dist_uniform dist_normal dist_exponential dist_poisson dist_chi_square dist_t
    dist_erlang
    signed unsigned clog2 bits size left right low high increment dimensions unpacked_dimensions
    countones onehot onehot0 isunknown countbits isunbounded
    rtoi itor realtobits bitstoreal shortrealtobits bitstoshortreal
    ln log10 exp sqrt pow floor ceil sin cos tan asin acos atan atan2 hypot sinh cosh tanh asinh acosh atanh
    error warning info fatal sformat sformatf swrite swriteb swriteh swriteo sscanf
    cast typename past rose fell stable changed sampled
    test$plusargs value$plusargs
    dumpvars dumpon dumpoff dumpall dumpflush dumplimit
    assertoff asserton assertkill unit
    """.split()
)
# Reads or writes files, or reaches the host: named as such in the rejection.
VERILOG_FILE_IO = re.compile(
    r"^\$(?:f\w*|s?readmem\w*|writemem\w*|dump\w*|sdf_annotate|rewind|ungetc|save|restart|incsave|input|log|nolog|"
    r"key|nokey|list|getenv|readmempath)$")
VERILOG_HOST = frozenset({"$system", "$getenv"})
# Verilog's lexer, as far as the checks need it: comments, escaped identifiers (``\\x" ``
# may hold quotes and ``//`` and end at iverilog's whitespace, backspace included; ``\\$name``
# is a system name to iverilog), strings, macro uses, identifiers (``a$b`` is one) and system
# names. Whichever starts first wins, as in the real lexer, so a ``$name`` inside a string,
# a comment or an identifier is not a call, and whitespace or comments between ``$name``
# and ``(`` do not matter.
_V_LEX = re.compile(
    r'//[^\n]*|/\*.*?(?:\*/|\Z)|\\(\$[A-Za-z0-9_$]+)?[^ \t\b\f\r\n]*|"(?:\\.|[^"\\\n])*"?'
    r"|`([A-Za-z_][A-Za-z0-9_$]*)|[A-Za-z_][A-Za-z0-9_$]*|(\$[A-Za-z0-9_$]+)", re.S)
_V_DIRECTIVES = frozenset(
    "include define undef ifdef ifndef elsif else endif timescale default_nettype resetall celldefine "
    "endcelldefine line pragma begin_keywords end_keywords unconnected_drive nounconnected_drive "
    "undefineall __FILE__ __LINE__".split())
_V_DPI = re.compile(r"\b(?:import|export)\s*\"DPI")
_VVP_CALL = re.compile(r'"(\$[A-Za-z0-9_$]+)"')


@dataclass
class _VerilogTokens:
    system: list[str] = field(default_factory=list)  # $names called, in order
    macros: list[str] = field(default_factory=list)  # `names used that are not directives
    includes: list[str] = field(default_factory=list)  # what follows each `include, to the line end


def verilog_tokens(text: str) -> _VerilogTokens:
    """System names, macro uses and ```include`` arguments of Verilog ``text``, lexed."""
    out = _VerilogTokens()
    for m in _V_LEX.finditer(text):
        # an escaped name that starts with ``$`` (``\\$fopen ``) is compiled by iverilog as the
        # system task itself, so it is checked as one
        macro, system = m.group(2), m.group(1) or m.group(3)
        if system:
            out.system.append(system)
        elif macro == "include":
            eol = text.find("\n", m.end())
            out.includes.append(text[m.end() : eol if eol >= 0 else len(text)].strip())
        elif macro and macro not in _V_DIRECTIVES:
            out.macros.append(macro)
    return out


def safe_relative_path(path: str) -> bool:
    """A relative path that stays inside the working directory (no ``/``, ``~``, ``..``)."""
    if not path or path.startswith(("/", "~", "\\")) or "\x00" in path:
        return False
    return ".." not in re.split(r"[/\\]", path)


def verilog_system_names(text: str) -> list[str]:
    """``$name`` tokens of Verilog ``text`` outside comments, strings and identifiers, in order."""
    return verilog_tokens(text).system


def system_task_problem(names: Iterable[str], *, where: str = "") -> Rejection | None:
    """The first system task of ``names`` that is not allowed, as a rejection."""
    for name in names:
        bare = name[1:]
        if bare in VERILOG_SAFE_TASKS:
            continue
        suffix = f" ({where})" if where else ""
        if name in VERILOG_HOST:
            return Rejection("verilog/unsafe_system_task", f"{name} reaches the host{suffix}")
        if VERILOG_FILE_IO.match(name):
            return Rejection("verilog/unsafe_file_io", f"{name} reads or writes files{suffix}")
        return Rejection("verilog/unknown_system_task", cap(f"{name} is not an allowed system task{suffix}", 120))
    return None


def _include_problem(arg: str, where: str = "") -> Rejection | None:
    lit = re.match(r'"([^"\n]*)"', arg)
    if lit is not None and safe_relative_path(lit.group(1)):
        return None
    return Rejection("verilog/unsafe_include", cap(f"`include {arg[:80]}{where}: only a quoted relative file name "
                                                   "inside the working directory may be included", 160))


def verilog_problem(text: str) -> Rejection | None:
    """Static checks of Verilog source (design and testbench together), no tools run.

    The text as written and its ``corpus.preprocess`` expansion are both lexed: includes,
    system tasks (allowlist), DPI, preprocessing limits, macros left unexpanded.
    """
    from corpus.preprocess import preprocess

    if len(text) > MAX_CODE_CHARS:
        return Rejection("verilog/too_long", f"{len(text)} characters (limit {MAX_CODE_CHARS})")
    if "\x00" in text:
        return Rejection("verilog/control_char", "NUL byte in the source")
    raw = verilog_tokens(text)
    for arg in raw.includes:
        problem = _include_problem(arg)
        if problem:
            return problem
    if _V_DPI.search(text):
        return Rejection("verilog/dpi", "DPI imports/exports call foreign code")
    problem = system_task_problem(raw.system)
    if problem:
        return problem
    try:
        pre = preprocess(text, deadline=time.monotonic() + 10.0)
    except Exception as exc:  # noqa: BLE001 - expansion limits, timeouts, anything: one rejection
        return Rejection("verilog/preprocess", cap(f"{type(exc).__name__}: {getattr(exc, 'reason', '')} {exc}", 160))
    for name in pre.includes:
        problem = _include_problem(f'"{name.strip(chr(34) + "<> ")}"', " (after macro expansion)")
        if problem:
            return problem
    expanded = verilog_tokens(pre.text)
    problem = system_task_problem(expanded.system, where="after macro expansion")
    if problem:
        return problem
    if expanded.macros:
        names = ", ".join(sorted(set(expanded.macros))[:8])
        return Rejection("verilog/undefined_macro", cap(f"macros not defined in the answer: {names}", 160))
    return None


def vvp_problem(image: str) -> Rejection | None:
    """System tasks a compiled ``vvp`` image will call (iverilog's ``$ivl_*`` helpers allowed)."""
    names = [n for n in _VVP_CALL.findall(image) if not n.startswith("$ivl_")]
    return system_task_problem(names, where="in the compiled simulation")


# ================================================================================ Yosys

YOSYS_SEPARATORS = " \t\r\n"
_YOSYS_QUOTE_END = re.compile(r'"(;?)(?=[ \t\r\n]|\Z)')
MAX_YOSYS_DEPTH = 8  # wrapper commands inside wrapper commands

YOSYS_SHELL = frozenset({"exec", "shell"})
# Commands that run programs, other scripts or foreign code, or write arbitrary text.
YOSYS_FORBIDDEN = {
    "script": "runs another script file",
    "tcl": "runs a Tcl script",
    "python": "runs Python code",
    "pyosys": "runs Python code",
    "plugin": "loads native code",
    "bugpoint": "runs yosys as a subprocess",
    "connect_rpc": "starts an external process",
    "viz": "runs graphviz and a viewer",
    "qbfsat": "runs an external solver",
    "opensta": "runs an external STA tool",
    "sdc_expand": "runs an external STA tool",
    "test_abcloop": "a developer test command",
    "test_cell": "a developer test command (runs scripts)",
    "test_autotb": "a developer test command",
    "test_pmgen": "a developer test command",
    "write_file": "writes arbitrary text to a file",
    "verific": "not available",
    "history": "interactive only",
}
# Options that name a program, a script or a viewer to run, whatever the command.
YOSYS_FORBIDDEN_OPTS = {
    "-exe": "names a program to run",
    "-script": "names a script to run",
    "-viewer": "names a viewer to run",
    "-yosys": "names a program to run",
    "-solver": "names a solver to run",
    "-pause": "waits for interactive input",
}
YOSYS_WRAPPERS = frozenset({"tee", "debug", "trace", "equiv_opt"})
_YOSYS_META = re.compile(r"`|\$\(|\$\{|[|&<>]|;(?=.)")
_YOSYS_OUTSIDE = re.compile(r"(?:^|[=:,(\"'])[/~]")
_YOSYS_PARTS = re.compile(r"[/\\=:,\"'()]")


@dataclass(frozen=True)
class YosysCommand:
    """One command as Yosys will run it: its words (``"..."`` kept as written) and line."""

    line: int
    words: tuple[str, ...]
    shell: bool = False  # a ``!`` shell command: ``words`` is the shell text

    @property
    def name(self) -> str:
        return unquote(self.words[0]) if self.words else ""


def unquote(word: str) -> str:
    """A word without the surrounding double quotes Yosys keeps in quoted words."""
    return word[1:-1] if len(word) >= 2 and word[0] == '"' and word[-1] == '"' else word


def yosys_next_token(text: str, pos: int) -> tuple[str, int]:
    """Yosys's ``next_token(text, " \\t\\r\\n", long_strings=true)``: (word, position after it).

    A word starting with ``"`` runs to the next ``"`` followed by a separator or the end
    (``";`` + separator ends the word too, and the ``;`` stays on it); otherwise (or with no
    such quote) a word runs to the next separator.
    """
    n = len(text)
    i = pos
    while i < n and text[i] in YOSYS_SEPARATORS:
        i += 1
    if i < n and text[i] == '"':
        m = _YOSYS_QUOTE_END.search(text, i + 1)
        if m is not None:
            return text[i : m.start() + 1] + m.group(1), m.end()
    j = i
    while j < n and text[j] not in YOSYS_SEPARATORS:
        j += 1
    return text[i:j], j


def yosys_split_line(command: str, line: int = 0) -> list[YosysCommand]:
    """Yosys's ``Pass::call(design, std::string)``: one script line into commands.

    ``!`` at the start of the line makes the rest a shell command. A word starting with
    ``#`` skips to the next line break; a word ending in ``;`` ends the command (``;;`` and
    ``;;;`` also run ``clean``); a line break (``\\r`` too) after a word ends it. Commands
    whose first word starts with ``#`` or ``:`` are ignored by Yosys and dropped here.
    """
    tok, pos = yosys_next_token(command, 0)
    if not tok:
        return []
    if tok[0] == "!":
        return [YosysCommand(line, (command[command.find("!") + 1 :].strip(),), shell=True)]
    cmds: list[YosysCommand] = []
    args: list[str] = []

    def flush() -> None:
        if args and args[0][0] not in "#:":
            cmds.append(YosysCommand(line, tuple(args)))
        args.clear()

    n = len(command)
    while tok:
        if tok[0] == "#":
            while pos < n and command[pos] not in "\r\n":
                pos += 1
        elif tok.endswith(";"):
            core = tok.rstrip(";")
            if core:
                args.append(core)
            flush()
            semicolons = len(tok) - len(core)
            if semicolons in (2, 3):
                cmds.append(YosysCommand(line, ("clean",) if semicolons == 2 else ("clean", "-purge")))
        else:
            args.append(tok)
        j = pos
        while j < n and command[j] in " \t":
            j += 1
        if j < n and command[j] in "\r\n":
            flush()
        tok, pos = yosys_next_token(command, pos)
    flush()
    return cmds


def yosys_commands(script: str) -> list[YosysCommand]:
    """Every command of a Yosys script file, as ``yosys -s`` reads it.

    Lines are split on ``\\n`` only (``fgets``) with trailing ``\\r``/``\\n`` removed; a line
    ending in ``\\`` continues on the next; a first word ``label:`` is removed.
    """
    lines = script.split("\n")
    cmds: list[YosysCommand] = []
    i = 0
    while i < len(lines):
        lineno = i + 1
        text = lines[i].rstrip("\r\n")
        i += 1
        while text.endswith("\\") and i < len(lines):
            text = text[:-1] + lines[i].rstrip("\r\n")
            i += 1
        stripped = text.lstrip(" \t")
        if not stripped.startswith("#"):
            label = re.match(r"[^ \t\r\n]*", stripped).group(0)
            if len(label) > 1 and label.endswith(":"):
                text = stripped[len(label) :]
        cmds.extend(yosys_split_line(text, lineno))
    return cmds


def _yosys_word_problem(word: str, cmd: YosysCommand) -> Rejection | None:
    w = unquote(word)
    where = f"line {cmd.line}: {cmd.name}"
    if w.startswith("<<"):
        return Rejection("yosys/heredoc", cap(f"{where}: here-documents put inline data in the script", 160))
    if w.startswith("!"):
        return Rejection("yosys/shell_escape", cap(f"{where}: {w[:60]} (a shell escape)", 160))
    if w in YOSYS_SHELL:
        return Rejection("yosys/shell_escape", cap(f"{where}: `{w}` runs a shell command", 160))
    if _YOSYS_META.search(w):
        return Rejection("yosys/shell_metachar", cap(f"{where}: {w[:60]} holds a shell metacharacter", 160))
    if yosys_word_leaves_cwd(w):
        return Rejection("yosys/path_outside_cwd", cap(f"{where}: {w[:60]} leaves the working directory", 160))
    return None


def yosys_word_leaves_cwd(word: str) -> bool:
    """Whether a word, read as a path, may leave the working directory: absolute or ``~``
    (also after ``=``, ``:``, ``,``, ``(`` or a quote, and after a joined one-letter option
    such as ``-I/abs``), or with a ``..`` component anywhere."""
    variants = [word, word[2:]] if word.startswith("-") and len(word) > 2 else [word]
    return any(_YOSYS_OUTSIDE.search(w) or ".." in _YOSYS_PARTS.split(w) for w in variants)


def _wrapped(cmd: YosysCommand) -> list[YosysCommand]:
    """The command(s) a wrapper command runs, parsed as Yosys parses them."""
    words = [unquote(w) for w in cmd.words]
    name, i, n = words[0], 1, len(words)
    if name == "tee":
        while i < n:
            w = words[i]
            if w == "-q":
                i += 1
            elif w in {"-o", "-a", "-s"} and i + 1 < n:
                i += 2
            elif len(w) >= 2 and w[0] in "+-" and w[1].isdigit():
                i += 1
            else:
                break
    elif name == "debug":
        while i < n and words[i] in {"-on", "-off"}:
            i += 1
    elif name == "equiv_opt":
        while i < n:
            w = words[i]
            if w in {"-map", "-blacklist"} and i + 1 < n or (w == "-run" and i + 1 < n and ":" in words[i + 1]):
                i += 2
            elif w in {"-assert", "-undef", "-ignore-unknown-cells", "-nocheck", "-multiclock", "-async2sync"}:
                i += 1
            else:
                break
        # equiv_opt joins the rest and runs it as a script line: re-split with line semantics.
        return yosys_split_line(" ".join(cmd.words[i:]), cmd.line)
    return [YosysCommand(cmd.line, cmd.words[i:])] if i < n else []


def yosys_command_problem(cmd: YosysCommand, depth: int = 0) -> Rejection | None:
    """Why one Yosys command may not run (recursing into wrapped commands), or None."""
    if depth > MAX_YOSYS_DEPTH:
        return Rejection("yosys/too_deep", f"line {cmd.line}: wrapper commands nested deeper than {MAX_YOSYS_DEPTH}")
    if cmd.shell:
        return Rejection("yosys/shell_escape", cap(f"line {cmd.line}: !{cmd.words[0][:80]} runs a shell command", 160))
    name = cmd.name
    where = f"line {cmd.line}: {name}"
    if name.startswith("!") or name in YOSYS_SHELL:
        return Rejection("yosys/shell_escape", cap(f"{where} runs a shell command", 160))
    for word in cmd.words:
        problem = _yosys_word_problem(word, cmd)
        if problem:
            return problem
    if name in YOSYS_FORBIDDEN:
        return Rejection("yosys/forbidden_command", cap(f"{where} {YOSYS_FORBIDDEN[name]}", 160))
    words = [unquote(w) for w in cmd.words]
    for opt, why in YOSYS_FORBIDDEN_OPTS.items():
        if opt in words[1:]:
            return Rejection("yosys/forbidden_command", cap(f"{where} {opt} {why}", 160))
    if name == "show":
        k = words.index("-format") if "-format" in words else -1
        if k < 0 or k + 1 >= len(words) or words[k + 1] != "dot":
            return Rejection("yosys/forbidden_command",
                             f"{where}: show runs graphviz and a viewer unless it is `-format dot`")
    if (name == "scratchpad" and {"-set", "-copy"} & set(words[1:])) or (name == "tee" and "-s" in words[1:]):
        # scratchpad values configure passes: abc.exe / abc.script name a program or script.
        return Rejection("yosys/forbidden_command", f"{where}: setting scratchpad values can configure "
                                                    "external programs (abc.exe, abc.script)")
    if name == "sim" and "-r" in words[1:]:
        return Rejection("yosys/forbidden_command", f"{where} -r may convert the input with an external program")
    if name in YOSYS_WRAPPERS:
        inner = _wrapped(cmd)
        if name == "tee" and any(w in {"-o", "-a"} for w in words) and any(c.name in {"log", "echo"} for c in inner):
            return Rejection("yosys/forbidden_command",
                             f"{where}: writing `log` text to a file creates arbitrary files")
        for sub in inner:
            problem = yosys_command_problem(sub, depth + 1)
            if problem:
                return problem
    return None


def yosys_problem(script: str) -> Rejection | None:
    """Static checks of a Yosys script, no tools run (see the module docstring)."""
    if len(script) > MAX_CODE_CHARS:
        return Rejection("yosys/too_long", f"{len(script)} characters (limit {MAX_CODE_CHARS})")
    bad = re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", script)
    if bad:
        return Rejection("yosys/control_char", f"control character {bad.group(0)!r} in the script")
    for cmd in yosys_commands(script):
        problem = yosys_command_problem(cmd)
        if problem:
            return problem
    return None


# ================================================================================== Tcl

# Pure Tcl the safe interpreter keeps as it is (no I/O; the only scripts they run are
# evaluated inside the same locked-down interpreter).
TCL_PURE = frozenset(
    "set unset append lappend incr list llength lindex lrange lsearch lreplace linsert lassign lreverse "
    "lrepeat lset concat join split string format scan regexp regsub array error return break continue "
    "global upvar variable throw info".split()
)
# Commands that run script arguments: the checker replaces them with versions that run every
# branch and body once (see assets/tcl_checker.tcl); they must match its `covered` list.
TCL_COVERED = frozenset(
    "if while for foreach lmap switch try catch eval uplevel proc apply dict lsort expr subst".split())
# Stubbed by the checker (no output, fixed clock).
TCL_STUBBED = frozenset({"puts", "clock"})
TCL_BUILTINS = TCL_PURE | TCL_COVERED | TCL_STUBBED
# Commands that touch the host, run programs or change how commands are resolved; named as
# "unsafe" in rejections (everything else that is not allowed is "unknown").
UNSAFE_TCL = frozenset(
    "exec open socket file cd load unload source interp chan fconfigure fcopy fileevent glob pwd exit vwait after "
    "update encoding package auto_load auto_execok auto_import auto_mkindex rename trace namespace coroutine yield "
    "yieldto tailcall zlib close read gets seek tell flush eof fblocked pid unknown history".split()
)
# Unsafe names that may not appear even as plain words (`set c exec`, `lsort -command exec`,
# `interp alias {} x {} exec`): a word is code as soon as something evaluates it.
UNSAFE_TCL_WORDS = frozenset(
    "exec open socket source load unload interp file cd glob pwd rename trace after namespace chan fconfigure "
    "fcopy vwait package encoding auto_execok auto_load".split()
)
MAX_TCL_DEPTH = 24  # nested brackets/bodies the static scan follows; deeper is a rejection
TCL_WORK_FACTOR = 40  # the static scan reads at most this many characters per input character
TCL_CHECKER_EVENTS = frozenset({"DENY", "REDEFINE", "SYNTAX", "LIMIT", "DONE", "INCOMPLETE", "BAD"})
# Semantic findings of the checker (``BAD <code> <why>``): each code is the rejection
# ``tcl/<code>``; an unlisted code is ``tcl/semantic``.
TCL_SEMANTIC_CODES = frozenset({
    "unknown_option", "missing_value", "bad_value", "negative_value", "nonpositive_value", "missing_option",
    "missing_argument", "extra_argument", "no_such_port", "no_such_cell", "no_such_pin", "no_such_net",
    "no_such_clock", "no_such_object", "no_such_design", "wrong_direction", "delay_exceeds_period"})


class TclSyntaxError(ValueError):
    pass


class TclTooDeep(TclSyntaxError):
    """Nesting or scanning work past the static scan's bounds (a rejection, not a crash)."""


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


_TCL_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_TCL_BACKSLASH = re.compile(
    r"\\(?:x([0-9A-Fa-f]{1,2})|u([0-9A-Fa-f]{1,4})|U([0-9A-Fa-f]{1,8})|([0-7]{1,3})|\n[ \t]*|(.))", re.DOTALL)


def tcl_unescape(text: str) -> str:
    """Tcl backslash substitution (``\\x65xec`` is ``exec``, ``\\<newline>`` is a space)."""

    def repl(m: re.Match[str]) -> str:
        hexa, u4, u8, octal, other = m.groups()
        code = int(hexa or u4 or u8, 16) if (hexa or u4 or u8) else int(octal, 8) if octal else None
        if code is not None:
            return chr(code) if code <= 0x10FFFF else "\ufffd"
        if other is None:
            return " "
        return _TCL_ESCAPES.get(other, other)

    return _TCL_BACKSLASH.sub(repl, text) if "\\" in text else text


@dataclass
class _Word:
    kind: str  # brace | quote | bare
    text: str
    expand: bool = False  # {*} prefix

    @property
    def literal(self) -> bool:
        return self.kind == "brace" or ("$" not in self.text and "[" not in self.text)

    @property
    def value(self) -> str:
        """The word's value when literal (after backslash substitution for bare/quoted words)."""
        return self.text if self.kind == "brace" else tcl_unescape(self.text)


@dataclass
class _TclScan:
    """What the static scan found; ``budget`` is the characters it may still read."""

    names: list[str] = field(default_factory=list)  # command names (``<dynamic>`` for computed)
    procs: set[str] = field(default_factory=set)  # procedures the script defines (literal names)
    words: list[str] = field(default_factory=list)  # literal words anywhere (values, leading :: removed)
    budget: int = 0


def _word(s: str, i: int, st: _TclScan, depth: int, strict: bool, brackets: bool) -> tuple[_Word, int]:
    """The word starting at ``s[i]``; command substitutions in it are scanned when ``brackets``."""
    n = len(s)
    expand = False
    if s.startswith("{*}", i) and i + 3 < n and not s[i + 3].isspace():
        i += 3
        expand = True
    if s[i] == "{":
        end = _match_brace(s, i)
        if end < n and s[end] not in " \t\r\n;":
            raise TclSyntaxError("extra characters after close-brace")
        return _Word("brace", s[i + 1 : end - 1], expand), end
    quoted = s[i] == '"'
    j = i + 1 if quoted else i
    while j < n and (s[j] != '"' if quoted else s[j] not in " \t\r\n;"):
        if s[j] == "\\":
            j += 2
            continue
        if s[j] == "[":
            end = _match_bracket(s, j)
            if brackets:
                _scan(s[j + 1 : end - 1], st, depth + 1, strict)
            j = end
            continue
        j += 1
    if quoted:
        if j >= n:
            raise TclSyntaxError('missing "')
        if j + 1 < n and s[j + 1] not in " \t\r\n;":
            raise TclSyntaxError("extra characters after close-quote")
        return _Word("quote", s[i + 1 : j], expand), j + 1
    return _Word("bare", s[i:j], expand), j


def _commands(script: str, st: _TclScan, depth: int, strict: bool, brackets: bool) -> list[list[_Word]]:
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
            w, i = _word(s, i, st, depth, strict, brackets)
            words.append(w)
        if words:
            cmds.append(words)
    return cmds


def _scan(script: str, st: _TclScan, depth: int, strict: bool = True, brackets: bool = True) -> None:
    """Scan one script. ``strict``: its commands are run (names recorded, bodies followed);
    otherwise it is data that might be run (only literal words are recorded, errors ignored
    by the caller)."""
    if depth > MAX_TCL_DEPTH:
        raise TclTooDeep(f"brackets/bodies nested deeper than {MAX_TCL_DEPTH} levels")
    st.budget -= len(script) + 1
    if st.budget < 0:
        raise TclTooDeep("script too complex to scan (nesting re-reads too much text)")
    for words in _commands(script, st, depth, strict, brackets):
        first = words[0]
        if strict:
            literal = first.literal and not first.expand
            st.names.append(first.value.lstrip(":") if literal else "<dynamic>")
        for w in words:
            if w.literal:
                st.words.append(w.value.lstrip(":"))
        handled = _control(words, st, depth) if strict and first.literal and not first.expand else set()
        for k, w in enumerate(words):
            if w.kind == "brace" and k not in handled:
                _scan_data(w.text, st, depth + 1)


def _scan_data(text: str, st: _TclScan, depth: int) -> None:
    """A braced word that is not a known body: it may still be evaluated (``lsort -command``,
    ``apply``, ``interp alias``), so its literal words are recorded; syntax errors mean data."""
    try:
        _scan(text, st, depth, strict=False)
    except TclTooDeep:
        raise
    except TclSyntaxError:
        pass


def _scan_expr(word: _Word, st: _TclScan, depth: int) -> None:
    if word.kind != "brace":
        return  # substitutions of unbraced words were scanned while reading the word
    s, i = word.text, 0
    while i < len(s):
        if s[i] == "\\":
            i += 2
            continue
        if s[i] == "[":
            end = _match_bracket(s, i)
            _scan(s[i + 1 : end - 1], st, depth + 1)
            i = end
            continue
        i += 1


def _scan_body(word: _Word, st: _TclScan, depth: int) -> None:
    """A script argument. Braced: scanned as it is. Literal quoted/bare: its value (backslashes
    substituted) is the script. Otherwise its ``[...]`` were scanned already, so only the
    rest is (substitutions in it give ``<dynamic>`` names)."""
    if word.kind == "brace":
        _scan(word.text, st, depth + 1)
    elif word.literal:
        _scan(word.value, st, depth + 1)
    elif word.kind == "quote":
        _scan(word.text, st, depth + 1, brackets=False)


def _control(words: list[_Word], st: _TclScan, depth: int) -> set[int]:
    """Follow the script/expression arguments of Tcl commands; return their word indices."""
    name = words[0].value.lstrip(":")
    args = words[1:]
    done: set[int] = set()

    def body(k: int) -> None:
        _scan_body(args[k], st, depth)
        done.add(k + 1)

    def expr(k: int) -> None:
        _scan_expr(args[k], st, depth)
        done.add(k + 1)

    if name == "if":
        k = 0
        while k < len(args):
            expr(k)
            k += 1
            if k < len(args) and args[k].text == "then":
                k += 1
            if k < len(args):
                body(k)
                k += 1
            if k < len(args) and args[k].text == "elseif":
                k += 1
                continue
            if k < len(args) and args[k].text == "else":
                k += 1
            if k < len(args):
                body(k)
            break
    elif name == "while" and len(args) >= 2:
        expr(0)
        body(1)
    elif name == "for" and len(args) >= 4:
        body(0)
        expr(1)
        body(2)
        body(3)
    elif name in {"foreach", "lmap"} and args:
        body(len(args) - 1)
    elif name == "proc" and len(args) == 3:
        if args[0].literal:
            st.procs.add(args[0].value.lstrip(":"))
        body(2)
    elif name == "catch" and args:
        body(0)
    elif name in {"time", "eval", "uplevel"} and args:
        body(len(args) - 1)
    elif name == "subst" and args:
        expr(len(args) - 1)  # a string whose [command substitutions] run, like an expression
    elif name == "expr":
        for k in range(len(args)):
            expr(k)
    elif name == "try" and args:
        body(0)
        k = 1
        while k < len(args):
            if args[k].text in {"on", "trap"} and k + 3 < len(args):
                body(k + 3)
                k += 4
            elif args[k].text == "finally" and k + 1 < len(args):
                body(k + 1)
                k += 2
            else:
                k += 1
    elif name == "dict" and len(args) >= 4 and args[0].text in {"for", "map"}:
        body(3)
    elif name == "switch" and args:
        last = args[-1]
        if last.kind == "brace":
            inner: list[_Word] = []
            for cmd in _commands(last.text, st, depth + 1, True, True):
                inner.extend(cmd)
            for k in range(1, len(inner), 2):
                if inner[k].text != "-":
                    _scan_body(inner[k], st, depth + 1)
            done.add(len(args))
        else:
            for k in range(len(args) - 1, 0, -2):
                if args[k].text != "-" and args[k].kind == "brace":
                    body(k)
    return done


def tcl_scan(script: str) -> _TclScan:
    """Static scan of a Tcl script: command names and literal words, bounded in depth and work.

    Raises ``TclSyntaxError`` on unbalanced braces, brackets or quotes and ``TclTooDeep``
    past ``MAX_TCL_DEPTH`` levels of nesting or ``TCL_WORK_FACTOR`` × its length of reading.
    """
    st = _TclScan(budget=TCL_WORK_FACTOR * len(script) + 10_000)
    _scan(script, st, 0)
    return st


def tcl_command_names(script: str) -> list[str]:
    """Every command ``script`` would call, in order (``<dynamic>`` for computed names).

    Raises ``TclSyntaxError`` on unbalanced braces, brackets or quotes (``TclTooDeep``, a
    subclass, past the nesting/work bounds).
    """
    return tcl_scan(script).names


def tcl_problem(script: str, allowed: Iterable[str], tool: str = "") -> Rejection | None:
    """Static checks of a Tcl script against the allowed tool commands, no tools run.

    A readable first filter; ``Validator.tcl_dynamic`` (the safe-interpreter run) decides.
    """
    if len(script) > MAX_CODE_CHARS:
        return Rejection("tcl/too_long", f"{len(script)} characters (limit {MAX_CODE_CHARS})")
    try:
        st = tcl_scan(script)
    except TclTooDeep as exc:
        return Rejection("tcl/too_deep", str(exc))
    except TclSyntaxError as exc:
        return Rejection("tcl/syntax", str(exc))
    if not st.names:
        return Rejection("tcl/empty", "no commands")
    for name in st.names:
        if name in UNSAFE_TCL:
            return Rejection("tcl/unsafe_command", f"{name} is not allowed (host access or dynamic code)")
    if "<dynamic>" in st.names:
        return Rejection("tcl/dynamic_command", "a command name computed at run time")
    for word in st.words:
        if word in UNSAFE_TCL_WORDS:
            return Rejection("tcl/unsafe_command", f"{word} appears as a word: it is code once something evaluates it")
    allowed = frozenset(allowed)
    for name in st.names:
        if name not in TCL_BUILTINS and name not in allowed and name not in st.procs:
            return Rejection("tcl/unknown_command", cap(f"{name} is not documented for {tool or 'this tool'}", 160))
    return None


def tcl_checker_script() -> str:
    """The Tcl checker run by ``tclsh`` in the sandbox (``assets/tcl_checker.tcl``)."""
    return (ASSETS / "tcl_checker.tcl").read_text()


def tcl_checker_problem(stdout: str, tool: str) -> Rejection | None:
    """Decide from the checker's events (see ``assets/tcl_checker.tcl``)."""
    events: list[tuple[str, str]] = []
    for line in stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind in TCL_CHECKER_EVENTS:
            events.append((kind, rest.strip().strip("{}")[:240]))
    kinds = {k for k, _ in events}
    semantic = [text for kind, text in events if kind == "BAD"]
    events = [(kind, text) for kind, text in events if kind != "BAD"]
    if "INCOMPLETE" in kinds:
        return Rejection("tcl/syntax", "tclsh: the script is not complete (unbalanced braces, brackets or quotes)")
    for kind, text in events:
        if kind == "DENY":
            name = text.lstrip(":")
            if name in UNSAFE_TCL or name.split("::")[-1] in UNSAFE_TCL:
                return Rejection("tcl/unsafe_command", cap(f"the script reaches {name} when run", 160))
            return Rejection("tcl/unknown_command", cap(f"the script reaches {name}, not documented for {tool}", 160))
        if kind == "REDEFINE":
            return Rejection("tcl/redefines_command", cap(f"the script redefines or escapes via {text}", 160))
        if kind == "SYNTAX":
            return Rejection("tcl/syntax", cap(f"tclsh: {text}", 160))
        if kind == "LIMIT":
            return Rejection("tcl/resource_limit", cap(f"tclsh: {text}", 160))
    if "DONE" not in kinds:
        return Rejection("tcl/checker_failed", "the safe-interpreter run did not finish")
    if semantic:  # only once nothing unsafe was reached: safety reasons come first
        code, _, why = semantic[0].partition(" ")
        reason = f"tcl/{code}" if code in TCL_SEMANTIC_CODES else "tcl/semantic"
        return Rejection(reason, cap(tcl_unescape_event(why)))
    return None


def tcl_unescape_event(text: str) -> str:
    """A checker event's text without the backslashes Tcl's list quoting may have added."""
    return re.sub(r"\\(.)", r"\1", text)


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
    # command -> documented signature (``signatures.signature_table``); empty: the shipped table
    signatures: dict[str, dict[str, Any]] = field(default_factory=dict)
    tcl_timeout_s: float = 10.0  # the safe-interpreter run (its own limit inside is 5 s; 512 MB at most)

    def limits(self, timeout_s: float | None = None) -> sandbox.Limits:
        return sandbox.Limits(timeout_s=timeout_s or self.timeout_s, memory_mb=self.memory_mb,
                              max_output_bytes=self.max_output_bytes)


_YOSYS_ERROR_LINE = re.compile(r"^\s*ERROR:")


class Validator:
    """Checks one parsed answer against its template; ``check`` returns a reason or None.

    After a rejection, ``detail`` explains it (capped, never content from outside the
    sandbox's working directory).
    """

    def __init__(self, settings: Settings | None = None, parser: Parser | None = None) -> None:
        self.settings = settings or Settings()
        self._parser = parser
        self.design = {name: (ASSETS / "design" / name).read_text() for name in DESIGN_FILES}
        allowed = self.settings.allowed_commands or {k: sorted(v) for k, v in command_lists()[0].items()}
        self.allowed = {tool: frozenset(cmds) for tool, cmds in allowed.items()}
        self.tcl_checker = tcl_checker_script()  # fails at start-up if the asset is missing
        table = self.settings.signatures or signatures.signature_table()
        self.signatures_tcl = {tool: signatures.checker_signatures(table, cmds) for tool, cmds in self.allowed.items()}
        self.detail = ""

    @property
    def design_objects_tcl(self) -> str:
        """The shipped design's objects (read by Yosys in the sandbox once per process), for the checker."""
        return signatures.cached_design_objects(tuple(sorted(self.design.items())), DESIGN_TOP)

    @property
    def parser(self) -> Parser:
        if self._parser is None:
            from corpus.verilog import VerilogParser

            self._parser = VerilogParser(grammar=self.settings.grammar)
        return self._parser

    def _reject(self, reason: str, detail: str = "") -> str:
        self.detail = cap(detail)
        return reason

    def _rejection(self, problem: Rejection | None) -> str | None:
        if problem is None:
            self.detail = ""
            return None
        return self._reject(problem.reason, problem.detail)

    # -- Verilog
    def verilog_static(self, code: str, testbench: str | None = None) -> str | None:
        """Static Verilog checks (fast path, no tools); see ``verilog_problem``."""
        return self._rejection(verilog_problem("\n".join(filter(None, (code, testbench)))))

    def check_verilog(self, code: str, testbench: str | None = None) -> str | None:
        reason = self.verilog_static(code, testbench)
        if reason:
            return reason
        try:
            units = self.parser.parse(code, path="answer.sv")
        except Exception as exc:  # noqa: BLE001 - parser limits (ParseTimeout, ExpansionLimit): one rejection
            return self._reject("verilog/parse", f"corpus parser: {type(exc).__name__} {getattr(exc, 'reason', '')}")
        if not units:
            return self._reject("verilog/no_module", "the corpus parser found no design unit")
        bad = [u.get("name") for u in units if not u.get("parse_ok", False)]
        if bad:
            return self._reject("verilog/parse", f"units with syntax errors: {bad[:10]}")
        files = {"design.sv": code}
        argv = ["iverilog", "-g2012", "-o", "sim.vvp", "design.sv"]
        if testbench:
            files["tb.sv"] = testbench
            argv += ["tb.sv", "-s", "tb"]
        own = tuple(files)
        r = sandbox.run(argv, files, limits=self.settings.limits(), collect=["sim.vvp"] if testbench else ())
        if not r.ok:
            reason = "verilog/iverilog_timeout" if r.timed_out else "verilog/iverilog"
            return self._reject(reason, tool_detail(r.output, own, f"iverilog exit {r.returncode}"))
        lint = sandbox.run(["verilator", "--lint-only", "-Wno-fatal", "--timing", "design.sv"], files,
                           limits=self.settings.limits())
        if not lint.ok:
            reason = "verilog/verilator_timeout" if lint.timed_out else "verilog/verilator"
            return self._reject(reason, tool_detail(lint.output, own, f"verilator exit {lint.returncode}"))
        if testbench:
            if "sim.vvp" not in r.files:
                return self._reject("verilog/iverilog", "no simulation image produced")
            reason = self._rejection(vvp_problem(r.files["sim.vvp"].decode("utf-8", "replace")))
            if reason:
                return reason
            sim = sandbox.run(["vvp", "-n", "sim.vvp"], {"sim.vvp": r.files["sim.vvp"]},
                              limits=self.settings.limits(self.settings.sim_timeout_s))
            # The simulation can only print what the answer's own code computes (no file I/O
            # passed the checks above), so its last lines may explain a failure.
            tail = cap(sim.output[-400:], 200)
            if sim.timed_out:
                return self._reject("verilog/sim_timeout", f"vvp ran past {self.settings.sim_timeout_s} s: {tail}")
            if sim.output_truncated:
                return self._reject("verilog/sim_output_cap", "vvp printed more than the output cap")
            if sim.limit_exceeded:  # killed for its memory or disk: a marker printed before counts for nothing
                return self._reject("verilog/sim_limit", f"vvp killed: {sim.limit_exceeded}")
            if self.settings.fail_marker in sim.output or self.settings.pass_marker not in sim.output:
                return self._reject("verilog/sim_fail", f"no {self.settings.pass_marker!r} (or a failure): {tail}")
        return None

    # -- Yosys
    def yosys_static(self, script: str) -> str | None:
        """Reason a Yosys script may not run at all (shell escape, paths outside cwd), or None."""
        return self._rejection(yosys_problem(script))

    def check_yosys(self, script: str) -> str | None:
        reason = self.yosys_static(script)
        if reason:
            return reason
        if not any(name in script for name in DESIGN_FILES):
            return self._reject("yosys/no_design", "the script reads none of the shipped design files")
        own = (*DESIGN_FILES, "script.ys")
        r = sandbox.run(["yosys", "-q", "-s", "script.ys"], {**self.design, "script.ys": script},
                        limits=self.settings.limits())
        if r.timed_out:
            return self._reject("yosys/timeout", f"yosys ran past {self.settings.timeout_s} s")
        if r.returncode != 0 or "ERROR:" in r.output:
            return self._reject("yosys/error", tool_detail(r.output, own, f"yosys exit {r.returncode}",
                                                           extra=_YOSYS_ERROR_LINE))
        return None

    # -- Tcl / SDC
    def tcl_static(self, script: str, tool: str) -> str | None:
        """Static Tcl checks (fast path, no tools); see ``tcl_problem``."""
        return self._rejection(tcl_problem(script, self.allowed.get(tool, frozenset()), tool))

    def tcl_dynamic(self, script: str, tool: str) -> str | None:
        """Run the script in the safe-interpreter checker (``tclsh`` in the sandbox); this decides."""
        allowed = sorted(self.allowed.get(tool, frozenset()))
        files = {"checker.tcl": self.tcl_checker, "candidate.tcl": script, "allowed.txt": "\n".join(allowed) + "\n",
                 "pure.txt": "\n".join(sorted(TCL_PURE)) + "\n", "signatures.txt": self.signatures_tcl.get(tool, ""),
                 "design.txt": self.design_objects_tcl}
        limits = sandbox.Limits(timeout_s=self.settings.tcl_timeout_s, memory_mb=min(self.settings.memory_mb, 512),
                                max_output_bytes=self.settings.max_output_bytes)
        r = sandbox.run(["tclsh", "checker.tcl", tool], files, limits=limits)
        if r.timed_out:
            return self._reject("tcl/timeout",
                                f"the safe-interpreter run took more than {self.settings.tcl_timeout_s} s")
        problem = tcl_checker_problem(r.stdout, tool)
        if problem is None and r.returncode != 0:
            problem = Rejection("tcl/checker_failed", f"tclsh exit {r.returncode}")
        return self._rejection(problem)

    def check_tcl(self, script: str, tool: str) -> str | None:
        return self.tcl_static(script, tool) or self.tcl_dynamic(script, tool)

    # -- whole answer
    def check(self, answer: Answer, template: Template) -> str | None:
        self.detail = ""
        kinds = {b.kind for b in answer.blocks}
        if "other" in kinds:
            langs = sorted({b.lang for b in answer.blocks if b.kind == "other"})
            return self._reject("code/unsupported_lang", f"cannot validate code tagged {langs[:5]}")
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
    """One generated row → one candidate row (``reason`` None means every check passed).

    Never raises for a row's content: an unexpected exception is the rejection
    ``internal/<ExceptionType>`` (with a capped detail), so one bad reply is one rejection.
    """
    out: dict[str, Any] = {k: None for k in CANDIDATE_SCHEMA.names}
    try:
        out.update({k: _plain(row.get(k)) for k in ("prompt_id", "round", "phase", "task", "template_id",
                                                      "seed_json", "prompt_tokens", "completion_tokens")})
        _check_row(row, validator, out)
    except sandbox.SandboxError as exc:
        out.update(reason="tool/unavailable", detail=cap(str(exc)), instruction=None, answer=None)
    except Exception as exc:  # noqa: BLE001 - a bad reply must never end the run
        out.update(reason=f"internal/{type(exc).__name__}", detail=cap(f"{type(exc).__name__}: {exc}", 200),
                   instruction=None, answer=None)
    return out


def _check_row(row: Mapping[str, Any], validator: Validator, out: dict[str, Any]) -> None:
    template = TEMPLATES.get(out["template_id"] or "")
    error = _plain(row.get("engine_error"))
    if error:
        out.update(reason="engine/error", detail=cap(str(error)))
        return
    if template is None:
        out.update(reason="engine/unknown_template", detail=cap(str(out["template_id"]), 120))
        return
    try:
        answer = parse_answer(_plain(row.get("generated_text")), require_testbench=template.testbench)
    except ParseError as exc:
        out.update(reason=f"malformed/{exc.reason}", detail=cap(exc.detail))
        return
    validator.detail = ""
    reason = validator.check(answer, template)
    out.update(reason=reason, detail=(validator.detail or None) if reason else None,
               instruction=answer.instruction, answer=answer.answer)


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
