"""Parse Verilog/SystemVerilog files into design-unit records with tree-sitter.

One record per module (``macromodule`` included), interface, package, program and primitive
(UDP). Line numbers and ``source`` always refer to the original text: parsing runs on the
line-preserving rewrite of ``corpus.preprocess`` (ifdef branches chosen, known macros expanded,
unknown macros neutralised where the grammar rejects them).

Units the main parse cannot see are recovered from a scan of the raw text for unit keywords:
units that exist only in an inactive ``ifdef`` branch, and units swallowed by an ERROR node.
Each is parsed again on its own (keyword line to end keyword, preprocessed the same way); if
even that fails it still gets a record (name, lines, source, ``parse_ok=False``) so no module
is lost.

Speed (issue 9: the stage at the cost of its parser). The tree is never walked node by node in
Python and no query runs over the whole tree (a query visits every node, expressions included: on
the users' repositories that alone cost a fifth of the parse). Units are the root's children (or
an ERROR node's, or another unit's items); each unit's extraction is one pass over its items, which
opens only wrappers, generate constructs, bind directives and ERROR nodes (for instances). In a
non-ANSI unit, a body declaration is examined only if its bytes name a port. ERROR rows come from a
descent through ``has_error`` subtrees only. Comments and source come from the original lines; the
scan for units the tree lost reads only the text outside units that parsed clean. The recovery
parses a unit's lines only up to its end keyword or the next unit keyword line, whichever comes
first, so a file of thousands of unterminated headers stays linear. ``bench/parse_speed.py``
measures the stage against the plain tree-sitter loop and says where the time goes.

Names: an escaped simple identifier (``\\global ``, which the preprocessor writes for SV keywords
used as names) is the same identifier as ``global`` and is recorded so.

Limits (issue 8): each file's parse has a time limit (``timeout_s``, default 30 s) checked by
tree-sitter's progress callback, by the preprocessor and between units; the preprocessor
bounds macro expansion (``corpus.preprocess``). Past a limit ``parse`` raises
``ParseTimeout``/``ExpansionLimit`` (both ``PreprocessError`` with a short ``reason``);
``ParseStage`` counts such a file as failed, by reason, and carries on.
"""

from __future__ import annotations

import functools

import gc
import importlib
import logging
import posixpath
import re
import textwrap
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping
from itertools import count
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import pyarrow as pa

from chipforge.vocab import sha256_hex
from corpus.preprocess import ExpansionLimit, Macro, ParseTimeout, PreprocessError, preprocess, strip_comments
from corpus.schema import FILES_SCHEMA, PARSED_MODULES_SCHEMA, conform, from_rows

__all__ = ["GRAMMARS", "DEFAULT_PARSE_TIMEOUT_S", "ExpansionLimit", "ParseStage", "ParseTimeout", "PreprocessError",
           "VerilogParser", "detect_language", "failure_reason", "merge_parse_stats", "normalize"]

_BATCH_IDS = count()
DEFAULT_PARSE_TIMEOUT_S = 30.0  # per file: preprocessing, tree-sitter, extraction and recovery
_READ_CHUNK = 1 << 20  # bytes handed to tree-sitter per read callback (zero-copy memoryview slices)

log = logging.getLogger(__name__)

# grammar option -> (python module, name recorded in the ``grammar`` column)
GRAMMARS: dict[str, tuple[str, str]] = {
    "systemverilog": ("tree_sitter_systemverilog", "tree-sitter-systemverilog"),
    "verilog": ("tree_sitter_verilog", "tree-sitter-verilog"),
}

_UNIT_KINDS = {
    "module_declaration": "module",
    "interface_declaration": "interface",
    "package_declaration": "package",
    "program_declaration": "program",
    "udp_declaration": "primitive",
}
_INSTANCE_TYPES = frozenset(
    {
        "module_instantiation",
        "udp_instantiation",
        "interface_instantiation",
        "program_instantiation",
        "checker_instantiation",
    }
)
_IDENT_TYPES = frozenset({"simple_identifier", "escaped_identifier"})
_HEADERS = frozenset(
    {
        "module_header", "module_ansi_header", "module_nonansi_header",
        "interface_ansi_header", "interface_nonansi_header",
        "program_ansi_header", "program_nonansi_header",
        "udp_ansi_declaration", "udp_nonansi_declaration",
    }
)
# Nodes that only wrap the items of a unit body (the two grammars name them differently).
_WRAPPERS = frozenset(
    {
        "module_item", "module_or_generate_item", "non_port_module_item", "module_common_item",
        "module_or_generate_item_declaration", "package_or_generate_item_declaration",
        "interface_item", "non_port_interface_item", "interface_or_generate_item",
        "package_item", "program_item", "non_port_program_item",
    }
)
_PORT_HEADERS = frozenset(
    {"net_port_header", "net_port_header1", "variable_port_header", "interface_port_header"}
)
_DIRECTION_DECLS = {
    "input_declaration": "input",
    "output_declaration": "output",
    "inout_declaration": "inout",
    "ref_declaration": "ref",
    "udp_output_declaration": "output",
    "udp_input_declaration": "input",
}
_BUILTIN_TYPE = re.compile(
    r"(?:wire|reg|logic|bit|byte|shortint|int|longint|integer|time|real|realtime|shortreal|"
    r"string|chandle|event|tri|tri0|tri1|triand|trior|trireg|wand|wor|supply0|supply1|uwire|"
    r"var|signed|unsigned|interconnect|type)\b"
)
_DIRECTION_WORD = re.compile(r"^\s*(?:input|output|inout|ref)\b")
_SV_HINT = re.compile(
    r"\b(?:logic|always_ff|always_comb|always_latch|endinterface|endpackage|endprogram|typedef|"
    r"modport|import\s+\w+::|unique\s+case|priority\s+case|bit\s*\[|int\s+unsigned|endclass)\b"
)
_EXT_LANGUAGE = {".v": "verilog", ".vh": "verilog", ".sv": "systemverilog", ".svh": "systemverilog"}

