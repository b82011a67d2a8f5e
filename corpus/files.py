"""Discover and read a checked-out repository's source files into FILES_SCHEMA rows.

Never opens a path whose real location is outside the repository root (symlinks are resolved
with ``os.path.realpath`` first). Skipped files are counted by reason.

Which files are source is decided by content, not size: the size cap (``DEFAULT_MAX_FILE_BYTES``,
32 MiB) only bounds memory, so multi-MB generated RTL (nvdla's) is read and parsed. A file is
skipped as data or as another language (``content_reason``):

- ``binary``: NUL bytes (after a UTF-16 file with a byte-order mark is transcoded to UTF-8);
- ``lfs_pointer``: a Git LFS pointer (the real file lives on an LFS server the clone never fetches);
- ``hex_image``: a memory image (``$readmemh`` data): most non-empty lines are hex digits/x/z/_/@;
- ``template``: a Mako/Jinja template (``% for`` lines, ``<%``, ``${...}``, ``{%`` outside ``//``
  comments and strings), which no Verilog parser can read before it is rendered;
- ``c_preprocessor``: C-preprocessor lines (``#include``, ``#define``) and no design unit: a C
  header named ``.vh``. A Verilog file that also has ``#ifdef`` lines (one of nvdla's) is read; the
  preprocessor (``corpus.preprocess``) evaluates those lines.

Content checks look at a bounded sample (``_SAMPLE_BYTES``) and use byte searches first, so a
large file costs little.

Text is UTF-8 (a byte-order mark dropped), UTF-16 when the file starts with a UTF-16 byte-order
mark, else Latin-1; the encoding is recorded. Lone carriage returns (classic Mac line ends) become
``\\n`` so that line numbers and per-module text mean what an editor shows (CRLF is kept as is).
Paths are stored as text: bytes of a file name that are not UTF-8 become ``\\xNN`` escapes.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

DEFAULT_EXTENSIONS = (".v", ".sv", ".vh", ".svh")
DEFAULT_MAX_FILE_BYTES = 32 * 1024 * 1024  # a memory bound only; content decides what is source
CONTENT_REASONS = ("binary", "lfs_pointer", "hex_image", "template", "c_preprocessor")
SKIP_REASONS = ("too_large", *CONTENT_REASONS, "symlink_outside", "symlink_loop", "symlink_broken", "unreadable")
_HEX_LINE = re.compile(r"^[0-9a-fA-FxXzZ_@\s]+$")
_SAMPLE_BYTES = 256 * 1024  # hex-image check: the first lines are enough to tell
_LINE_COMMENT = re.compile(rb'//[^\n]*|"(?:\\.|[^"\\\n])*"')  # line comments and strings
_TEMPLATE = re.compile(rb"^[ \t]*%[ \t]*(?:if|for|endif|endfor|else|elif|def|enddef|import|namespace)\b"
                       rb"|<%|\$\{|\{%", re.M)
_CPP_DIRECTIVE = re.compile(rb"#[ \t]*(?:include|define|ifdef|ifndef|if|elif|else|endif|undef|pragma)\b")
_UNIT_WORD = re.compile(rb"\b(?:module|macromodule|interface|package|program|primitive)\b")
# https://github.com/git-lfs/git-lfs/blob/main/docs/spec.md: pointers start with this line
# (``hawser`` in early versions) and are smaller than 1024 bytes.
_LFS_POINTER = re.compile(rb"version https://(?:git-lfs|hawser)\.github\.com/spec/v\d+\r?\n")
_LFS_MAX_BYTES = 1024
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_LONE_CR = re.compile(r"\r(?!\n)")


@dataclass
class ReadResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    encodings: Counter = field(default_factory=Counter)
    n_bytes: int = 0


def is_hex_image(data: bytes) -> bool:
    """A hex/memory image: most non-empty lines (of the first ``_SAMPLE_BYTES``) are hex digits/x/z/_/@."""
    sample = data[:_SAMPLE_BYTES]
    if len(data) > _SAMPLE_BYTES:
        sample = sample[: sample.rfind(b"\n") + 1] or sample  # whole lines only
    lines = [ln for ln in sample.decode("latin-1").splitlines() if ln.strip()]
    if not lines:
        return False
    hexlike = sum(1 for ln in lines if _HEX_LINE.match(ln))
    return hexlike > 0.5 * len(lines)


def is_binary(data: bytes) -> bool:
    """NUL bytes, or a hex/memory image (``is_hex_image``): not source text either way."""
    return b"\x00" in data or is_hex_image(data)


def is_template(data: bytes) -> bool:
    """Mako/Jinja template markers outside ``//`` comments and strings (nvdla's comments hold ``${1}``)."""
    if not any(m in data for m in (b"%", b"${", b"{%")) or _TEMPLATE.search(data) is None:
        return False  # the common case ($display's %d) ends here, without rewriting the file
    return _TEMPLATE.search(_LINE_COMMENT.sub(b"", data)) is not None


