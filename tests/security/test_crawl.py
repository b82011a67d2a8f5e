"""Issue 8 (crawler side): robots.txt is fetched under the same limits as pages.

Before the fix robots.txt was fetched with redirects followed blindly (a redirect to a cloud
metadata address was requested) and read whole after aiohttp inflated it (a 1 MB gzip
robots.txt grew the process to 2.1 GB). Here a docs site on 127.0.0.1 redirects robots.txt to
a "metadata" server on 127.0.0.2 (which must never see a request) and another serves a gzip
bomb as robots.txt and as a page (memory must stay bounded, the read must stop at the cap).
"""

from __future__ import annotations

import asyncio
import gzip
import resource
import threading
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

import pytest
from aiohttp import web

from corpus.docs.crawl import CrawlConfig, crawl_site
from corpus.docs.sources import SiteSource

pytestmark = pytest.mark.timeout(120)

BOMB_BYTES = 128 << 20  # inflated size of the gzip bomb (about 130 KB on the wire)
PAGE = "<html><head><title>{t}</title></head><body><main><h1>{t}</h1><p>{t} text.</p>{links}</main></body></html>"


@lru_cache(maxsize=1)
def gzip_bomb() -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    return b"".join([c.compress(zeros) for _ in range(BOMB_BYTES >> 20)] + [c.flush()])


class Server:
    """An aiohttp app on ``host`` (random port) in a thread; ``hits`` counts request paths."""

    def __init__(self, host: str, routes: Callable[["Server"], list[web.RouteDef]]) -> None:
        self.host, self.routes, self.hits, self.base = host, routes, Counter(), ""
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None

    def __enter__(self) -> "Server":
        started = threading.Event()

        @web.middleware
        async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
            self.hits[request.path] += 1
            return await handler(request)

        async def start() -> None:
            app = web.Application(middlewares=[count])
            app.add_routes(self.routes(self))
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            await web.TCPSite(self.runner, self.host, 0).start()
            self.base = f"http://{self.host}:{self.runner.addresses[0][1]}"

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        assert started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.runner is not None
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def html(title: str, *links: str) -> web.Response:
    body = PAGE.format(t=title, links="".join(f"<a href='{u}'>{u}</a>" for u in links))
    return web.Response(text=body, content_type="text/html")


def gzipped(body: bytes, content_type: str) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": content_type, "Content-Encoding": "gzip"})


@pytest.fixture
def metadata() -> Iterator[Server]:
    """Stands in for 169.254.169.254: a different host that must never be requested."""
    def routes(srv: Server) -> list[web.RouteDef]:
        async def secret(request: web.Request) -> web.Response:
            return web.Response(text="User-agent: *\nDisallow: /\n# iam credentials\n", content_type="text/plain")
        return [web.get("/{tail:.*}", secret)]

    with Server("127.0.0.2", routes) as srv:
        yield srv


def docs_site(robots: Callable[[Server], web.StreamResponse]) -> Callable[[Server], list[web.RouteDef]]:
    def routes(srv: Server) -> list[web.RouteDef]:
        async def robots_txt(request: web.Request) -> web.StreamResponse:
            return robots(srv)

        async def robots_real(request: web.Request) -> web.Response:
            return web.Response(text="User-agent: *\nDisallow: /docs/private/\n", content_type="text/plain")

        async def index(request: web.Request) -> web.Response:
            return html("Index", "gz.html", "bomb.html", "private/secret.html")

        async def gz(request: web.Request) -> web.Response:
            body = PAGE.format(t="Compressed", links="").encode()
            return gzipped(gzip.compress(body), "text/html; charset=utf-8")

        async def bomb(request: web.Request) -> web.Response:
            return gzipped(gzip_bomb(), "text/html")

        async def secret(request: web.Request) -> web.Response:
            return html("Secret")

        return [web.get("/robots.txt", robots_txt), web.get("/robots-real.txt", robots_real),
                web.get("/docs/index.html", index), web.get("/docs/gz.html", gz), web.get("/docs/bomb.html", bomb),
                web.get("/docs/private/secret.html", secret)]

    return routes


