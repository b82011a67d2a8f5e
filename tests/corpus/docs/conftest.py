"""A small documentation site served by aiohttp on 127.0.0.1 (random free port), in a thread.

Layout (every HTML page carries an ETag and honours If-None-Match with a 304):

- ``/robots.txt`` disallows ``/docs/private/``
- ``/docs/index.html`` links to every case below (and to itself with a fragment)
- ``/docs/guide.html`` → ``loop-a.html`` ↔ ``loop-b.html`` (a link loop), ``notes.md`` (text/markdown)
- ``/docs/old.html`` 302 → ``/docs/moved.html``; ``/docs/escape.html`` 302 → ``/other/outside.html``
- ``/docs/missing.html`` 404; ``/docs/flaky.html`` 500 on the first request, 200 afterwards
- ``/docs/slow.html`` answers after ``SLOW_S`` (longer than the tests' timeout)
- ``/docs/file.bin`` application/octet-stream; ``/docs/big.html`` larger than the tests' size cap
  (Content-Length set); ``/docs/stream.html`` larger than the cap, chunked, no Content-Length
- ``/docs/sneaky.html`` 302 → the forbidden page; ``/docs/redirect-loop.html`` redirects to itself forever
- ``/docs/private/secret.html`` exists but robots.txt forbids it; ``/other/page.html`` is outside the prefix
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

SLOW_S = 1.5
BIG_BYTES = 200_000


def _html(title: str, body: str) -> str:
    return (f"<html><head><title>{title}</title></head><body><nav><a href='/docs/index.html'>Home</a></nav>"
            f"<main><h1>{title}</h1>{body}</main><footer>site footer</footer></body></html>")


PAGES = {
    "/docs/index.html": _html("Index", """
        <p>Start here. This index links to every page of the test site.</p>
        <a href="guide.html">guide</a> <a href="guide.html#section-2">guide again, with a fragment</a>
        <a href="index.html#top">self</a> <a href="old.html">old</a> <a href="escape.html">escape</a>
        <a href="missing.html">missing</a> <a href="flaky.html">flaky</a> <a href="slow.html">slow</a>
        <a href="file.bin">binary</a> <a href="big.html">big</a> <a href="stream.html">stream</a>
        <a href="private/secret.html">secret</a> <a href="sneaky.html">sneaky</a>
        <a href="redirect-loop.html">redirect loop</a> <a href="/other/page.html">outside</a>
        <a href="mailto:someone@example.invalid">mail</a>"""),
    "/docs/guide.html": _html("Guide", """
        <h2>Synthesis</h2><p>Run yosys with a script.</p><pre><code class="language-yosys">read_verilog top.v
