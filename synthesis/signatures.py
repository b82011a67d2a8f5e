"""Documented signatures of SDC/OpenSTA/OpenROAD commands, and the objects of the shipped design.

The Tcl checker (``assets/tcl_checker.tcl``) gives every documented command a procedure that
checks its arguments against the command's signature and its object names against the
design the example refers to. This module provides both, as plain data:

- ``assets/signatures.json``: one entry per command, written from the tools' own synopses
  (OpenSTA's and OpenROAD's ``define_cmd_args`` text, kept in each entry as ``synopsis``)::

      "create_clock": {"synopsis": "create_clock [-name name] [-period period] ...",
                       "options": {"-period": "positive", "-add": "flag", ...},
                       "args": [["pins", "objects", true]],      # name, type, optional
                       "required": ["-period"], "strict": true}

  ``options`` maps every documented option to a value type (``TYPES``); ``strict`` entries
  (the SDC commands, checked by hand) also enforce ``required`` options and required
  positional arguments; the others only reject unknown options, missing values and values
  of the wrong type (their synopses are not always complete about what is optional).
- ``mine_signatures``: the miner. It reads synopsis lines (``create_clock [-name name]
  [-period period] [-add] [pins]``, continued on indented ``[-option ...]`` lines or after
  a ``\\``) from documentation chunks (the docs job's rows), so a user extends the table
  from their crawled docs (``signature_table``). Usage examples are not synopses: a line
  with numbers as option values, ``$variables`` or ``[command substitutions]`` is skipped.
- ``design_objects``: ports, cells, registers, nets and pins of each module of the shipped
  design, read by Yosys (``read_verilog; hierarchy; proc; write_json`` in the sandbox).
- ``tcl_value``: Python data → a Tcl list/dict string the checker reads with ``dict get``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

ASSETS = resources.files("synthesis") / "assets"

# Value types the checker knows (see ``check_value`` in assets/tcl_checker.tcl).
TYPES = frozenset({
    "flag",  # no value
    "string",  # any value
    "number", "nonneg", "positive",  # a real number; >= 0; > 0
    "int", "nonneg_int", "positive_int",
    "edges",  # a list of non-negative, increasing numbers (clock waveform)
    "objects",  # design objects or clocks (names or patterns), each must exist
    "clocks",  # clock names, each a clock created earlier
    "ports",  # port names/patterns of the current design
    "design",  # a module of the shipped design
})
ENUM_PREFIX = "enum:"  # "enum:a|b|c": one of the listed words
DOC_TOOLS = frozenset({"opensta", "openroad", "sdc"})  # doc chunks the miner reads (``tool`` field)
CMD_WORD = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)+$")  # report_checks, get_ports (one underscore at least)
NAME_WORD = re.compile(r"^[a-z][a-z0-9_]*$")
OPTION_WORD = re.compile(r"^-[A-Za-z][A-Za-z0-9_]*$")
MAX_SYNOPSIS_CHARS = 4000
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
MAX_MINED_COMMANDS = 2000


# ============================================================================ the miner

def _tokens(text: str) -> list[str]:
    """Synopsis tokens: ``[``, ``]``, ``|``, braced groups as one word, other words."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "[]|":
            out.append(c)
            i += 1
        elif c == "{":
            depth, j = 0, i
            while j < n:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
                if depth == 0:
                    break
            out.append(text[i:j])
            i = j
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "[]|{":
                j += 1
            out.append(text[i:j].strip('"'))
            i = j
    return [t for t in out if t and t != "..." and t != '\\']


def _placeholder(tok: str) -> bool:
    """A placeholder word of a synopsis (``period``, ``pin_list``, ``{lx ly ux uy}``)."""
    return tok not in {"[", "]", "|", ">", ">>"} and not OPTION_WORD.match(tok)


