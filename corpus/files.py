"""Discover and read a checked-out repository's source files into FILES_SCHEMA rows.

Never opens a path whose real location is outside the repository root (symlinks are resolved
with ``os.path.realpath`` first). Skipped files are counted by reason.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

DEFAULT_EXTENSIONS = (".v", ".sv", ".vh", ".svh")
SKIP_REASONS = ("too_large", "binary", "symlink_outside", "symlink_loop", "symlink_broken", "unreadable")
_HEX_LINE = re.compile(r"^[0-9a-fA-FxXzZ_@\s]+$")


@dataclass
class ReadResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    encodings: Counter = field(default_factory=Counter)
    n_bytes: int = 0


def is_binary(data: bytes) -> bool:
    """NUL bytes, or a hex/memory image: most non-empty lines are hex digits/x/z/_/@ only."""
    if b"\x00" in data:
        return True
    lines = [ln for ln in data.decode("latin-1").splitlines() if ln.strip()]
    if not lines:
        return False
    hexlike = sum(1 for ln in lines if _HEX_LINE.match(ln))
    return hexlike > 0.5 * len(lines)


def decode(data: bytes) -> tuple[str, str]:
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def selected(rel: str, extensions: Sequence[str], include: Sequence[str], exclude: Sequence[str]) -> bool:
    if not rel.lower().endswith(tuple(e.lower() for e in extensions)):
        return False
    if include and not any(fnmatch.fnmatch(rel, g) for g in include):
        return False
    return not any(fnmatch.fnmatch(rel, g) for g in exclude)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def read_repo(
    root: str,
    *,
    repo: str,
    url: str | None = None,
    commit: str | None = None,
    license: str | None = None,
    manifest_index: int = 0,
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    max_file_bytes: int = 1_000_000,
) -> ReadResult:
    """Walk ``root`` (skipping ``.git/``) and read the selected files, sorted by path."""
    out = ReadResult()
    real_root = os.path.realpath(root)
    candidates: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
            if selected(rel, extensions, include, exclude):
                candidates.append(rel)
    for rel in sorted(candidates):
        path = os.path.join(root, rel)
        if os.path.islink(path):
            try:
                real = os.path.realpath(path, strict=True)
            except OSError as exc:
                out.skipped["symlink_loop" if "loop" in str(exc).lower() or exc.errno == 40 else "symlink_broken"] += 1
                continue
            if not _inside(real, real_root):
                out.skipped["symlink_outside"] += 1
                continue
        else:
            real = path
        try:
            if not os.path.isfile(real):
                out.skipped["unreadable"] += 1
                continue
            if os.path.getsize(real) > max_file_bytes:
                out.skipped["too_large"] += 1
                continue
            with open(real, "rb") as fh:
                data = fh.read(max_file_bytes + 1)
        except OSError:
            out.skipped["unreadable"] += 1
            continue
        if len(data) > max_file_bytes:
            out.skipped["too_large"] += 1
            continue
        if is_binary(data):
            out.skipped["binary"] += 1
            continue
        text, encoding = decode(data)
        out.encodings[encoding] += 1
        out.n_bytes += len(data)
        out.rows.append(
            {
                "repo": repo, "url": url, "commit": commit, "path": rel, "license": license,
                "text": text, "encoding": encoding, "n_bytes": len(data), "manifest_index": manifest_index,
            }
        )
    return out