# A `define line with its continuation lines (unit keywords there are no units of the file).
_DEFINE_BODY = re.compile(r"^[ \t]*`define\b(?:[^\n]*\\[ \t\r]*\n)*[^\n]*", re.M)
# A unit keyword at the start of a line, in raw text (used to find units the tree lost).
_UNIT_LINE = re.compile(
    r"^[ \t]*(?:\(\*[^\n]*?\*\)[ \t]*)?(module|macromodule|interface|package|program|primitive)\b"
    r"(?![ \t]+class\b)\s+(?:(?:static|automatic)\s+)?([A-Za-z_][\w$]*)(?=\s*(?:[;(#]|import\b))",
    re.M,
)
_END_KEYWORD = {
    "module": "endmodule",
    "macromodule": "endmodule",
    "interface": "endinterface",
    "package": "endpackage",
    "program": "endprogram",
    "primitive": "endprimitive",
}
_GENERATE = frozenset(
    {
        "generate_region", "conditional_generate_construct", "if_generate_construct",
        "case_generate_construct", "case_generate_item", "loop_generate_construct", "generate_block",
        "bind_directive", "bind_instantiation",  # `bind target module_name inst (...)`
    }
)
_WORD_BYTES = re.compile(rb"[A-Za-z_][\w$]*")
_BODY_DECLS = frozenset({"net_declaration", "data_declaration"})
_SIMPLE_ESCAPED = re.compile(rb"\\[A-Za-z_$][\w$]*")
_REG_WORD = re.compile(r"\breg\b")
# Expression/type subtrees never hold parameter assignments; ``collect`` does not descend into them.
_LEAF_SUBTREES = frozenset(
    {
        "constant_param_expression", "param_expression", "constant_expression", "expression",
        "data_type", "data_type_or_implicit", "data_type_or_implicit1", "packed_dimension",
        "unpacked_dimension", "constant_mintypmax_expression", "mintypmax_expression",
    }
)
_UNIT_START_BYTES = re.compile(rb"\n[ \t]*(?:module|macromodule|interface|package|program|primitive)\b")
_NORM_TOKEN = re.compile(r'"(?:\\.|[^"\\\n])*"|[\w$]+|\S')
_DECORATION = re.compile(r"^[\s\-=*#~_+/\\|.<>]*$")
_LINE_MARK = re.compile(r"^//+[!/<]?")
_BLOCK_OPEN = re.compile(r"^/\*+!?")
_BLOCK_CLOSE = re.compile(r"\s*\*+/$")
_COMMENT_SKIP = re.compile(r"^\s*`(?:timescale|default_nettype|resetall|celldefine|begin_keywords)\b")
_COMMENT_OR_STRING = re.compile(r'//[^\n]*|/\*.*?(?:\*/|\Z)|"(?:\\.|[^"\\\n])*"?', re.S)


def failure_reason(exc: BaseException) -> str:
    """Short report key for a file whose parse raised ``exc``: ``timeout``, ``expansion_limit``,
    ``preprocess_error`` or ``error`` (anything else, e.g. a parser bug)."""
    return exc.reason if isinstance(exc, PreprocessError) else "error"


def merge_parse_stats(stats: Iterable[Mapping[str, Any]], max_failures: int = 100) -> dict[str, Any]:
    """Sum ``ParseStage.last_stats`` dicts (one per batch) into one report section:
    ``{"files_parsed", "files_failed", "failed_by_reason", "failures"}`` (at most ``max_failures``
    examples, sorted by repo and path)."""
    parsed = failed = 0
    reasons: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    for st in stats:
        parsed += int(st.get("files_parsed", 0))
        failed += int(st.get("files_failed", 0))
        reasons.update(st.get("failed_by_reason") or {})
        failures.extend(st.get("failures") or [])
    failures.sort(key=lambda f: (str(f.get("repo")), str(f.get("path"))))
    return {"files_parsed": parsed, "files_failed": failed, "failed_by_reason": dict(sorted(reasons.items())),
            "failures": failures[:max_failures]}


class _BlockComments:
    """Spans of ``/* */`` comments in a text (strings and // comments honoured), built once."""

    def __init__(self, text: str) -> None:
        spans = [(m.start(), m.end()) for m in _COMMENT_OR_STRING.finditer(text) if m.group(0).startswith("/*")]
        self.starts = [a for a, _ in spans]
        self.ends = [b for _, b in spans]

    def contains(self, pos: int) -> bool:
        i = bisect_right(self.starts, pos) - 1
        return i >= 0 and pos < self.ends[i]


