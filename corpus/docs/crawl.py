"""Fetch documentation pages: an aiohttp site crawler and a local-directory reader.

Both produce page rows (``PAGES_SCHEMA``): the raw text of one page and its format, plus a
``CrawlStats`` with every failure and its reason. Nothing here raises for a bad page: a page
that cannot be fetched is recorded (``failures``) and the crawl goes on.

Crawler behaviour: robots.txt honoured (``urllib.robotparser``); per-host concurrency and a
minimum interval between requests to a host; redirects followed, and the final URL must stay
under the source's allowed prefixes; retries with exponential backoff on timeouts, connection
errors and 5xx (never on 4xx); a response size cap (Content-Length checked, body streamed and
abandoned past the cap); content types checked; an on-disk cache revalidated with
If-None-Match / If-Modified-Since so a rerun mostly gets 304s; URLs normalised (fragment
dropped, default port and empty path normalised) so link loops terminate.

One fetch path for everything (issue 8): pages and robots.txt both go through
``SiteCrawler._get``: redirects followed hop by hop, each hop rate-limited and checked (pages:
under the allowed prefixes; robots.txt: the same scheme+host+port or under the prefixes, never
another host such as 169.254.169.254), and the body read by ``read_body`` under ``max_bytes``
both on the wire and after decompression. aiohttp's own decompression is off
(``auto_decompress=False``): ``gzip``/``deflate`` are inflated here in bounded steps, so a
gzip bomb stops at the cap instead of growing the process; other encodings are refused. A
robots.txt that cannot be fetched within these limits is recorded in ``robots_failures`` and
treated as absent (everything allowed), as an unreachable one always was.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import time
import urllib.robotparser
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit, urlunsplit

import pyarrow as pa
from pydantic import Field

from chipforge import fs
from chipforge.config import Config
from corpus.docs.sources import LocalSource, SiteSource

# Internal boundary: crawl/read → extract+chunk.
PAGES_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("tool", pa.string()),
        pa.field("url", pa.string(), nullable=False),  # final URL (after redirects), or file:// path
        pa.field("format", pa.string()),  # html | markdown | rst | text
        pa.field("content", pa.string()),
        pa.field("license", pa.string()),
    ]
)

FORMAT_BY_TYPE = {
    "text/html": "html",
    "application/xhtml+xml": "html",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/x-rst": "rst",
    "text/prs.fallenstein.rst": "rst",
    "text/plain": "text",
}
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ACCEPT_ENCODING = "gzip, deflate"  # the only encodings ``read_body`` inflates
_CHUNK = 65536

FORMAT_BY_SUFFIX = {
    ".html": "html", ".htm": "html", ".md": "markdown", ".markdown": "markdown",
    ".rst": "rst", ".txt": "text", ".text": "text",
}


class CrawlConfig(Config):
    """Crawler knobs shared by every site source (the Ray task of a source gets a copy)."""

    user_agent: str = "chipforge-docs/0.1 (+https://github.com/chipforge/chipforge)"
    per_host_concurrency: int = Field(2, ge=1)
    min_interval_s: float = Field(0.5, ge=0.0)  # between request starts to one host (rate limit)
    timeout_s: float = Field(20.0, gt=0)  # per request, connect + body
    retries: int = Field(3, ge=0)  # extra attempts on timeouts / connection errors / 5xx
    backoff_s: float = Field(1.0, ge=0.0)  # first retry delay; doubles each attempt
    max_bytes: int = Field(2_000_000, ge=1)  # response size cap
    respect_robots: bool = True
    cache_dir: str | None = "out/cache/docs"  # None: no cache
    cache_max_age_s: float = Field(0.0, ge=0.0)  # younger cache entries are used without a request
    max_redirects: int = Field(5, ge=0)


@dataclass
class CrawlStats:
    """What happened to every URL of one source (JSON-able via ``as_dict``)."""

    source: str
    fetched: int = 0  # 200 from the network
    revalidated: int = 0  # 304: cached body reused
    cached: int = 0  # fresh cache entry, no request
    bytes: int = 0  # body bytes received from the network
    retries: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)  # {url, reason}
    skipped: Counter = field(default_factory=Counter)  # not failures: duplicate final URL, max_pages, ...
    robots_failures: list[dict[str, str]] = field(default_factory=list)  # {url, reason}: treated as absent

    def fail(self, url: str, reason: str) -> None:
        self.failures.append({"url": url, "reason": reason})

    def as_dict(self) -> dict[str, Any]:
        reasons = Counter(f["reason"].split(":", 1)[0] for f in self.failures)
        return {
            "source": self.source, "fetched": self.fetched, "revalidated": self.revalidated, "cached": self.cached,
            "failed": len(self.failures), "failure_reasons": dict(sorted(reasons.items())),
            "failures": sorted(self.failures, key=lambda f: f["url"]), "bytes": self.bytes,
            "retries": self.retries, "skipped": dict(sorted(self.skipped.items())),
            "robots_failures": sorted(self.robots_failures, key=lambda f: f["url"]),
        }


def normalize_url(url: str, base: str | None = None) -> str | None:
    """Absolute http(s) URL without fragment, lower-case scheme/host, default port dropped; else None."""
    if base is not None:
        url = urljoin(base, url.strip())
    url, _ = urldefrag(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    port = parts.port
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def within(url: str, prefixes: list[str]) -> bool:
    return any(url.startswith(normalize_url(p) or p) for p in prefixes)


def same_origin(url: str, other: str) -> bool:
    """Same scheme, host and port (both normalised by ``normalize_url``)."""
    a, b = urlsplit(url), urlsplit(other)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def page_format(content_type: str, url: str) -> str | None:
    """html | markdown | rst | text for an accepted content type, None for anything else (binary)."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    fmt = FORMAT_BY_TYPE.get(ctype)
    if fmt == "text":  # raw files (e.g. raw.githubusercontent.com) are served as text/plain
        fmt = FORMAT_BY_SUFFIX.get(Path(urlsplit(url).path).suffix.lower(), "text")
    return fmt