def has_cpp_directives(data: bytes) -> bool:
    """A C-preprocessor directive at the start of a line (``#include``, ``#ifdef``, ...)."""
    if b"#" not in data:
        return False
    for m in _CPP_DIRECTIVE.finditer(data):
        i = m.start() - 1
        while i >= 0 and data[i] in b" \t\r":  # blanks only back to the line start (no rescans)
            i -= 1
        if i < 0 or data[i] == 0x0A:
            return True
    return False


def is_lfs_pointer(data: bytes) -> bool:
    """A Git LFS pointer file standing in for the real (unfetched) content."""
    return len(data) < _LFS_MAX_BYTES and _LFS_POINTER.match(data) is not None


def content_reason(data: bytes) -> str | None:
    """Why ``data`` is not Verilog source to parse (one of ``CONTENT_REASONS``), or None."""
    if b"\x00" in data:
        return "binary"
    if is_lfs_pointer(data):
        return "lfs_pointer"
    if is_hex_image(data):
        return "hex_image"
    if is_template(data):
        return "template"
    if has_cpp_directives(data) and _UNIT_WORD.search(_LINE_COMMENT.sub(b"", data)) is None:
        return "c_preprocessor"
    return None


def from_utf16(data: bytes) -> bytes | None:
    """UTF-8 bytes of a file that starts with a UTF-16 byte-order mark and decodes as UTF-16, else None."""
    if not data.startswith(_UTF16_BOMS):
        return None
    try:
        return data.decode("utf-16").encode("utf-8")
    except UnicodeError:
        return None


def decode(data: bytes) -> tuple[str, str]:
    """(text, encoding): UTF-8 (a leading byte-order mark dropped), else Latin-1 (never fails)."""
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def normalize_newlines(text: str) -> str:
    """Lone ``\\r`` line ends (classic Mac) as ``\\n``; ``\\r\\n`` and ``\\n`` unchanged."""
    return _LONE_CR.sub("\n", text) if "\r" in text else text


def text_path(rel: str) -> str:
    """A relative path as valid Unicode text: name bytes that are not UTF-8 (which ``os.walk``
    returns as lone surrogates, unstorable in Arrow/JSON) become ``\\xNN`` escapes."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


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
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
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
        utf8 = from_utf16(data)
        reason = content_reason(data if utf8 is None else utf8)
        if reason is not None:
            out.skipped[reason] += 1
            continue
        text, encoding = decode(data) if utf8 is None else (utf8.decode("utf-8"), "utf-16")
        out.encodings[encoding] += 1
        out.n_bytes += len(data)
        out.rows.append(
            {
                "repo": repo, "url": url, "commit": commit, "path": text_path(rel), "license": license,
                "text": normalize_newlines(text), "encoding": encoding, "n_bytes": len(data),
                "manifest_index": manifest_index,
            }
        )
    return out