class _DefineBodies(_BlockComments):
    """Spans of `` `define`` lines with their ``\\`` continuation lines, built once: a unit
    keyword line in a macro body (``module name(...``, the macro's parameter as the name) is
    no unit of the file."""

    def __init__(self, text: str) -> None:
        spans = [m.span() for m in _DEFINE_BODY.finditer(text)]
        self.starts = [a for a, _ in spans]
        self.ends = [b for _, b in spans]


def _check_deadline(deadline: float | None, what: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise ParseTimeout(f"parse ran past its time limit ({what})")


def detect_language(path: str, text: str) -> str:
    """``verilog`` for .v/.vh, ``systemverilog`` for .sv/.svh; otherwise guessed from content."""
    ext = posixpath.splitext(path.lower())[1]
    if ext in _EXT_LANGUAGE:
        return _EXT_LANGUAGE[ext]
    return "systemverilog" if _SV_HINT.search(text) else "verilog"


def normalize(source: str) -> str:
    """Comments removed and every token separated by one space (whitespace-insensitive).

    Two texts that differ only in comments, indentation, line breaks or spacing around
    operators normalise to the same string; used for ``norm_sha256`` and MinHash shingles.
    """
    return " ".join(_NORM_TOKEN.findall(strip_comments(source)))


_sha256 = sha256_hex


def _squash(s: str) -> str:
    return " ".join(s.split())


def _clean_comment(lines: list[str]) -> str:
    """Strip comment markers and decoration lines, dedent, trim blank lines."""
    out: list[str] = []
    for raw in lines:
        s = raw.rstrip()
        stripped = s.lstrip()
        if stripped.startswith("//"):
            s = _LINE_MARK.sub("", stripped)
            s = s[1:] if s.startswith(" ") else s
        else:
            if stripped.startswith("/*"):
                s = _BLOCK_OPEN.sub("", stripped)
                s = s[1:] if s.startswith(" ") else s
            elif stripped.startswith("*") and not stripped.startswith("*/"):
                s = stripped[1:]
                s = s[1:] if s.startswith(" ") else s
            s = _BLOCK_CLOSE.sub("", s)
        if _DECORATION.match(s):
            s = ""
        out.append(s.rstrip())
    text = textwrap.dedent("\n".join(out)).strip("\n")
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _comment_before(lines: list[str], row: int) -> str:
    """The comment block just before line ``row`` (0-based): blank and `timescale lines skipped."""
    i = row - 1
    while i >= 0 and (not lines[i].strip() or _COMMENT_SKIP.match(lines[i])):
        i -= 1
    block: list[str] = []
    while i >= 0:
        s = lines[i].strip()
        if s.startswith("//"):
            block.append(lines[i])
            i -= 1
        elif s.endswith("*/"):
            j = i
            while j >= 0 and "/*" not in lines[j]:
                j -= 1
            if j < 0:
                break
            part = lines[j:i + 1]
            head = part[0]
            code = head[: head.index("/*")]
            part[0] = head[head.index("/*"):]
            block.extend(reversed(part))
            if code.strip():
                break
            i = j - 1
        else:
            break
    block.reverse()
    return _clean_comment(block)


def _mark(marks: bytearray, node: Any) -> None:
    """Flag the rows ``node`` spans (a node ending at column 0 does not reach its last row)."""
    a, b = node.start_point.row, node.end_point.row
    if b > a and node.end_point.column == 0:
        b -= 1
    marks[a : b + 1] = b"\x01" * (b - a + 1)


@dataclass
class _Unit:
    kind: str
    name: str
    start_row: int  # 0-based, in the text that was parsed
    end_row: int
    parse_ok: bool
    error_rows: int = 0
    parameters: list[dict[str, str]] = field(default_factory=list)
    ports: list[dict[str, str]] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)


# Every item type ``_Extractor.unit`` acts on; the rest of a unit body is skipped at one lookup each.
_ITEM_TYPES = (_WRAPPERS | _GENERATE | _INSTANCE_TYPES | _HEADERS | _BODY_DECLS | set(_UNIT_KINDS)
               | {"ERROR", "parameter_declaration", "local_parameter_declaration", "port_declaration",
                  "udp_port_declaration"})