def links_of(content: str, fmt: str, base_url: str) -> list[str]:
    """Normalised absolute links of a page (HTML anchors; Markdown links via its renderer)."""
    from bs4 import BeautifulSoup

    if fmt == "markdown":
        from markdown_it import MarkdownIt

        content, fmt = MarkdownIt("commonmark").render(content), "html"
    if fmt != "html":
        return []
    soup = BeautifulSoup(content, "lxml")
    base_tag = soup.find("base", href=True)
    base = urljoin(base_url, base_tag["href"]) if base_tag else base_url
    out = []
    for a in soup.find_all("a", href=True):
        if a.get("rel") and "nofollow" in a.get("rel"):
            continue
        u = normalize_url(a["href"], base)
        if u:
            out.append(u)
    return list(dict.fromkeys(out))


class _Retryable(Exception):
    """A transient failure (timeout, connection error, 5xx); the reason is the message."""


class _Failed(Exception):
    """A permanent failure of one page; the reason is the message."""


def _decoder(encoding: str) -> Any | None:
    """A zlib decompressor for a Content-Encoding (None: identity); _Failed for anything else."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if enc == "deflate":
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib header (auto-detected)
    raise _Failed(f"content_encoding:{enc}")


async def read_body(resp: Any, max_bytes: int) -> bytes:
    """The body of ``resp`` (opened with ``auto_decompress=False``), at most ``max_bytes``.

    Checked three ways so that neither a large nor a highly compressed body can grow the
    process: the declared Content-Length, the bytes received, and the bytes after inflating
    ``gzip``/``deflate``, which is done ``max_bytes + 1`` bytes at a time. Raises
    ``_Failed("too_large:...")`` at the first that exceeds the cap.
    """
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise _Failed(f"too_large:{resp.content_length}")
    decoder = _decoder(resp.headers.get("Content-Encoding", ""))
    body = bytearray()
    received = 0
    async for chunk in resp.content.iter_chunked(_CHUNK):
        received += len(chunk)
        if received > max_bytes:
            raise _Failed(f"too_large:>{max_bytes}")
        if decoder is None:
            body += chunk
            continue
        data = chunk
        while data:
            try:
                body += decoder.decompress(data, max_bytes + 1 - len(body))
            except zlib.error as exc:
                raise _Failed(f"bad_encoding:{exc}") from exc
            if len(body) > max_bytes:
                raise _Failed(f"too_large:>{max_bytes} (decompressed)")
            data = decoder.unconsumed_tail
    if decoder is not None:
        body += decoder.flush(max_bytes + 1 - len(body))
        if len(body) > max_bytes:
            raise _Failed(f"too_large:>{max_bytes} (decompressed)")
    return bytes(body)


@dataclass
class _Fetched:
    """One finished request: final URL, status, headers, charset and (status 200 only) the body."""

    url: str
    status: int
    headers: Any
    charset: str | None
    body: bytes = b""


class PageCache:
    """One JSON file per URL under ``root``: body, validators (ETag, Last-Modified) and fetch time."""

    def __init__(self, root: str | None) -> None:
        self.root = root

    def _path(self, url: str) -> str:
        return fs.join(self.root, hashlib.sha256(url.encode()).hexdigest()[:2],
                       hashlib.sha256(url.encode()).hexdigest() + ".json")

    def get(self, url: str) -> dict[str, Any] | None:
        if not self.root:
            return None
        try:
            return fs.read_json(self._path(url))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    def put(self, url: str, entry: dict[str, Any]) -> None:
        if self.root:
            fs.write_json(self._path(url), entry)


class _Host:
    """Per-host concurrency (semaphore) and rate limit (minimum interval between request starts)."""

    def __init__(self, concurrency: int, min_interval_s: float) -> None:
        self.sem = asyncio.Semaphore(concurrency)
        self.min_interval_s = min_interval_s
        self.lock = asyncio.Lock()
        self.next_start = 0.0
        self.robots: urllib.robotparser.RobotFileParser | None = None
        self.robots_lock = asyncio.Lock()

    async def wait_turn(self) -> None:
        async with self.lock:
            now = time.monotonic()
            delay = self.next_start - now
            self.next_start = max(now, self.next_start) + self.min_interval_s
        if delay > 0:
            await asyncio.sleep(delay)


class SiteCrawler:
    """Breadth-first crawl of one ``SiteSource``; ``await crawl()`` returns (pages, stats)."""

    def __init__(self, source: SiteSource, cfg: CrawlConfig) -> None:
        self.source = source
        self.cfg = cfg
        self.cache = PageCache(fs.join(cfg.cache_dir, source.name) if cfg.cache_dir else None)
        self.stats = CrawlStats(source=source.name)
        self.hosts: dict[str, _Host] = {}
        self.prefixes = [normalize_url(p) or p for p in source.allowed_prefixes]

    def _host(self, url: str) -> _Host:
        key = urlsplit(url).netloc
        if key not in self.hosts:
            self.hosts[key] = _Host(self.cfg.per_host_concurrency, self.cfg.min_interval_s)
        return self.hosts[key]

    async def crawl(self) -> tuple[list[dict[str, Any]], CrawlStats]:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        headers = {"User-Agent": self.cfg.user_agent, "Accept-Encoding": ACCEPT_ENCODING}
        pages: dict[str, dict[str, Any]] = {}
        seen: set[str] = set()
        frontier = [u for u in (normalize_url(s) for s in self.source.start_urls) if u]
        # auto_decompress=False: bodies are inflated by read_body, under the size cap.
        async with aiohttp.ClientSession(timeout=timeout, headers=headers, auto_decompress=False) as session:
            for depth in range(self.source.max_depth + 1):
                batch = []
                for url in frontier:
                    if url in seen:
                        continue
                    seen.add(url)
                    if len(pages) + len(batch) >= self.source.max_pages:
                        self.stats.skipped["max_pages"] += 1
                        continue
                    batch.append(url)
                results = await asyncio.gather(*(self._page(session, u) for u in batch))
                frontier = []
                for url, result in zip(batch, results):
                    if result is None:
                        continue
                    final = result["url"]
                    seen.add(final)
                    if final in pages:
                        self.stats.skipped["duplicate_final_url"] += 1
                        continue
                    pages[final] = result
                    if depth < self.source.max_depth:
                        frontier += [u for u in links_of(result["content"], result["format"], final)
                                     if within(u, self.prefixes) and u not in seen]
                frontier = list(dict.fromkeys(frontier))
                if not frontier:
                    break
            if frontier:
                self.stats.skipped["max_depth"] += len(set(frontier) - seen)
        rows = [pages[u] for u in sorted(pages)]
        return rows, self.stats

    async def _allowed(self, session: Any, url: str) -> bool:
        """robots.txt verdict for ``url`` (fetched once per host through ``_get``, same limits as pages)."""
        if not self.cfg.respect_robots:
            return True
        host = self._host(url)
        async with host.robots_lock:
            if host.robots is None:
                parts = urlsplit(url)
                robots_url = f"{parts.scheme}://{parts.netloc}/robots.txt"
                parser = urllib.robotparser.RobotFileParser(robots_url)
                try:
                    fetched = await self._get(
                        session, robots_url, {},
                        lambda u: same_origin(u, robots_url) or within(u, self.prefixes), check_robots=False)
                    if fetched.status >= 400:
                        # 4xx: no robots.txt → everything allowed; 5xx: be conservative
                        parser.disallow_all = fetched.status >= 500
                        parser.allow_all = fetched.status < 500
                    else:
                        parser.parse(fetched.body.decode(fetched.charset or "utf-8", errors="replace").splitlines())
                except (_Failed, _Retryable) as exc:  # treated as absent; the reason goes to the stats
                    self.stats.robots_failures.append({"url": robots_url, "reason": str(exc)})
                    parser.allow_all = True
                except Exception as exc:  # noqa: BLE001 - unreachable robots.txt: allow, pages report errors
                    self.stats.robots_failures.append({"url": robots_url, "reason": f"error:{type(exc).__name__}"})
                    parser.allow_all = True
                host.robots = parser
        return host.robots.can_fetch(self.cfg.user_agent, url)

    async def _page(self, session: Any, url: str) -> dict[str, Any] | None:
        """Fetch one page (with retries); a row, or None after recording why not."""
        try:
            if not await self._allowed(session, url):
                raise _Failed("robots_disallowed")
            cached = self.cache.get(url)
            if cached and self.cfg.cache_max_age_s and time.time() - cached.get("fetched_at", 0) < self.cfg.cache_max_age_s:
                self.stats.cached += 1
                return self._row(cached)
            for attempt in range(self.cfg.retries + 1):
                try:
                    return await self._fetch(session, url, cached)
                except _Retryable as exc:
                    if attempt == self.cfg.retries:
                        raise _Failed(str(exc)) from exc
                    self.stats.retries += 1
                    await asyncio.sleep(self.cfg.backoff_s * 2**attempt)
        except _Failed as exc:
            self.stats.fail(url, str(exc))
        except Exception as exc:  # noqa: BLE001 - one bad page never fails the crawl
            self.stats.fail(url, f"error:{type(exc).__name__}: {exc}")
        return None

    async def _get(self, session: Any, url: str, headers: dict[str, str], may_redirect_to: Callable[[str], bool],
                   *, check_robots: bool, accept: Callable[[Any, str], None] | None = None) -> _Fetched:
        """The one fetch function (pages and robots.txt): one attempt at ``url``.

        Redirects are followed hop by hop so that every hop is rate-limited, must satisfy
        ``may_redirect_to`` (else ``redirect_outside_prefix``) and, with ``check_robots``,
        robots.txt. For a 200, ``accept(resp, final_url)`` may refuse the response before its
        body is read; the body is read by ``read_body`` under ``max_bytes``. Raises ``_Failed``
        (permanent) or ``_Retryable`` (timeouts, connection and payload errors).
        """
        import aiohttp

        current = url
        for hop in range(self.cfg.max_redirects + 1):
            if hop and check_robots and not await self._allowed(session, current):
                raise _Failed(f"robots_disallowed:{current}")
            host = self._host(current)
            async with host.sem:
                await host.wait_turn()
                try:
                    async with session.get(current, headers=headers, allow_redirects=False) as resp:
                        if resp.status in REDIRECT_STATUSES and resp.headers.get("Location"):
                            nxt = normalize_url(resp.headers["Location"], current)
                            if nxt is None or not may_redirect_to(nxt):
                                raise _Failed(f"redirect_outside_prefix:{nxt or resp.headers['Location']}")
                            current = nxt
                            continue
                        body = b""
                        if resp.status == 200:
                            if accept is not None:
                                accept(resp, current)
                            body = await read_body(resp, self.cfg.max_bytes)
                        return _Fetched(current, resp.status, resp.headers.copy(), resp.charset, body)
                except asyncio.TimeoutError as exc:
                    raise _Retryable("timeout") from exc
                except aiohttp.ClientPayloadError as exc:
                    raise _Retryable(f"payload_error:{exc}") from exc
                except aiohttp.ClientConnectionError as exc:
                    raise _Retryable(f"connection_error:{type(exc).__name__}") from exc
        raise _Failed("too_many_redirects")

    @staticmethod
    def _accept_page(resp: Any, final: str) -> None:
        """Refuse a page whose content type is not a document format, before reading its body."""
        ctype = resp.headers.get("Content-Type", "")
        if page_format(ctype, final) is None:
            raise _Failed(f"content_type:{ctype.split(';', 1)[0].strip() or 'missing'}")

    async def _fetch(self, session: Any, url: str, cached: dict[str, Any] | None) -> dict[str, Any]:
        """One attempt at a page (conditional on the cached validators), through ``_get``."""
        headers = {}
        if cached and cached.get("etag"):
            headers["If-None-Match"] = cached["etag"]
        if cached and cached.get("last_modified"):
            headers["If-Modified-Since"] = cached["last_modified"]
        fetched = await self._get(session, url, headers, lambda u: within(u, self.prefixes), check_robots=True,
                                  accept=self._accept_page)
        return self._response(fetched, url, cached)

    def _response(self, fetched: _Fetched, url: str, cached: dict[str, Any] | None) -> dict[str, Any]:
        if fetched.status == 304 and cached:
            self.stats.revalidated += 1
            cached["fetched_at"] = time.time()
            self.cache.put(url, cached)
            return self._row(cached)
        if fetched.status >= 500:
            raise _Retryable(f"http_{fetched.status}")
        if fetched.status != 200:
            raise _Failed(f"http_{fetched.status}")
        fmt = page_format(fetched.headers.get("Content-Type", ""), fetched.url)
        assert fmt is not None  # checked by _accept_page before the body was read
        self.stats.bytes += len(fetched.body)
        text = fetched.body.decode(fetched.charset or "utf-8", errors="replace")
        entry = {
            "url": fetched.url, "requested_url": url, "format": fmt, "content": text,
            "etag": fetched.headers.get("ETag"), "last_modified": fetched.headers.get("Last-Modified"),
            "fetched_at": time.time(),
        }
        self.cache.put(url, entry)
        self.stats.fetched += 1
        return self._row(entry)

    def _row(self, entry: dict[str, Any]) -> dict[str, Any]:
        return {"source": self.source.name, "tool": self.source.tool, "url": entry["url"],
                "format": entry["format"], "content": entry["content"], "license": self.source.license}


def crawl_site(source: SiteSource, cfg: CrawlConfig) -> tuple[pa.Table, dict[str, Any]]:
    """Crawl one site source synchronously: (pages as ``PAGES_SCHEMA``, stats dict)."""
    rows, stats = asyncio.run(SiteCrawler(source, cfg).crawl())
    return pa.Table.from_pylist(rows, schema=PAGES_SCHEMA), stats.as_dict()


def read_local(source: LocalSource) -> tuple[pa.Table, dict[str, Any]]:
    """Read a local directory (or URI) of docs matched by ``globs``: (pages, stats).

    Files whose suffix has no known format and files that are not UTF-8 are recorded as failures.
    """
    stats = CrawlStats(source=source.name)
    filesystem, root = fs.resolve(source.path)
    rows = []
    paths = fs.listdir(source.path, recursive=True)
    if not paths and not fs.exists(source.path):
        stats.fail(source.path, "missing_directory")
    for p in paths:
        rel = p[len(root):].lstrip("/")
        if not any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(rel, g.removeprefix("**/")) for g in source.globs):
            continue
        info = filesystem.get_file_info(p)
        if info.type.name != "File":
            continue
        url = f"file://{p}" if not fs.is_uri(source.path) else fs.join(source.path, rel)
        fmt = FORMAT_BY_SUFFIX.get(Path(rel).suffix.lower())
        if fmt is None:
            stats.fail(url, f"content_type:{Path(rel).suffix or 'none'}")
            continue
        with filesystem.open_input_stream(p) as f:
            data = f.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            stats.fail(url, "not_utf8")
            continue
        stats.fetched += 1
        stats.bytes += len(data)
        rows.append({"source": source.name, "tool": source.tool, "url": url, "format": fmt,
                     "content": text, "license": source.license})
    return pa.Table.from_pylist(rows, schema=PAGES_SCHEMA), stats.as_dict()


def fetch_source(source: SiteSource | LocalSource, cfg: CrawlConfig) -> tuple[pa.Table, dict[str, Any]]:
    """Pages and stats of any source; the unit of work of one Ray task in ``jobs.scrape_docs``."""
    t0 = time.perf_counter()
    if isinstance(source, LocalSource):
        table, stats = read_local(source)
    else:
        table, stats = crawl_site(source, cfg)
    stats["kind"] = source.kind
    stats["pages"] = table.num_rows
    stats["wall_s"] = round(time.perf_counter() - t0, 3)
    return table, stats
