"""Clone (or snapshot) one manifest repository into a local cache, then read its files.

``CloneAndRead`` is the Ray Data stage: one manifest row per batch (``batch_size=1``) →
clone or cache hit → read files in the same task → FILES_SCHEMA rows. Cloning and reading
happen in one task because a checkout lives on one node's local disk, invisible to others.

The per-repository status (ok/failed + reason, commit, file counts) leaves the task through a
side channel: an atomic JSON file ``status_dir/<sha256(name)[:16]>.json`` that the driver
reads at the end. On a cluster ``status_dir`` must be shared storage (s3://, NFS): it sits
under the job's output directory, which has to be shared anyway.

Network git commands run through ``git()`` (not GitPython's ``execute``) so that a timeout kills
the whole process group, helpers such as git-remote-https included; GitPython reads the result.
Git runs with credential prompts disabled, in its own process group that is killed on
timeout (``os.killpg`` on that group only). Only transient failures are retried.

Manifest URLs and refs are untrusted input (issue 8): ``resolve_url`` and ``check_ref`` run
before any git command and reject option-looking values (leading ``-``), control characters,
remote-helper syntax (``ext::``, ``fd::``), schemes outside ``ALLOWED_SCHEMES``, and local
paths or ``file://`` URLs whose real location is outside ``CloneSettings.local_roots``. A
rejected repository is a failed status (reason ``unsafe url`` / ``unsafe ref``) naming the
repository, never a job failure. Every URL and ref reaches git after ``--`` (or as
``--branch=<ref>``), and every git command carries a protocol allow-list (``-c
protocol.allow=never`` + ``protocol.<p>.allow=always`` and ``GIT_ALLOW_PROTOCOL``): the
repository's own protocol family, with ``file`` only for an already confined local URL;
submodules are updated in a separate command that never allows ``file``.

Credentials in a manifest URL (``https://user:token@host/...``) reach git only: the status, the
report and the file rows carry ``redact_url(url)``, and error messages have the URL replaced by it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

import pyarrow as pa
from git import Repo as GitRepo

from chipforge import fs
from chipforge.config import redact_url
from corpus.files import DEFAULT_EXTENSIONS, DEFAULT_MAX_FILE_BYTES, read_repo
from corpus.licenses import detect_repo
from corpus.manifest import Repository
from corpus.schema import FILES_SCHEMA, from_rows

GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "/bin/echo",
    "SSH_ASKPASS": "/bin/echo",
    "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=20",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GCM_INTERACTIVE": "never",
    "GIT_LFS_SKIP_SMUDGE": "1",
}
# A filter driver installed in the user's global git config (``git lfs install``) runs for every
# file a repository's .gitattributes names: git-lfs would download each object, from a server the
# repository itself may choose (.lfsconfig), past max_repo_bytes and the protocol allow-list.
# Pointer files are kept instead (``corpus.files`` skips them as ``lfs_pointer``).
NO_LFS_FILTER = ["-c", "filter.lfs.smudge=", "-c", "filter.lfs.process=", "-c", "filter.lfs.required=false"]
_HEX40 = re.compile(r"^[0-9a-f]{40}$")

# URL schemes a manifest may use; git is also told to allow only these protocols.
ALLOWED_SCHEMES: tuple[str, ...] = ("https", "http", "ssh", "git", "file")
NETWORK_PROTOCOLS: tuple[str, ...] = ("https", "http", "ssh", "git")  # submodules: never file
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SCP = re.compile(r"^([^@/:\s]+)@([^@/:\s]+):(.*)$")
_HELPER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.-]*::")
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")

_CREDENTIALS = ("could not read username", "could not read password", "terminal prompts disabled",
                "authentication failed", "permission denied (publickey", "host key verification failed",
                "invalid username or password")
_MISSING_REF = ("remote branch", "couldn't find remote ref", "not our ref", "did not match any",
                "unknown revision", "reference is not a tree", "invalid refspec", "pathspec")
_NOT_FOUND = ("does not appear to be a git repository", "repository not found", "not found",
              "does not exist", "no such file or directory", "unable to find remote helper")
_TRANSIENT = ("could not resolve host", "connection reset", "connection timed out", "timed out",
              "the remote end hung up unexpectedly", "early eof", "rpc failed", "connection refused",
              "temporary failure", "returned error: 5", "http 5", "internal server error", "bad gateway",
              "service unavailable", "gateway time", "failed to connect", "couldn't connect", "gnutls_handshake", "ssl_read", "unexpected disconnect")


class CloneError(Exception):
    """A repository that cannot be cloned; ``reason`` is the short reason for the report."""

    def __init__(self, reason: str, message: str, transient: bool = False, detail: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.transient = transient
        self.detail = detail or message


@dataclass
class CloneSettings:
    cache_dir: str
    timeout_s: float = 600.0
    retries: int = 3
    backoff_s: float = 2.0
    max_repo_bytes: int = 2_000_000_000
    shallow: bool = True
    # Local paths and file:// URLs must resolve (symlinks followed) under one of these
    # directories; relative entries resolve against the working directory at check time.
    # None: the working directory only.
    local_roots: tuple[str, ...] | None = None
    # Sparse checkout: only files ending in these extensions (any case) plus the root licence
    # files are checked out, and with ``--filter=blob:none`` only their blobs are fetched.
    # None or empty: the whole tree. Never used with submodules (their gitlinks must be checked out).
    sparse_extensions: tuple[str, ...] | None = None

    def roots(self) -> list[str]:
        """The allowed local roots as real absolute paths."""
        roots = self.local_roots if self.local_roots is not None else (os.getcwd(),)
        return [os.path.realpath(os.path.abspath(os.path.expanduser(r))) for r in roots]


def unsafe(reason: str, message: str) -> CloneError:
    """A manifest value refused before git runs (never retried)."""
    return CloneError(reason, message)


def check_ref(ref: str | None) -> None:
    """Refuse a ref git could read as an option or that no branch/tag name can be.

    Rules of ``git check-ref-format --allow-onelevel`` plus: no leading ``-``, at most 255
    characters. A 40-hex commit passes. Raises CloneError("unsafe ref").
    """
    if ref is None:
        return
    problem = None
    if not ref or len(ref) > 255:
        problem = "empty or longer than 255 characters"
    elif ref.startswith("-"):
        problem = "starts with '-'"
    elif _BAD_REF_CHARS.search(ref):
        problem = "contains a space, a control character or one of ~^:?*[\\"
    elif ".." in ref or "@{" in ref or ref == "@" or "//" in ref:
        problem = "contains '..', '@{' or '//', or is '@'"
    elif ref.startswith("/") or ref.endswith(("/", ".")):
        problem = "starts with '/' or ends with '/' or '.'"
    elif any(part.startswith(".") or part.endswith(".lock") for part in ref.split("/")):
        problem = "a component starts with '.' or ends with '.lock'"
    if problem:
        raise unsafe("unsafe ref", f"ref {ref!r} refused: {problem}")


def _confined(path: str, roots: Sequence[str]) -> bool:
    return any(os.path.commonpath([root, path]) == root for root in roots)


def resolve_url(url: str, roots: Sequence[str]) -> tuple[str, bool]:
    """Validate a manifest URL; return (what git is given, is a plain local directory snapshot).

    Accepted: ``https``/``http``/``ssh``/``git`` URLs with a host not starting with ``-``,
    ``user@host:path``, and local paths or ``file://`` URLs whose real path lies under one of
    ``roots`` (real absolute paths). A local git repository becomes ``file://<real path>`` (so
    ``--depth``/``--filter`` apply); a plain directory is a snapshot. Raises
    CloneError("unsafe url") for anything else, CloneError("bad url") for a missing directory.
    """
    if not url or any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise unsafe("unsafe url", f"url {url!r} refused: empty or contains a control character")
    if url.startswith("-"):
        raise unsafe("unsafe url", f"url {url!r} refused: starts with '-' (git would read it as an option)")
    if _HELPER.match(url) and not _SCHEME.match(url):
        raise unsafe("unsafe url", f"url {url!r} refused: remote-helper syntax ('<transport>::') is not allowed")
    m = _SCHEME.match(url)
    if m:
        scheme = m.group(1).lower()
        if scheme not in ALLOWED_SCHEMES:
            raise unsafe("unsafe url", f"url {url!r} refused: scheme {scheme!r} not in {list(ALLOWED_SCHEMES)}")
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
        except ValueError as exc:
            raise unsafe("unsafe url", f"url {url!r} refused: {exc}") from None
        if scheme != "file":
            if not host or host.startswith("-") or (parts.username or "").startswith("-"):
                raise unsafe("unsafe url", f"url {url!r} refused: missing host or host/user starting with '-'")
            return url, False
        if parts.netloc not in ("", "localhost") or "%" in parts.path or parts.query or parts.fragment:
            raise unsafe("unsafe url", f"url {url!r} refused: file:// URLs must be file:///absolute/path")
        path, is_file_url = parts.path, True
    elif scp := _SCP.match(url):
        if scp.group(1).startswith("-") or scp.group(2).startswith("-"):
            raise unsafe("unsafe url", f"url {url!r} refused: host or user starts with '-'")
        return url, False
    else:  # a local path (corpus.manifest.is_local_url): relative to the working directory
        path, is_file_url = url, False
    real = os.path.realpath(os.path.abspath(path))
    if not _confined(real, roots):
        raise unsafe("unsafe url", f"local path {url!r} ({real}) is outside the allowed local roots {list(roots)}")
    if not os.path.isdir(real):
        raise CloneError("bad url", f"local path {url} does not exist")
    if is_file_url or os.path.exists(os.path.join(real, ".git")) or os.path.isfile(os.path.join(real, "HEAD")):
        return "file://" + real, False
    return real, True


def protocols_for(url: str) -> tuple[str, ...]:
    """Protocols git may use for the repository itself: ``file`` only for a (confined) local URL."""
    return ("file",) if url.startswith("file://") else NETWORK_PROTOCOLS


def classify(stderr: str) -> CloneError:
    low = stderr.lower()
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    msg = next((ln for ln in lines if ln.startswith(("fatal:", "error:"))), lines[-1] if lines else "git failed")
    for reason, needles, transient in (("needs credentials", _CREDENTIALS, False), ("missing ref", _MISSING_REF, False),
                                       ("bad url", _NOT_FOUND, False), ("network", _TRANSIENT, True)):
        if any(n in low for n in needles):
            return CloneError(reason, msg, transient, stderr)
    return CloneError("git error", msg, False, stderr)


def git(args: list[str], *, cwd: str | None = None, timeout_s: float,
        protocols: Sequence[str] = NETWORK_PROTOCOLS) -> str:
    """Run git in its own session; on timeout kill that process group. Returns stdout.

    Only ``protocols`` are allowed for any transport the command (or a command it starts, such
    as a submodule clone) opens: ``-c protocol.allow=never`` plus one ``protocol.<p>.allow=always``
    each, and ``GIT_ALLOW_PROTOCOL`` (which git also passes on to child processes). The git-lfs
    filter never runs (``NO_LFS_FILTER``).
    """
    env = {**os.environ, **GIT_ENV, "GIT_ALLOW_PROTOCOL": ":".join(protocols)}
    allow = ["-c", "protocol.allow=never", *NO_LFS_FILTER]
    for p in protocols:
        allow += ["-c", f"protocol.{p}.allow=always"]
    proc = subprocess.Popen(["git", *allow, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise CloneError("timeout", f"git {args[0]} exceeded {timeout_s:.0f}s", transient=True) from None
    if proc.returncode != 0:
        raise classify(err or out)
    return out


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def snapshot_id(root: str) -> str:
    """``dir:`` + sha256 over sorted relative paths and contents (links hashed by target).

    Only regular files are opened, and read in chunks: a FIFO, socket or device in a local
    directory (which would block ``open`` forever or never end) is hashed by its kind only.
    Names are hashed as the bytes the file system holds (non-UTF-8 names included).
    """
    h = hashlib.sha256()
    entries: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        entries += [os.path.relpath(os.path.join(dirpath, n), root) for n in filenames]
    for rel in sorted(entries):
        path = os.path.join(root, rel)
        h.update(os.fsencode(rel.replace(os.sep, "/")) + b"\0")
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            h.update(b"link:" + os.fsencode(os.readlink(path)))
        elif not stat.S_ISREG(mode):
            h.update(b"special:%o" % stat.S_IFMT(mode))
        else:
            with open(path, "rb") as fh:
                h.update(hashlib.file_digest(fh, "sha256").digest())
    return "dir:" + h.hexdigest()[:16]


def tree_bytes(root: str) -> int:
    total = 0
    for dirpath, _dirs, filenames in os.walk(root, followlinks=False):
        for n in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
    return total


def remote_commit(url: str, ref: str | None, timeout_s: float) -> str:
    """Commit the remote ``ref`` (or HEAD) points at; CloneError("missing ref") if absent."""
    if ref and _HEX40.match(ref):
        return ref
    pattern = ref or "HEAD"
    out = git(["ls-remote", "--", url, pattern], timeout_s=timeout_s, protocols=protocols_for(url))
    found: dict[str, str] = {}
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        found[name] = sha
    if ref:
        for name in (f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", f"refs/heads/{ref}", ref):
            if name in found:
                return found[name]
        for name, sha in found.items():  # e.g. ref given as "heads/x"
            if name.endswith("/" + ref):
                return sha
        raise CloneError("missing ref", f"ref {ref!r} not found at {url}")
    if "HEAD" not in found:
        raise CloneError("bad url", f"{url} has no HEAD (empty repository?)")
    return found["HEAD"]


def _ci(text: str) -> str:
    """A gitignore-style pattern matching ``text`` in any case (``.sv`` → ``.[sS][vV]``)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else ("[.]" if c == "." else c) for c in text)