class _Extractor:
    """Field extraction for one parsed text; ``src`` is the UTF-8 text tree-sitter saw."""

    def __init__(self, src: bytes) -> None:
        self.src = src

    def text(self, node: Any) -> str:
        """The node's text; an escaped simple identifier (``\\global ``, which the preprocessor
        writes for SV keywords used as names) is the same name as ``global`` and reads so."""
        raw = self.src[node.start_byte : node.end_byte]
        if raw[:1] == b"\\" and _SIMPLE_ESCAPED.fullmatch(raw):
            return raw[1:].decode("ascii")
        return raw.decode("utf-8", "replace")

    def between(self, start: int, end: int) -> str:
        return self.src[start:end].decode("utf-8", "replace")

    @staticmethod
    def first_ident(node: Any) -> Any | None:
        stack = [node]
        while stack:
            n = stack.pop()
            t = n.type
            if t in _IDENT_TYPES:
                return n
            if t == "attribute_instance" or n.is_missing:
                continue
            stack.extend(reversed(n.named_children))
        return None

    @staticmethod
    def collect(node: Any, types: frozenset[str]) -> list[Any]:
        """Descendants of ``types`` in document order, not descending into matches."""
        found: list[Any] = []
        stack = [node]
        while stack:
            n = stack.pop()
            t = n.type
            if t in types:
                found.append(n)
                continue
            if t in _LEAF_SUBTREES:
                continue
            stack.extend(reversed(n.named_children))
        return found

    def unit_name(self, unit: Any) -> str | None:
        n = unit.child_by_field_name("name")
        if n is not None:
            return self.text(n)
        for c in unit.named_children:
            t = c.type
            if t in _IDENT_TYPES:
                return self.text(c)
            if t.endswith("_identifier"):
                ident = self.first_ident(c)
                return self.text(ident) if ident is not None else None
            if t in _HEADERS:
                n = c.child_by_field_name("name")
                if n is not None:
                    return self.text(n)
                for cc in c.named_children:
                    if cc.type in _IDENT_TYPES:
                        return self.text(cc)
                    if cc.type.endswith("_identifier"):
                        ident = self.first_ident(cc)
                        return self.text(ident) if ident is not None else None
        return None

    # -- parameters --
    def params(self, decl: Any, kind: str) -> list[dict[str, str]]:
        out = []
        for a in self.collect(decl, frozenset({"param_assignment", "type_assignment"})):
            ident = self.first_ident(a)
            if ident is None or not self.text(ident):
                continue
            default = ""
            for c in a.children:
                if c.type == "=":
                    default = _squash(self.between(c.end_byte, a.end_byte))
                    break
            out.append({"name": self.text(ident), "default": default, "kind": kind})
        return out

    def param_port_list(self, plist: Any) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        kind = "parameter"
        for decl in plist.named_children:
            if decl.type == "ERROR":
                continue
            inner = decl.type
            if inner == "parameter_port_declaration" and decl.named_child_count:
                inner = decl.named_child(0).type
            if inner == "local_parameter_declaration":
                kind = "localparam"
            elif inner == "parameter_declaration":
                kind = "parameter"
            out.extend(self.params(decl, kind))
        return out

    # -- ports --
    def ansi_ports(self, plist: Any) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        direction, type_ = "", ""
        for decl in plist.named_children:
            if decl.type not in ("ansi_port_declaration", "interface_port_declaration"):
                continue
            header = None
            name = None
            for c in decl.named_children:
                if c.type in _PORT_HEADERS and header is None:
                    header = c
                elif name is None and (c.type in _IDENT_TYPES or c.type.endswith("port_identifier")):
                    name = c if c.type in _IDENT_TYPES else self.first_ident(c)
            if name is None:
                continue
            if header is not None:
                if header.type == "interface_port_header":
                    type_ = _squash(self.text(header))
                    direction = "modport" if "." in type_ else "interface"
                else:
                    dnode = header.named_child(0)
                    if dnode is not None and dnode.type != "port_direction":
                        dnode = None
                    type_ = _squash(self.text(header))
                    if dnode is not None and self.text(dnode):
                        direction = _squash(self.text(dnode))
                        type_ = _squash(self.between(dnode.end_byte, header.end_byte))
                    elif type_ and not _BUILTIN_TYPE.match(type_) and not type_.startswith("["):
                        direction = "interface"  # `bus_if port`: a user type with no direction
            out.append({"name": self.text(name), "direction": direction, "type": type_})
        return out

    def decl_names(self, lst: Any) -> list[str]:
        names = []
        for c in lst.named_children:
            if c.type in _IDENT_TYPES:
                names.append(self.text(c))
            elif c.type.endswith("_identifier") or c.type.endswith("_assignment"):
                ident = self.first_ident(c)
                if ident is not None:
                    names.append(self.text(ident))
        return [n for n in names if n]

    def typed_decl(self, decl: Any) -> tuple[str, list[str]] | None:
        """(type text, names) of a declaration whose names sit in a list_of_* child."""
        lst = next((c for c in decl.named_children if c.type.startswith("list_of_")), None)
        if lst is None:
            names = self.decl_names(decl)
            return ("", names) if names else None
        type_ = self.between(decl.start_byte, lst.start_byte)
        return _squash(_DIRECTION_WORD.sub("", type_)), self.decl_names(lst)

    def extend_to_end_keyword(self, node: Any, kind: str, end_row: int) -> int:
        """A broken unit that tree-sitter closed early ends at its end keyword, if one follows."""
        keyword = _END_KEYWORD[kind].encode()
        last = node.children[-1] if node.child_count else None
        if last is not None and last.type == _END_KEYWORD[kind] and not last.is_missing:
            return end_row
        # Look for the end keyword only up to the next unit keyword line: searching the whole rest
        # of the file for every broken unit is O(n²) in a file of unterminated headers.
        nxt = _UNIT_START_BYTES.search(self.src, node.end_byte)
        m = re.compile(rb"\b" + keyword + rb"\b").search(self.src, node.end_byte,
                                                          nxt.start() if nxt else len(self.src))
        if m is None:
            return end_row
        return end_row + self.src.count(b"\n", node.end_byte, m.end()) - (
            1 if node.end_point.column == 0 and end_row < node.end_point.row else 0
        )

    # -- a whole unit --
    def unit(self, node: Any, kind: str, name: str, nested: list[Any]) -> _Unit:
        """Header fields, top-level parameters/ports and instantiated module names of one unit.

        One pass over the unit's items: wrappers (``_WRAPPERS``) are opened, generate
        constructs and ERROR nodes are searched for instances only (``scan_instances``), and
        units declared inside this one are appended to ``nested`` for the caller.
        """
        end = node.end_point
        end_row = end.row - 1 if end.column == 0 and end.row > node.start_point.row else end.row
        if node.has_error:
            end_row = self.extend_to_end_keyword(node, kind, end_row)
        u = _Unit(kind, name, node.start_point.row, end_row, not node.has_error)
        nonansi: list[str] | None = None
        port_words: frozenset[bytes] = frozenset()
        body_ports: dict[str, dict[str, str]] = {}
        body_types: dict[str, str] = {}
        instances: dict[str, None] = {}
        src = self.src
        stack = list(reversed(node.named_children))
        while stack:
            item = stack.pop()
            it = item.type
            if it not in _ITEM_TYPES:  # always blocks, assigns, ...: one set lookup each
                continue
            if it in _BODY_DECLS:
                # Only declarations naming a port of a non-ANSI header matter; most are internal
                # nets, so a word test on the bytes skips them without walking their nodes.
                if nonansi is None or not any(
                        w in port_words for w in _WORD_BYTES.findall(src, item.start_byte, item.end_byte)):
                    continue
                info = self.typed_decl(item)
                if info is not None and info[0]:
                    for n in info[1]:
                        body_types.setdefault(n, info[0])
                continue
            if it in _WRAPPERS:
                stack.extend(reversed(item.named_children))
                continue
            if it == "ERROR" or it in _GENERATE:
                self.scan_instances(item, instances, nested)
                continue
            if it in _INSTANCE_TYPES:
                self.add_instance(item, instances)
            elif it in _HEADERS:
                for c in item.named_children:
                    ct = c.type
                    if ct == "parameter_port_list":
                        u.parameters.extend(self.param_port_list(c))
                    elif ct == "list_of_port_declarations":
                        u.ports.extend(self.ansi_ports(c))
                    elif ct in ("list_of_ports", "udp_port_list"):
                        nonansi = nonansi or []
                        for p in c.named_children:
                            ident = p if p.type in _IDENT_TYPES else self.first_ident(p)
                            if ident is not None and self.text(ident):
                                nonansi.append(self.text(ident))
                        port_words = frozenset(n.encode() for n in nonansi)
                    elif ct == "udp_declaration_port_list":
                        for d in c.named_children:
                            info = self.typed_decl(d)
                            if info is not None:
                                typ = "reg" if _REG_WORD.search(self.text(d)) else ""
                                for n in info[1]:
                                    direction = _DIRECTION_DECLS.get(d.type, "")
                                    u.ports.append({"name": n, "direction": direction, "type": typ})
            elif it == "parameter_declaration":
                u.parameters.extend(self.params(item, "parameter"))
            elif it == "local_parameter_declaration":
                u.parameters.extend(self.params(item, "localparam"))
            elif it in ("port_declaration", "udp_port_declaration"):
                for d in item.named_children:
                    if d.type == "attribute_instance":
                        continue
                    info = self.typed_decl(d)
                    if info is None:
                        continue
                    typ, names = info
                    if d.type == "interface_port_declaration":
                        direction = "modport" if "." in typ else "interface"
                    elif d.type == "udp_reg_declaration":
                        for n in names:
                            body_types[n] = "reg"
                        continue
                    else:
                        direction = _DIRECTION_DECLS.get(d.type, "")
                        if d.type == "udp_output_declaration":
                            typ = "reg" if _REG_WORD.search(self.text(d)) else ""
                    for n in names:
                        body_ports[n] = {"name": n, "direction": direction, "type": typ}
            elif it in _UNIT_KINDS:
                nested.append(item)
        u.instances = [k for k in instances if k]
        if nonansi is not None:
            for n in nonansi:
                p = body_ports.pop(n, None) or {"name": n, "direction": "", "type": ""}
                u.ports.append(p)
            u.ports.extend(body_ports.values())
            for p in u.ports:
                extra = body_types.get(p["name"])
                if extra and (not p["type"] or p["type"].startswith(("[", "signed"))):
                    p["type"] = extra if "[" in extra else _squash(f"{extra} {p['type']}")
        return u

    def add_instance(self, inst: Any, instances: dict[str, None]) -> None:
        """Record the module name an instantiation node names (first identifier)."""
        first = inst.named_child(0)
        if first is not None and first.type in _IDENT_TYPES:
            instances.setdefault(self.text(first), None)
            return
        tnode = inst.child_by_field_name("instance_type")
        ident = tnode if tnode is not None else self.first_ident(inst)
        if ident is not None:
            instances.setdefault(self.text(ident), None)

    def scan_instances(self, node: Any, instances: dict[str, None], nested: list[Any]) -> None:
        """Instances inside generate constructs and ERROR nodes, in document order; only
        generate/wrapper/ERROR nodes are opened (never statements or expressions)."""
        stack = list(reversed(node.named_children))
        while stack:
            n = stack.pop()
            t = n.type
            if t in _INSTANCE_TYPES:
                self.add_instance(n, instances)
            elif t in _GENERATE or t in _WRAPPERS or t == "ERROR":
                stack.extend(reversed(n.named_children))
            elif t in _UNIT_KINDS:
                nested.append(n)


