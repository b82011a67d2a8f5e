"""Chunking: stable content-hash ids, size bound, code fences never broken, exact dedup."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pytest

from corpus.docs.chunk import (
    CHUNKS_STAGE_SCHEMA,
    ExtractChunk,
    chunk_page,
    dedup,
    dedup_table,
    split_blocks,
    split_status,
)
from corpus.docs.crawl import read_local
from corpus.docs.extract import Block, Page, Section, extract, fence
from corpus.docs.sources import LocalSource
from corpus.schema import DOCS_SCHEMA

SAMPLE = Path(__file__).resolve().parents[3] / "sample" / "docs"


def _long_page() -> Page:
    paras = [Block("text", f"Paragraph {i} about placement density and routing congestion. " * 4) for i in range(12)]
    code = Block("code", fence("\n".join(f"set_cmd_{i} -value {i}" for i in range(80)), "tcl"))
    return Page(url="https://d/x.html", title="X",
                sections=[Section(["X"], paras[:6] + [code] + paras[6:]), Section(["X", "Short"], [Block("text", "ok")])])


def _fences_balanced(text: str) -> bool:
    return sum(1 for line in text.split("\n") if line.startswith("```")) % 2 == 0


@pytest.mark.parametrize("max_chars", [200, 500, 2000])
def test_size_bound_and_fences(max_chars: int) -> None:
    rows, _ = chunk_page(_long_page(), source="s", tool="openroad", license=None, max_chars=max_chars)
    assert all(r["n_chars"] <= max_chars and r["n_chars"] == len(r["text"]) for r in rows)
    assert all(_fences_balanced(r["text"]) for r in rows)
    code_rows = [r for r in rows if r["has_code"]]
    assert code_rows and all(r["text"].count("```tcl") >= 1 for r in code_rows)
    # nothing lost: every code line and every paragraph ends up in some chunk
    joined = "\n".join(r["text"] for r in rows)
    assert all(f"set_cmd_{i} -value {i}" in joined for i in range(80))
    assert all(f"Paragraph {i} " in joined for i in range(12))


def test_paragraph_boundaries_preferred() -> None:
    blocks = [Block("text", "a" * 300), Block("text", "b" * 300), Block("text", "c" * 300)]
    assert split_blocks(blocks, 700) == ["a" * 300 + "\n\n" + "b" * 300, "c" * 300]


def test_small_code_block_kept_whole() -> None:
    code = fence("line one\nline two", "yosys")
    out = split_blocks([Block("text", "x" * 180), Block("code", code)], 200)
    assert out == ["x" * 180, code]


def test_stable_ids_and_hashes() -> None:
    a, _ = chunk_page(_long_page(), source="s", tool="t", license="MIT", max_chars=500)
    b, _ = chunk_page(_long_page(), source="s", tool="t", license="MIT", max_chars=500)
    assert [r["id"] for r in a] == [r["id"] for r in b]
    r = a[0]
    assert r["sha256"] == hashlib.sha256(r["text"].encode()).hexdigest()
    assert r["id"] == hashlib.sha256(f"{r['url']}|{' > '.join(r['section_path'])}|{r['text']}".encode()).hexdigest()
    moved = Page(url="https://d/y.html", title="X", sections=_long_page().sections)
    c, _ = chunk_page(moved, source="s", tool="t", license="MIT", max_chars=500)
    assert c[0]["sha256"] == r["sha256"] and c[0]["id"] != r["id"]


def test_min_chars_drops_and_counts() -> None:
    rows, short = chunk_page(_long_page(), source="s", tool="t", license=None, max_chars=2000, min_chars=10)
    assert short == 1 and all(r["n_chars"] >= 10 for r in rows)


def test_dedup_exact() -> None:
    rows, _ = chunk_page(_long_page(), source="s", tool="t", license=None, max_chars=500)
    copy, _ = chunk_page(Page("https://d/z.html", "X", _long_page().sections), source="s", tool="t", license=None,
                         max_chars=500)
    kept, dropped = dedup(copy + rows)
    assert dropped == len(copy) and len(kept) == len(rows)
    assert {r["url"] for r in kept} == {"https://d/x.html"}  # first in (source, url) order wins
    table, dropped2 = dedup_table(pa.Table.from_pylist(rows + copy, schema=DOCS_SCHEMA))
    assert dropped2 == len(copy) and table.schema == DOCS_SCHEMA


def test_extract_chunk_stage_on_sample() -> None:
    pages, _ = read_local(LocalSource(name="sample-yosys", tool="yosys", path=str(SAMPLE / "yosys"), license="Apache-2.0"))
    bad = pa.Table.from_pylist([{"source": "x", "tool": "t", "url": "http://h/bad", "format": "pdf", "content": "%PDF"}],
                               schema=pages.schema)
    stage = ExtractChunk(max_chars=600, min_chars=40)
    out = stage(pa.concat_tables([pages, bad]))
    assert out.schema == CHUNKS_STAGE_SCHEMA
    chunks, short, errors = split_status(out)
    assert chunks.schema == DOCS_SCHEMA and chunks.num_rows > 5
    assert errors == [{"url": "http://h/bad", "source": "x", "reason": errors[0]["reason"]}]
    assert errors[0]["reason"].startswith("extract_error:ValueError")
    assert max(chunks.column("n_chars").to_pylist()) <= 600
    assert any(t.startswith("```yosys") or "\n```yosys" in t for t in chunks.column("text").to_pylist())
    assert set(chunks.column("license").to_pylist()) == {"Apache-2.0"}
    assert all(p[0] for p in chunks.column("section_path").to_pylist())
    again = split_status(ExtractChunk(max_chars=600, min_chars=40)(pages))[0]
    assert again.column("id").to_pylist() == chunks.column("id").to_pylist()


def test_headings_only_sections_produce_no_chunks() -> None:
    page = extract("# T\n\n## Empty\n\n## Full\n\nbody text here\n", "markdown", "file:///t.md")
    rows, _ = chunk_page(page, source="s", tool="t", license=None, max_chars=500)
    assert [r["section_path"] for r in rows] == [["T", "Full"]]
