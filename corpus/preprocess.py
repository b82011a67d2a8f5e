"""A line-preserving Verilog/SystemVerilog preprocessing pass, run before tree-sitter.

tree-sitter parses the text as written, so conditional compilation that splits an expression,
a port list or a sensitivity list, and macros used as widths or whole ranges, produce ERROR
nodes that can swallow whole modules (see ``shared/notes/verilog-parsers.md``, P1-P10). This
pass rewrites the text so that it parses, while keeping every newline, so that line ``n`` of
the output is line ``n`` of the input and records can keep line numbers and source text from
the original file:

- compiler-directive lines are blanked (``define``, ``include``, ``timescale``, ...);
- of each ``ifdef``/``ifndef``/``elsif``/``else`` chain one branch is kept, evaluated against
  the macros defined so far (in this file and in the ``include``-d files that ``resolve``
  returns); the other branches are blanked, newlines kept;
- uses of macros defined that way are expanded (object-like and function-like, recursively,
  a multi-line call is replaced on its first line and followed by its newlines);
- uses of unknown macros are left to the grammar (it accepts ``\\`NAME`` and ``\\`NAME(args)``
  in expressions, items and statements) except where it does not: a macro as the size or the
  digits of a based literal, as a whole range ``[\\`R]``, as a type at the start of a
  declaration, or a call whose arguments hold a property (``|->``, ``##``): those get a neutral
  token (``32``, ``0``, ``0:0``, ``logic``) or are blanked.

Also (issue 9, constructs of the users' repositories):

- a ``//`` comment inside a multi-line macro argument is removed before the argument is joined
  onto one line (it used to swallow the rest of the call);
- an ``include`` used inside a line (``#(`include "pll.vh")``) is replaced by the file's text,
  preprocessed and joined onto that line; an ``include`` on its own line still only contributes
  its defines (cached per header, defines before it and resolver scope);
- C-preprocessor lines (``#ifdef``/``#else``/``#endif``/``#define``/``#include`` at the start of a
  line, one of nvdla's files) are evaluated like their backtick twins;
- an unknown macro whose arguments hold statements (``;``) is blanked, and one used as a member
  name (``a.`NAME``) becomes the identifier ``NAME``;
- ``rewrite_gaps``: grammar gaps of tree-sitter-systemverilog that slang accepts are rewritten on
  their line (``$clog2(N)'(x)`` casts, ``.Name`` parameter shorthand, ``global``/``expect`` as
  names, hierarchical covergroup cross items, ``$fatal(2)``, ``module $cell``), counted by kind in
  ``Preprocessed.rewrites``.

Unbalanced or malformed directives never raise: an unmatched ``else``/``endif`` is blanked and an
unterminated ``ifdef`` runs to the end of the text.

Limits (issue 8: a 586-byte file of nested ``define``s expanded forever). The pass is bounded
so that a hostile file costs at most a fixed multiple of its size:

- macro expansion nests at most ``max_depth`` (64) levels; deeper (a recursive ``define``)
  raises ``ExpansionLimit``; ``include`` nesting stops silently at 16 levels as before;
- every character scanned or produced by expansion (macro bodies, substituted arguments,
  argument scans, included texts), plus 32 per expansion and 16 per bracket or comma an
  argument scan visits, is charged to one budget of
  ``max(10 × len(text), 4 MB)`` characters (``max_chars``); exceeding it raises
  ``ExpansionLimit``. The rewritten text is therefore at most that long, and the time spent
  is proportional to it;
- with ``deadline`` (a ``time.monotonic()`` value) the pass raises ``ParseTimeout`` once past it.

Both are ``PreprocessError``s carrying a short ``reason`` for reports.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["ExpansionLimit", "Macro", "ParseTimeout", "PreprocessError", "Preprocessed", "preprocess",
           "rewrite_gaps", "strip_comments"]

# Comments, strings and backtick words, in the order they must be recognised.
_TOKEN = re.compile(r'//[^\n]*|/\*.*?(?:\*/|\Z)|"(?:\\.|[^"\\\n])*"?|`[A-Za-z_][\w$]*', re.S)
# From a position, everything up to and including the next backtick word outside comments and
# strings (possessive, so a text without one fails in linear time).
_SKIP_TO_MACRO = re.compile(
    r'(?:[^`/"]++|//[^\n]*+|/\*(?:[^*]++|\*(?!/))*+(?:\*/)?|"(?:\\.|[^"\\\n])*+"?|/|`(?![A-Za-z_]))*+'
    r'(`[A-Za-z_][\w$]*)', re.S)
# The same, also matching C-preprocessor directive lines (used only for a text that has one).
_TOKEN_CPP = re.compile(_TOKEN.pattern + r'|^[ \t]*\#[ \t]*(?:ifdef|ifndef|if|elif|else|endif|define|undef|include)\b',
                        re.S | re.M)
# A C-preprocessor directive line (``#ifdef X`` in a .v file meant for cpp), mapped to its Verilog twin.
_CPP_LINE = re.compile(r"^[ \t]*#[ \t]*(?:ifdef|ifndef|if|elif|else|endif|define|undef|include)\b", re.M)
_CPP_PROBE = re.compile(r"#[ \t]*(?:ifdef|ifndef|if|elif|else|endif|define|undef|include)\b")
_CPP_WORD = {"if": "ifdef", "elif": "elsif"}
_CPP_DEFINED = re.compile(r"\bdefined\s*\(?\s*([A-Za-z_]\w*)\s*\)?")
# Arguments of an unknown macro that the grammar cannot take as an expression: statements.
_STRING = re.compile(r'"(?:\\.|[^"\\])*"')
_IDENT = re.compile(r"[ \t]*([A-Za-z_][\w$]*)")
_NAME = re.compile(r"[A-Za-z_][\w$]*")
_COMMENT = re.compile(r'//[^\n]*|/\*.*?(?:\*/|\Z)|("(?:\\.|[^"\\\n])*")', re.S)
_PROPERTY_OPS = re.compile(r"\|->|\|=>|##|\bdisable\s+iff\b|\biff\b|\bs_eventually\b|\bthroughout\b|\balways\b"
                           r"|\bnexttime\b|\bs_until\b|\buntil\b")
_BASED_DIGITS = re.compile(r"'[sS]?[bBoOdDhH][ \t]*$")
_TYPE_USE = re.compile(r"[ \t]+[A-Za-z_][\w$]*[ \t]*(?:[;,=)]|\[)")
_PARAM_WORD = re.compile(r"\b[A-Za-z_]\w*\b")
# What ``_balanced`` looks at: strings (to a closing quote, possibly unterminated), comments, brackets, commas.
_BALANCE_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"?|//[^\n]*|/\*.*?(?:\*/|\Z)|[()\[\]{},]', re.S)
_OPENER = {")": "(", "]": "[", "}": "{"}

# Directives whose argument runs to the end of the line; all are blanked.
_LINE_DIRECTIVES = frozenset(
    {
        "timescale", "default_nettype", "pragma", "line", "begin_keywords", "unconnected_drive",
        "default_decay_time", "default_trireg_strength", "delay_mode_distributed",
        "delay_mode_path", "delay_mode_unit", "delay_mode_zero", "protect", "endprotect",
        "protected", "endprotected", "resetall", "celldefine", "endcelldefine",
        "nounconnected_drive", "end_keywords", "undefineall", "accelerate", "noaccelerate",
        "expand_vectornets", "noexpand_vectornets", "remove_gatename", "noremove_gatenames",
        "remove_netname", "noremove_netnames", "suppress_faults", "nosuppress_faults",
        "enable_portfaults", "disable_portfaults", "autoexpand_vectornets",
    }
)
_CONDITIONALS = frozenset({"ifdef", "ifndef", "elsif", "else", "endif"})
_MAX_DEPTH = 16  # include nesting (deeper includes are not read)
# Defines after an ``include``, by (header text, resolver scope, depth, defines before): the same
# header included by many files of a batch is run once per distinct state (bounded, per process).
_INCLUDE_CACHE: dict[tuple[object, ...], dict[str, "Macro"]] = {}
_CACHE_ENTRIES = 1024
_CACHE_MAX_TEXT = 1_000_000
MAX_MACRO_DEPTH = 64  # macro expansion nesting; deeper raises ExpansionLimit
EXPANSION_FACTOR = 10  # expansion budget: EXPANSION_FACTOR × input characters ...
MIN_EXPANSION_CHARS = 4_000_000  # ... but never less than this
_LOOKBACK = 256  # characters before a macro use inspected to classify it (bounded: no O(n) per use)
_DEADLINE_EVERY = 65_536  # budget characters between two deadline checks
_EXPANSION_COST = 32  # characters charged per macro expansion on top of its text (per-call overhead)
_TOKEN_COST = 16  # characters charged per bracket/comma visited by an argument scan


class PreprocessError(ValueError):
    """The text cannot be preprocessed within its limits; ``reason`` is a short key for reports."""

    reason = "preprocess_error"


class ExpansionLimit(PreprocessError):
    """Macro expansion nested too deep or exceeded its character budget (an expansion bomb)."""

    reason = "expansion_limit"


class ParseTimeout(PreprocessError):
    """The file's parse (preprocessing included) ran past its deadline."""

    reason = "timeout"