def source(site: Server) -> SiteSource:
    return SiteSource(name="sec", tool="yosys", start_urls=[f"{site.base}/docs/index.html"],
                      allowed_prefixes=[f"{site.base}/docs/"], max_pages=20, max_depth=2, license="MIT")


def config(tmp_path: Path) -> CrawlConfig:
    return CrawlConfig(per_host_concurrency=2, min_interval_s=0.0, timeout_s=10.0, retries=0, backoff_s=0.01,
                       max_bytes=1_000_000, cache_dir=None)


def measured(fn: Callable[[], object]) -> tuple[object, int, int]:
    """(result, tracemalloc peak bytes, growth of the process's max RSS in bytes)."""
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    try:
        out = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0


def test_robots_redirect_to_another_host_is_never_followed(metadata: Server, tmp_path: Path) -> None:
    def robots(srv: Server) -> web.StreamResponse:
        raise web.HTTPFound(f"{metadata.base}/latest/meta-data/iam/security-credentials/")

    with Server("127.0.0.1", docs_site(robots)) as site:
        pages, stats = crawl_site(source(site), config(tmp_path))
    assert sum(metadata.hits.values()) == 0, metadata.hits
    assert stats["robots_failures"] == [{
        "url": f"{site.base}/robots.txt",
        "reason": f"redirect_outside_prefix:{metadata.base}/latest/meta-data/iam/security-credentials/"}]
    # robots.txt treated as absent, the pages themselves still under the prefix rules
    names = sorted(u.rsplit("/", 1)[1] for u in pages.column("url").to_pylist())
    assert names == ["gz.html", "index.html", "secret.html"]


def test_robots_redirect_within_the_host_is_followed(tmp_path: Path) -> None:
    def robots(srv: Server) -> web.StreamResponse:
        raise web.HTTPFound("/robots-real.txt")

    with Server("127.0.0.1", docs_site(robots)) as site:
        pages, stats = crawl_site(source(site), config(tmp_path))
    assert site.hits["/robots-real.txt"] == 1 and stats["robots_failures"] == []
    assert {f["url"].rsplit("/docs/", 1)[1]: f["reason"] for f in stats["failures"]} == {
        "private/secret.html": "robots_disallowed", "bomb.html": "too_large:>1000000 (decompressed)"}
    assert site.hits["/docs/private/secret.html"] == 0


def test_gzip_bomb_robots_and_page_stop_at_the_cap(tmp_path: Path) -> None:
    gzip_bomb()  # built before measuring

    def robots(srv: Server) -> web.StreamResponse:
        return gzipped(gzip_bomb(), "text/plain")

    with Server("127.0.0.1", docs_site(robots)) as site:
        (pages, stats), peak, rss_growth = measured(lambda: crawl_site(source(site), config(tmp_path)))
    assert peak < 48 << 20, f"tracemalloc peak {peak / 2**20:.0f} MiB"
    assert rss_growth < 200 << 20, f"max RSS grew {rss_growth / 2**20:.0f} MiB"
    assert stats["robots_failures"] == [{"url": f"{site.base}/robots.txt",
                                         "reason": "too_large:>1000000 (decompressed)"}]
    failures = {f["url"].rsplit("/docs/", 1)[1]: f["reason"] for f in stats["failures"]}
    assert failures == {"bomb.html": "too_large:>1000000 (decompressed)"}
    # a gzip-encoded page is inflated normally
    by_name = {u.rsplit("/", 1)[1]: c for u, c in zip(pages.column("url").to_pylist(),
                                                      pages.column("content").to_pylist())}
    assert "Compressed text." in by_name["gz.html"]


def test_unknown_content_encoding_is_refused(tmp_path: Path) -> None:
    def robots(srv: Server) -> web.StreamResponse:
        return web.Response(body=b"\x00" * 100, headers={"Content-Type": "text/plain", "Content-Encoding": "br"})

    with Server("127.0.0.1", docs_site(robots)) as site:
        _, stats = crawl_site(source(site), config(tmp_path))
    assert stats["robots_failures"] == [{"url": f"{site.base}/robots.txt", "reason": "content_encoding:br"}]
