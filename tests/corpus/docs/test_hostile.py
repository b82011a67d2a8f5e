"""Hostile inputs: a raw HTTP server that breaks the rules, pathological pages, hostile local folders.

The rule under test: one bad page, file or site never fails the crawl or hangs it; it is
recorded with a reason naming it, and time and memory stay bounded.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from corpus.docs.chunk import ExtractChunk
from corpus.docs.crawl import PAGES_SCHEMA, CrawlConfig, crawl_site, normalize_url, read_local, within
from corpus.docs.extract import extract
from corpus.docs.sources import LocalSource, SiteSource
from tests.corpus.docs.conftest import serve_on_loop

Writer = Callable[[asyncio.StreamWriter, "RawSite"], Awaitable[None]]


def _page(title: str, body: str) -> bytes:
    return (f"<html><head><title>{title}</title></head><body><main><h1>{title}</h1>{body}</main>"
            f"</body></html>").encode()


def _response(status: str, body: bytes = b"", ctype: str = "text/html", *extra: str) -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Type: {ctype}", f"Content-Length: {len(body)}", "Connection: close", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class RawSite:
    """A raw HTTP/1.1 server: ``routes`` maps a path (without query) to response bytes or a coroutine."""

    base: str = ""
    port: int = 0
    routes: dict[str, bytes | Writer] = field(default_factory=dict)
    hits: Counter = field(default_factory=Counter)


@pytest.fixture
def raw_site() -> Iterator[RawSite]:
    site = RawSite()
    box: dict[str, asyncio.AbstractServer] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b"\r\n", 1)[0].split(b" ")[1].decode().split("?", 1)[0]
            site.hits[path] += 1
            route = site.routes.get(path, _response("404 Not Found", b"nf"))
            if isinstance(route, bytes):
                writer.write(route)
            else:
                await route(writer, site)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def start() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        site.port = server.sockets[0].getsockname()[1]
        site.base = f"http://127.0.0.1:{site.port}"
        box["server"] = server

    async def stop() -> None:
        box["server"].close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    with serve_on_loop(start, stop, "raw test site"):
        yield site


def _source(site: RawSite, start: str, prefix: str = "/docs/", **kw) -> SiteSource:
    args = {"name": "hostile", "tool": "yosys", "start_urls": [site.base + start],
            "allowed_prefixes": [site.base + prefix], "max_pages": 20, "max_depth": 2}
    return SiteSource(**(args | kw))


def _cfg(**kw) -> CrawlConfig:
    args = {"min_interval_s": 0.0, "timeout_s": 2.0, "retries": 0, "backoff_s": 0.01, "max_bytes": 200_000,
            "cache_dir": None}
    return CrawlConfig(**(args | kw))


def _reasons(stats) -> dict[str, str]:
    return {f["url"].split("/", 3)[3]: f["reason"] for f in stats["failures"]}


# --------------------------------------------------------------------------- crawler


def test_a_link_with_a_bad_port_does_not_abort_the_crawl(raw_site: RawSite) -> None:
    """``http://host:99999/`` (or a broken IPv6 literal) in one page used to raise out of the crawl."""
    raw_site.routes["/docs/index.html"] = _response("200 OK", _page("Index", (
        "<p>links</p><a href='ok.html'>ok</a><a href='http://127.0.0.1:99999/docs/x'>bad port</a>"
        "<a href='http://127.0.0.1:port/docs/y'>not a port</a><a href='http://[::1/docs/z'>bad v6</a>")))
    raw_site.routes["/docs/ok.html"] = _response("200 OK", _page("Ok", "<p>fine</p>"))
    pages, stats = crawl_site(_source(raw_site, "/docs/index.html"), _cfg())
    assert sorted(u.rsplit("/", 1)[1] for u in pages.column("url").to_pylist()) == ["index.html", "ok.html"]
    assert stats["failed"] == 0
    assert normalize_url("http://h:99999/") is None and normalize_url("http://[::1/x") is None
    assert normalize_url("http://[::1]:8080/a") == "http://[::1]:8080/a"