class _Budget:
    """Characters the pass may still scan or produce while expanding, and the deadline."""

    def __init__(self, max_chars: int, deadline: float | None) -> None:
        self.max_chars = max_chars
        self.spent = 0
        self.deadline = deadline
        self.next_check = _DEADLINE_EVERY

    def spend(self, n: int) -> None:
        self.spent += n
        if self.spent > self.max_chars:
            raise ExpansionLimit(f"macro expansion exceeded {self.max_chars} characters (expansion bomb?)")
        if self.deadline is not None and self.spent >= self.next_check:
            self.next_check = self.spent + _DEADLINE_EVERY
            self.check_deadline()

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise ParseTimeout("preprocessing ran past the parse deadline")


@dataclass(frozen=True)
class Macro:
    """A ``define``: ``params`` is None for an object-like macro."""

    name: str
    body: str
    params: tuple[str, ...] | None = None
    defaults: tuple[str | None, ...] = ()


@dataclass
class Preprocessed:
    """The rewritten text (same number of lines as the input) and what the pass saw."""

    text: str
    defines: dict[str, Macro] = field(default_factory=dict)
    n_conditionals: int = 0  # ifdef/ifndef chains met
    n_expanded: int = 0  # macro uses expanded from known defines
    n_neutralised: int = 0  # unknown macro uses replaced by a neutral token or blanked
    n_cpp_directives: int = 0  # C-preprocessor lines (``#ifdef``, ``#define``) handled like their ` twins
    n_inline_includes: int = 0  # ``include``s in the middle of a line, replaced by the file's text
    rewrites: dict[str, int] = field(default_factory=dict)  # grammar-gap rewrites by kind (``rewrite_gaps``)
    includes: list[str] = field(default_factory=list)  # include names met in active text
    unresolved_includes: list[str] = field(default_factory=list)


