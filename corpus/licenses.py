"""SPDX licence detection from a repository's LICENSE/COPYING/LICENCE files."""

from __future__ import annotations

import re
from pathlib import Path

PERMISSIVE = {"MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "SHL-0.51", "Unlicense",
              "CERN-OHL-P-2.0"}
_FILES = re.compile(r"^(LICEN[SC]E|COPYING)", re.IGNORECASE)
LICENSE_HEAD_BYTES = 200_000  # bytes of each licence file that are read and matched

# Ordered: more specific texts first.
_RULES: list[tuple[str, list[str]]] = [
    ("SHL-0.51", [r"solderpad hardware licen[sc]e,? version 0\.51", r"solderpad hardware licen[sc]e v0\.51"]),
    ("CERN-OHL-S-2.0", [r"cern open hardware licen[sc]e version 2 - strongly reciprocal", r"cern-ohl-s"]),
    ("CERN-OHL-W-2.0", [r"cern open hardware licen[sc]e version 2 - weakly reciprocal", r"cern-ohl-w"]),
    ("CERN-OHL-P-2.0", [r"cern open hardware licen[sc]e version 2 - permissive", r"cern-ohl-p"]),
    ("CERN-OHL-1.2", [r"cern ohl v1\.2", r"cern open hardware licen[sc]e v1\.2"]),
    ("LGPL-3.0", [r"gnu lesser general public license\s+version 3"]),
    ("LGPL-2.1", [r"gnu lesser general public license\s+version 2\.1"]),
    ("GPL-3.0", [r"gnu general public license\s+version 3"]),
    ("GPL-2.0", [r"gnu general public license\s+version 2"]),
    ("MPL-2.0", [r"mozilla public license,? (version|v\.?) ?2\.0"]),
    ("Apache-2.0", [r"apache license,?\s+version 2\.0"]),
    ("Unlicense", [r"this is free and unencumbered software released into the public domain"]),
    ("BSD-3-Clause", [r"neither the name of .{0,200} nor the names of"]),
    ("BSD-2-Clause", [r"redistributions in binary form must reproduce"]),
    ("ISC", [r"permission to use, copy, modify, and(/or)? distribute this software for any purpose"]),
    ("MIT", [r"permission is hereby granted, free of charge, to any person obtaining a copy"]),
]


def detect_text(text: str) -> str:
    """SPDX id for a licence text, or "NOASSERTION"."""
    flat = re.sub(r"\s+", " ", text.lower())
    for spdx, patterns in _RULES:
        if any(re.search(p, flat) for p in patterns):
            return spdx
    return "NOASSERTION"


def detect_repo(root: str | Path) -> str:
    """SPDX id from the licence files at the repository root (first recognised wins)."""
    root = Path(root)
    try:
        names = sorted(p for p in root.iterdir() if _FILES.match(p.name) and p.is_file() and not p.is_symlink())
    except OSError:
        return "NOASSERTION"
    for path in names:
        try:
            with path.open("rb") as fh:  # the head only: a licence file may be huge (or not a licence)
                head = fh.read(LICENSE_HEAD_BYTES)
        except OSError:
            continue
        spdx = detect_text(head.decode("utf-8", "replace"))
        if spdx != "NOASSERTION":
            return spdx
    return "NOASSERTION"


def is_permissive(spdx: str | None) -> bool:
    return spdx in PERMISSIVE