def sparse_patterns(extensions: Sequence[str]) -> list[str]:
    """Non-cone sparse-checkout patterns: files with these extensions anywhere, licence files at the root.

    Extensions come from the job's config (trusted), but anything outside ``[A-Za-z0-9._-]`` is
    refused so that no pattern can widen or escape the selection.
    """
    out = []
    for ext in extensions:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", ext):
            raise ValueError(f"extension {ext!r} cannot be a sparse-checkout pattern")
        out.append("*" + _ci(ext))
    return out + ["/" + _ci("licen") + "[sScC]" + _ci("e") + "*", "/" + _ci("copying") + "*"]


def sparse_key(s: CloneSettings, submodules: bool) -> str:
    """Suffix of a cache entry's directory: checkouts of different selections never share an entry."""
    if not s.sparse_extensions or submodules:
        return ""
    return "-s" + hashlib.sha256("\n".join(sorted(s.sparse_extensions)).encode()).hexdigest()[:8]


def _set_sparse(dest: str, patterns: Sequence[str], protocols: Sequence[str]) -> None:
    """Turn on a non-cone sparse checkout of ``patterns`` in the (not yet checked out) repository ``dest``."""
    git(["config", "core.sparseCheckout", "true"], cwd=dest, timeout_s=60, protocols=protocols)
    info = Path(dest, ".git", "info")
    info.mkdir(parents=True, exist_ok=True)
    (info / "sparse-checkout").write_text("\n".join(patterns) + "\n")