class VerilogParser:
    """Parse one file's text into unit records; build once, call per file.

    ``grammar``: ``systemverilog`` (tree-sitter-systemverilog, default) or ``verilog``
    (tree-sitter-verilog).
    """

    def __init__(self, grammar: str = "systemverilog", *, timeout_s: float | None = DEFAULT_PARSE_TIMEOUT_S) -> None:
        """``timeout_s``: default per-file time limit of ``parse`` (None: unlimited)."""
        self.timeout_s = timeout_s
        if grammar not in GRAMMARS:
            raise ValueError(f"unknown grammar {grammar!r}: expected one of {sorted(GRAMMARS)}")
        from tree_sitter import Language, Parser

        module_name, self.grammar = GRAMMARS[grammar]
        self.language = Language(importlib.import_module(module_name).language())
        self._parser = Parser(self.language)

    def _tree(self, src: bytes, deadline: float | None) -> Any:
        """tree-sitter parse of ``src``; with a deadline, cancelled by the progress callback."""
        if deadline is None:
            return self._parser.parse(src)
        view = memoryview(src)
        mono = time.monotonic

        def read(offset: int, _point: Any) -> memoryview:
            return view[offset : offset + _READ_CHUNK]

        def cancel(_offset: int, _has_error: bool) -> bool:
            return mono() > deadline

        try:
            return self._parser.parse(read, progress_callback=cancel)
        except ValueError:
            self._parser.reset()  # a cancelled parse would otherwise resume on the next call
            _check_deadline(deadline, "tree-sitter")
            raise

    # -- one parse of one text --
    def _parse_units(self, text: str, defines: Mapping[str, Macro] | None,
                     resolve: Callable[[str], str | None] | None, use_pp: bool,
                     deadline: float | None = None,
                     ) -> tuple[list[_Unit], list[int], dict[str, Macro]]:
        """Units of ``text`` (rows relative to it), cumulative error-row counts, final defines."""
        if use_pp:
            pp = preprocess(text, dict(defines or {}), resolve, deadline=deadline)
            ptext, final_defines = pp.text, pp.defines
        else:
            ptext, final_defines = text, dict(defines or {})
        src = ptext.encode("utf-8", "replace")
        tree = self._tree(src, deadline)
        root = tree.root_node
        n_rows = ptext.count("\n") + 1
        marks = bytearray(n_rows + 1)
        if root.has_error:
            # Mark the rows of ERROR/MISSING nodes; a whole unit that sits inside an ERROR
            # node (tree-sitter wraps the file in one when it gives up) is not an error itself.
            stack = [root]
            steps = 0
            while stack:
                n = stack.pop()
                steps += 1
                if not steps & 4095:
                    _check_deadline(deadline, "error scan")
                if n.is_error or n.is_missing:
                    children = n.children
                    if not children:
                        _mark(marks, n)
                    for c in children:
                        if c.type in _UNIT_KINDS:
                            if c.has_error:
                                stack.append(c)
                        else:
                            _mark(marks, c)
                    continue
                stack.extend(c for c in n.children if c.has_error)
        cum = [0, *accumulate(marks)]  # cum[r] = error rows before row r
        _check_deadline(deadline, "error scan")
        ex = _Extractor(src)
        units: list[_Unit] = []
        # Units are children of the root, or of ERROR nodes the parser wrapped them in, or items
        # of another unit (``unit`` hands those back): no query over the whole tree is needed.
        todo = [n for n in reversed(root.named_children)]
        while todo:
            node = todo.pop()
            t = node.type
            if t == "ERROR":
                todo.extend(reversed(node.named_children))
                continue
            kind = _UNIT_KINDS.get(t)
            if kind is None:
                continue
            _check_deadline(deadline, "extraction")
            name = ex.unit_name(node)
            if not name:
                continue
            nested: list[Any] = []
            u = ex.unit(node, kind, name, nested)
            u.error_rows = cum[u.end_row + 1] - cum[u.start_row]
            u.parse_ok = u.parse_ok and u.error_rows == 0
            units.append(u)
            todo.extend(reversed(nested))
        return units, cum, final_defines

    def parse(self, text: str, path: str = "", *,
              resolve: Callable[[str], str | None] | None = None,
              defines: Mapping[str, Macro | str] | None = None,
              preprocess: bool = True, recover: bool = True,
              timeout_s: float | None = None) -> list[dict[str, Any]]:
        """One record per design unit in ``text`` (see the module docstring for the keys).

        ``resolve(name)`` returns the text of an ``include``-d file (for its defines) or None;
        ``defines`` seeds the macro table (name -> body text, as with ``+define+``).
        ``preprocess=False`` parses the raw text and
        ``recover=False`` skips the recovery of units the main parse lost (both for
        measurements only). ``timeout_s``: this call's time limit in seconds (None: the
        parser's ``timeout_s``, which may itself be None for no limit). Raises ``ParseTimeout``
        past it and ``ExpansionLimit`` for a macro expansion bomb (no partial records then).
        """
        if not text:
            return []
        limit = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit if limit is not None else None
        if defines is not None:
            defines = {k: v if isinstance(v, Macro) else Macro(k, str(v)) for k, v in defines.items()}
        lines = text.split("\n")
        units, cum, final_defines = self._parse_units(text, defines, resolve, preprocess, deadline)
        found = {u.name for u in units}
        extra: list[_Unit] = []
        candidates: list[re.Match[str]] = []
        clean_starts: list[int] = []  # offsets of the first lines of units that parsed clean
        if recover:
            # Units the tree lost sit outside the spans of units that parsed clean: only the
            # gaps between those spans are scanned for unit keyword lines.
            acc = [0, *accumulate(map(len, lines))]  # offset of row r = acc[r] + r
            pos = 0
            for u in sorted((u for u in units if u.parse_ok), key=lambda u: u.start_row):
                a = acc[u.start_row] + u.start_row
                if a > pos:
                    candidates.extend(_UNIT_LINE.finditer(text, pos, a))
                clean_starts.append(a)
                end_row = min(u.end_row, len(lines) - 1)
                pos = max(pos, acc[end_row + 1] + end_row + 1)
            candidates.extend(_UNIT_LINE.finditer(text, pos))
        lost = [k for k, m in enumerate(candidates) if m.group(2) not in found]
        if lost:
            comments = _BlockComments(text)
            macros = _DefineBodies(text)
            bounds = sorted([m.start(1) for m in candidates if not comments.contains(m.start(1))]
                            + clean_starts)  # unit lines
        row_pos, row = 0, 0  # incremental line counting: text[:row_pos] has ``row`` newlines
        for k in lost:
            m = candidates[k]
            name = m.group(2)
            if name in found or comments.contains(m.start(1)) or macros.contains(m.start(1)):
                continue
            _check_deadline(deadline, "recovery")
            found.add(name)
            row += text.count("\n", row_pos, m.start(1))
            row_pos = m.start(1)
            start_row = row
            # The unit ends at its end keyword, or before the next unit keyword line if that comes
            # first (bounded pieces keep a file of unterminated headers linear, not quadratic).
            i = bisect_right(bounds, m.start(1))
            limit_pos = bounds[i] if i < len(bounds) else len(text)
            end_m = re.compile(rf"\b{_END_KEYWORD[m.group(1)]}\b").search(text, m.end(), limit_pos)
            if end_m:
                end_row = start_row + text.count("\n", m.start(1), end_m.end())
            elif limit_pos < len(text):
                end_row = max(start_row, start_row + text.count("\n", m.start(1), limit_pos) - 1)
            else:
                end_row = start_row + text.count("\n", m.start(1), limit_pos)
            extra.append(self._recover(lines, start_row, end_row, m.group(1), name,
                                       final_defines, resolve, preprocess, deadline))
        units.extend(extra)
        units.sort(key=lambda u: u.start_row)
        language = detect_language(path, text)
        records = []
        for u in units:
            start, end = u.start_row, min(u.end_row, len(lines) - 1)
            n_lines = end - start + 1
            records.append(
                {
                    "language": language,
                    "kind": u.kind,
                    "name": u.name,
                    "start_line": start + 1,
                    "end_line": end + 1,
                    "comment": _comment_before(lines, start),
                    "parameters": u.parameters,
                    "ports": u.ports,
                    "instances": u.instances,
                    "source": "\n".join(lines[start : end + 1]),
                    "n_lines": n_lines,
                    "parse_ok": u.parse_ok,
                    "error_line_share": round(min(u.error_rows, n_lines) / n_lines, 6),
                    "grammar": self.grammar,
                }
            )
        return records

    def _recover(self, lines: list[str], start_row: int, end_row: int, keyword: str, name: str,
                 defines: Mapping[str, Macro], resolve: Callable[[str], str | None] | None,
                 use_pp: bool, deadline: float | None = None) -> _Unit:
        """Parse lines ``start_row..end_row`` alone to rebuild a unit the main parse lost."""
        piece = "\n".join(lines[start_row : end_row + 1])
        units, cum, _ = self._parse_units(piece, defines, resolve, use_pp, deadline)
        for u in units:
            if u.name == name:
                u.start_row += start_row
                u.end_row += start_row
                return u
        kind = "module" if keyword == "macromodule" else keyword
        return _Unit(kind, name, start_row, end_row, False, error_rows=cum[-1] or (end_row - start_row + 1))


