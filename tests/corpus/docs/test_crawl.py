"""The crawler against a real aiohttp site on 127.0.0.1 (see conftest.py for its layout)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus.docs.crawl import (
    PAGES_SCHEMA,
    CrawlConfig,
    crawl_site,
    fetch_source,
    links_of,
    normalize_url,
    page_format,
    read_local,
)
from corpus.docs.sources import LocalSource, SiteSource

from .conftest import DocSite

EXPECTED_PAGES = ["flaky.html", "guide.html", "index.html", "loop-a.html", "loop-b.html", "moved.html", "notes.md"]


def _source(site: DocSite, **kw) -> SiteSource:
    args = {"name": "testdocs", "tool": "yosys", "start_urls": [f"{site.base}/docs/index.html"],
            "allowed_prefixes": [f"{site.base}/docs/"], "max_pages": 50, "max_depth": 5, "license": "MIT"}
    return SiteSource(**(args | kw))


def _cfg(tmp_path: Path, **kw) -> CrawlConfig:
    args = {"per_host_concurrency": 2, "min_interval_s": 0.0, "timeout_s": 1.0, "retries": 2, "backoff_s": 0.01,
            "max_bytes": 50_000, "cache_dir": str(tmp_path / "cache")}
    return CrawlConfig(**(args | kw))


def _names(table) -> list[str]:
    return sorted(u.rsplit("/", 1)[1] for u in table.column("url").to_pylist())


def test_crawl_pages_and_failures(doc_site: DocSite, tmp_path: Path) -> None:
    pages, stats = crawl_site(_source(doc_site), _cfg(tmp_path))
    assert pages.schema == PAGES_SCHEMA
    assert _names(pages) == EXPECTED_PAGES
    by_url = {f["url"].rsplit("/docs/", 1)[1]: f["reason"] for f in stats["failures"]}
    assert by_url == {
        "escape.html": f"redirect_outside_prefix:{doc_site.base}/other/outside.html",
        "missing.html": "http_404",
        "slow.html": "timeout",
        "file.bin": "content_type:application/octet-stream",
        "big.html": by_url["big.html"],
        "stream.html": "too_large:>50000",
        "private/secret.html": "robots_disallowed",
        "sneaky.html": f"robots_disallowed:{doc_site.base}/docs/private/secret.html",
        "redirect-loop.html": "too_many_redirects",
    }
    assert by_url["big.html"].startswith("too_large:") and int(by_url["big.html"].split(":")[1]) > 50_000
    assert stats["failed"] == 9 and stats["fetched"] == 7 and stats["revalidated"] == 0
    # retries: 5xx and timeouts are retried (with backoff), 4xx is not
    assert doc_site.hits["/docs/flaky.html"] == 2
    assert doc_site.hits["/docs/slow.html"] == 3
    assert doc_site.hits["/docs/missing.html"] == 1
    assert stats["retries"] == 1 + 2
    # robots.txt honoured, prefix respected, loop and fragments fetched once
    assert doc_site.hits["/docs/private/secret.html"] == 0
    assert doc_site.hits["/docs/sneaky.html"] == 1
    assert doc_site.hits["/docs/redirect-loop.html"] == 6  # the request and max_redirects=5 hops
    assert doc_site.hits["/other/page.html"] == 0
    assert doc_site.hits["/robots.txt"] == 1
    assert doc_site.hits["/docs/loop-a.html"] == 1 and doc_site.hits["/docs/index.html"] == 1
    assert doc_site.hits["/docs/guide.html"] == 1
    # formats and content
    rows = {r["url"].rsplit("/", 1)[1]: r for r in pages.to_pylist()}
    assert rows["notes.md"]["format"] == "markdown" and "report_checks" in rows["notes.md"]["content"]
    assert rows["moved.html"]["url"] == f"{doc_site.base}/docs/moved.html"
    assert {r["source"] for r in rows.values()} == {"testdocs"} and rows["index.html"]["license"] == "MIT"


def test_second_run_revalidates_from_cache(doc_site: DocSite, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, retries=0)
    first, s1 = crawl_site(_source(doc_site), cfg)
    assert s1["fetched"] == len(EXPECTED_PAGES) - 1  # flaky fails once without retries
    second, s2 = crawl_site(_source(doc_site), cfg)
    assert _names(second) == EXPECTED_PAGES
    assert s2["revalidated"] == len(EXPECTED_PAGES) - 1 and s2["fetched"] == 1  # flaky: first success now
    assert sum(doc_site.not_modified.values()) == s2["revalidated"]
    assert s2["bytes"] < s1["bytes"]
    cached = {r["url"]: r["content"] for r in first.to_pylist()}
    for row in second.to_pylist():
        if row["url"] in cached:
            assert row["content"] == cached[row["url"]]
    # a fresh-enough cache skips the network entirely
    before = sum(doc_site.hits.values())
    third, s3 = crawl_site(_source(doc_site), _cfg(tmp_path, retries=0, cache_max_age_s=3600))
    assert s3["cached"] == len(EXPECTED_PAGES)
    # requests: robots.txt + the failing pages (the redirect loop: 6), except the one robots.txt forbids
    assert sum(doc_site.hits.values()) - before == 1 + (s3["failed"] - 1) + 5


def test_max_depth_and_max_pages(doc_site: DocSite, tmp_path: Path) -> None:
    shallow, _ = crawl_site(_source(doc_site, max_depth=1), _cfg(tmp_path, cache_dir=None))
    assert _names(shallow) == ["flaky.html", "guide.html", "index.html", "moved.html"]
    assert doc_site.hits["/docs/loop-a.html"] == 0
    only_start, st = crawl_site(_source(doc_site, max_depth=0), _cfg(tmp_path, cache_dir=None))
    assert _names(only_start) == ["index.html"]
    capped, st = crawl_site(_source(doc_site, max_pages=3), _cfg(tmp_path, cache_dir=None))
    assert capped.num_rows <= 3 and st["skipped"]["max_pages"] > 0


@pytest.mark.parametrize("concurrency", [1, 3])
def test_per_host_concurrency(doc_site: DocSite, tmp_path: Path, concurrency: int) -> None:
    crawl_site(_source(doc_site), _cfg(tmp_path, per_host_concurrency=concurrency, cache_dir=None, timeout_s=2.0,
                                       retries=1))
    assert doc_site.max_in_flight <= concurrency
    if concurrency > 1:
        assert doc_site.max_in_flight > 1


def test_rate_limit_spaces_requests(doc_site: DocSite, tmp_path: Path) -> None:
    crawl_site(_source(doc_site, max_depth=1), _cfg(tmp_path, per_host_concurrency=4, min_interval_s=0.1,
                                                    cache_dir=None, timeout_s=0.5, retries=0))
    starts = sorted(doc_site.starts)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(starts) >= 8 and min(gaps) >= 0.09


def test_robots_can_be_ignored(doc_site: DocSite, tmp_path: Path) -> None:
    pages, _ = crawl_site(_source(doc_site, max_depth=1), _cfg(tmp_path, respect_robots=False, cache_dir=None))
    assert "secret.html" in _names(pages) and doc_site.hits["/robots.txt"] == 0


def test_unreachable_host_is_recorded(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = SiteSource(name="down", tool="magic", start_urls=[f"http://127.0.0.1:{port}/docs/"])
    pages, stats = crawl_site(src, _cfg(tmp_path, retries=1))
    assert pages.num_rows == 0
    assert stats["failed"] == 1 and stats["failures"][0]["reason"].startswith("connection_error")


def test_normalize_url_and_links() -> None:
    assert normalize_url("HTTP://Example.ORG:80/a/b.html#frag") == "http://example.org/a/b.html"
    assert normalize_url("https://example.org") == "https://example.org/"
    assert normalize_url("../c.html?x=1#y", "https://example.org/a/b/") == "https://example.org/a/c.html?x=1"
    assert normalize_url("mailto:x@example.org") is None
    html = "<a href='a.html#s'>a</a><a href='a.html'>again</a><a href='javascript:void(0)'>js</a><a href='/b'>b</a>"
    assert links_of(html, "html", "http://h/docs/") == ["http://h/docs/a.html", "http://h/b"]
    assert links_of("see [guide](guide.md)", "markdown", "http://h/docs/x.md") == ["http://h/docs/guide.md"]
    assert page_format("text/html; charset=utf-8", "http://h/x") == "html"
    assert page_format("text/plain", "http://h/README.md") == "markdown"
    assert page_format("text/plain", "http://h/guide.rst") == "rst"
    assert page_format("application/pdf", "http://h/x.pdf") is None


def test_read_local(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("# A\n\ntext\n")
    (root / "sub" / "b.rst").write_text("B\n=\n\ntext\n")
    (root / "sub" / "c.html").write_text("<h1>C</h1><p>text</p>")
    (root / "d.txt").write_text("D\n\ntext\n")
    (root / "image.png").write_bytes(b"\x89PNG")
    (root / "bad.md").write_bytes(b"\xff\xfe\x00bad")
    pages, stats = read_local(LocalSource(name="local", tool="openroad", path=str(root)))
    assert sorted(pages.column("format").to_pylist()) == ["html", "markdown", "rst", "text"]
    assert all(u.startswith("file://") for u in pages.column("url").to_pylist())
    assert stats["failures"] == [{"url": f"file://{root}/bad.md", "reason": "not_utf8"}]
    only_md, _ = read_local(LocalSource(name="local", tool="openroad", path=str(root), globs=["**/*.md"]))
    assert only_md.num_rows == 1
    _, missing = fetch_source(LocalSource(name="gone", tool="magic", path=str(tmp_path / "nope")), CrawlConfig())
    assert missing["failure_reasons"] == {"missing_directory": 1} and missing["pages"] == 0
