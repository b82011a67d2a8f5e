"""Run one EDA tool on untrusted (model-written) input, contained by bubblewrap.

Every call gets a fresh host directory (removed afterwards) bound read-write at ``/work``
inside a ``bwrap`` sandbox, which is also the tool's working directory. The sandbox has:

* fresh user, PID, network, mount, IPC and UTS namespaces (cgroup where the kernel allows),
  no capabilities, uid/gid 65534 inside, no further user namespaces (``--disable-userns``);
* a read-only view of ``/usr`` and the ``/bin``, ``/sbin``, ``/lib*`` links or directories,
  ``/etc/ld.so.cache`` and ``/etc/alternatives`` only: not the rest of ``/etc``, nor
  ``/home``, ``/root``, ``/run``, ``/var`` or the host's ``/tmp`` (Ray's session sockets and
  logs live there). ``/dev`` is bwrap's minimal, read-only one with a small ``/dev/shm``;
  ``/proc`` is the sandbox's own; ``/tmp`` is a small private tmpfs;
* an empty environment but ``PATH``, ``HOME=/work``, ``TMPDIR=/tmp`` and a locale;
* a root that is read-only once everything is mounted (bwrap's root is a tmpfs, which would
  otherwise take host memory without a limit);
* a seccomp filter (libseccomp, where installed) that fails the kernel keyring's system calls
  (``add_key``, ``keyctl``, ``request_key``: bwrap has no keyring namespace, so without it a
  tool could read or plant keys in the caller's session keyring) and a few others no EDA tool
  needs and which widen the kernel's attack surface (``SECCOMP_DENIED``);
* limits: ``RLIMIT_AS`` (memory per process), ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (any file it
  writes), ``RLIMIT_CORE`` 0, ``RLIMIT_NOFILE`` and ``RLIMIT_NPROC``, all set (hard and soft) by ``prlimit``
  inside the sandbox before the tool is executed (the process count is then per sandbox,
  since each sandbox has its own user namespace), a wall-clock limit and a cap on captured
  output. The parent also watches the run as a whole (no cgroup is needed): the resident
  memory of all its processes together and the bytes and entries under ``/work`` (which is on
  the host's disk), files deleted but held open included, every ``WATCH_S``. On timeout, overflow or a run-wide limit, bwrap's
  process group is killed; the sandbox's
  init dies with it (``--die-with-parent``) and with it, by the kernel, every process in the
  PID namespace, including ones that called ``setsid`` or double-forked. ``run`` returns only
  once that init is gone, so nothing started inside is alive when it returns.

Running as root, bwrap itself is started as ``nobody`` (65534) so the sandbox is an ordinary
user's user namespace (the kernel ignores ``RLIMIT_NPROC`` for uid 0, even inside a user
namespace). The switch is made by ``setpriv`` (real, effective and saved ids, no supplementary
groups) exec'd in front of bwrap, so the parent never runs Python between fork and exec and
``subprocess`` can use ``vfork``: a ``preexec_fn`` forces a full ``fork`` of the calling
process, which costs tens of milliseconds per run in a large one (a Ray worker). Without
``prlimit`` or ``setpriv`` the limits and the switch fall back to a ``preexec_fn``. Only where
running as ``nobody`` fails (unprivileged user namespaces disabled) does a root job run bwrap
as root, without a process-count limit; ``isolation()`` says so.

Files named in ``collect`` are read back by the parent without ever following a link: each
path component is opened with ``O_NOFOLLOW`` relative to the directory's fd, only regular
files are read, and at most ``Limits.max_output_bytes`` of them. Anything else is reported
in ``Result.rejected_files``.

When bwrap cannot isolate (not installed, user namespaces disabled, seccomp), ``run``
refuses with ``SandboxUnavailable`` unless ``require_isolation(allow_unsandboxed=True)`` was
called in this process (or ``CHIPFORGE_SANDBOX_ALLOW_UNSANDBOXED=1`` is set): then tools run
the old way — rlimits, scrubbed environment, own session, ``nobody`` when root — and
``isolation()["mode"]`` is ``"none"``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import functools
import json
import logging
import math
import os
import re
import resource
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

log = logging.getLogger(__name__)

NOBODY = 65534
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
WORKDIR = "/work"
ALLOW_UNSANDBOXED_ENV = "CHIPFORGE_SANDBOX_ALLOW_UNSANDBOXED"
REQUIRED_NAMESPACES = ("user", "pid", "net", "mnt", "ipc", "uts")
PROBED_NAMESPACES = (*REQUIRED_NAMESPACES, "cgroup")
# What the sandbox sees of the host, read-only. Everything else does not exist inside.
RO_DIRS = ("/usr",)
RO_LINK_OR_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
RO_TRY = ("/etc/ld.so.cache", "/etc/alternatives")
# bwrap flags newer than 0.4 that are used when this bwrap knows them.
OPTIONAL_FLAGS = ("--clearenv", "--size", "--disable-userns")
MIB = 1024 * 1024
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # a directory, never through a link
WATCH_S = 0.1  # how often the run-wide memory and disk use are measured
WATCH_MAX_S = 1.0  # ... at least, however long measuring takes (it backs off to a tenth of the time)
WORKDIR_PREFIX = "cf-sandbox-"
STALE_S = 60.0  # a left-over run directory (its process was killed, its flock gone) older than this is removed
# System calls that fail with EPERM inside the sandbox: the kernel keyring (no namespace of its
# own: shared with the caller's session), and kernel interfaces no EDA tool uses that are
# common privilege-escalation paths (Docker's default profile blocks them too).
SECCOMP_DENIED = ("add_key", "keyctl", "request_key", "bpf", "perf_event_open", "userfaultfd",
                  "io_uring_setup", "io_uring_enter", "io_uring_register", "ptrace", "process_vm_readv",
                  "process_vm_writev", "kexec_load", "kexec_file_load", "init_module", "finit_module",
                  "open_by_handle_at", "fanotify_init", "lookup_dcookie", "quotactl")
INIT_WAIT_S = 10.0  # how long the sandbox's init may outlive bwrap before ``run`` stops waiting for it
INSTALL_HINT = (
    "bubblewrap is not installed or user namespaces are disabled: install it with `apt-get install bubblewrap` "
    "(and allow user namespaces: sysctl kernel.unprivileged_userns_clone=1, or run the container with a seccomp "
    "profile that allows them), or set synthesis.allow_unsandboxed=true to run model-written code without "
    "isolation (not recommended)"
)


@dataclass(frozen=True)
class Limits:
    """Per-run limits. ``cpu_s`` defaults to the wall-clock limit (plus one second).

    ``memory_mb`` is per process (``RLIMIT_AS``); ``run_memory_mb`` is the resident memory of
    all the run's processes together (default: twice ``memory_mb``), measured by the parent
    every ``WATCH_S`` (no cgroup is needed). ``disk_mb`` and ``max_files`` bound what the run
    leaves under ``/work`` (the host's disk) in all, where ``max_file_bytes`` bounds each file.
    ``max_processes`` counts threads too and includes bwrap's own init inside the sandbox;
    ``max_open_files`` is per process (``RLIMIT_NOFILE``). ``network=True`` shares the host network (never used for model-written input).
    """

    timeout_s: float = 20.0
    memory_mb: int = 2048
    cpu_s: int | None = None
    max_output_bytes: int = 256 * 1024
    max_file_bytes: int = 32 * 1024 * 1024
    max_processes: int = 64
    tmp_mb: int = 64
    network: bool = False
    run_memory_mb: int | None = None
    disk_mb: int = 256
    max_files: int = 10_000
    max_open_files: int = 1024

    @property
    def run_memory_bytes(self) -> int:
        return (self.run_memory_mb if self.run_memory_mb is not None else 2 * self.memory_mb) * MIB


@dataclass
class Result:
    """What a run printed and left behind.

    ``files`` holds the collected regular files; ``rejected_files`` maps a collected name
    that existed but was not read (a link, a FIFO, a directory, too large) to the reason.
    ``isolation`` is the mode the run had (``bwrap`` or ``none``); ``stage`` the index of the
    stage running when the run ended (``run``'s ``stages``; 0 without them).
    ``limit_exceeded`` names the run-wide limit (memory of all processes, disk under ``/work``)
    the run was killed for, with the figures; empty otherwise. It is also the last line of
    ``stderr``, so tool logs show it.
    """

    argv: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    output_truncated: bool
    wall_s: float
    files: dict[str, bytes] = field(default_factory=dict)
    rejected_files: dict[str, str] = field(default_factory=dict)
    isolation: str = "none"
    stage: int = 0
    limit_exceeded: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @property
    def output(self) -> str:
        return self.stdout + ("\n" if self.stdout and self.stderr else "") + self.stderr


class SandboxError(RuntimeError):
    """The sandbox itself could not run (bad file name, tool missing)."""


class SandboxUnavailable(SandboxError):
    """No isolation works on this machine and running unsandboxed was not allowed."""


@dataclass(frozen=True)
class _Plan:
    """How runs are contained, decided once per process by ``_plan``.

    ``run_as`` is the host uid to switch to before exec (root only; None: stay).
    ``process_limit`` is ``per-sandbox``, ``per-host-user`` or ``none``.
    """

    mode: str
    run_as: int | None
    bwrap: str = ""
    prlimit: str = ""
    setpriv: str = ""
    features: frozenset[str] = frozenset()
    namespaces: tuple[str, ...] = ()
    process_limit: str = "none"
    detail: str = ""
    seccomp: bytes = b""  # the BPF program bwrap loads (``_seccomp_filter``); empty: none
    seccomp_detail: str = ""


_unsandboxed_allowed = False


# ----------------------------------------------------------------------------- probing

@functools.lru_cache(maxsize=1)
def _plan() -> _Plan:
    """Probe (once per process) the strongest containment that works here."""
    root = os.geteuid() == 0
    fallback = _Plan("none", NOBODY if root else None, process_limit="per-host-user" if root else "none")
    bwrap = shutil.which("bwrap", path=SAFE_PATH)
    if bwrap is None:
        return replace(fallback, detail="bwrap not found in " + SAFE_PATH)
    try:
        help_text = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout
        version = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return replace(fallback, detail=f"bwrap does not run: {exc}")
    features = frozenset(f for f in OPTIONAL_FLAGS if f in help_text)
    prlimit = shutil.which("prlimit", path=SAFE_PATH) or ""
    setpriv = shutil.which("setpriv", path=SAFE_PATH) or ""
    script = (f"for n in {' '.join(PROBED_NAMESPACES)}; do echo \"$n $(readlink /proc/self/ns/$n)\"; done; "
              "echo \"uid $(id -u)\"")
    errors = []
    bpf, bpf_detail = _seccomp_filter()
    attempts = [(run_as, filt) for run_as in ([NOBODY, None] if root else [None])
                for filt in ([bpf, b""] if bpf else [b""])]
    for run_as, filt in attempts:
        limit = "per-sandbox" if prlimit and (run_as is not None or not root) else "none"
        # without the filter only after it failed here: the report says why
        sec_detail = bpf_detail if filt or not bpf else f"the run with the seccomp filter failed ({errors[-1]})"
        plan = _Plan("bwrap", run_as, bwrap, prlimit, setpriv, features, process_limit=limit, detail=version,
                     seccomp=filt, seccomp_detail=sec_detail)
        who = f"uid {os.geteuid() if run_as is None else run_as}" + (" with seccomp" if filt else "")
        try:
            r = _execute(["sh", "-c", script], {}, Limits(timeout_s=30, memory_mb=512), (), None, plan)
        except (OSError, SandboxError) as exc:
            errors.append(f"as {who}: {exc}")
            continue
        if not r.ok:
            errors.append(f"as {who}: {r.output.strip()[-400:] or f'exit {r.returncode}'}")
            continue
        inside = dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)
        fresh = tuple(n for n in PROBED_NAMESPACES if inside.get(n) and inside[n] != _host_namespace(n))
        missing = [n for n in REQUIRED_NAMESPACES if n not in fresh]
        if missing or inside.get("uid") != str(NOBODY):
            errors.append(f"as {who}: namespaces missing {missing}, uid inside {inside.get('uid')}")
            continue
        return replace(plan, namespaces=fresh)
    return replace(fallback, detail="; ".join(errors))


@functools.lru_cache(maxsize=1)
def _seccomp_filter() -> tuple[bytes, str]:
    """(BPF program, description) of the filter that fails ``SECCOMP_DENIED`` with EPERM.

    Built by libseccomp (``libseccomp.so.2``, on every Debian and Ubuntu as a dependency of
    apt and systemd), through ctypes: it knows each architecture's system call numbers and
    kills any call made through a foreign ABI (i386 or x32 on x86-64), so a 32-bit call cannot
    slip past. Returns ``(b"", why)`` where libseccomp is missing or fails: runs then go
    without a filter and ``isolation()`` says so.
    """
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        return b"", f"libseccomp not found ({exc}): no seccomp filter (install libseccomp2)"
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.restype = ctypes.c_int
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_export_bpf.restype = ctypes.c_int
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EPERM  # SCMP_ACT_ALLOW, SCMP_ACT_ERRNO(EPERM)
    ctx = lib.seccomp_init(allow)
    if not ctx:
        return b"", "libseccomp: seccomp_init failed: no seccomp filter"
    lib.seccomp_attr_set.restype = ctypes.c_int
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    try:
        # a call through a foreign ABI kills the whole process (SCMP_FLTATR_ACT_BADARCH = 2, value
        # SCMP_ACT_KILL_PROCESS; libseccomp's default kills only the thread, which still blocks the call)
        badarch = "kills the process" if lib.seccomp_attr_set(ctx, 2, 0x80000000) == 0 else "kills the thread"
        denied = []
        for call in SECCOMP_DENIED:
            nr = lib.seccomp_syscall_resolve_name(call.encode())
            if nr < 0:  # not a system call on this architecture
                continue
            rc = lib.seccomp_rule_add(ctx, deny, nr, 0)
            if rc < 0:
                return b"", f"libseccomp: cannot add a rule for {call} ({os.strerror(-rc)}): no seccomp filter"
            denied.append(call)
        try:
            with tempfile.TemporaryFile() as f:
                rc = lib.seccomp_export_bpf(ctx, f.fileno())
                if rc < 0:
                    return b"", f"libseccomp: export failed ({os.strerror(-rc)}): no seccomp filter"
                f.seek(0)
                program = f.read()
        except OSError as exc:
            return b"", f"libseccomp: export failed ({exc}): no seccomp filter"
    finally:
        lib.seccomp_release(ctx)
    return program, "fails with EPERM: " + " ".join(denied) + f"; a call through a foreign ABI {badarch}"


def _host_namespace(name: str) -> str:
    try:
        return os.readlink(f"/proc/self/ns/{name}")
    except OSError:
        return ""


def isolation() -> dict[str, Any]:
    """What each run gets, for the job report (JSON-serialisable).

    ``mode`` is ``bwrap`` or ``none``; ``namespaces`` the fresh namespaces; ``host_uid`` the
    uid that owns the sandbox's processes on the host; ``process_limit`` ``per-sandbox``,
    ``per-host-user`` or ``none``; ``run_watch`` what the run-wide limits can see (``watch``);
    ``seccomp`` whether the filter is loaded (``seccomp_detail``:
    which calls it fails, or why there is none); ``detail`` bwrap's version or why it does not work.
    """
    plan = _plan()
    return {
        "mode": plan.mode,
        "namespaces": list(plan.namespaces),
        "uid_inside": NOBODY if plan.mode == "bwrap" else (plan.run_as if plan.run_as is not None else os.geteuid()),
        "host_uid": plan.run_as if plan.run_as is not None else os.geteuid(),
        "process_limit": plan.process_limit,
        "unsandboxed_allowed": _allowed_unsandboxed(),
        "run_watch": watch(),
        "seccomp": bool(plan.seccomp),
        "seccomp_detail": plan.seccomp_detail if plan.mode == "bwrap" else "",
        "detail": plan.detail,
    }


@functools.lru_cache(maxsize=1)
def watch() -> dict[str, bool]:
    """What the parent's run-wide watch can see here: ``deleted_files`` (descriptors and mappings
    of the sandbox's processes: needs ptrace access, which root lacks without ``CAP_SYS_PTRACE``,
    as in Docker's default capabilities, since the sandbox runs as ``nobody``) and
    ``vfork_by_kcmp`` (else a heuristic tells a ``vfork`` child from its parent)."""
    cap_ptrace = True
    if os.geteuid() == 0 and _plan_run_as_other():
        try:
            with open("/proc/self/status") as f:
                eff = next(line for line in f if line.startswith("CapEff:")).split()[1]
            cap_ptrace = bool(int(eff, 16) >> 19 & 1)  # CAP_SYS_PTRACE
        except (OSError, StopIteration, ValueError):
            cap_ptrace = False
    me = os.getpid()
    return {"deleted_files": cap_ptrace, "vfork_by_kcmp": cap_ptrace and _same_vm(me, me) is True}


def _plan_run_as_other() -> bool:
    try:
        return _plan().run_as is not None
    except Exception:  # noqa: BLE001 - probing failed: assume the worst
        return True


def network_isolation() -> str:
    """``userns+netns`` (bwrap: fresh user and network namespaces) or ``none``.

    Kept for callers of the old API; ``isolation()`` gives the whole picture.
    """
    return "userns+netns" if "net" in _plan().namespaces else "none"


def require_isolation(allow_unsandboxed: bool) -> str:
    """Fail fast, before any generation, when model-written code could not be isolated.

    Returns the mode (``bwrap``, or ``none`` when unsandboxed runs were explicitly allowed).
    Raises ``SandboxUnavailable`` with how to fix it when no isolation works and
    ``allow_unsandboxed`` is false. Allowing is per process (Ray actors must call this too,
    or get ``CHIPFORGE_SANDBOX_ALLOW_UNSANDBOXED=1`` in their environment).
    """
    global _unsandboxed_allowed
    plan = _plan()
    if plan.mode != "none":
        return plan.mode
    if not allow_unsandboxed:
        raise SandboxUnavailable(f"{INSTALL_HINT} (probe: {plan.detail})")
    if not _unsandboxed_allowed:
        log.warning("sandbox: no isolation available (%s); running model-written code UNSANDBOXED as allowed",
                    plan.detail)
    _unsandboxed_allowed = True
    return "none"


def _allowed_unsandboxed() -> bool:
    return _unsandboxed_allowed or os.environ.get(ALLOW_UNSANDBOXED_ENV) == "1"


# ----------------------------------------------------------------------------- running

def run(
    argv: Sequence[str],
    files: Mapping[str, str | bytes] | None = None,
    *,
    limits: Limits = Limits(),
    collect: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    stages: Sequence[float] = (),
) -> Result:
    """Run ``argv`` in a fresh sandbox whose working directory holds ``files``.

    ``argv[0]`` must be installed under ``SAFE_PATH``; ``argv`` is passed after ``--`` so it
    can never be read as bwrap options. ``collect`` names files (relative) to read back
    after the run (see ``Result``). ``env`` adds variables to the minimal environment.

    ``stages`` gives the run consecutive wall-clock limits of its own (seconds), for a script
    that runs several tools one after the other without a ``timeout`` process per tool: the
    first stage starts with the run; every byte the run writes to its standard input, which is
    then the write end of a pipe to the parent (``echo >&0`` in a script; give each tool
    ``</dev/null``), ends the stage in progress and starts the next, which then has its own
    limit; bytes past the last stage are ignored. A stage past its
    limit is handled like the run's own limit (``timeout_s``, which stays the backstop of the
    whole run): the sandbox is killed and ``timed_out`` set. ``Result.stage`` says which stage
    was running at the end.

    Raises ``SandboxUnavailable`` when nothing isolates and unsandboxed runs were not
    allowed, ``SandboxError`` for a bad file name or a missing tool.
    """
    plan = _plan()
    if plan.mode == "none" and not _allowed_unsandboxed():
        raise SandboxUnavailable(f"{INSTALL_HINT} (probe: {plan.detail})")
    return _execute(argv, files or {}, limits, collect, env, plan, tuple(stages))


def _execute(argv: Sequence[str], files: Mapping[str, str | bytes], limits: Limits, collect: Sequence[str],
             env: Mapping[str, str] | None, plan: _Plan, stages: tuple[float, ...] = ()) -> Result:
    """One run under ``plan``: write files, start, watch limits, wait for the sandbox to end, collect."""
    sandboxed = plan.mode == "bwrap"
    _check_tool(argv, sandboxed)
    _sweep_stale_once()
    workdir = tempfile.mkdtemp(prefix=WORKDIR_PREFIX)
    try:
        lock_fd = _lock_dir(workdir)  # held until the directory is gone: a sweep knows it is in use
    except BaseException:
        _remove_tree(workdir)
        raise
    try:
        for name, content in files.items():
            path = os.path.join(workdir, _safe_name(name))
            if not isinstance(content, (str, bytes)):
                raise SandboxError(f"sandbox file {name!r}: content must be str or bytes, not {type(content).__name__}")
            try:
                data = content.encode("utf-8") if isinstance(content, str) else content
            except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from JSON's "\ud800"
                raise SandboxError(f"sandbox file {name!r}: content is not valid text ({exc.reason})") from exc
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
            except OSError as exc:  # ``a`` and ``a/b`` both given, a name too long, ...
                raise SandboxError(f"sandbox file {name!r} cannot be written: {exc.strerror or exc}") from exc
        if plan.run_as is not None:
            _chown_tree(workdir, plan.run_as)
        child_env = {"PATH": SAFE_PATH, "HOME": WORKDIR if sandboxed else workdir,
                     "TMPDIR": "/tmp" if sandboxed else workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        child_env.update(env or {})
        preexec = _make_preexec(limits, plan)
        # our ends (read) and the child's ends (write) of the info and stage pipes, and the
        # child's end (read) of the seccomp pipe; -1: none
        info_r = info_w = stage_r = stage_w = seccomp_r = -1
        try:
            if stages:
                # the child's stdin, fd 0: a number every shell can name (dash: only 0-9), whatever
                # descriptors this process holds
                stage_r, stage_w = os.pipe()
            if sandboxed:
                info_r, info_w = os.pipe()
                if plan.seccomp:
                    seccomp_r = _seccomp_pipe(plan.seccomp)
                cmd = (_launcher(plan) + _bwrap_argv(plan, workdir, limits, child_env, info_w, seccomp_r)
                       + list(argv))
            else:
                cmd = list(argv)
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                cmd, cwd="/" if sandboxed else workdir, env=child_env,
                stdin=stage_w if stage_w >= 0 else subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                pass_fds=tuple(fd for fd in (info_w, seccomp_r) if fd >= 0), preexec_fn=preexec,
            )
        except BaseException:
            for fd in (info_r, stage_r):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (info_w, stage_w, seccomp_r):
                if fd >= 0:
                    os.close(fd)
        try:
            sup = _supervise(proc, t0, limits, stages, info_r, stage_r, workdir)
        finally:
            for f in (proc.stdout, proc.stderr):
                f.close()
            for fd in (info_r, stage_r):
                if fd >= 0:
                    os.close(fd)
        wall = time.perf_counter() - t0
        collected, rejected = _collect(workdir, collect, limits.max_output_bytes)
        stderr = sup.stderr.decode("utf-8", "replace")
        if sup.exceeded:
            stderr += ("\n" if stderr and not stderr.endswith("\n") else "") + f"[sandbox] killed: {sup.exceeded}"
        return Result(
            argv=list(argv), returncode=None if sup.timed_out else proc.returncode,
            stdout=sup.stdout.decode("utf-8", "replace"), stderr=stderr,
            timed_out=sup.timed_out, output_truncated=sup.overflow, wall_s=round(wall, 3), files=collected,
            rejected_files=rejected, isolation=plan.mode, stage=sup.stage, limit_exceeded=sup.exceeded,
        )
    finally:
        try:
            _remove_tree(workdir)
        finally:
            os.close(lock_fd)


def _check_tool(argv: Sequence[str], sandboxed: bool) -> None:
    """The tool must be installed under ``SAFE_PATH`` and, sandboxed, visible inside."""
    tool = shutil.which(argv[0], path=SAFE_PATH) if argv and argv[0] else None
    if tool is None:
        raise SandboxError(f"tool {argv[0] if argv else '<empty>'!r} is not installed (looked in {SAFE_PATH})")
    if sandboxed:
        real = os.path.realpath(tool)
        roots = [os.path.realpath(p) for p in (*RO_DIRS, *RO_LINK_OR_DIRS) if os.path.exists(p)]
        if not any(real.startswith(r + os.sep) for r in roots):
            raise SandboxError(f"tool {argv[0]!r} resolves to {real}, outside the sandbox's read-only view {roots}")


def _seccomp_pipe(program: bytes) -> int:
    """The read end of a pipe holding ``program`` (bwrap reads it to the end; one per run)."""
    r, w = os.pipe()
    try:
        os.write(w, program)  # a few hundred bytes: far below a pipe's buffer
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    return r


def _bwrap_argv(plan: _Plan, workdir: str, limits: Limits, env: Mapping[str, str], info_fd: int,
                seccomp_fd: int = -1) -> list[str]:
    """bwrap's options, ending with ``--`` (and ``prlimit ... --``): the caller appends argv."""
    args = [plan.bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--hostname", "sandbox", "--info-fd", str(info_fd)]
    if seccomp_fd >= 0:
        args += ["--seccomp", str(seccomp_fd)]
    if limits.network:
        args.append("--share-net")
    if "--disable-userns" in plan.features:
        args.append("--disable-userns")
    if "--clearenv" in plan.features:
        args.append("--clearenv")
        for key, value in env.items():
            args += ["--setenv", key, value]
    args += _ro_view()
    sized = "--size" in plan.features
    args += ["--dev", "/dev", "--proc", "/proc"]
    args += [*(["--size", str(MIB)] if sized else []), "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    args += [*(["--size", str(limits.tmp_mb * MIB)] if sized else []), "--tmpfs", "/tmp"]
    args += ["--bind", workdir, WORKDIR, "--remount-ro", "/"]
    args += ["--chdir", WORKDIR, "--uid", str(NOBODY), "--gid", str(NOBODY), "--"]
    if plan.prlimit:
        args += [plan.prlimit, *(f"--{name}={value}:{value}" for name, value in _rlimits(limits)), "--"]
    return args


@functools.lru_cache(maxsize=1)
def _ro_view() -> tuple[str, ...]:
    """bwrap options for the read-only view of the host (``RO_*``), resolved once per process."""
    args: list[str] = []
    for path in RO_DIRS:
        args += ["--ro-bind", path, path]
    for path in RO_LINK_OR_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in RO_TRY:
        args += ["--ro-bind-try", path, path]
    return tuple(args)


def _rlimits(limits: Limits) -> list[tuple[str, int]]:
    """(``prlimit`` option name, value) of every limit a tool runs under; the process count last."""
    cpu = int(limits.cpu_s if limits.cpu_s is not None else limits.timeout_s + 1)
    return [("as", limits.memory_mb * MIB), ("cpu", cpu), ("fsize", limits.max_file_bytes), ("core", 0),
            ("nofile", limits.max_open_files), ("nproc", limits.max_processes)]


def _launcher(plan: _Plan) -> list[str]:
    """``setpriv`` in front of bwrap when it must start as another uid (root: ``nobody``), else nothing.

    Only used when ``_make_preexec`` returns None, i.e. when ``setpriv`` and ``prlimit`` exist.
    """
    if plan.run_as is None or not plan.setpriv or not plan.prlimit:
        return []
    return [plan.setpriv, f"--reuid={plan.run_as}", f"--regid={plan.run_as}", "--clear-groups", "--"]


@dataclass
class _Supervised:
    stdout: bytes
    stderr: bytes
    timed_out: bool
    overflow: bool
    stage: int
    exceeded: str = ""


def _supervise(proc: subprocess.Popen, t0: float, limits: Limits, stages: tuple[float, ...], info_r: int,
               stage_r: int, workdir: str = "") -> _Supervised:
    """Watch a started run until it and everything in its sandbox have ended, in this thread.

    One ``poll`` loop (no helper threads: starting three threads per run cost milliseconds on a
    loaded machine) over the child's stdout and stderr (kept up to ``max_output_bytes`` each,
    then drained; past the cap the group is killed), bwrap's info pipe (the host pid of the
    sandbox's init, opened as a pidfd while it runs), the stage pipe (``stages``, see ``run``)
    and a pidfd of the child (woken the moment it exits; without pidfds, 10 ms polling). The
    deadline is the run's ``timeout_s`` from ``t0`` or the running stage's own limit, whichever
    comes first; past it, or on overflow, the child's process group is killed (the sandbox's
    init dies with bwrap, and the kernel then ends every process in its PID namespace). Every
    ``WATCH_S`` while it runs, ``_over_limits`` measures the run as a whole (memory of its
    process tree, bytes and entries under ``workdir``); past a limit the group is killed too.

    Returns once the child is reaped, the sandbox's init is gone (its exit proves nothing
    started inside survives) and both output pipes are closed. Unsandboxed, a grandchild may
    keep the pipes open after the child exits: the group is killed a second after the exit.
    """
    cap = limits.max_output_bytes
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    chunks: dict[int, list[bytes]] = {out_fd: [], err_fd: []}
    sizes = {out_fd: 0, err_fd: 0}
    poller = select.poll()
    watched: set[int] = set()

    def watch(fd: int) -> None:
        poller.register(fd, select.POLLIN)
        watched.add(fd)

    def unwatch(fd: int) -> None:
        poller.unregister(fd)
        watched.discard(fd)

    for fd in (out_fd, err_fd, info_r, stage_r):
        if fd >= 0:
            watch(fd)
    try:
        pidfd: int | None = os.pidfd_open(proc.pid)  # our unreaped child: the pid cannot be reused
        watch(pidfd)
    except (AttributeError, OSError):
        pidfd = None
    info = b""
    init_pid: int | None = None
    init_fd: int | None = None
    stage, stage_t0 = 0, t0
    timed_out = overflow = killed = False
    exceeded = ""
    next_watch = t0 + WATCH_S
    exited_at: float | None = None  # when the child was reaped
    group_killed_after_exit = False
    try:
        while True:
            now = time.perf_counter()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None:
                init_running = init_fd is not None or (init_pid is not None and _alive(init_pid))
                pipes_open = out_fd in watched or err_fd in watched or info_r in watched
                if not init_running and not pipes_open:
                    break
                waited = now - exited_at
                if init_running and waited > INIT_WAIT_S:
                    log.warning("sandbox: init %s still running %.0fs after bwrap ended", init_pid, INIT_WAIT_S)
                    break
                if pipes_open and not init_running:
                    # Unsandboxed only: a grandchild still holds the pipes, so the group is still alive.
                    if waited > 1.0 and not group_killed_after_exit:
                        _killpg(proc.pid)
                        group_killed_after_exit = True
                    elif waited > 3.0:
                        break
                wait_s = 0.01 if init_fd is None and init_running else 0.1
            else:
                deadline = t0 + limits.timeout_s
                if stages:
                    deadline = min(deadline, stage_t0 + stages[min(stage, len(stages) - 1)])
                if not killed and now >= deadline:
                    _killpg(proc.pid)
                    killed = timed_out = True
                if not killed and now >= next_watch:
                    exceeded = _over_limits(proc.pid, workdir, limits)
                    if exceeded:
                        _killpg(proc.pid)
                        killed = True
                    # a run that makes measuring slow (thousands of files) is measured less often:
                    # the watch takes at most a tenth of this thread's time
                    after = time.perf_counter()
                    next_watch = after + min(max(WATCH_S, 10 * (after - now)), WATCH_MAX_S)
                wait_s = max(0.0, min(deadline, next_watch) - now) if not killed else 0.05
                if pidfd is None:
                    wait_s = min(wait_s, 0.01)
            for fd, _ in poller.poll(math.ceil(wait_s * 1000)):
                if fd in chunks:
                    data = os.read(fd, 65536)
                    if not data:
                        unwatch(fd)
                        continue
                    if sizes[fd] < cap:
                        chunks[fd].append(data[: cap - sizes[fd]])
                    sizes[fd] += len(data)
                    if sizes[fd] > cap and not overflow:
                        overflow = True
                        if not killed:
                            _killpg(proc.pid)
                            killed = True
                elif fd == stage_r:
                    data = os.read(fd, 4096)
                    if not data:
                        unwatch(fd)
                    elif not killed and stage < len(stages) - 1:
                        # each byte ends a stage; past the last one, bytes change nothing
                        stage, stage_t0 = min(stage + len(data), len(stages) - 1), time.perf_counter()
                elif fd == info_r:
                    data = os.read(fd, 4096)
                    info += data
                    if not data or b"}" in info:
                        unwatch(fd)
                        init_pid = _init_pid(info)
                        if init_pid is not None:
                            try:
                                init_fd = os.pidfd_open(init_pid)  # opened while it runs: never another process
                                watch(init_fd)
                            except (AttributeError, OSError):
                                init_fd = None
                elif fd == init_fd:
                    unwatch(fd)
                    os.close(fd)
                    init_fd = None
                    init_pid = None
                elif fd == pidfd:
                    unwatch(fd)  # exited: reaped at the top of the loop
        proc.wait()
    except BaseException:
        if proc.poll() is None:  # interrupted while it runs: nothing started here outlives the call
            _killpg(proc.pid)
            proc.wait()
        raise
    finally:
        if pidfd is not None:
            os.close(pidfd)
        if init_fd is not None:
            os.close(init_fd)
    return _Supervised(b"".join(chunks[out_fd]), b"".join(chunks[err_fd]), timed_out, overflow, stage, exceeded)


def _over_limits(root_pid: int, workdir: str, limits: Limits) -> str:
    """Why the run must stop (memory of its processes, its files under ``/work``), or ``""``.

    Files the run holds open after deleting them count too: on ``/work``'s filesystem as disk,
    elsewhere (``memfd_create``, tmpfs) as memory."""
    try:
        work_dev = os.stat(workdir).st_dev if workdir else -1
    except OSError:
        work_dev = -1
    rss, hidden_mem, hidden_disk = _tree_usage(root_pid, work_dev)
    if rss + hidden_mem > limits.run_memory_bytes:
        return (f"the run's processes held {(rss + hidden_mem) // MIB} MiB of memory together "
                f"(limit {limits.run_memory_bytes // MIB} MiB)")
    if workdir:
        used, entries = _disk_usage(workdir, limits.max_files)
        if entries > limits.max_files:
            return f"the run created more than {limits.max_files} files and directories under {WORKDIR}"
        if used + hidden_disk > limits.disk_mb * MIB:
            return (f"the run's files under {WORKDIR} took {(used + hidden_disk) // MIB} MiB of disk "
                    f"(limit {limits.disk_mb} MiB)")
    return ""


_PAGE = os.sysconf("SC_PAGE_SIZE")
_KCMP = {"x86_64": 312, "aarch64": 272}.get(os.uname().machine)  # kcmp(2)'s number; KCMP_VM = 1


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _same_vm(pid_a: int, pid_b: int) -> bool | None:
    """Whether two processes share one address space (a ``vfork`` child before its ``exec``);
    None where ``kcmp`` is not allowed (no ptrace access, a seccomp profile) or not built."""
    if _KCMP is None:
        return None
    lib = _libc()
    rc = lib.syscall(_KCMP, pid_a, pid_b, 1, 0, 0)
    if rc < 0 and ctypes.get_errno() in (errno.EPERM, errno.EACCES, errno.ENOSYS):
        return None
    return rc == 0


def _statm(pid: int) -> bytes:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return f.read()


_DELETED_MAP = re.compile(rb"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ ([0-9a-f]+):([0-9a-f]+) (\d+) +(.*) \(deleted\)$", re.M)


def _tree_usage(root_pid: int, work_dev: int) -> tuple[int, int, int]:
    """(resident bytes, bytes of deleted files held elsewhere, on ``work_dev``) of ``root_pid``
    and all its descendants (``/proc/PID/task/TID/children``).

    Every process of a sandbox descends from bwrap: one that called ``setsid`` or double-forked
    is re-parented to the sandbox's own init, which is bwrap's child. A ``vfork`` child shares
    its parent's memory until it calls ``exec`` and its memory counts nothing (``kcmp``; where
    that is not allowed, a child with its parent's exact ``statm`` whose parent waits in ``D``).
    Shared pages (libraries, copy-on-write after ``fork``) count once per process, so this errs
    high. A deleted file still held by a descriptor (its size) or by a mapping (the mapped
    length) counts once: on ``work_dev`` as disk, elsewhere (``memfd_create``, tmpfs) as
    memory. Reading descriptors and mappings of the sandbox's processes needs ptrace access
    (``watch()`` says whether this process has it); without it only resident memory counts.
    Processes, descriptors and mappings that vanish mid-walk count nothing.
    """
    rss = hidden_mem = hidden_disk = 0
    stack: list[tuple[int, int | None]] = [(root_pid, None)]
    seen: set[int] = set()
    held: dict[tuple[int, int], int] = {}  # (dev, inode) of a deleted file -> bytes it holds
    while stack:
        pid, parent = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    stack.extend((int(c), pid) for c in f.read().split())
            # Whether ``pid`` shares its parent's memory is decided before its own statm is read: a
            # vfork child read before its exec and judged after it (a plain child by then) was
            # counted at its parent's size, twice the tool's memory (seen under load).
            shared = _same_vm(parent, pid) if parent is not None else False
            if shared is None and parent is not None:
                # a vfork parent sleeps uninterruptibly (D) until its child execs
                waits, parent_statm = _proc_state(parent) == b"D", _statm(parent)
                statm = _statm(pid)
                shared = waits and statm == parent_statm
            else:
                statm = _statm(pid)
            if not shared:
                rss += int(statm.split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            fds = []
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")  # the open file itself: never blocks
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and not st.st_nlink:
                key = (st.st_dev, st.st_ino)
                held[key] = max(held.get(key, 0), st.st_blocks * 512)
        try:
            with open(f"/proc/{pid}/maps", "rb") as f:
                maps = f.read()
        except OSError:
            maps = b""
        for m in _DELETED_MAP.finditer(maps):
            dev = os.makedev(int(m.group(3), 16), int(m.group(4), 16))
            key = (dev, int(m.group(5)))
            held[key] = max(held.get(key, 0), int(m.group(2), 16) - int(m.group(1), 16))
    for (dev, _), size in held.items():
        if dev == work_dev:
            hidden_disk += size
        else:
            hidden_mem += size
    return rss, hidden_mem, hidden_disk


def _disk_usage(top: str, max_entries: int) -> tuple[int, int]:
    """(bytes allocated, entries) under ``top``, never following links; stops past ``max_entries``.

    Iterative (a hostile tree may be thousands of directories deep), one directory open at a
    time. The run goes on meanwhile and may swap a directory for a link: each directory is
    opened with ``O_NOFOLLOW`` and read only if it is the very one its parent listed (same
    device and inode), so nothing outside ``top`` is ever counted. Entries that vanish are skipped.
    """
    used = entries = 0
    try:
        st0 = os.lstat(top)
    except OSError:
        return 0, 0
    stack = [(top, st0.st_dev, st0.st_ino)]
    flags = DIR_FLAGS | os.O_NONBLOCK
    while stack and entries <= max_entries:
        path, dev, ino = stack.pop()
        try:
            fd = os.open(path, flags)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (dev, ino):
                continue
            with os.scandir(fd) as it:
                for e in it:
                    entries += 1
                    try:
                        est = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    used += est.st_blocks * 512
                    if stat.S_ISDIR(est.st_mode):
                        stack.append((os.path.join(path, e.name), est.st_dev, est.st_ino))
        except OSError:
            continue
        finally:
            os.close(fd)
    return used, entries


def _init_pid(info: bytes) -> int | None:
    """The host pid of the sandbox's init from bwrap's ``--info-fd`` JSON (None when absent)."""
    try:
        return int(json.loads(info[: info.index(b"}") + 1])["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


def _make_preexec(limits: Limits, plan: _Plan) -> Callable[[], None] | None:
    """The function run in the child between fork and exec: limits, then privileges.

    None when bwrap runs with ``prlimit`` inside (all limits) and, where the uid must change,
    ``setpriv`` in front (``_launcher``): then nothing runs between fork and exec and
    ``subprocess`` uses ``vfork`` instead of copying the caller's address space.
    Everything it needs is resolved here, in the parent, so the child only makes syscalls.
    Unsandboxed as root the process count is limited per host user (``nobody``); as another
    user it is not (``RLIMIT_NPROC`` would count all of that user's processes).
    """
    if plan.mode == "bwrap" and plan.prlimit and (plan.run_as is None or plan.setpriv):
        return None
    values = dict(_rlimits(limits))
    mem, cpu, fsize, nofile = values["as"], values["cpu"], values["fsize"], values["nofile"]
    nproc = limits.max_processes if plan.mode == "none" and plan.run_as is not None else None
    run_as = plan.run_as
    setrlimit = resource.setrlimit

    def preexec() -> None:
        setrlimit(resource.RLIMIT_AS, (mem, mem))
        setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        setrlimit(resource.RLIMIT_CORE, (0, 0))
        setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        if nproc is not None:
            setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if run_as is not None:
            os.setgroups([])
            os.setgid(run_as)
            os.setuid(run_as)

    return preexec


def _proc_state(pid: int) -> bytes | None:
    """The state letter of process ``pid`` (``R``, ``S``, ``D``, ``Z``...); None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    return _proc_state(pid) not in (None, b"Z")


def _safe_name(name: str) -> str:
    if not isinstance(name, str) or "\x00" in name:
        raise SandboxError(f"sandbox file name {name!r} must be a string without NUL bytes")
    try:
        name.encode(sys.getfilesystemencoding())
    except UnicodeEncodeError as exc:
        raise SandboxError(f"sandbox file name {name!r} cannot be a file name here: {exc.reason}") from exc
    if len(name) > 1024:
        raise SandboxError(f"sandbox file name {name[:40]!r}... is longer than 1024 characters")
    norm = os.path.normpath(name)
    if os.path.isabs(name) or norm.startswith("..") or norm in {"", "."}:
        raise SandboxError(f"sandbox file name {name!r} must be relative and stay inside the sandbox")
    return norm


def _lock_dir(path: str) -> int:
    """An fd of directory ``path`` holding an exclusive ``flock``: the run is alive while it is held.

    The kernel drops the lock when the process ends, however it ends, and a lock is seen from
    every pid namespace and container that shares the directory, unlike a pid.
    """
    fd = os.open(path, DIR_FLAGS)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fresh from mkdtemp: nobody else has it
    except OSError:
        os.close(fd)
        raise
    return fd


_swept_in: int | None = None  # pid of the process that swept (a forked child sweeps again)


def _sweep_stale_once() -> None:
    """Remove run directories left in the temporary directory by processes that were killed.

    A run's directory is removed when the run ends; only a killed process (SIGKILL, the OOM
    killer, a node's eviction) leaves one behind, with model-written files in it. Once per
    process, a ``cf-sandbox-*`` directory is removed when it is older than ``STALE_S``, is owned
    by this user (or by ``nobody``, the sandbox's uid, when root) and its ``flock`` can be taken,
    i.e. no live run holds it. Removal is ``_rmtree`` only, which never follows a link (the
    entry may be replaced by one at any time: /tmp is shared); a tree the killed tool made
    unreadable stays.
    """
    global _swept_in
    if _swept_in == os.getpid():
        return
    _swept_in = os.getpid()
    top = tempfile.gettempdir()
    owners = {os.geteuid(), NOBODY} if os.geteuid() == 0 else {os.geteuid()}
    try:
        names = [n for n in os.listdir(top) if n.startswith(WORKDIR_PREFIX)]
    except OSError:
        return
    now = time.time()
    for name in names:
        path = os.path.join(top, name)
        try:
            fd = os.open(path, DIR_FLAGS)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if st.st_uid not in owners or now - st.st_mtime < STALE_S:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a live run holds it
                continue
            log.info("sandbox: removing %s, left by a run whose process was killed", path)
            _rmtree(path)
        finally:
            os.close(fd)


def _chown_tree(top: str, uid: int) -> None:
    """Hand the fresh directory (written by us, no links yet) to the sandbox's host uid."""
    for root, dirs, names in os.walk(top):
        for n in [*dirs, *names]:
            os.chown(os.path.join(root, n), uid, uid, follow_symlinks=False)
    os.chown(top, uid, uid)


def _collect(workdir: str, names: Sequence[str], cap: int) -> tuple[dict[str, bytes], dict[str, str]]:
    """Read back ``names`` from the run's directory without following any link.

    Returns (files read, name -> why it was refused). A missing file is in neither.
    """
    files: dict[str, bytes] = {}
    rejected: dict[str, str] = {}
    if not names:
        return files, rejected
    top = os.open(workdir, DIR_FLAGS)
    try:
        for name in names:
            got = _read_beneath(top, _safe_name(name), cap)
            if isinstance(got, bytes):
                files[name] = got
            elif got is not None:
                rejected[name] = got
    finally:
        os.close(top)
    return files, rejected


def _read_beneath(top: int, rel: str, cap: int) -> bytes | str | None:
    """Content of regular file ``rel`` under directory fd ``top``; a reason string if refused; None if missing.

    Every component is opened with ``O_NOFOLLOW`` relative to its parent's fd, the file with
    ``O_NONBLOCK`` (a FIFO cannot block us), then checked with ``fstat``: regular and at most
    ``cap`` bytes.
    """
    parts = rel.split("/")
    opened: list[int] = []
    fd = -1
    try:
        parent = top
        for part in parts[:-1]:
            parent = os.open(part, DIR_FLAGS, dir_fd=parent)
            opened.append(parent)
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                     dir_fd=parent)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return "symbolic link (not followed)"
        return f"cannot open: {exc.strerror}"
    finally:
        for d in opened:
            os.close(d)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size > cap:
            return f"larger than {cap} bytes"
        chunks: list[bytes] = []
        size = 0
        while size <= cap:
            chunk = os.read(fd, min(65536, cap + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > cap:
            return f"larger than {cap} bytes"
        return b"".join(chunks)
    finally:
        os.close(fd)


def _remove_tree(path: str) -> None:
    """Remove the run's directory, even where the tool made sub-directories unwritable.

    ``shutil.rmtree`` never follows links; the permission repair runs only once nothing in
    the sandbox is alive, and checks each entry with ``lstat`` before touching it.
    """
    _rmtree(path)
    if not os.path.lexists(path):
        return
    stack = [path]
    while stack:
        d = stack.pop()
        try:
            os.chmod(d, 0o700)
            with os.scandir(d) as entries:
                stack.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
    _rmtree(path)


def _rmtree(path: str) -> None:
    """``shutil.rmtree``, or ``rm -rf`` where the tree is too deep for its recursion (both never
    follow links)."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except RecursionError:
        rm = shutil.which("rm", path=SAFE_PATH) or "/bin/rm"
        subprocess.run([rm, "-rf", "--one-file-system", "--", path], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def tool_versions() -> dict[str, str]:
    """First line of each validation tool's version output (``missing`` when absent).

    Runs the host's tools directly: fixed arguments, no model-written input.
    """
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
