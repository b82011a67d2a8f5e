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

Hostile input: a link that is not a valid URL (bad port, broken IPv6 literal) or longer than
``MAX_URL_CHARS`` is dropped like a ``mailto:``; URLs are normalised to what aiohttp sends
(``/docs/%2e%2e/x`` is ``/x``) before the prefix and robots.txt checks; a malformed response is
``bad_response``, a body with NUL bytes ``binary_content``; failure reasons are cut to
``MAX_REASON`` characters. Local folders are walked without leaving them (symlinks outside:
``symlink_outside``), FIFOs and devices are never opened for a blocking read, and files are
capped at ``max_bytes`` like responses.
"""

from __future__ import annotations

import asyncio
import codecs
import fnmatch
import hashlib
import json
import os
import stat
import time
import urllib.robotparser
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
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
MAX_REASON = 300  # characters of a failure reason
MAX_URL_CHARS = 4096  # longer links are dropped: no server takes them, and each would sit in the report
SNIFF_CHARS = 8192  # a NUL in the first SNIFF_CHARS characters of a "text" body: binary (as git decides)

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
    # wall-clock budget of one site: a site that answers every page slowly (just inside timeout_s, with
    # retries) would otherwise take hours; pages in flight at the end fail as site_budget, the rest are skipped
    site_budget_s: float | None = Field(3600.0, gt=0)


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
        # bounded: an exception message may quote whatever a server sent
        short = reason if len(reason) <= MAX_REASON else reason[:MAX_REASON - 3] + "..."
        self.failures.append({"url": url, "reason": short})

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
    """Absolute http(s) URL without fragment, lower-case scheme/host, default port dropped; else None.

    The result is the URL exactly as aiohttp requests it (through ``yarl``): dot segments, also
    percent-encoded ones (``/docs/%2e%2e/x`` is sent as ``/x``), are resolved here, so the prefix
    and robots.txt checks see the path that is fetched. A link that is not a valid URL (a port
    out of range, a broken IPv6 literal, an invalid host) is None, like any other unusable link.
    """
    import yarl

    try:
        if base is not None:
            url = urljoin(base, url.strip())
        url, _ = urldefrag(url)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            return None
        host = parts.hostname.lower()
        host = f"[{host}]" if ":" in host else host  # IPv6 literal
        port = parts.port
        netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
        return str(yarl.URL(urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))))
    except ValueError:  # includes UnicodeError (IDNA)
        return None


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
        u = normalize_url(a["href"], base) if len(a["href"]) <= MAX_URL_CHARS else None
        if u and len(u) <= MAX_URL_CHARS:
            out.append(u)
    return list(dict.fromkeys(out))


def _codec(name: str | None) -> str | None:
    try:
        return codecs.lookup(name).name if name else None
    except LookupError:
        return None


def decode_body(body: bytes, header_charset: str | None, fmt: str) -> str:
    """Text of a response: a BOM first, then the Content-Type charset, then (HTML) ``<meta charset>``
    in the first 2 KiB, then UTF-8; an unknown charset name is skipped; bad bytes become U+FFFD."""
    from bs4.dammit import EncodingDetector

    bom = next((c for b, c in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                               (codecs.BOM_UTF16_BE, "utf-16")) if body.startswith(b)), None)
    charset = bom or _codec(header_charset)
    if charset is None and fmt == "html":
        charset = _codec(EncodingDetector.find_declared_encoding(body[:2048], is_html=True))
        if charset and charset.startswith("utf-16"):  # a meta tag read as ASCII cannot be UTF-16 (HTML spec)
            charset = "utf-8"
    return body.decode(charset or "utf-8", errors="replace")


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
        self.deadline = float("inf")

    async def _budgeted(self, session: Any, url: str) -> dict[str, Any] | None:
        """``_page`` within what is left of ``cfg.site_budget_s``."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.stats.skipped["site_budget"] += 1
            return None
        try:
            return await asyncio.wait_for(self._page(session, url), left)
        except asyncio.TimeoutError:
            self.stats.fail(url, f"site_budget:{self.cfg.site_budget_s:g}s")
            return None

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
        if self.cfg.site_budget_s is not None:
            self.deadline = time.monotonic() + self.cfg.site_budget_s
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
                results = await asyncio.gather(*(self._budgeted(session, u) for u in batch))
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
                except aiohttp.ClientResponseError as exc:  # not HTTP: bad status line, oversized headers, ...
                    raise _Failed(f"bad_response:{' '.join(str(exc.message).split())}") from exc
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
        text = decode_body(fetched.body, fetched.charset, fmt)
        if "\x00" in text[:SNIFF_CHARS]:
            raise _Failed("binary_content")  # a PDF or an image served as text/html
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