def _fetch(url: str, ref: str | None, dest: str, submodules: bool, s: CloneSettings) -> None:
    """Check ``ref`` (or the default branch) out into ``dest``; URL and ref come after ``--``.

    Shallow (``--depth 1``) and blob-less (``--filter=blob:none``, retried without where the
    remote refuses filters); with ``sparse_extensions`` only the selected files are checked
    out, so only their blobs cross the network and reach the disk.
    """
    filters = [["--filter=blob:none"], []] if s.shallow else [[]]
    depth = ["--depth", "1"] if s.shallow else []
    protocols = protocols_for(url)
    patterns = sparse_patterns(s.sparse_extensions) if sparse_key(s, submodules) else None
    last: CloneError | None = None
    for flt in filters:
        shutil.rmtree(dest, ignore_errors=True)
        try:
            if ref and _HEX40.match(ref):
                os.makedirs(dest)
                git(["init", "-q"], cwd=dest, timeout_s=60, protocols=protocols)
                git(["remote", "add", "--", "origin", url], cwd=dest, timeout_s=60, protocols=protocols)
                if patterns:
                    _set_sparse(dest, patterns, protocols)
                try:
                    git(["fetch", "-q", *depth, *flt, "--", "origin", ref], cwd=dest, timeout_s=s.timeout_s,
                        protocols=protocols)
                    git(["checkout", "-q", "--detach", "FETCH_HEAD"], cwd=dest, timeout_s=s.timeout_s,
                        protocols=protocols)
                except CloneError as exc:
                    if exc.transient:
                        raise
                    git(["fetch", "-q", *flt, "--", "origin"], cwd=dest, timeout_s=s.timeout_s, protocols=protocols)
                    git(["checkout", "-q", "--detach", ref], cwd=dest, timeout_s=s.timeout_s, protocols=protocols)
            else:
                args = ["clone", "-q", *depth, *flt, *(["--no-checkout"] if patterns else [])]
                if ref:
                    args.append(f"--branch={ref}")
                git([*args, "--", url, dest], timeout_s=s.timeout_s, protocols=protocols)
                if patterns:
                    _set_sparse(dest, patterns, protocols)
                    git(["checkout", "-q"], cwd=dest, timeout_s=s.timeout_s, protocols=protocols)
            if submodules:
                # A separate command so that file:// (and local paths) are never allowed for the
                # URLs in the repository's .gitmodules, even when the repository itself is local.
                git(["submodule", "update", "--init", "--recursive", *depth], cwd=dest, timeout_s=s.timeout_s,
                    protocols=NETWORK_PROTOCOLS)
            return
        except CloneError as exc:
            last = exc
            if exc.transient or not flt or "filter" not in exc.detail.lower():
                raise
    assert last is not None
    raise last


