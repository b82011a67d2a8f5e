"""Run one EDA tool on untrusted input, contained.

Every call gets a fresh temporary directory (removed afterwards), a scrubbed environment,
resource limits set in the child before ``exec`` (``RLIMIT_AS`` memory, ``RLIMIT_CPU``,
``RLIMIT_FSIZE`` for any file it writes, ``RLIMIT_NPROC`` where we drop privileges), a
wall-clock limit, a cap on captured output, and its own session: on timeout or output
overflow the whole PROCESS GROUP is killed with ``os.killpg`` — never anything by name.

Network: when the kernel lets us, the child enters a fresh network namespace
(``unshare(CLONE_NEWNET)``; as non-root with ``CLONE_NEWUSER`` too), which has no interface
but a downed loopback. Where neither works (containers without the capability) the run
falls back to a scrubbed environment (no proxies, ``HOME`` in the sandbox) and
``network_isolation()`` reports ``"none"`` so the job report says so. Running as root, the
child also drops to ``nobody`` after entering the namespace, so it cannot write outside
its directory even if a static check missed a path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
NOBODY = 65534
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Limits:
    """Per-run limits. ``cpu_s`` defaults to the wall-clock limit (plus one second)."""

    timeout_s: float = 20.0
    memory_mb: int = 2048
    cpu_s: int | None = None
    max_output_bytes: int = 256 * 1024
    max_file_bytes: int = 32 * 1024 * 1024
    network: bool = False


@dataclass
class Result:
    argv: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    output_truncated: bool
    wall_s: float
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @property
    def output(self) -> str:
        return self.stdout + ("\n" if self.stdout and self.stderr else "") + self.stderr


class SandboxError(RuntimeError):
    """The sandbox itself could not run (bad file name, tool missing)."""


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name or "libc.so.6", use_errno=True)
    except OSError:
        return None


def _unshare_flags_that_work() -> int | None:
    """Probe (once) which namespace flags a child may use; ``None`` when none work."""
    libc = _libc()
    if libc is None or not hasattr(libc, "unshare"):
        return None
    candidates = [CLONE_NEWNET] if os.geteuid() == 0 else []
    candidates.append(CLONE_NEWUSER | CLONE_NEWNET)
    for flags in candidates:
        try:
            subprocess.run(["true"], preexec_fn=_make_preexec(Limits(timeout_s=5), flags, drop_to=None),
                           env={"PATH": SAFE_PATH}, check=True, timeout=10, capture_output=True)
            return flags
        except (subprocess.SubprocessError, OSError):
            continue
    return None


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[int | None, str]:
    flags = _unshare_flags_that_work()
    if flags is None:
        return None, "none"
    return flags, "netns" if flags == CLONE_NEWNET else "userns+netns"


def network_isolation() -> str:
    """``netns``, ``userns+netns`` or ``none`` (environment scrub only)."""
    return _probe()[1]


def _make_preexec(limits: Limits, unshare_flags: int | None, drop_to: int | None) -> Callable[[], None]:
    """The function run in the child between fork and exec: limits, namespace, privileges.

    Everything it needs is resolved here, in the parent, so the child only makes syscalls.
    """
    mem = limits.memory_mb * 1024 * 1024
    cpu = int(limits.cpu_s if limits.cpu_s is not None else limits.timeout_s + 1)
    fsize = limits.max_file_bytes
    libc = _libc() if unshare_flags else None
    unshare = libc.unshare if libc is not None else None
    setrlimit = resource.setrlimit

    def preexec() -> None:
        setrlimit(resource.RLIMIT_AS, (mem, mem))
        setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        setrlimit(resource.RLIMIT_CORE, (0, 0))
        if unshare is not None and unshare(unshare_flags) != 0:
            raise OSError(ctypes.get_errno(), "unshare failed")
        if drop_to is not None:
            os.setgroups([])
            os.setgid(drop_to)
            os.setuid(drop_to)

    return preexec


def _safe_name(name: str) -> str:
    norm = os.path.normpath(name)
    if os.path.isabs(name) or norm.startswith("..") or norm in {"", "."}:
        raise SandboxError(f"sandbox file name {name!r} must be relative and stay inside the sandbox")
    return norm


def _reader(stream, cap: int, sink: list[bytes], overflow: threading.Event) -> None:
    """Keep at most ``cap`` bytes; signal overflow (the caller kills the group) and drain."""
    size = 0
    for chunk in iter(lambda: stream.read(65536), b""):
        if size < cap:
            sink.append(chunk[: cap - size])
        size += len(chunk)
        if size > cap:
            overflow.set()
    stream.close()


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(
    argv: Sequence[str],
    files: Mapping[str, str | bytes] | None = None,
    *,
    limits: Limits = Limits(),
    collect: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Result:
    """Run ``argv`` in a fresh temporary directory holding ``files``; return what it printed.

    ``collect`` names files (relative) to read back after the run, when they exist and are
    at most ``limits.max_output_bytes``. The directory is always removed.
    """
    if not argv or shutil.which(argv[0], path=SAFE_PATH) is None:
        raise SandboxError(f"tool {argv[0] if argv else '<empty>'!r} is not installed (looked in {SAFE_PATH})")
    workdir = tempfile.mkdtemp(prefix="cf-sandbox-")
    try:
        for name, content in (files or {}).items():
            path = os.path.join(workdir, _safe_name(name))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
        flags, _ = _probe() if not limits.network else (None, "host")
        drop_to = NOBODY if os.geteuid() == 0 else None
        if drop_to is not None:
            for root, dirs, names in os.walk(workdir):
                for n in [*dirs, *names]:
                    os.chown(os.path.join(root, n), drop_to, drop_to)
            os.chown(workdir, drop_to, drop_to)
        child_env = {"PATH": SAFE_PATH, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        child_env.update(env or {})
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), cwd=workdir, env=child_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
            preexec_fn=_make_preexec(limits, flags, drop_to),
        )
        pgid = proc.pid  # start_new_session: the child leads its own session and group
        out: list[bytes] = []
        err: list[bytes] = []
        overflow = threading.Event()
        threads = [threading.Thread(target=_reader, args=(s, limits.max_output_bytes, sink, overflow), daemon=True)
                   for s, sink in ((proc.stdout, out), (proc.stderr, err))]
        for t in threads:
            t.start()
        timed_out = False
        deadline = t0 + limits.timeout_s
        while proc.poll() is None:
            if overflow.is_set():
                _killpg(pgid)
                break
            if time.perf_counter() > deadline:
                timed_out = True
                _killpg(pgid)
                break
            time.sleep(0.01)
        proc.wait()
        for t in threads:
            t.join(timeout=1.0)
        if any(t.is_alive() for t in threads):
            # A grandchild still holds the pipes, so the group is still alive: end it.
            _killpg(pgid)
            for t in threads:
                t.join(timeout=2.0)
        wall = time.perf_counter() - t0
        collected: dict[str, bytes] = {}
        for name in collect:
            path = os.path.join(workdir, _safe_name(name))
            if os.path.isfile(path) and os.path.getsize(path) <= limits.max_output_bytes:
                with open(path, "rb") as f:
                    collected[name] = f.read()
        return Result(
            argv=list(argv), returncode=None if timed_out else proc.returncode,
            stdout=b"".join(out).decode("utf-8", "replace"), stderr=b"".join(err).decode("utf-8", "replace"),
            timed_out=timed_out, output_truncated=overflow.is_set(), wall_s=round(wall, 3), files=collected,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def tool_versions() -> dict[str, str]:
    """First line of each validation tool's version output (``missing`` when absent)."""
    probes = {"iverilog": ["iverilog", "-V"], "verilator": ["verilator", "--version"], "yosys": ["yosys", "-V"],
              "tclsh": ["tclsh"]}
    versions = {}
    for name, argv in probes.items():
        if shutil.which(argv[0], path=SAFE_PATH) is None:
            versions[name] = "missing"
            continue
        try:
            if name == "tclsh":
                p = subprocess.run(argv, input="puts [info patchlevel]\n", capture_output=True, text=True, timeout=10)
            else:
                p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            versions[name] = (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr).strip() else "?"
        except (subprocess.SubprocessError, OSError) as exc:
            versions[name] = f"error: {exc}"
    return versions
