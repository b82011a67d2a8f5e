"""The project's shared words, each defined once: phases, their system prompts, content hashes.

Every package imports these from here: the dataset builder and synthesis put the same system
prompt on a phase's examples, the training config accepts exactly these phases, and every
deterministic id is :func:`content_hash` of its parts.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

Phase = Literal["triage", "rtl_design", "synthesis", "placement", "routing", "timing_analysis", "power_analysis"]
PHASES: tuple[str, ...] = Phase.__args__  # type: ignore[attr-defined]
# Phases a specialist is trained for (triage routes between them).
SPECIALIST_PHASES: tuple[str, ...] = tuple(p for p in PHASES if p != "triage")

SYSTEM_PROMPTS: dict[str, str] = {
    "rtl_design": "You are an expert RTL designer writing synthesisable Verilog/SystemVerilog.",
    "synthesis": "You are an expert in logic synthesis with Yosys and ABC.",
    "placement": "You are an expert in floorplanning and placement (OpenROAD, RePlAce, DREAMPlace).",
    "routing": "You are an expert in global and detailed routing (FastRoute, TritonRoute, Magic).",
    "timing_analysis": "You are an expert in static timing analysis (OpenSTA, SDC).",
    "power_analysis": "You are an expert in power analysis, power intent and power grids.",
    "triage": "Route the user's question to the phase specialist. Answer with JSON {\"phase\": ...}.",
}


def sha256_hex(text: str | bytes) -> str:
    """SHA-256 of a text (UTF-8; lone surrogates from undecodable sources kept) or of bytes, in hex."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


def unit_interval(key: str) -> float:
    """A deterministic number in [0, 1) from ``key`` (hash buckets: splits, held-out shares)."""
    return int(sha256_hex(key)[:16], 16) / 2**64


def content_hash(*parts: Any, length: int | None = None) -> str:
    """Deterministic id of ``parts``: a string alone is hashed as it is, anything else as canonical JSON.

    ``length`` truncates the hex digest (ids in file names, fingerprints).
    """
    if len(parts) == 1 and isinstance(parts[0], (str, bytes)):
        digest = sha256_hex(parts[0])
    else:
        digest = sha256_hex(json.dumps(list(parts), sort_keys=True, ensure_ascii=False, default=str))
    return digest[:length] if length else digest