def parse_synopsis(text: str, placeholder_types: Mapping[str, str] | None = None, *,
                   require_brackets: bool = True,
                   commands: Iterable[str] = ()) -> tuple[str, dict[str, Any]] | None:
    """``(command, signature)`` from one synopsis (``cmd [-opt value] [-flag] [args]``), or None.

    None when the text is not a synopsis but a usage example: no ``[...]`` group, a number
    as a value or argument (``-period 10``, ``set_load 0.02``), a ``$variable``, a ``;``, or
    a ``[command substitution]`` (``[get_ports clk]``, or ``[all_outputs]`` when
    ``all_outputs`` is one of the known ``commands``).
    Options of one family in a ``-from|-rise_from|-fall_from list`` group all take the value
    (``-global|-masters masters``: -global stays a flag); ``min|max`` after an option is its
    value; positional placeholders become ``args`` (optional inside brackets).
    """
    text = " ".join(text.replace("\\\n", " ").split())[:MAX_SYNOPSIS_CHARS]
    name, _, rest = text.partition(" ")
    if not _command_name(name, rest) or "$" in rest or ";" in rest or (require_brackets and "[" not in rest):
        return None
    toks = _tokens(rest)
    known = frozenset(commands)
    for k, t in enumerate(toks):
        if _NUMBER.fullmatch(t) and "|" not in toks[max(0, k - 1) : k + 2]:
            return None  # ``-period 10``, ``set_load 0.02``: a usage example (``0|1`` is an alternation)
    types = placeholder_types or {}
    options: dict[str, str] = {}
    args: list[list[Any]] = []
    required: list[str] = []
    chain: list[str] = []  # bare options joined by | that take the value of the option ending the group
    depth = 0
    i = 0
    while i < len(toks):
        tok = toks[i]
        if tok == "[":
            # ``[get_ports clk]``: a command substitution, so a usage example, not a synopsis.
            inner = toks[i + 1 : i + 3]
            if len(inner) == 2 and CMD_WORD.match(inner[0]) and _placeholder(inner[1]) and inner[1] != "]":
                return None
            if inner and inner[0] in known:
                return None
            depth += 1
            i += 1
            continue
        if tok == "]":
            depth = max(0, depth - 1)
            chain.clear()
            i += 1
            continue
        if tok == "|":
            i += 1
            continue
        if tok in {">", ">>"}:  # output redirection (``[> filename]``): not an option
            i += 2
            continue
        if OPTION_WORD.match(tok):
            value = toks[i + 1] if i + 1 < len(toks) and _placeholder(toks[i + 1]) else None
            i += 2 if value is not None else 1
            if value is not None:
                alternatives = False
                while i + 1 < len(toks) and toks[i] == "|" and _placeholder(toks[i + 1]):
                    i += 2  # ``-path_delay min|max|min_max``: alternatives of the value
                    alternatives = True
                vtype = "string" if alternatives else types.get(value.lower(), "string")
                options[tok] = vtype
                if i >= len(toks) or toks[i] != "|":  # ``-from|-rise_from list`` ends: -from takes it too
                    for other in chain:
                        if other.split("_")[-1].lstrip("-") == tok.split("_")[-1].lstrip("-"):
                            options[other] = vtype
                chain.clear()
            else:
                options.setdefault(tok, "flag")
                if i < len(toks) and toks[i] == "|":
                    chain.append(tok)
                else:
                    chain.clear()
            if depth == 0:
                required.append(tok)
            continue
        # A positional placeholder (``pins``, ``0|1|zero|one``, ``corner1``).
        vtype = types.get(tok.lower(), "string")
        while i + 2 < len(toks) and toks[i + 1] == "|" and _placeholder(toks[i + 2]):
            i += 2
            vtype = "string"
        args.append([tok, vtype, depth > 0])
        chain.clear()
        i += 1
    if not options and not args:
        return None
    return name, {"synopsis": text, "options": options, "args": args, "required": required, "strict": False}


def _command_name(word: str, rest: str) -> bool:
    """A tool command's name: ``report_checks``; ``pdngen`` only before a ``[-option`` group."""
    return bool(CMD_WORD.match(word) or (NAME_WORD.match(word) and "[-" in rest))


_SYNOPSIS_CONT = re.compile(r"^\s+(?:\[|-[A-Za-z]|[a-z][a-z0-9_]*\s*$)")


def synopsis_candidates(text: str) -> list[str]:
    """Lines that may be synopses, with their continuation lines joined.

    A candidate starts with a command-like word at the start of a line; it continues on
    lines ending in ``\\`` and on indented lines that start with ``[`` or ``-option`` or
    hold one placeholder word (``    net_names``).
    """
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip().strip("`")
        i += 1
        first, _, rest = line.partition(" ")
        if not (CMD_WORD.match(first) or (NAME_WORD.match(first) and (not rest or "[-" in rest))):
            continue
        parts = [line]
        while i < len(lines) and (parts[-1].endswith("\\") or _SYNOPSIS_CONT.match(lines[i])):
            parts[-1] = parts[-1].rstrip("\\")
            parts.append(lines[i].strip())
            i += 1
        out.append(" ".join(parts))
    return out