def test_encoded_dot_segments_cannot_leave_the_prefix_or_dodge_robots(raw_site: RawSite) -> None:
    """aiohttp (yarl) resolves ``/docs/%2e%2e/x`` to ``/x`` before sending it: the checks must see that URL."""
    b = raw_site.base
    raw_site.routes["/robots.txt"] = _response("200 OK", b"User-agent: *\nDisallow: /docs/private/\n", "text/plain")
    raw_site.routes["/docs/index.html"] = _response("200 OK", _page("Index", (
        f"<p>links</p><a href='{b}/docs/%2e%2e/outside.html'>out</a>"
        f"<a href='{b}/docs/../outside2.html'>out2</a>"
        f"<a href='{b}/docs/sub/%2E%2E/private/secret.html'>secret</a><a href='ok.html'>ok</a>")))
    raw_site.routes["/docs/ok.html"] = _response("200 OK", _page("Ok", "<p>fine</p>"))
    for path in ("/outside.html", "/outside2.html", "/docs/private/secret.html"):
        raw_site.routes[path] = _response("200 OK", _page("Forbidden", "<p>must not be fetched</p>"))
    pages, stats = crawl_site(_source(raw_site, "/docs/index.html"), _cfg())
    assert raw_site.hits["/outside.html"] == raw_site.hits["/outside2.html"] == 0
    assert raw_site.hits["/docs/private/secret.html"] == 0
    assert sorted(u.rsplit("/", 1)[1] for u in pages.column("url").to_pylist()) == ["index.html", "ok.html"]
    assert _reasons(stats) == {"docs/private/secret.html": "robots_disallowed"}
    assert not within(normalize_url(f"{b}/docs/%2e%2e/outside.html"), [f"{b}/docs/"])


def test_binary_body_served_as_html_is_refused(raw_site: RawSite) -> None:
    raw_site.routes["/docs/report.pdf"] = _response("200 OK", b"%PDF-1.4\n" + bytes(range(256)) * 40)
    raw_site.routes["/docs/image.html"] = _response("200 OK", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 50,
                                                    "text/html; charset=utf-16")
    src = _source(raw_site, "/docs/report.pdf", start_urls=[raw_site.base + "/docs/report.pdf",
                                                             raw_site.base + "/docs/image.html"])
    pages, stats = crawl_site(src, _cfg())
    assert pages.num_rows == 0
    assert _reasons(stats) == {"docs/report.pdf": "binary_content", "docs/image.html": "binary_content"}


def test_charsets_header_meta_and_unknown(raw_site: RawSite) -> None:
    """Header charset first, then ``<meta charset>``, then UTF-8; an unknown charset is not a lost page."""
    latin = b"<html><head><meta charset='iso-8859-1'><title>L</title></head><body><p>caf\xe9 cr\xe8me</p></body></html>"
    raw_site.routes["/docs/meta.html"] = _response("200 OK", latin)
    raw_site.routes["/docs/header.html"] = _response("200 OK", latin.replace(b"iso-8859-1", b"utf-8"),
                                                     "text/html; charset=ISO-8859-1")
    raw_site.routes["/docs/unknown.html"] = _response("200 OK", "<p>naïve</p>".encode(), "text/html; charset=x-nope")
    raw_site.routes["/docs/utf16.html"] = _response("200 OK", "<p>réal utf-16</p>".encode("utf-16"),
                                                    "text/html; charset=utf-16")
    names = ["meta.html", "header.html", "unknown.html", "utf16.html"]
    src = _source(raw_site, "/docs/meta.html", start_urls=[f"{raw_site.base}/docs/{n}" for n in names])
    pages, stats = crawl_site(src, _cfg())
    content = {r["url"].rsplit("/", 1)[1]: r["content"] for r in pages.to_pylist()}
    assert stats["failed"] == 0, stats["failures"]
    assert "café crème" in content["meta.html"] and "café crème" in content["header.html"]
    assert "naïve" in content["unknown.html"] and "réal utf-16" in content["utf16.html"]


def test_malformed_responses_give_short_clear_reasons(raw_site: RawSite) -> None:
    """Protocol errors are ``bad_response`` (not an HTTP 400), and no reason carries the server's bytes."""
    raw_site.routes["/docs/cl-short.html"] = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"
        + b"<p>" + b"z" * 100_000)
    raw_site.routes["/docs/header.html"] = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    raw_site.routes["/docs/garbage.html"] = b"NOT HTTP " + b"x" * 50_000 + b"\r\n\r\n"
    names = ["cl-short.html", "header.html", "garbage.html"]
    src = _source(raw_site, "/docs/x", start_urls=[f"{raw_site.base}/docs/{n}" for n in names])
    _, stats = crawl_site(src, _cfg(retries=1))
    reasons = _reasons(stats)
    assert sorted(reasons) == [f"docs/{n}" for n in sorted(names)]
    assert all(r.startswith("bad_response:") and len(r) <= 300 for r in reasons.values()), reasons
    assert stats["failure_reasons"] == {"bad_response": 3}