def _newlines(s: str) -> str:
    return "\n" * s.count("\n")


def _blank(s: str) -> str:
    """Keep only the newlines of ``s`` (a space keeps tokens on either side apart)."""
    n = s.count("\n")
    return " " + "\n" * n if n else " "


def strip_comments(text: str) -> str:
    """Remove // and /* */ comments (not inside strings); block comments keep their newlines."""

    def repl(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            return m.group(1)
        return _blank(m.group(0))

    return _COMMENT.sub(repl, text)


def _line_end(text: str, i: int) -> int:
    """Index of the newline ending the line at ``i`` (or len), honouring backslash continuations."""
    n = len(text)
    while True:
        j = text.find("\n", i)
        if j < 0:
            return n
        k = j - 1
        if k >= 0 and text[k] == "\r":
            k -= 1
        if k >= 0 and text[k] == "\\":
            i = j + 1
            continue
        return j


def _balanced(text: str, i: int, budget: _Budget | None = None) -> tuple[list[str], int] | None:
    """Parse ``(a, b, ...)`` starting at ``text[i] == '('``; return (args, end) or None.

    The scan is charged to ``budget`` (characters plus ``_TOKEN_COST`` per bracket or comma): an
    unclosed ``(`` scans to the end of the text, so many of them would otherwise cost O(n²).
    """
    found, end, n_tokens = _scan_balanced(text, i)
    if budget is not None:
        budget.spend(end - i + _TOKEN_COST * n_tokens)
    return found


def _scan_balanced(text: str, i: int) -> tuple[tuple[list[str], int] | None, int, int]:
    """The scan behind ``_balanced``: (result, where the scan stopped, tokens visited). It jumps
    from one bracket, comma, string or comment to the next with a regex (strings and comments are
    skipped whole; a mismatched closer gives None)."""
    args: list[str] = []
    start = i + 1
    stack: list[str] = []
    n_tokens = 0
    for m in _BALANCE_TOKEN.finditer(text, i):
        n_tokens += 1
        c = m.group(0)[0]
        if c == '"' or c == "/":
            continue
        if c in "([{":
            stack.append(c)
        elif c in ")]}":
            if not stack or stack[-1] != _OPENER[c]:
                return None, m.end(), n_tokens
            stack.pop()
            if not stack:
                args.append(text[start : m.start()])
                return (args, m.end()), m.end(), n_tokens
        elif len(stack) == 1:  # a comma at the top level separates arguments
            args.append(text[start : m.start()])
            start = m.end()
    return None, len(text), n_tokens


def _parse_define(rest: str) -> Macro | None:
    """Parse the text after ``define`` (continuations already joined)."""
    m = _IDENT.match(rest)
    if not m:
        return None
    name = m.group(1)
    i = m.end()
    params: tuple[str, ...] | None = None
    defaults: tuple[str | None, ...] = ()
    if i < len(rest) and rest[i] == "(":
        parsed = _balanced(rest, i)
        if parsed is None:
            return None
        raw, i = parsed
        names: list[str] = []
        dflt: list[str | None] = []
        for a in raw:
            if not a.strip() and len(raw) == 1:
                break
            pname, eq, dv = a.partition("=")
            names.append(pname.strip())
            dflt.append(dv.strip() if eq else None)
        params, defaults = tuple(names), tuple(dflt)
    body = strip_comments(rest[i:]).replace("\\\r\n", " ").replace("\\\n", " ")
    body = " ".join(body.split())
    return Macro(name, body, params, defaults)


class _Pass:
    def __init__(
        self,
        defines: dict[str, Macro],
        resolve: Callable[[str], str | None] | None,
        depth: int,
        result: Preprocessed,
        budget: _Budget,
        max_depth: int = MAX_MACRO_DEPTH,
    ) -> None:
        self.defines = defines
        self.resolve = resolve
        self.depth = depth
        self.result = result
        self.budget = budget
        self.max_depth = max_depth

    # -- macro expansion inside macro bodies and arguments (no line bookkeeping needed) --
    def expand(self, s: str, depth: int) -> str:
        """``s`` with known macros expanded; raises ExpansionLimit past ``max_depth`` or the budget."""
        self.budget.spend(len(s) + _EXPANSION_COST)
        if "`" not in s:
            return s
        if depth > self.max_depth:
            raise ExpansionLimit(f"macro expansion nested deeper than {self.max_depth} levels (recursive `define?)")
        out: list[str] = []
        pos = 0
        for m in re.finditer(r'"(?:\\.|[^"\\\n])*"|`[A-Za-z_][\w$]*', s):
            tok = m.group(0)
            if tok[0] == '"' or m.start() < pos:
                continue
            mac = self.defines.get(tok[1:])
            if mac is None:
                continue
            end = m.end()
            if mac.params is None:
                rep = self.expand(mac.body, depth + 1)
            else:
                k = end
                while k < len(s) and s[k] in " \t":
                    k += 1
                if k >= len(s) or s[k] != "(":
                    continue
                parsed = _balanced(s, k, self.budget)
                if parsed is None:
                    continue
                args, end = parsed
                rep = self.expand(self.substitute(mac, args), depth + 1)
            self.budget.spend(len(rep))
            out.append(s[pos : m.start()])
            out.append(rep)
            pos = end
        out.append(s[pos:])
        return "".join(out)

    @staticmethod
    def substitute(mac: Macro, args: list[str]) -> str:
        assert mac.params is not None
        values: dict[str, str] = {}
        for idx, pname in enumerate(mac.params):
            if idx < len(args) and args[idx].strip():
                # A `//` comment in a multi-line argument would swallow the rest of the joined line.
                values[pname] = " ".join(strip_comments(args[idx]).split())
            else:
                dv = mac.defaults[idx] if idx < len(mac.defaults) else None
                values[pname] = dv or ""
        body = _PARAM_WORD.sub(lambda m: values.get(m.group(0), m.group(0)), mac.body)
        return body.replace("``", "").replace('`\\`"', '\\"').replace('`"', '"')

    def defined(self, expr: str) -> bool:
        """Evaluate an ``ifdef`` operand: a name or a parenthesised &&/||/! expression."""
        expr = expr.strip()
        if re.fullmatch(r"[A-Za-z_][\w$]*", expr):
            return expr in self.defines
        py: list[str] = []
        for tok in re.findall(r"[A-Za-z_][\w$]*|&&|\|\||<->|->|!|\(|\)", expr):
            if tok == "&&":
                py.append(" and ")
            elif tok == "||":
                py.append(" or ")
            elif tok == "!":
                py.append(" not ")
            elif tok in ("(", ")"):
                py.append(tok)
            elif tok in ("->", "<->"):
                return False  # rare; treat as undefined
            else:
                py.append(" True " if tok in self.defines else " False ")
        try:
            return bool(eval("".join(py), {"__builtins__": {}}, {}))  # noqa: S307 - only True/False/and/or/not/()
        except Exception:
            return False

    def include(self, name: str) -> None:
        self.result.includes.append(name)
        text = self.resolve(name) if self.resolve is not None else None
        if text is None:
            self.result.unresolved_includes.append(name)
            return
        if self.depth >= _MAX_DEPTH:
            return
        self.budget.spend(len(text))  # a header included many times is scanned many times
        # Only the include's defines matter: its text is not inserted (line numbers stay). The
        # defines after it depend on its text, the defines before it and, for nested includes,
        # where the resolver looks: with a resolver that says (``cache_scope``), they are cached.
        scope = getattr(self.resolve, "cache_scope", None)
        key = None
        if scope is not None and len(text) <= _CACHE_MAX_TEXT:
            key = (text, scope if "include" in text else None, self.depth,
                   tuple(sorted(self.defines.items())))
            after = _INCLUDE_CACHE.get(key)
            if after is not None:
                self.defines.clear()
                self.defines.update(after)
                return
        sub = _Pass(self.defines, self.resolve, self.depth + 1, Preprocessed(""), self.budget, self.max_depth)
        sub.run(text)
        if key is not None:
            if len(_INCLUDE_CACHE) >= _CACHE_ENTRIES:
                _INCLUDE_CACHE.clear()
            _INCLUDE_CACHE[key] = dict(self.defines)

    def inline_include(self, name: str) -> str | None:
        """The text of an ``include`` used inside a line, preprocessed with the current defines,
        comments removed and joined onto one line (None: not found or nested too deep)."""
        self.result.includes.append(name)
        text = self.resolve(name) if self.resolve is not None else None
        if text is None:
            self.result.unresolved_includes.append(name)
            return None
        if self.depth >= _MAX_DEPTH:
            return None
        self.budget.spend(len(text))
        self.result.n_inline_includes += 1
        sub = _Pass(self.defines, self.resolve, self.depth + 1, Preprocessed(""), self.budget, self.max_depth)
        return " ".join(strip_comments(sub.run(text)).split())

    # -- the main pass --
    def run(self, text: str) -> str:
        res = self.result
        out: list[str] = []
        pos = 0  # text[:pos] has been emitted
        active = True
        stack: list[list[bool]] = []  # [parent_active, taken]
        n = len(text)
        i = 0
        # Without C-preprocessor lines, one anchored match skips comments and strings in C up to
        # the next backtick word (a Python step per directive or macro, not per comment).
        cpp = has_cpp_lines(text)
        search = _TOKEN_CPP.search if cpp else None
        skip_to_macro = _SKIP_TO_MACRO.match
        budget = self.budget
        n_tokens = 0
        while True:
            if search is None:
                m = skip_to_macro(text, i)
                if m is None:
                    break
                tok = m.group(1)
                s, e = m.start(1), m.end()
            else:
                m = search(text, i)
                if m is None:
                    break
                tok = m.group(0)
                s, e = m.start(), m.end()
            n_tokens += 1
            if not n_tokens & 4095:
                budget.check_deadline()
            i = e
            if tok[0] == "`":
                word = tok[1:]
            elif tok[-1].isalpha() and _CPP_LINE.match(tok):
                word = tok.split("#", 1)[1].strip()
                word = _CPP_WORD.get(word, word)
                res.n_cpp_directives += 1
                if word == "ifdef" and tok.split("#", 1)[1].strip() == "if":
                    k = text.find("\n", e)
                    k = n if k < 0 else k
                    arg = _CPP_DEFINED.sub(lambda m: m.group(1), text[e:k])
                    res.n_conditionals += 1
                    cond = self.defined("(" + arg + ")") if active else False
                    out.append(text[pos:s] if active else _newlines(text[pos:s]))
                    out.append(" ")
                    pos = i = k
                    stack.append([active, cond])
                    active = active and cond
                    continue
            else:
                continue
            if word in _CONDITIONALS:
                arg_end = e
                arg = ""
                if word in ("ifdef", "ifndef", "elsif"):
                    k = e
                    while k < n and text[k] in " \t\r\n":
                        k += 1
                    if k < n and text[k] == "(":
                        parsed = _balanced(text, k, self.budget)
                        if parsed is not None:
                            arg, arg_end = "(" + ",".join(parsed[0]) + ")", parsed[1]
                    else:
                        im = _NAME.match(text, k)
                        if im:
                            arg, arg_end = im.group(0), im.end()
                out.append(text[pos:s] if active else _newlines(text[pos:s]))
                out.append(_blank(text[s:arg_end]))
                pos = i = arg_end
                if word in ("ifdef", "ifndef"):
                    res.n_conditionals += 1
                    cond = self.defined(arg) if active else False
                    if word == "ifndef":
                        cond = not cond if active else False
                    stack.append([active, cond])
                    active = active and cond
                elif not stack:
                    continue  # unmatched elsif/else/endif: blanked
                elif word == "elsif":
                    parent, taken = stack[-1]
                    cond = parent and not taken and self.defined(arg)
                    stack[-1][1] = taken or cond
                    active = cond
                elif word == "else":
                    parent, taken = stack[-1]
                    active = parent and not taken
                    stack[-1][1] = True
                else:  # endif
                    active = stack.pop()[0]
                continue
            if not active:
                continue  # inactive text is blanked when the branch ends
            if word == "define":
                end = _line_end(text, e)
                mac = _parse_define(text[e:end])
                if mac is not None:
                    self.defines[mac.name] = mac
                out.append(text[pos:s])
                out.append(_blank(text[s:end]))
                pos = i = end
            elif word == "undef":
                im = _IDENT.match(text, e)
                end = im.end() if im else e
                if im:
                    self.defines.pop(im.group(1), None)
                out.append(text[pos:s])
                out.append(" ")
                pos = i = end
            elif word == "include":
                end = text.find("\n", e)
                end = n if end < 0 else end
                line = text[e:end]
                im = re.match(r'\s*(?:"([^"]+)"|<([^>]+)>|`([A-Za-z_][\w$]*))', line)
                name = None
                if im:
                    name = im.group(1) or im.group(2)
                    if im.group(3):
                        mac = self.defines.get(im.group(3))
                        name = mac.body.strip('"<> ') if mac is not None else None
                if im and name and not _at_line_start(text, s):
                    # Used as inline text (``#(`include "p.vh")``): the file's text goes in its place,
                    # on this line, and the rest of the line stays.
                    body = self.inline_include(name)
                    out.append(text[pos:s])
                    out.append(" " if body is None else body)
                    pos = i = e + im.end()
                    continue
                if name:
                    self.include(name)
                out.append(text[pos:s])
                out.append(" ")
                pos = i = end
            elif word in _LINE_DIRECTIVES:
                end = text.find("\n", e)
                end = n if end < 0 else end
                out.append(text[pos:s])
                out.append(" ")
                pos = i = end
            elif word == "__FILE__" or word == "__LINE__":
                out.append(text[pos:s])
                out.append('"file"' if word == "__FILE__" else "0")
                pos = e
            else:
                rep, end = self.macro_use(text, s, e, word)
                if rep is not None:
                    out.append(text[pos:s])
                    out.append(rep)
                    pos = i = end
        out.append(text[pos:] if active else _newlines(text[pos:]))
        return "".join(out)

    def macro_use(self, text: str, s: int, e: int, word: str) -> tuple[str | None, int]:
        """Replacement for the macro use ``text[s:e]`` (None: leave it to the grammar)."""
        mac = self.defines.get(word)
        n = len(text)
        if mac is not None:
            if mac.params is None:
                self.result.n_expanded += 1
                return self.expand(mac.body, 1), e
            k = e
            while k < n and text[k] in " \t":
                k += 1
            if k < n and text[k] == "(":
                parsed = _balanced(text, k, self.budget)
                if parsed is not None:
                    args, end = parsed
                    self.result.n_expanded += 1
                    body = self.expand(self.substitute(mac, args), 1)
                    return body.replace("\n", " ") + _newlines(text[s:end]), end
            return None, e
        # An unknown macro: neutral tokens only where the grammar rejects a macro use.
        nxt = text[e] if e < n else ""
        if nxt == "'":  # `W'h1f: the size of a based literal
            self.result.n_neutralised += 1
            return "32", e
        lo = max(0, s - _LOOKBACK)
        nl = text.rfind("\n", lo, s)
        at_line_start = nl >= 0 or lo == 0  # ``before`` starts at the start of the line
        before = text[nl + 1 if nl >= 0 else lo : s]
        if _BASED_DIGITS.search(before):  # 32'h`ADDR: the digits of a based literal
            self.result.n_neutralised += 1
            return "0", e
        if before.rstrip().endswith("["):
            k = e
            while k < n and text[k] in " \t":
                k += 1
            if k < n and text[k] == "]":  # [`R]: a whole range
                self.result.n_neutralised += 1
                return "0:0", e
        if nxt == "(" or (nxt in " \t" and text[e:e + 80].lstrip(" \t")[:1] == "("):
            k = text.index("(", e)
            parsed = _balanced(text, k, self.budget)
            if parsed is not None:
                args, end = parsed
                joined = _STRING.sub("", " ".join(args))
                # An assertion macro, or one taking statements (``F(wait (x);, ...)``): blank it.
                if _PROPERTY_OPS.search(joined) or ";" in joined:
                    self.result.n_neutralised += 1
                    return _blank(text[s:end]), end
            return None, e
        if before.endswith("."):  # a.`NAME: a member named by a macro
            self.result.n_neutralised += 1
            return word, e
        if at_line_start and not before.strip() and _TYPE_USE.match(text, e):  # `T name;  a macro as a type
            self.result.n_neutralised += 1
            return "logic", e
        return None, e


def _at_line_start(text: str, i: int) -> bool:
    """Only blanks between the start of its line and ``text[i]`` (the walk stops at the first
    non-blank, so a long line costs no more than its blanks)."""
    i -= 1
    while i >= 0 and text[i] in " \t\r":
        i -= 1
    return i < 0 or text[i] == "\n"


def has_cpp_lines(text: str) -> bool:
    """Whether ``text`` holds a C-preprocessor directive line (``#ifdef``, ``#define``, ...)."""
    return any(_at_line_start(text, m.start()) for m in _CPP_PROBE.finditer(text))


def preprocess(
    text: str,
    defines: dict[str, Macro] | None = None,
    resolve: Callable[[str], str | None] | None = None,
    *,
    max_depth: int = MAX_MACRO_DEPTH,
    max_chars: int | None = None,
    deadline: float | None = None,
    rewrite: bool = True,
) -> Preprocessed:
    """Rewrite ``text`` for parsing; the result has exactly as many newlines as ``text``.

    ``defines`` seeds the macro table (copied, not modified); ``resolve(name)`` returns the
    text of an ``include``-d file or None, and is used only to collect that file's defines.
    ``max_depth``: macro nesting limit; ``max_chars``: expansion budget in characters (None:
    ``max(EXPANSION_FACTOR × len(text), MIN_EXPANSION_CHARS)``); ``deadline``: a
    ``time.monotonic()`` value. Raises ``ExpansionLimit`` or ``ParseTimeout`` past them.
    ``rewrite``: also apply ``rewrite_gaps`` (grammar-gap rewrites; counted in ``rewrites``).
    """
    result = Preprocessed(text, dict(defines or {}))
    if "`" in text or has_cpp_lines(text):
        if max_chars is None:
            max_chars = max(EXPANSION_FACTOR * len(text), MIN_EXPANSION_CHARS)
        budget = _Budget(max_chars, deadline)
        budget.check_deadline()
        result.text = _Pass(result.defines, resolve, 0, result, budget, max_depth).run(text)
    if rewrite:
        result.text = rewrite_gaps(result.text, result.rewrites, deadline)
    return result


# Grammar gaps of tree-sitter-systemverilog 0.4.1 that slang accepts, each rewritten on its own line
# (newlines never change): (kind, quick substring test, pattern, replacement). Patterns start with a
# literal so that the regex engine skips ahead fast; conditions on the text before a match are
# checked in the replacement function (``_after``).
def _after(chars: str, repl: Callable[[re.Match[str]], str]) -> Callable[[re.Match[str]], str]:
    """``repl`` applied only where the last non-blank character before the match is in ``chars``
    ("": where it is not an identifier character, a backslash or a backtick)."""

    def sub(m: re.Match[str]) -> str:
        s, i = m.string, m.start() - 1
        if chars:
            while i >= 0 and s[i] in " \t\r\n":
                i -= 1
            return repl(m) if i >= 0 and s[i] in chars else m.group(0)
        return m.group(0) if i >= 0 and (s[i].isalnum() or s[i] in "_$\\`") else repl(m)

    return sub


_GAP_REWRITES: list[tuple[str, str, re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    # $fatal(2): a finish number alone is rejected; with a message it parses.
    ("fatal_finish_number", "$fatal", re.compile(r"\$fatal\s*\(\s*(\d+)\s*\)"), lambda m: f'$fatal({m[1]}, "")'),
    # $clog2(N)'(x), $size(a)'(x): a cast whose type is a function call; the cast is dropped.
    ("function_cast", ")'(", re.compile(r"\$[A-Za-z_]\w*\s*\((?:[^()\n]|\([^()\n]*\))*\)\s*'(?=\()"), lambda m: ""),
    # `.Name` shorthand in a parameter override (`#(.W, .D)`): `.Name(Name)`.
    ("dot_name_shorthand", ".", re.compile(r"\.([A-Za-z_][\w$]*)(?=\s*[,)])"),
     _after("(,", lambda m: f".{m[1]}({m[1]})")),
    # SV keywords used as identifiers: escaped identifiers (`\\global `) name the same object.
    ("keyword_identifier", "global", re.compile(r"global\b(?!\s*clocking)"), _after("", lambda m: "\\global ")),
    ("keyword_identifier", "expect", re.compile(r"expect\b(?=\s*(?:[;,)\]=}]|<=|\[|\.))"),
     _after("", lambda m: "\\expect ")),
    ("keyword_identifier", ".expect", re.compile(r"(?<=\.)expect\b"), lambda m: "\\expect "),
    # `module $_DLATCH_P_ (...)`: a yosys techmap cell named like a system task; escaped, it parses.
    ("dollar_unit_name", "$", re.compile(r"(module|primitive)([ \t]+)\$([\w$]+)"),
     _after("", lambda m: f"{m[1]}{m[2]}\\${m[3]} ")),
]
# covergroup `cross a.b, c` and `binsof(a.b)`: hierarchical cross items; their dots become underscores
# (the list up to `iff`, `{` or `;`; the `iff` expression is left alone).
_CROSS = re.compile(r"(?<![\w$])(?:cross\b(?:(?!\biff\b)[^;{])*|binsof\s*\([^()]*\))")
_CROSS_DOT = re.compile(r"(?<=[\w$])\.(?=[A-Za-z_])")


def rewrite_gaps(text: str, counts: dict[str, int] | None = None, deadline: float | None = None) -> str:
    """Rewrite the constructs of ``_GAP_REWRITES`` (and hierarchical cross items) so that
    tree-sitter-systemverilog parses them; every change stays within its line, so line numbers
    hold. ``counts`` (kind -> number of rewrites) is updated when given. Each rewrite is one
    linear regex pass; ``deadline`` (``time.monotonic()``) is checked between them."""
    for kind, probe, pattern, repl in _GAP_REWRITES:
        if deadline is not None and time.monotonic() > deadline:
            raise ParseTimeout("grammar rewrites ran past the parse deadline")
        if probe not in text:
            continue
        n_changed = 0

        def counted(m: re.Match[str], repl: Callable[[re.Match[str]], str] = repl) -> str:
            nonlocal n_changed
            out = repl(m)
            n_changed += out != m.group(0)
            return out

        text = pattern.sub(counted, text)
        if n_changed and counts is not None:
            counts[kind] = counts.get(kind, 0) + n_changed
    if "covergroup" in text:
        n_dots = 0

        def undot(m: re.Match[str]) -> str:
            nonlocal n_dots
            fixed, k = _CROSS_DOT.subn("_", m.group(0))
            n_dots += k
            return fixed

        text = _CROSS.sub(undot, text)
        if n_dots and counts is not None:
            counts["cross_hierarchical_item"] = counts.get("cross_hierarchical_item", 0) + n_dots
    return text