def mine_signatures(rows: Iterable[Mapping[str, Any]], placeholder_types: Mapping[str, str] | None = None,
                    commands: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Command signatures found in documentation chunks (rows with a ``text`` field).

    Every synopsis of a command is merged: the union of options (the first type seen for
    an option wins), the longest positional list. Mined signatures are never ``strict``.
    ``placeholder_types`` and ``commands`` (names that make ``[name]`` a command
    substitution) default to the shipped table's.
    """
    types = placeholder_types if placeholder_types is not None else shipped()["placeholder_types"]
    known = frozenset(commands if commands is not None else shipped()["commands"])
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        for cand in synopsis_candidates(str(row.get("text") or "")):
            parsed = parse_synopsis(cand, types, commands=known)
            if parsed is None:
                continue
            name, sig = parsed
            if name not in found:
                if len(found) >= MAX_MINED_COMMANDS:
                    continue
                found[name] = sig
                continue
            have = found[name]
            for opt, vtype in sig["options"].items():
                have["options"].setdefault(opt, vtype)
            if len(sig["args"]) > len(have["args"]):
                have["args"] = sig["args"]
            have["required"] = [r for r in have["required"] if r in sig["required"]]
    return found


# ====================================================================== the shipped table

@functools.lru_cache(maxsize=1)
def shipped() -> dict[str, Any]:
    """``assets/signatures.json``: ``commands`` (name → signature) and ``placeholder_types``."""
    return json.loads((ASSETS / "signatures.json").read_text())


def signature_table(docs_rows: Iterable[Mapping[str, Any]] | None = None, source: str = "auto") -> dict[str, dict]:
    """Signatures the checker enforces: the shipped table, extended from doc chunks.

    ``source``: ``fallback`` (shipped only), ``docs`` or ``auto`` (shipped, plus what the
    miner finds in ``docs_rows``: new commands, and new options of known commands). The
    shipped types, required options and strictness stay as they are.
    """
    table = {name: json.loads(json.dumps(sig)) for name, sig in shipped()["commands"].items()}
    if source == "fallback" or not docs_rows:
        return table
    rows = [r for r in docs_rows if str(r.get("tool") or "sdc").lower() in DOC_TOOLS]
    for name, sig in mine_signatures(rows).items():
        if name not in table:
            table[name] = sig
            continue
        for opt, vtype in sig["options"].items():
            table[name]["options"].setdefault(opt, vtype)
    return table


# ======================================================================== design objects

_PARAMOD = re.compile(r"^\$paramod\\([^\\]+)\\.*$")
_FF_TYPES = frozenset({"$dff", "$adff", "$sdff", "$dffe", "$adffe", "$sdffe", "$sdffce", "$dffsr", "$dffsre",
                       "$aldff", "$aldffe", "$dlatch", "$adlatch", "$dlatchsr"})


def _base(module: str) -> str:
    """``$paramod\\cf_alu\\WIDTH=...`` → ``cf_alu``."""
    m = _PARAMOD.match(module)
    return m.group(1) if m else module.lstrip("\\")


def _bits(name: str, width: int) -> list[str]:
    return [name] + ([f"{name}[{k}]" for k in range(width)] if width > 1 else [])


def _module_view(mods: Mapping[str, Any], name: str, prefix: str, out: dict[str, list[str]], depth: int = 0) -> None:
    """Add the objects of module ``name`` (instance path ``prefix``) to ``out``."""
    mod = mods[name]
    nets = {n: v for n, v in mod.get("netnames", {}).items() if not v.get("hide_name")}
    bit_owner: dict[int, str] = {}
    for net, v in sorted(nets.items()):
        for b in v.get("bits", []):
            if isinstance(b, int):
                bit_owner.setdefault(b, net)
    for net, v in nets.items():
        out["nets"].extend(prefix + b for b in _bits(net, len(v.get("bits", []))))
    for cell, c in mod.get("cells", {}).items():
        ctype = c.get("type", "")
        if ctype in _FF_TYPES:
            q = [b for b in c.get("connections", {}).get("Q", []) if isinstance(b, int)]
            reg = bit_owner.get(q[0]) if q else None
            if reg:
                width = len(q)
                for form in (f"{reg}_reg", reg):
                    out["registers"].extend(prefix + b for b in _bits(form, width))
            continue
        if cell.startswith("$") or depth > 16:
            continue
        path = prefix + cell
        out["cells"].append(path)
        if ctype in mods:
            for port, p in mods[ctype].get("ports", {}).items():
                out["pins"].extend(f"{path}/{b}" for b in _bits(port, len(p.get("bits", []))))
            _module_view(mods, ctype, path + "/", out, depth + 1)


def design_from_json(data: Mapping[str, Any]) -> dict[str, Any]:
    """Objects of every module of a Yosys ``write_json`` design, as if it were the top.

    Per module (base name, parameters stripped): ``ports`` (name → ``in``/``out``/``inout``,
    bits ``b[3]`` included), ``cells`` (instance paths ``u_alu``), ``registers`` (the cell
    names a netlist gives a register ``r``: ``r_reg``, ``r_reg[3]``, ``r``, ``r[3]``, with
    their instance path), ``nets`` and ``pins`` (``u_alu/a``, ``u_alu/a[0]``), sorted.
    """
    mods = data.get("modules", {})
    modules: dict[str, Any] = {}
    for name in mods:
        view: dict[str, list[str]] = {"cells": [], "registers": [], "nets": [], "pins": []}
        _module_view(mods, name, "", view)
        ports: dict[str, str] = {}
        for port, p in mods[name].get("ports", {}).items():
            direction = {"input": "in", "output": "out"}.get(p.get("direction", ""), "inout")
            for b in _bits(port, len(p.get("bits", []))):
                ports[b] = direction
        modules[_base(name)] = {"ports": ports, **{k: sorted(set(v)) for k, v in view.items()}}
    return modules


def design_objects(files: Mapping[str, str], top: str, *, timeout_s: float = 30.0) -> dict[str, Any]:
    """``{"top": top, "modules": design_from_json(...)}`` for Verilog ``files``, read by Yosys.

    Runs ``yosys`` in the sandbox: ``read_verilog``, ``hierarchy -top``, ``proc``,
    ``write_json``. Raises ``RuntimeError`` when Yosys fails (a broken shipped design).
    """
    from synthesis import sandbox

    names = " ".join(sorted(files))
    script = f"read_verilog {names}\nhierarchy -top {top}\nproc\nwrite_json design.json\n"
    r = sandbox.run(["yosys", "-q", "-s", "objects.ys"], {**files, "objects.ys": script},
                    limits=sandbox.Limits(timeout_s=timeout_s, memory_mb=1024), collect=["design.json"])
    if not r.ok or "design.json" not in r.files:
        raise RuntimeError(f"yosys could not read the design (exit {r.returncode}): {r.output[-300:]}")
    return {"top": top, "modules": design_from_json(json.loads(r.files["design.json"]))}


@functools.lru_cache(maxsize=4)
def cached_design_objects(files: tuple[tuple[str, str], ...], top: str) -> str:
    """``design_objects`` as a Tcl dict string, once per process and design."""
    return tcl_value(design_objects(dict(files), top))


# =============================================================================== to Tcl

_TCL_SPECIAL = re.compile(r'([\\{}\[\]$;"\s])')


def tcl_word(text: str) -> str:
    """``text`` as one element of a Tcl list, every special character backslash-escaped."""
    if text == "":
        return "{}"
    return _TCL_SPECIAL.sub(lambda m: {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(m.group(1), "\\" + m.group(1)),
                            text)


def tcl_value(value: Any) -> str:
    """Python data as a Tcl value: dicts as key/value lists, lists as lists, the rest as words."""
    if isinstance(value, Mapping):
        return " ".join(f"{tcl_word(str(k))} {tcl_word(tcl_value(v))}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return " ".join(tcl_word(tcl_value(v)) for v in value)
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def checker_signatures(table: Mapping[str, Mapping[str, Any]], allowed: Iterable[str]) -> str:
    """The signatures of the ``allowed`` commands as a Tcl dict for the checker."""
    keep = {}
    for name in sorted(set(allowed)):
        sig = table.get(name)
        if sig is None:
            continue
        keep[name] = {"options": dict(sig.get("options", {})), "args": [list(a) for a in sig.get("args", [])],
                      "required": list(sig.get("required", [])), "strict": bool(sig.get("strict"))}
    return tcl_value(keep)