def include_basenames(files: Mapping[str, str]) -> dict[str, str]:
    by_base: dict[str, str] = {}
    for p in sorted(files):
        by_base.setdefault(posixpath.basename(p), p)
    return by_base


def include_resolver(files: Mapping[str, str], by_base: Mapping[str, str], path: str,
                     scope: Hashable | None = None) -> Callable[[str], str | None]:
    """Resolve ``include`` names against the files of the same repository in the batch:
    relative to the including file, then to the repository root, then by file name.

    ``scope`` (unique to ``files``, e.g. a batch number and the repository) lets the preprocessor
    cache the defines of headers included by many files (``resolve.cache_scope``)."""

    def resolve(name: str) -> str | None:
        name = name.strip()
        for cand in (posixpath.normpath(posixpath.join(posixpath.dirname(path), name)), posixpath.normpath(name)):
            if cand in files:
                return files[cand]
        p = by_base.get(posixpath.basename(name))
        return files[p] if p is not None else None

    if scope is not None:
        resolve.cache_scope = (scope, posixpath.dirname(path))  # type: ignore[attr-defined]
    return resolve


class ParseStage:
    """Ray Data stage: FILES_SCHEMA rows in, PARSED_MODULES_SCHEMA rows out.

    The parser is built once per instance (once per actor). ``include``s are resolved against
    files of the same repository in the same batch that hold ``define``s. A file that makes the
    parser raise, runs past ``parse_timeout_s`` or is a macro expansion bomb is logged, yields no
    rows and is counted by reason; it never fails the batch.

    Per-file failures leave the stage as plain data the job aggregates: after each call,
    ``last_stats`` is ``{"files_parsed", "files_failed", "failed_by_reason": {reason: n},
    "failures": [{"repo", "path", "reason", "error"}, ...]}`` (``failures`` at most
    ``max_failures_listed`` per batch); ``merge_parse_stats`` sums such dicts. ``n_files``,
    ``n_failed`` and ``failed_by_reason`` accumulate over the instance's lifetime.
    """

    def __init__(self, grammar: str = "systemverilog", *, parse_timeout_s: float | None = DEFAULT_PARSE_TIMEOUT_S,
                 max_failures_listed: int = 20) -> None:
        self.parser = VerilogParser(grammar, timeout_s=parse_timeout_s)
        self.parse_timeout_s = parse_timeout_s
        self.max_failures_listed = max_failures_listed
        self.n_files = 0
        self.n_failed = 0
        self.failed_by_reason: Counter[str] = Counter()
        self.last_stats: dict[str, Any] = merge_parse_stats([])

    def __call__(self, batch: pa.Table | pa.RecordBatch | Mapping[str, Any]) -> pa.Table:
        # Parsing allocates many short-lived objects and no reference cycles; in a long-lived worker
        # whose heap holds Ray's and pyarrow's objects, cyclic GC passes cost as much as the parse.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._parse_batch(batch)
        finally:
            if was_enabled:
                gc.enable()

    def _parse_batch(self, batch: pa.Table | pa.RecordBatch | Mapping[str, Any]) -> pa.Table:
        if isinstance(batch, Mapping):
            batch = pa.table({k: list(v) for k, v in batch.items()})
        table = conform(batch, FILES_SCHEMA, stage="parse")
        files = table.to_pylist()
        headers: dict[str, dict[str, str]] = {}
        for f in files:
            if f["text"] and "`define" in f["text"]:
                headers.setdefault(f["repo"], {})[f["path"]] = f["text"]
        bases = {repo: include_basenames(h) for repo, h in headers.items()}
        batch_id = next(_BATCH_IDS)  # scopes the preprocessor's include cache to this batch's files
        rows: list[dict[str, Any]] = []
        parsed = 0
        reasons: Counter[str] = Counter()
        failures: list[dict[str, Any]] = []
        for f in files:
            self.n_files += 1
            text = f["text"]
            if not text:
                continue
            try:
                resolve = include_resolver(headers.get(f["repo"], {}), bases.get(f["repo"], {}), f["path"],
                                           scope=(batch_id, f["repo"]))
                records = self.parser.parse(text, f["path"], resolve=resolve, timeout_s=self.parse_timeout_s)
            except Exception as exc:  # one bad file never fails the batch
                reason = failure_reason(exc)
                self.n_failed += 1
                self.failed_by_reason[reason] += 1
                reasons[reason] += 1
                if len(failures) < self.max_failures_listed:
                    failures.append({"repo": f["repo"], "path": f["path"], "reason": reason,
                                     "error": f"{type(exc).__name__}: {exc}"[:300]})
                log.warning("parse: skipped %s:%s (%s: %s)", f["repo"], f["path"], type(exc).__name__, exc)
                continue
            parsed += 1
            for r in records:
                rows.append(
                    {
                        "id": _sha256(f"{f['url']}|{f['commit']}|{f['path']}|{r['start_line']}"),
                        "repo": f["repo"],
                        "url": f["url"],
                        "commit": f["commit"],
                        "path": f["path"],
                        "license": f["license"],
                        **r,
                        "sha256": _sha256(r["source"]),
                        # norm_sha256 is left to the dedup signature step, which normalises once.
                        "encoding": f["encoding"],
                        "manifest_index": f["manifest_index"],
                    }
                )
        self.last_stats = {"files_parsed": parsed, "files_failed": sum(reasons.values()),
                           "failed_by_reason": dict(sorted(reasons.items())), "failures": failures}
        return from_rows(rows, PARSED_MODULES_SCHEMA, stage="parse")


@functools.lru_cache(maxsize=None)
def shared_parser(grammar: str = "systemverilog") -> VerilogParser:
    """One parser per process and grammar, built on first use (checks that parse a snippet at a time)."""
    return VerilogParser(grammar=grammar)