def clone(repo: Repository, s: CloneSettings) -> tuple[str, str, bool]:
    """Return (checkout dir, commit, cache hit). Raises CloneError.

    The URL and ref are validated first (``resolve_url``, ``check_ref``): an unsafe value raises
    CloneError("unsafe url"/"unsafe ref") naming the repository before any git command runs.
    """
    try:
        url, is_dir = resolve_url(repo.url, s.roots())
        check_ref(repo.ref)
    except CloneError as exc:
        if exc.reason.startswith("unsafe"):
            raise unsafe(exc.reason, f"repository {repo.name!r}: {exc}") from None
        raise
    if is_dir:
        size = tree_bytes(url)
        if size > s.max_repo_bytes:
            raise CloneError("too big", f"{size} bytes > max_repo_bytes {s.max_repo_bytes}")
        return url, snapshot_id(url), False
    base = os.path.join(s.cache_dir, url_key(url))
    commit = _retry(lambda: remote_commit(url, repo.ref, min(s.timeout_s, 120)), s)
    suffix = sparse_key(s, repo.submodules)
    done = os.path.join(base, commit + suffix)
    if os.path.exists(os.path.join(done, ".complete")):
        return done, commit, True
    os.makedirs(base, exist_ok=True)
    tmp = os.path.join(base, f".tmp-{uuid.uuid4().hex[:8]}")
    try:
        _retry(lambda: _fetch(url, repo.ref, tmp, repo.submodules, s), s)
        commit = GitRepo(tmp).head.commit.hexsha
        size = tree_bytes(tmp)
        if size > s.max_repo_bytes:
            raise CloneError("too big", f"{size} bytes > max_repo_bytes {s.max_repo_bytes}")
        done = os.path.join(base, commit + suffix)
        # The marker goes in before the rename, so a checkout in the cache is always complete, and
        # a worker cloning the same URL at the same moment (one URL under two names) finds it.
        Path(tmp, ".complete").write_text(f"{url}\n{repo.ref or 'HEAD'}\n{commit}\n")
        for _ in range(2):
            try:
                os.rename(tmp, done)  # fails while ``done`` exists: never replaces another worker's checkout
                return done, commit, False
            except OSError:
                if os.path.exists(os.path.join(done, ".complete")):
                    return done, commit, True
                _set_aside(done)  # no marker: a leftover of an older run
        raise CloneError("error", f"cache entry {done} could not be written")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _set_aside(path: str) -> None:
    """Remove a directory by renaming it away first: of workers racing on it, one renames it,
    and no worker ever deletes a directory another has just put in its place."""
    aside = f"{path}.old-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, aside)
    except OSError:
        return
    if os.path.exists(os.path.join(aside, ".complete")):  # another worker's checkout landed meanwhile
        with contextlib.suppress(OSError):
            os.rename(aside, path)
            return
    shutil.rmtree(aside, ignore_errors=True)