synth -top top</code></pre>
        <a href="loop-a.html">loop</a> <a href="notes.md">notes</a>"""),
    "/docs/loop-a.html": _html("Loop A", "<p>Page A of a loop.</p><a href='loop-b.html'>to B</a>"),
    "/docs/loop-b.html": _html("Loop B", "<p>Page B of a loop.</p><a href='loop-a.html'>to A</a> "
                                         "<a href='./loop-a.html#x'>A again</a> <a href='index.html'>index</a>"),
    "/docs/moved.html": _html("Moved", "<p>The page that old.html redirects to.</p>"),
    "/docs/flaky.html": _html("Flaky", "<p>Served after one failure.</p>"),
    "/docs/private/secret.html": _html("Secret", "<p>Robots forbid this.</p>"),
    "/other/page.html": _html("Other", "<p>Outside the allowed prefix.</p>"),
    "/other/outside.html": _html("Outside", "<p>Target of a redirect that leaves the prefix.</p>"),
}
MARKDOWN = "# Notes\n\nTiming notes.\n\n```tcl\nreport_checks -path_delay max\n```\n"


@dataclass
class DocSite:
    base: str
    hits: Counter = field(default_factory=Counter)  # path -> requests
    not_modified: Counter = field(default_factory=Counter)  # path -> 304 answers
    in_flight: int = 0
    max_in_flight: int = 0
    starts: list[float] = field(default_factory=list)  # monotonic request start times


def _etag(body: str | bytes) -> str:
    data = body.encode() if isinstance(body, str) else body
    return '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


def _make_app(site: DocSite) -> web.Application:
    def conditional(request: web.Request, body: str, content_type: str) -> web.Response:
        tag = _etag(body)
        if request.headers.get("If-None-Match") == tag:
            site.not_modified[request.path] += 1
            return web.Response(status=304, headers={"ETag": tag})
        return web.Response(text=body, content_type=content_type, headers={"ETag": tag})

    @web.middleware
    async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
        site.hits[request.path] += 1
        site.starts.append(time.monotonic())
        site.in_flight += 1
        site.max_in_flight = max(site.max_in_flight, site.in_flight)
        try:
            await asyncio.sleep(0.02)  # long enough for concurrent requests to overlap
            return await handler(request)
        finally:
            site.in_flight -= 1

    async def robots(request: web.Request) -> web.Response:
        return web.Response(text="User-agent: *\nDisallow: /docs/private/\n", content_type="text/plain")

    async def page(request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/docs/old.html":
            raise web.HTTPFound("/docs/moved.html")
        if path == "/docs/sneaky.html":
            raise web.HTTPFound("/docs/private/secret.html")
        if path == "/docs/redirect-loop.html":
            raise web.HTTPFound("/docs/redirect-loop.html?again=" + str(site.hits[path]))
        if path == "/docs/escape.html":
            raise web.HTTPFound("/other/outside.html")
        if path == "/docs/flaky.html" and site.hits[path] == 1:
            return web.Response(status=500, text="try again")
        if path == "/docs/slow.html":
            await asyncio.sleep(SLOW_S)
            return web.Response(text=_html("Slow", "<p>too late</p>"), content_type="text/html")
        if path == "/docs/file.bin":
            return web.Response(body=bytes(range(256)) * 4, content_type="application/octet-stream")
        if path == "/docs/big.html":
            return web.Response(text=_html("Big", "<p>" + "x" * BIG_BYTES + "</p>"), content_type="text/html")
        if path == "/docs/stream.html":
            resp = web.StreamResponse(headers={"Content-Type": "text/html"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            try:
                for _ in range(BIG_BYTES // 10_000 + 1):
                    await resp.write(b"<p>" + b"y" * 10_000 + b"</p>")
                await resp.write_eof()
            except (ConnectionResetError, RuntimeError):
                pass  # the client stopped reading at its size cap
            return resp
        if path == "/docs/notes.md":
            return conditional(request, MARKDOWN, "text/markdown")
        if path in PAGES:
            return conditional(request, PAGES[path], "text/html")
        raise web.HTTPNotFound()

    app = web.Application(middlewares=[count])
    app.router.add_get("/robots.txt", robots)
    app.router.add_get("/{tail:.*}", page)
    return app


@contextlib.contextmanager
def serve_on_loop(start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]],
                  what: str) -> Iterator[None]:
    """Run ``start()`` on a fresh event loop in a daemon thread, keep the loop running while the
    ``with`` body runs, then run ``stop()`` on it and close it (test servers on 127.0.0.1)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10), f"{what} did not start"
    try:
        yield
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def doc_site() -> Iterator[DocSite]:
    """The site above on a fresh random port; counters start at zero for each test."""
    site = DocSite(base="")
    runner_box: dict[str, web.AppRunner] = {}

    async def start() -> None:
        runner = web.AppRunner(_make_app(site), access_log=None)
        await runner.setup()
        tcp = web.TCPSite(runner, "127.0.0.1", 0)
        await tcp.start()
        port = runner.addresses[0][1]
        site.base = f"http://127.0.0.1:{port}"
        runner_box["runner"] = runner

    async def stop() -> None:
        await runner_box["runner"].cleanup()

    with serve_on_loop(start, stop, "test doc site"):
        yield site