def read_local(source: LocalSource, max_bytes: int | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """Read a local directory (or URI) of docs matched by ``globs``: (pages, stats).

    Files whose suffix has no known format, that are not UTF-8, hold NUL bytes
    (``binary_content``) or exceed ``max_bytes`` are recorded as failures. A local directory is
    walked by ``_local_files``: symlinks never lead out of it, and FIFOs, devices and unreadable
    files are recorded, not read.
    """
    stats = CrawlStats(source=source.name)
    rows: list[dict[str, Any]] = []
    if not fs.is_uri(source.path):
        root = fs.resolve(source.path)[1]
        if not os.path.isdir(root):
            stats.fail(source.path, "missing_directory")
            return PAGES_SCHEMA.empty_table(), stats.as_dict()
        for path, listed, rel in _local_files(root, source.globs, stats):
            url = f"file://{_printable(listed)}"
            data = _read_regular(path, url, max_bytes, stats)
            if data is not None:
                _add_page(rows, stats, source, url, rel, data)
        rows.sort(key=lambda r: r["url"])
        return pa.Table.from_pylist(rows, schema=PAGES_SCHEMA), stats.as_dict()
    filesystem, _ = fs.resolve(source.path)
    paths = fs.listdir(source.path, recursive=True)
    if not paths and not fs.exists(source.path):
        stats.fail(source.path, "missing_directory")
    for listed in paths:
        rel = fs.relative(listed, source.path)
        p = fs.resolve(listed)[1]
        if not _matches(rel, source.globs):
            continue
        info = filesystem.get_file_info(p)
        if info.type.name != "File":
            continue
        url = fs.join(source.path, rel)
        if max_bytes is not None and info.size is not None and info.size > max_bytes:
            stats.fail(url, f"too_large:{info.size}")
            continue
        with filesystem.open_input_stream(p) as f:
            data = f.read()
        _add_page(rows, stats, source, url, rel, data)
    return pa.Table.from_pylist(rows, schema=PAGES_SCHEMA), stats.as_dict()


def _matches(rel: str, globs: list[str]) -> bool:
    return any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(rel, g.removeprefix("**/")) for g in globs)


def _printable(path: str) -> str:
    """A file name as valid text: bytes that are not UTF-8 (surrogate-escaped by ``os``) become U+FFFD."""
    return os.fsencode(path).decode("utf-8", errors="replace")


def _add_page(rows: list[dict[str, Any]], stats: CrawlStats, source: LocalSource, url: str, rel: str,
              data: bytes) -> None:
    fmt = FORMAT_BY_SUFFIX.get(Path(rel).suffix.lower())
    if fmt is None:
        stats.fail(url, f"content_type:{_printable(Path(rel).suffix) or 'none'}")
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        stats.fail(url, "not_utf8")
        return
    if "\x00" in text[:SNIFF_CHARS]:
        stats.fail(url, "binary_content")
        return
    stats.fetched += 1
    stats.bytes += len(data)
    rows.append({"source": source.name, "tool": source.tool, "url": url, "format": fmt,
                 "content": text, "license": source.license})


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _local_files(root: str, globs: list[str], stats: CrawlStats) -> Iterator[tuple[str, str, str]]:
    """(path to read, path listed, path relative to ``root``) of the files below ``root`` matched by ``globs``.

    Iterative (any depth). Symlinks: one whose target resolves outside ``root`` is recorded as
    ``symlink_outside`` and never read; a dangling or looping one as ``broken_symlink``; one to a
    directory inside is skipped (``skipped.symlink_dir``: the target is listed where it lies); one
    to a file inside yields that file. A FIFO, socket or device is ``not_a_regular_file``.
    """
    real_root = os.path.realpath(root)
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError as exc:
            stats.fail(f"file://{_printable(directory)}", f"unreadable:{exc.strerror or type(exc).__name__}")
            continue
        for entry in entries:
            path = entry.path
            rel = os.path.relpath(path, root)
            url = f"file://{_printable(path)}"
            try:
                if entry.is_symlink():
                    target = os.path.realpath(path)
                    if not os.path.exists(target):
                        if _matches(rel, globs):
                            stats.fail(url, "broken_symlink")
                    elif not _inside(target, real_root):
                        if os.path.isdir(target) or _matches(rel, globs):
                            stats.fail(url, "symlink_outside")
                    elif os.path.isdir(target):
                        stats.skipped["symlink_dir"] += 1
                    elif _matches(rel, globs):
                        yield target, path, rel
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(path)
                elif _matches(rel, globs):
                    if entry.is_file(follow_symlinks=False):
                        yield path, path, rel
                    else:
                        stats.fail(url, "not_a_regular_file")
            except OSError as exc:
                stats.fail(url, f"unreadable:{exc.strerror or type(exc).__name__}")


def _read_regular(path: str, url: str, max_bytes: int | None, stats: CrawlStats) -> bytes | None:
    """The bytes of a regular file (at most ``max_bytes``), or None after recording why not.

    Opened without following a symlink and without blocking (a FIFO swapped in after the listing
    is refused by ``fstat``, not waited on); the size is checked before reading.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        stats.fail(url, f"unreadable:{exc.strerror or type(exc).__name__}")
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            stats.fail(url, "not_a_regular_file")
            return None
        if max_bytes is not None and st.st_size > max_bytes:
            stats.fail(url, f"too_large:{st.st_size}")
            return None
        limit = st.st_size + 1 if max_bytes is None else max_bytes + 1
        chunks, n = [], 0
        while n < limit:
            chunk = os.read(fd, min(_CHUNK * 16, limit - n))
            if not chunk:
                break
            chunks.append(chunk)
            n += len(chunk)
        if max_bytes is not None and n > max_bytes:  # grew while being read
            stats.fail(url, f"too_large:>{max_bytes}")
            return None
        return b"".join(chunks)
    except OSError as exc:
        stats.fail(url, f"unreadable:{exc.strerror or type(exc).__name__}")
        return None
    finally:
        os.close(fd)


def fetch_source(source: SiteSource | LocalSource, cfg: CrawlConfig) -> tuple[pa.Table, dict[str, Any]]:
    """Pages and stats of any source; the unit of work of one Ray task in ``jobs.scrape_docs``."""
    t0 = time.perf_counter()
    if isinstance(source, LocalSource):
        table, stats = read_local(source, max_bytes=cfg.max_bytes)
    else:
        table, stats = crawl_site(source, cfg)
    stats["kind"] = source.kind
    stats["pages"] = table.num_rows
    stats["wall_s"] = round(time.perf_counter() - t0, 3)
    return table, stats