def _retry(fn: Any, s: CloneSettings) -> Any:
    for attempt in range(s.retries + 1):
        try:
            return fn()
        except CloneError as exc:
            if not exc.transient or attempt == s.retries:
                raise
            time.sleep(s.backoff_s * 2**attempt)


STATUS_SHARDS = "repos"


def status_path(status_dir: str, name: str) -> str:
    """``status_dir/repos/<2 hex>/<16 hex>.json``: 256 shard directories, so a reader can list
    (and hold) one shard's file names at a time, not one name per repository."""
    key = hashlib.sha256(name.encode()).hexdigest()[:16]
    return fs.join(status_dir, STATUS_SHARDS, key[:2], key + ".json")


class CloneAndRead:
    """Ray Data stage: manifest rows (``manifest_index``, ``repository`` JSON) → FILES_SCHEMA rows.

    Never raises for a bad repository: it emits no rows and writes a status with the reason.
    """

    def __init__(
        self,
        *,
        status_dir: str,
        cache_dir: str,
        extensions: list[str] | tuple[str, ...] = DEFAULT_EXTENSIONS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_repo_bytes: int = 2_000_000_000,
        timeout_s: float = 600.0,
        retries: int = 3,
        backoff_s: float = 2.0,
        shallow: bool = True,
        local_roots: Sequence[str] | None = None,
        sparse: bool = True,
    ) -> None:
        """``local_roots``: directories local-path/file:// repositories must lie under (see
        ``corpus.manifest.local_roots_for``); None: the working directory only. ``sparse``: check
        out only files with ``extensions`` (and licence files), see ``CloneSettings.sparse_extensions``."""
        self.status_dir = status_dir
        self.settings = CloneSettings(os.path.abspath(os.path.expanduser(cache_dir)), timeout_s, retries, backoff_s,
                                      max_repo_bytes, shallow,
                                      tuple(local_roots) if local_roots is not None else None,
                                      tuple(extensions) if sparse else None)
        self.extensions = tuple(extensions)
        self.max_file_bytes = max_file_bytes

    def __call__(self, batch: pa.Table | Mapping[str, Any]) -> pa.Table:
        if isinstance(batch, Mapping):
            batch = pa.table({k: list(v) for k, v in batch.items()})
        rows: list[dict[str, Any]] = []
        for item in batch.to_pylist():
            rows += self.one(int(item["manifest_index"]), Repository.model_validate_json(item["repository"]))
        return from_rows(rows, FILES_SCHEMA, stage="clone_and_read")

    def one(self, index: int, repo: Repository) -> list[dict[str, Any]]:
        """Clone (or hit the cache) and read one repository; its status, with the CPU seconds spent
        here and in git (this process and its waited-for children), goes to ``status_dir``."""
        t0, c0 = time.perf_counter(), _cpu_with_children()
        url = redact_url(repo.url)  # never the manifest's credentials in the status or the rows
        status: dict[str, Any] = {"repo": repo.name, "url": url, "ref": repo.ref, "manifest_index": index,
                                  "status": "failed", "reason": None, "error": None, "commit": None,
                                  "license": None, "cached": False, "files_read": 0, "skipped": {},
                                  "encodings": {}, "bytes": 0}
        rows: list[dict[str, Any]] = []
        try:
            root, commit, cached = clone(repo, self.settings)
            license = repo.license or detect_repo(root)
            result = read_repo(root, repo=repo.name, url=url, commit=commit, license=license,
                               manifest_index=index, extensions=self.extensions, include=repo.include,
                               exclude=repo.exclude, max_file_bytes=self.max_file_bytes)
            rows = result.rows
            status.update(status="ok", commit=commit, license=license, cached=cached, files_read=len(rows),
                          skipped=dict(result.skipped), encodings=dict(result.encodings), bytes=result.n_bytes)
        except CloneError as exc:
            status.update(reason=exc.reason, error=str(exc).replace(repo.url, url))
        except Exception as exc:  # noqa: BLE001 - one bad repository never fails the job
            status.update(reason="error", error=f"{type(exc).__name__}: {exc}".replace(repo.url, url))
        status["seconds"] = round(time.perf_counter() - t0, 3)
        status["cpu_seconds"] = round(_cpu_with_children() - c0, 4)
        fs.write_json(status_path(self.status_dir, repo.name), status)
        return rows


def _cpu_with_children() -> float:
    """CPU seconds (user + system) of this process plus its terminated, waited-for children (git)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