def test_slow_and_silent_servers_are_bounded_by_the_timeout(raw_site: RawSite) -> None:
    async def trickle(writer: asyncio.StreamWriter, site: RawSite) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:  # one byte every 0.1 s, forever (slowloris response)
            writer.write(b"1\r\na\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)

    async def silent(writer: asyncio.StreamWriter, site: RawSite) -> None:
        await asyncio.sleep(3600)

    raw_site.routes["/docs/trickle.html"] = trickle
    raw_site.routes["/docs/silent.html"] = silent
    src = _source(raw_site, "/docs/x", start_urls=[f"{raw_site.base}/docs/trickle.html",
                                                   f"{raw_site.base}/docs/silent.html"])
    t0 = time.monotonic()
    _, stats = crawl_site(src, _cfg(timeout_s=0.5, retries=1))
    assert time.monotonic() - t0 < 5
    assert _reasons(stats) == {"docs/trickle.html": "timeout", "docs/silent.html": "timeout"}


# --------------------------------------------------------------------------- extraction


def _nested(depth: int) -> str:
    return "<html><body><main><h1>Deep</h1>" + "<div><table><tr><td>" * depth + "<p>bottom</p></main></body></html>"


def test_deeply_nested_html_fails_fast_with_a_clear_reason() -> None:
    """Thousands of nested elements made extraction quadratic (minutes) before a RecursionError."""
    for html in (_nested(1500), "<p>" + "<span>" * 20_000 + "x", "<ul><li>a" * 5000):
        t0 = time.monotonic()
        with pytest.raises(ValueError, match="too_deep"):
            extract(html, "html", "http://h/deep.html")
        assert time.monotonic() - t0 < 5
    md = "# Deep\n\n" + "*a " * 3000 + "x" + " a*" * 3000 + "\n"
    with pytest.raises(ValueError, match="too_deep"):
        extract(md, "markdown", "http://h/deep.md")
    import pyarrow as pa

    batch = pa.Table.from_pylist([{"source": "s", "tool": "t", "url": "http://h/deep.html", "format": "html",
                                   "content": _nested(1500), "license": None}], schema=PAGES_SCHEMA)
    status = ExtractChunk(max_chars=400, min_chars=10)(batch).column("status").to_pylist()
    assert len(status) == 1 and status[0].startswith("extract_error:ValueError: too_deep")


def test_moderately_nested_html_still_extracts() -> None:
    page = extract(_nested(40), "html", "http://h/ok.html")
    assert any("bottom" in b.text for s in page.sections for b in s.blocks)


# --------------------------------------------------------------------------- local folders


def _local(root: Path, **kw) -> LocalSource:
    return LocalSource(**({"name": "local", "tool": "openroad", "path": str(root)} | kw))


def _local_reasons(stats, root: Path) -> dict[str, str]:
    prefix = f"file://{root}/"
    return {f["url"].removeprefix(prefix): f["reason"] for f in stats["failures"]}


def test_local_symlinks_outside_the_folder_are_not_read(tmp_path: Path) -> None:
    root, outside = tmp_path / "docs", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\n\nOUTSIDE-SECRET text that must never be read.\n")
    (root / "good.md").write_text("# Good\n\ngood text\n")
    (root / "sub" / "inner.md").write_text("# Inner\n\ninner text\n")
    (root / "link-out.md").symlink_to(outside / "secret.md")  # a file outside
    (root / "dir-out").symlink_to(outside, target_is_directory=True)  # a directory outside
    (root / "link-in.md").symlink_to(root / "good.md")  # inside: fine to read
    (root / "sub" / "up").symlink_to("..", target_is_directory=True)  # a directory loop
    (root / "loop1.md").symlink_to(root / "loop2.md")  # a symlink loop
    (root / "loop2.md").symlink_to(root / "loop1.md")
    (root / "dangling.md").symlink_to(root / "nowhere.md")
    pages, stats = read_local(_local(root))
    names = sorted(u.removeprefix(f"file://{root}/") for u in pages.column("url").to_pylist())
    assert names == ["good.md", "link-in.md", "sub/inner.md"]
    assert not any("OUTSIDE-SECRET" in c for c in pages.column("content").to_pylist())
    reasons = _local_reasons(stats, root)
    assert reasons == {"link-out.md": "symlink_outside", "dir-out": "symlink_outside",
                       "loop1.md": "broken_symlink", "loop2.md": "broken_symlink",
                       "dangling.md": "broken_symlink"}, reasons
    assert stats["skipped"] == {"symlink_dir": 1}  # sub/up: its target is read where it lies


def test_local_special_unreadable_huge_and_badly_named_files(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "good.md").write_text("# Good\n\ngood text\n")
    os.mkfifo(root / "fifo.md")  # opening it for reading would block forever
    (root / "zero.txt").symlink_to("/dev/zero")  # endless: outside the folder anyway
    (root / "huge.txt").write_bytes(b"a" * 300_000)
    (root / "nul.txt").write_bytes(b"text\x00with\x00nuls" * 10)
    (root / "unreadable.md").write_text("# U\n\ntext\n")
    bad_name = os.fsencode(str(root)) + b"/bad\xffname.md"
    with open(bad_name, "wb") as f:
        f.write(b"# Bad name\n\nfine text in a file whose name is not UTF-8\n")

    real_open = os.open

    def deny(path, flags, *args, **kw):  # root ignores chmod: simulate EACCES for one file
        if os.fsdecode(path).endswith("unreadable.md"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", deny)
    t0 = time.monotonic()
    pages, stats = read_local(_local(root), max_bytes=100_000)
    assert time.monotonic() - t0 < 10
    names = sorted(u.removeprefix(f"file://{root}/") for u in pages.column("url").to_pylist())
    assert names == ["bad\ufffdname.md", "good.md"]
    reasons = _local_reasons(stats, root)
    assert reasons == {"fifo.md": "not_a_regular_file", "zero.txt": "symlink_outside",
                       "huge.txt": "too_large:300000", "nul.txt": "binary_content",
                       "unreadable.md": "unreadable:Permission denied"}, reasons


def test_local_deep_tree(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    dirs = [str(root)]
    for _ in range(1100):  # deeper than Python's recursion limit (os.makedirs/rmtree recurse: not used)
        dirs.append(dirs[-1] + "/d")
    for d in dirs:
        os.mkdir(d)
    try:
        Path(dirs[-1], "bottom.md").write_text("# Bottom\n\ntext at the bottom\n")
        pages, stats = read_local(_local(root))
        assert pages.num_rows == 1 and stats["failed"] == 0
    finally:
        Path(dirs[-1], "bottom.md").unlink(missing_ok=True)
        for d in reversed(dirs):
            os.rmdir(d)


def test_huge_links_are_not_followed(raw_site: RawSite) -> None:
    """A 150 KB href would be requested and kept in the report (per page, up to max_bytes of them)."""
    raw_site.routes["/docs/index.html"] = _response("200 OK", _page("Index", (
        f"<p>links</p><a href='long-{'x' * 150_000}.html'>long</a><a href='ok.html'>ok</a>")))
    raw_site.routes["/docs/ok.html"] = _response("200 OK", _page("Ok", "<p>fine</p>"))
    pages, stats = crawl_site(_source(raw_site, "/docs/index.html"), _cfg())
    assert pages.num_rows == 2 and stats["failed"] == 0
    assert sum(raw_site.hits.values()) == 3  # robots.txt, index, ok


def test_nesting_below_the_limit_stays_linear() -> None:
    """Within MAX_DEPTH: a nested table's rows were emitted again at every enclosing table (output
    depth x content), and every tag's ``decomposed`` check and every link's text read searched its
    whole subtree (time depth x size)."""
    bottom = "<p>" + "word " * 2000 + "</p>"
    page = extract("<html><body><main>" + "<table><tr><td>" * 40 + bottom, "html", "http://h/t.html")
    assert sum(len(b.text) for s in page.sections for b in s.blocks) < 2 * len(bottom)
    html = "<html><body><main>" + "<div><a href='x'>" * 120 + "<p>w</p>" * 30_000
    t0 = time.monotonic()
    extract(html, "html", "http://h/d.html")
    assert time.monotonic() - t0 < 20


def test_a_site_that_is_slow_everywhere_ends_at_its_budget(raw_site: RawSite) -> None:
    """Every page answers just inside timeout_s: without a site budget that is timeout x pages (hours on
    a real site); with it the crawl ends, the pages in flight fail as site_budget and the rest are skipped."""
    async def slow(writer: asyncio.StreamWriter, site: RawSite) -> None:
        await asyncio.sleep(0.8)
        links = "".join(f'<a href="/docs/p{i}.html">p{i}</a>' for i in range(40))
        writer.write(_response("200 OK", _page("slow", f"<p>slow page</p>{links}")))

    for i in range(40):
        raw_site.routes[f"/docs/p{i}.html"] = slow
    raw_site.routes["/docs/index.html"] = slow
    src = _source(raw_site, "/docs/index.html", max_pages=41)
    t0 = time.monotonic()
    rows, stats = crawl_site(src, _cfg(per_host_concurrency=2, site_budget_s=2.5))
    assert time.monotonic() - t0 < 6
    assert 1 <= stats["fetched"] < 10 and PAGES_SCHEMA.names == rows.schema.names
    reasons = set(_reasons(stats).values())
    assert reasons == {"site_budget:2.5s"}, reasons
    assert stats["fetched"] + len(stats["failures"]) + stats["skipped"].get("site_budget", 0) == 41
