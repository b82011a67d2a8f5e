"""Sections → size-bounded chunks → ``DOCS_SCHEMA`` rows; exact dedup by text hash.

A section becomes one chunk when it fits ``max_chars``; a longer one is split at block
(paragraph) boundaries. A code block is never cut inside its fence: one longer than
``max_chars`` is split at line boundaries into several complete fenced blocks, and an
over-long paragraph at sentence, then word boundaries. Ids are content hashes
(sha256 of ``url|section path|text``), so the same input always gives the same rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
from pydantic import Field

from chipforge.vocab import sha256_hex
from chipforge.config import Config
from corpus.docs.crawl import PAGES_SCHEMA
from corpus.docs.extract import Block, Page, extract, fence
from corpus.schema import DOCS_SCHEMA, conform, from_rows

PATH_SEP = " > "
SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+")  # sentence boundaries inside one over-long paragraph
FENCE_OPEN = re.compile(r"^(`{3,})([^\n`]*)\n")


class ChunkConfig(Config):
    max_chars: int = Field(2000, ge=200)
    min_chars: int = Field(40, ge=0)  # shorter chunks are dropped (counted) as noise
    # map_batches resources of the extract+chunk stage
    batch_size: int = Field(16, ge=1)
    concurrency: int = Field(2, ge=1)
    num_cpus: float = Field(1.0, gt=0)


sha256 = sha256_hex  # one definition: chipforge.vocab


def chunk_id(url: str, section_path: list[str], text: str) -> str:
    return sha256(f"{url}|{PATH_SEP.join(section_path)}|{text}")


def _split_code(block: str, max_chars: int) -> list[str]:
    m = FENCE_OPEN.match(block)
    ticks, lang = (m.group(1), m.group(2)) if m else ("```", "")
    body = block[m.end():] if m else block
    body = body[: body.rstrip().rfind(ticks)] if body.rstrip().endswith(ticks) else body
    budget = max(max_chars - len(ticks) * 2 - len(lang) - 2, 20)
    pieces, cur = [], ""
    for line in body.rstrip("\n").split("\n"):
        while len(line) > budget:  # a single huge line: cut hard, nothing better keeps the size bound
            if cur:
                pieces.append(cur)
                cur = ""
            pieces.append(line[:budget])
            line = line[budget:]
        if cur and len(cur) + 1 + len(line) > budget:
            pieces.append(cur)
            cur = line
        else:
            cur = f"{cur}\n{line}" if cur else line
    if cur:
        pieces.append(cur)
    return [fence(p, lang) for p in pieces]


def _split_text(text: str, max_chars: int) -> list[str]:
    units: list[str] = []
    for sentence in SENTENCE_END.split(text) if "\n" not in text else text.split("\n"):
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            units.append(sentence[:cut])
            sentence = sentence[cut:].lstrip()
        units.append(sentence)
    out, cur = [], ""
    sep = "\n" if "\n" in text else " "
    for u in units:
        if cur and len(cur) + len(sep) + len(u) > max_chars:
            out.append(cur)
            cur = u
        else:
            cur = f"{cur}{sep}{u}" if cur else u
    if cur:
        out.append(cur)
    return out


def split_blocks(blocks: list[Block], max_chars: int) -> list[str]:
    """Pack a section's blocks into texts of at most ``max_chars``, splitting only between blocks
    (or, for one over-long block, between lines/sentences while keeping every fence whole)."""
    pieces: list[str] = []
    for b in blocks:
        if len(b.text) <= max_chars:
            pieces.append(b.text)
        elif b.kind == "code":
            pieces += _split_code(b.text, max_chars)
        else:
            pieces += _split_text(b.text, max_chars)
    out, cur = [], ""
    for p in pieces:
        if cur and len(cur) + 2 + len(p) > max_chars:
            out.append(cur)
            cur = p
        else:
            cur = f"{cur}\n\n{p}" if cur else p
    if cur:
        out.append(cur)
    return out


def chunk_page(page: Page, *, source: str, tool: str | None, license: str | None,
               max_chars: int, min_chars: int = 0) -> tuple[list[dict[str, Any]], int]:
    """``DOCS_SCHEMA`` rows of one page, and how many too-short chunks were dropped."""
    rows, short = [], 0
    for section in page.sections:
        for text in split_blocks(section.blocks, max_chars):
            if len(text) < min_chars:
                short += 1
                continue
            rows.append({
                "id": chunk_id(page.url, section.path, text), "source": source, "tool": tool, "url": page.url,
                "title": page.title, "section_path": list(section.path), "text": text, "n_chars": len(text),
                "has_code": "```" in text, "sha256": sha256(text), "license": license,
            })
    return rows, short


# Stage output: DOCS_SCHEMA plus a status per row, so counts survive ``map_batches``:
# "ok" (a chunk), "too_short" (a dropped chunk, text kept for inspection) or
# "extract_error:<reason>" (one row per page that could not be extracted; url set, text null).
CHUNKS_STAGE_SCHEMA = DOCS_SCHEMA.append(pa.field("status", pa.string(), nullable=False))


class ExtractChunk:
    """``map_batches`` stage: a batch of pages (``PAGES_SCHEMA``) → ``CHUNKS_STAGE_SCHEMA`` rows.

    A page that fails to extract becomes one ``extract_error`` row; it never fails the batch.
    ``split_status`` turns the result into the ``DOCS_SCHEMA`` table and the counts.
    """

    def __init__(self, max_chars: int = 2000, min_chars: int = 40) -> None:
        self.max_chars = max_chars
        self.min_chars = min_chars

    def __call__(self, batch: pa.Table) -> pa.Table:
        pages = conform(batch, PAGES_SCHEMA, stage="docs.extract_chunk input")
        rows: list[dict[str, Any]] = []
        for page in pages.to_pylist():
            try:
                parsed = extract(page["content"] or "", page["format"], page["url"])
            except Exception as exc:  # noqa: BLE001 - one bad page never fails the job
                reason = f"extract_error:{type(exc).__name__}: {exc}"[:500]
                rows.append({"id": sha256(f"{page['url']}|{reason}"), "source": page["source"], "tool": page["tool"],
                             "url": page["url"], "license": page["license"], "status": reason})
                continue
            page_rows, _ = chunk_page(parsed, source=page["source"], tool=page["tool"], license=page["license"],
                                      max_chars=self.max_chars, min_chars=0)
            for r in page_rows:
                r["status"] = "ok" if r["n_chars"] >= self.min_chars else "too_short"
            rows += page_rows
        return from_rows(rows, CHUNKS_STAGE_SCHEMA, stage="docs.extract_chunk output")


def split_status(table: pa.Table) -> tuple[pa.Table, int, list[dict[str, str]]]:
    """(ok chunks as ``DOCS_SCHEMA``, too-short count, extract failures [{url, source, reason}])."""
    table = conform(table, CHUNKS_STAGE_SCHEMA, stage="docs.split_status")
    status = table.column("status").to_pylist()
    ok = table.filter(pa.array([s == "ok" for s in status])).drop_columns(["status"])
    errors = [{"url": u, "source": src, "reason": s} for u, src, s in
              zip(table.column("url").to_pylist(), table.column("source").to_pylist(), status)
              if s.startswith("extract_error")]
    return conform(ok, DOCS_SCHEMA, stage="docs.chunks"), status.count("too_short"), errors


def dedup(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Keep the first row per text hash in (source, url, document) order; (kept rows, dropped count).

    The sort is stable, so chunks of one page keep their document order."""
    kept: dict[str, dict[str, Any]] = {}
    dropped = 0
    for r in sorted(rows, key=lambda r: (r["source"], r["url"] or "")):
        if r["sha256"] in kept:
            dropped += 1
        else:
            kept[r["sha256"]] = r
    return list(kept.values()), dropped


def dedup_table(table: pa.Table) -> tuple[pa.Table, int]:
    rows, dropped = dedup(table.to_pylist())
    return from_rows(rows, DOCS_SCHEMA, stage="docs.dedup"), dropped
