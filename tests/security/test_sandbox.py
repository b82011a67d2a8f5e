"""Attacks on ``synthesis.sandbox`` that worked against the preexec/unshare sandbox.

Each test is a proof of concept run by model-written code: escaping the run (setsid,
nohup, double fork), making the root parent read a file for it (symlinks in ``collect``),
writing where the job's user can (``~/.ssh/authorized_keys``, Ray's session directory),
reaching 127.0.0.1 services, reading host files, exhausting processes, memory, CPU, disk or
time, and smuggling bwrap options through argv. Skipped only where the kernel forbids the
namespaces bwrap needs; a missing bwrap fails them (install ``bubblewrap``).
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from synthesis import sandbox
from synthesis.sandbox import Limits, SandboxError
from tests.security.conftest import Canary, assert_no_survivors

pytestmark = pytest.mark.tools("bwrap")

REPO_ROOT = Path(__file__).resolve().parents[2]
_ISOLATION = sandbox.isolation()
if _ISOLATION["mode"] != "bwrap" and "not found" not in _ISOLATION["detail"]:
    pytest.skip(f"the kernel forbids the namespaces bwrap needs here: {_ISOLATION['detail']}",
                allow_module_level=True)

SURVIVORS = {
    "setsid": "setsid sh -c 'sleep 60; :' {m} </dev/null >/dev/null 2>&1 &",
    "nohup": "nohup sh -c 'sleep 60; :' {m} </dev/null >/dev/null 2>&1 &",
    "double_fork": "( sh -c 'sleep 60; :' {m} </dev/null >/dev/null 2>&1 & ) ; true",
    "daemon": "python3 -c 'import os, time; os.fork() and os._exit(0); os.setsid(); os.fork() and os._exit(0); "
              "os.closerange(0, 3); time.sleep(60)' {m} &",
    "holds_pipes": "setsid sh -c 'sleep 60; :' {m} &",
}


@pytest.fixture()
def ray_session_dir() -> Iterator[Path]:
    """A fake ``/tmp/ray/session_*`` with world-writable logs and sockets dirs, a socket and a log."""
    top = Path(tempfile.mkdtemp(prefix="cf-ray-", dir="/tmp"))
    session = top / "session_2026-01-01_00-00-00_000000_1"
    for d in (top, session, session / "logs", session / "sockets"):
        d.mkdir(exist_ok=True)
        d.chmod(0o777)
    (session / "logs" / "raylet.out").write_text("raylet log\n")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(session / "sockets" / "raylet"))
    try:
        yield session
    finally:
        sock.close()
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture()
def loopback_server() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def connect_code(port: int) -> str:
    return (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            f"    print('CONNECTED')\nexcept OSError as e:\n    print('refused', e)\n")


# ----------------------------------------------------------------------------- escaping the run

@pytest.mark.parametrize("how", sorted(SURVIVORS))
def test_nothing_started_inside_outlives_the_run(how: str, marker: str) -> None:
    r = sandbox.run(["sh", "-c", SURVIVORS[how].format(m=marker) + "\necho started"], limits=Limits(timeout_s=10))
    assert "started" in r.stdout and not r.timed_out and r.wall_s < 5
    assert_no_survivors(marker)


def test_timeout_kills_every_process_in_the_sandbox(marker: str) -> None:
    t0 = time.perf_counter()
    script = f"setsid sh -c 'sleep 60; :' {marker} >/dev/null 2>&1 & sh -c 'sleep 60; :' {marker}"
    r = sandbox.run(["sh", "-c", script], limits=Limits(timeout_s=1))
    assert r.timed_out and r.returncode is None and time.perf_counter() - t0 < 5
    assert_no_survivors(marker)


@pytest.mark.parametrize("hang_in", [0, 1])
def test_each_stage_is_killed_at_its_own_limit(hang_in: int, marker: str) -> None:
    """``stages``: a stage past its own limit kills the whole sandbox long before the run's limit,
    whichever stage hangs; each stage's clock starts when the previous one is marked done."""
    steps = ["sleep 0.4", "sleep 0.4"]
    steps[hang_in] = f"setsid sh -c 'sleep 60; :' {marker} >/dev/null 2>&1 & sh -c 'sleep 60; :' {marker}"
    script = f"echo one; {steps[0]} </dev/null; echo >&0; echo two; {steps[1]} </dev/null; echo done"
    t0 = time.perf_counter()
    r = sandbox.run(["sh", "-c", script], limits=Limits(timeout_s=60), stages=(1.5, 1.5))
    wall = time.perf_counter() - t0
    assert r.timed_out and r.returncode is None and r.stage == hang_in and "done" not in r.stdout
    assert ("two" in r.stdout) == (hang_in == 1)
    assert 1.4 < wall < 1.5 * (hang_in + 1) + 5  # each stage under its own limit; not the run's 60 s
    assert_no_survivors(marker)


def test_stage_marks_past_the_last_stage_extend_nothing() -> None:
    """Bytes written after the last stage started (by the script or anything it runs) are ignored:
    the last stage keeps its limit, counted from its own start."""
    script = "echo >&0; i=0; while [ $i -lt 40 ]; do echo >&0; sleep 0.1; i=$((i + 1)); done; echo done"
    t0 = time.perf_counter()
    r = sandbox.run(["sh", "-c", script], limits=Limits(timeout_s=60), stages=(5, 1))
    assert r.timed_out and r.stage == 1 and "done" not in r.stdout and time.perf_counter() - t0 < 6


def test_stages_within_their_limits_finish_normally() -> None:
    r = sandbox.run(["sh", "-c", "echo a; echo >&0; echo b; cat; echo c"], limits=Limits(timeout_s=20),
                    stages=(10, 10))
    # the stage pipe is write-only: ``cat`` reading stdin fails instead of waiting
    assert not r.timed_out and r.stage == 1 and r.stdout.split() == ["a", "b", "c"]


# ----------------------------------------------------------------------------- collect

@pytest.mark.parametrize("make", [
    "ln -s {target} sim.vvp",
    "ln -s ../../../../../../../..{target} sim.vvp",
    "mkdir real && ln -s {target} real/sim.vvp && ln -s real d && ln -s d/sim.vvp sim.vvp",
], ids=["absolute", "relative", "through_a_linked_directory"])
def test_collect_never_follows_a_symlink_to_a_root_only_file(make: str, canary: Canary) -> None:
    r = sandbox.run(["sh", "-c", make.format(target=canary.root_only)], collect=["sim.vvp", "d/sim.vvp"])
    assert r.ok, r.output
    assert r.files == {}
    assert "sim.vvp" in r.rejected_files and "symbolic link" in r.rejected_files["sim.vvp"]
    if "ln -s real d" in make:
        assert "d/sim.vvp" in r.rejected_files


def test_collect_refuses_a_symlinked_directory(canary: Canary) -> None:
    r = sandbox.run(["sh", "-c", f"ln -s {canary.tmp_dir}/private out"], collect=["out/root-only.txt"])
    assert r.files == {} and "out/root-only.txt" in r.rejected_files


def test_collect_refuses_fifos_directories_and_big_files_without_blocking() -> None:
    t0 = time.perf_counter()
    r = sandbox.run(["sh", "-c", "mkfifo pipe.vvp && mkdir dir.vvp && head -c 5000 /dev/zero > big.vvp"
                                 " && echo ok > small.vvp"],
                    limits=Limits(max_output_bytes=4096), collect=["pipe.vvp", "dir.vvp", "big.vvp", "small.vvp"])
    assert time.perf_counter() - t0 < 5
    assert r.files == {"small.vvp": b"ok\n"}
    assert set(r.rejected_files) == {"pipe.vvp", "dir.vvp", "big.vvp"}
    assert "regular" in r.rejected_files["pipe.vvp"] and "larger" in r.rejected_files["big.vvp"]


# ----------------------------------------------------------------------------- host files and services

def test_host_files_are_invisible(canary: Canary) -> None:
    script = (f"cat /etc/passwd /etc/shadow {canary.tmp_file} {canary.home_file} {canary.root_only}; "
              "ls -a /root /home /run /var /tmp /etc; cat /proc/1/environ; "
              f"echo pwned > {canary.forbidden}; ls /sys")
    r = sandbox.run(["sh", "-c", script])
    canary.assert_not_leaked(r.output)
    assert "root:" not in r.stdout
    assert "No such file" in r.stderr
    listed = r.stdout.split()
    assert "passwd" not in listed and "shadow" not in listed


def test_ray_session_dir_cannot_be_touched(ray_session_dir: Path) -> None:
    logs, sockets = ray_session_dir / "logs", ray_session_dir / "sockets"
    script = (f"echo planted > {logs}/planted.txt; mv {sockets}/raylet {sockets}/raylet.old; "
              f"echo x >> {logs}/raylet.out; ls /tmp/ray; ls {ray_session_dir}")
    r = sandbox.run(["sh", "-c", script])
    assert not (logs / "planted.txt").exists()
    assert stat.S_ISSOCK((sockets / "raylet").lstat().st_mode) and not (sockets / "raylet.old").exists()
    assert (logs / "raylet.out").read_text() == "raylet log\n"
    assert r.returncode != 0


def test_loopback_services_are_unreachable(loopback_server: int) -> None:
    r = sandbox.run(["python3", "-c", connect_code(loopback_server)], limits=Limits(timeout_s=10))
    assert "CONNECTED" not in r.stdout and "refused" in r.stdout


def test_no_capabilities_and_no_new_user_namespaces() -> None:
    r = sandbox.run(["sh", "-c", "grep ^Cap /proc/self/status; unshare -U true && echo NESTED-USERNS"])
    caps = dict(line.split(":") for line in r.stdout.splitlines() if line.startswith("Cap"))
    assert {v.strip() for k, v in caps.items() if k in ("CapEff", "CapPrm", "CapBnd")} == {"0000000000000000"}
    if "--disable-userns" in sandbox._plan().features:
        assert "NESTED-USERNS" not in r.stdout


def test_dev_is_read_only_and_scratch_space_is_small() -> None:
    r = sandbox.run(["sh", "-c", "touch /dev/evil || echo DEV-RO;"
                                 " head -c 3000000 /dev/zero > /tmp/big || echo TMP-FULL;"
                                 " head -c 3000000 /dev/zero > /dev/shm/big || echo SHM-FULL"],
                    limits=Limits(tmp_mb=1, max_file_bytes=64 * 1024 * 1024))
    if "--size" not in sandbox._plan().features:
        pytest.skip("this bwrap has no --size")
    assert {"DEV-RO", "TMP-FULL", "SHM-FULL"} <= set(r.stdout.split())


# ----------------------------------------------------------------------------- limits

def test_fork_bomb_is_bounded(marker: str) -> None:
    code = textwrap.dedent("""
        import os, sys, time
        n = 0
        for _ in range(300):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            n += 1
        print("forked", n)
    """)
    r = sandbox.run(["python3", "-c", code, marker], limits=Limits(timeout_s=20, max_processes=16))
    assert r.ok, r.output
    forked = int(r.stdout.split()[-1])
    assert 0 < forked < 16
    assert_no_survivors(marker)


def test_every_limit_is_set_hard_inside_the_sandbox() -> None:
    """The tool sees each limit as both soft and hard value (it cannot raise them again)."""
    lim = Limits(timeout_s=7, memory_mb=300, max_file_bytes=5_000_000, max_processes=20)
    r = sandbox.run(["cat", "/proc/self/limits"], limits=lim)
    rows = {line[:26].strip(): line[26:].split()[:2] for line in r.stdout.splitlines()[1:]}
    assert rows["Max address space"] == [str(300 * 1024 * 1024)] * 2
    assert rows["Max cpu time"] == ["8", "8"]  # cpu_s defaults to the wall-clock limit + 1
    assert rows["Max file size"] == ["5000000"] * 2
    assert rows["Max core file size"] == ["0", "0"]
    assert rows["Max processes"] == ["20", "20"]


def test_bwrap_runs_as_nobody_without_groups_or_capabilities_on_the_host(marker: str) -> None:
    """Root's job starts bwrap as ``nobody`` (setpriv, or the fallback in the child): no supplementary
    groups, no capabilities, all four uids and gids dropped, as seen from the host."""
    if os.geteuid() != 0 or sandbox.isolation()["host_uid"] == 0:
        pytest.skip("only a root job switches uid before bwrap")
    seen: dict[str, str] = {}

    def look() -> None:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and not seen:
            for entry in os.listdir("/proc"):
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        cmd = f.read().split(b"\0")
                    if not cmd[0].endswith(b"bwrap") or marker.encode() not in cmd:
                        continue
                    with open(f"/proc/{entry}/status") as f:
                        status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
                except (OSError, ValueError):
                    continue
                seen.update({k: v.split() for k, v in status.items() if k in ("Uid", "Gid", "Groups", "CapEff",
                                                                             "CapPrm")})
                break
            time.sleep(0.02)

    watcher = threading.Thread(target=look)
    watcher.start()
    sandbox.run(["sh", "-c", "sleep 3; :", marker], limits=Limits(timeout_s=10))
    watcher.join()
    assert seen, "bwrap was not seen running"
    assert seen["Uid"] == [str(sandbox.NOBODY)] * 4 and seen["Gid"] == [str(sandbox.NOBODY)] * 4
    assert seen["Groups"] == [] and seen["CapEff"] == seen["CapPrm"] == ["0000000000000000"]


def test_memory_limit() -> None:
    r = sandbox.run(["python3", "-c", "x = bytearray(800 * 1024 * 1024); print('allocated')"],
                    limits=Limits(memory_mb=256))
    assert r.returncode != 0 and "allocated" not in r.stdout


def test_cpu_limit() -> None:
    r = sandbox.run(["python3", "-c", "while True: pass"], limits=Limits(timeout_s=20, cpu_s=1))
    assert not r.timed_out and r.returncode != 0 and r.wall_s < 10


def test_file_size_limit() -> None:
    r = sandbox.run(["sh", "-c", "head -c 3000000 /dev/zero > big.bin"], limits=Limits(max_file_bytes=1_000_000))
    assert r.returncode != 0


def test_output_cap_kills_the_writer() -> None:
    t0 = time.perf_counter()
    r = sandbox.run(["sh", "-c", "yes"], limits=Limits(timeout_s=20, max_output_bytes=4096))
    assert r.output_truncated and len(r.stdout) == 4096 and time.perf_counter() - t0 < 5


def test_disk_use_of_a_run_is_bounded_in_all_not_only_per_file() -> None:
    """Many files each under ``max_file_bytes`` cannot fill the host's disk: the run is killed."""
    lim = Limits(timeout_s=20, max_file_bytes=2 * sandbox.MIB, disk_mb=8)
    t0 = time.perf_counter()
    r = sandbox.run(["sh", "-c", "i=0; while [ $i -lt 40 ]; do head -c 2000000 /dev/urandom > f$i; i=$((i+1)); "
                                 "done; sleep 30"], limits=lim)
    assert not r.ok and not r.timed_out and time.perf_counter() - t0 < 10
    assert r.limit_exceeded.startswith("the run's files under /work took"), r.limit_exceeded
    assert r.stderr.endswith("[sandbox] killed: " + r.limit_exceeded)


def test_file_count_of_a_run_is_bounded() -> None:
    r = sandbox.run(["sh", "-c", "mkdir d; i=0; while [ $i -lt 3000 ]; do : > d/f$i; i=$((i+1)); done; sleep 30"],
                    limits=Limits(timeout_s=20, max_files=500))
    assert not r.ok and not r.timed_out
    assert "more than 500 files" in r.limit_exceeded


def test_memory_of_all_processes_together_is_bounded(marker: str) -> None:
    """``memory_mb`` holds each process; three processes under it together pass ``run_memory_mb``."""
    hog = "x = bytes([1]) * (150 * 1024 * 1024); import time; time.sleep(30)"
    r = sandbox.run(["sh", "-c", f'for i in 1 2 3; do python3 -c "{hog}" {marker} & done; wait'],
                    limits=Limits(timeout_s=25, memory_mb=400, run_memory_mb=300))
    assert not r.ok and not r.timed_out, r.output
    assert r.limit_exceeded.startswith("the run's processes held") and "(limit 300 MiB)" in r.limit_exceeded
    assert_no_survivors(marker)


def test_the_root_is_read_only_so_nothing_grows_in_memory_outside_the_small_tmpfs() -> None:
    """bwrap's root is a tmpfs with no size: writable, it would hold as much as the host's memory."""
    r = sandbox.run(["sh", "-c", "for d in / /etc /usr /work; do touch $d/cf-x && echo WROTE $d; done; true"])
    assert r.stdout.split() == ["WROTE", "/work"], r.output


def test_a_directory_tree_too_deep_for_recursion_is_still_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    top = tempfile.mkdtemp(prefix="cf-deep-", dir="/tmp")
    os.chmod(top, 0o755)
    monkeypatch.setattr(tempfile, "tempdir", top)
    try:
        code = ("import os\nfd = os.open('.', os.O_RDONLY)\nfor _ in range(1500):\n    os.mkdir('d', dir_fd=fd)\n"
                "    fd, parent = os.open('d', os.O_RDONLY, dir_fd=fd), fd\n    os.close(parent)\nprint('deep')")
        r = sandbox.run(["python3", "-c", code])
        assert r.ok and r.stdout.strip() == "deep", r.output
        assert os.listdir(top) == []
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_directories_left_by_killed_processes_are_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job killed mid-run leaves its run's directory (model-written files); the next process removes it
    once its lock is gone, but never one a live run holds (whatever its pid namespace), a fresh one,
    another user's, or what a planted link points to."""
    top = tempfile.mkdtemp(prefix="cf-stale-", dir="/tmp")
    os.chmod(top, 0o755)
    victim = Path(tempfile.mkdtemp(prefix="cf-victim-", dir="/tmp"))
    (victim / "keep.txt").write_text("x")
    monkeypatch.setattr(tempfile, "tempdir", top)
    monkeypatch.setattr(sandbox, "_swept_in", None)
    old = time.time() - 2 * sandbox.STALE_S
    names = {k: f"{sandbox.WORKDIR_PREFIX}{k}" for k in ("dead", "live", "fresh", "foreign")}
    held = []
    try:
        for key, name in names.items():
            path = os.path.join(top, name)
            os.makedirs(os.path.join(path, "sub"))
            if key != "fresh":
                os.utime(path, (old, old))
            if key == "live":
                held.append(sandbox._lock_dir(path))  # as a run in progress holds it
        if os.geteuid() == 0:
            os.chown(os.path.join(top, names["foreign"]), 12345, 12345)
        else:
            names.pop("foreign")
            shutil.rmtree(os.path.join(top, f"{sandbox.WORKDIR_PREFIX}foreign"))
        os.symlink(victim, os.path.join(top, f"{sandbox.WORKDIR_PREFIX}link"))
        assert sandbox.run(["true"]).ok
        assert sorted(os.listdir(top)) == sorted([*(n for k, n in names.items() if k != "dead"),
                                                  f"{sandbox.WORKDIR_PREFIX}link"])
        assert (victim / "keep.txt").read_text() == "x" and stat.S_IMODE(victim.stat().st_mode) == 0o700
    finally:
        for fd in held:
            os.close(fd)
        shutil.rmtree(top, ignore_errors=True)
        shutil.rmtree(victim, ignore_errors=True)


def test_files_deleted_but_held_open_still_count(marker: str) -> None:
    """Unlinking a file it keeps open hides it from a directory walk, not from the limits: on /work it
    is disk, a memfd is memory."""
    disk = ("import os, time\nfs = []\nfor i in range(8):\n    f = open(f'f{i}', 'wb'); f.write(os.urandom(2_000_000)); "
            "f.flush(); os.unlink(f'f{i}'); fs.append(f)\ntime.sleep(30)")
    r = sandbox.run(["python3", "-c", disk, marker], limits=Limits(timeout_s=20, max_file_bytes=4 * sandbox.MIB,
                                                                   disk_mb=8))
    assert "files under /work took" in r.limit_exceeded and not r.timed_out, r.output
    mem = ("import os, time\nfds = [os.memfd_create('x') for _ in range(6)]\nfor fd in fds:\n"
           "    os.write(fd, b'\\1' * 25_000_000)\ntime.sleep(30)")  # each under max_file_bytes
    r = sandbox.run(["python3", "-c", mem, marker], limits=Limits(timeout_s=20, memory_mb=400, run_memory_mb=120))
    assert "processes held" in r.limit_exceeded and not r.timed_out, r.output
    # kept by a mapping only: the descriptor is closed, the file deleted
    mapped = ("import mmap, os, time\nms = []\nfor i in range(8):\n    fd = os.open(f'f{i}', os.O_RDWR | os.O_CREAT)\n"
              "    os.write(fd, os.urandom(2_000_000)); ms.append(mmap.mmap(fd, 2_000_000)); os.close(fd); "
              "os.unlink(f'f{i}')\ntime.sleep(30)")
    r = sandbox.run(["python3", "-c", mapped, marker], limits=Limits(timeout_s=20, max_file_bytes=4 * sandbox.MIB,
                                                                     disk_mb=8))
    assert "files under /work took" in r.limit_exceeded and not r.timed_out, r.output
    assert_no_survivors(marker)


@pytest.mark.parametrize("kcmp", [True, False])
def test_a_tool_that_spawns_children_is_not_charged_twice_for_its_memory(kcmp: bool,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A vfork child shares its parent's memory until it execs: counting it again killed a ~210 MiB
    tool that started programs (yosys runs abc that way) under a 330 MiB run limit. Without ``kcmp``
    (no ptrace access, a seccomp profile) a heuristic tells them apart."""
    if not kcmp:
        monkeypatch.setattr(sandbox, "_same_vm", lambda a, b: None)
    code = ("import subprocess, time\nx = bytes([1]) * (150 * 1024 * 1024)\nt = time.time()\n"
            "while time.time() - t < 2:\n    subprocess.run(['/bin/true'])\nprint('done')")
    r = sandbox.run(["python3", "-c", code], limits=Limits(timeout_s=20, memory_mb=600, run_memory_mb=260))
    assert r.ok and r.stdout.strip() == "done", (r.limit_exceeded, r.output)


def test_the_disk_walk_never_counts_what_a_link_points_to(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_bytes(b"x" * 100_000)
    os.symlink("/usr", tmp_path / "usr-link")
    used, entries = sandbox._disk_usage(str(tmp_path), 1000)
    assert entries == 3 and used < 1_000_000


# ----------------------------------------------------------------------------- kernel interfaces

KEYRING_PROBE = textwrap.dedent("""
    import ctypes, json, sys
    sys.path.insert(0, sys.argv[1])
    from synthesis import sandbox
    KEYCTL, ADD_KEY = 250, 248  # x86-64
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(KEYCTL, 1, b"_ses.cf-test") < 0:  # KEYCTL_JOIN_SESSION_KEYRING, as runc does per container
        print(json.dumps({"no_keyring": ctypes.get_errno()}))
        sys.exit(0)
    assert libc.syscall(ADD_KEY, b"user", b"cf_canary", sys.argv[2].encode(), len(sys.argv[2]), -3) > 0
    inside = sys.argv[3]
    r = sandbox.run(["python3", "-c", inside])
    planted = libc.syscall(KEYCTL, 10, -3, b"user", b"planted", 0)
    print(json.dumps({"output": r.output, "planted": planted, "isolation": sandbox.isolation()}))
""")
KEYRING_INSIDE = textwrap.dedent("""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(4096)
    k = libc.syscall(250, 10, -3, b"user", b"cf_canary", 0)  # KEYCTL_SEARCH in the session keyring
    err = ctypes.get_errno()
    n = libc.syscall(250, 11, k, buf, 4096) if k > 0 else -1  # KEYCTL_READ
    print("search", k, err, buf.raw[:max(n, 0)].decode())
    rc = libc.syscall(248, b"user", b"planted", b"x", 1, -3)
    print("plant", rc, ctypes.get_errno())
""")
x86_64_only = pytest.mark.skipif(platform.machine() != "x86_64", reason="the probes' system call numbers are x86-64's")


@x86_64_only
def test_the_callers_keyring_is_out_of_reach(canary: Canary) -> None:
    """bwrap has no keyring namespace: without the seccomp filter a tool reads (and plants) keys in the
    session keyring of the job that runs it (a pod's, under runc). Run in a child: joining a keyring is
    for the rest of a process's life."""
    p = subprocess.run([sys.executable, "-c", KEYRING_PROBE, str(REPO_ROOT), canary.secret, KEYRING_INSIDE],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    if "no_keyring" in out:  # e.g. Docker's default seccomp profile: no process here reaches a keyring
        pytest.skip(f"this machine refuses keyctl itself (errno {out['no_keyring']}): no keyring to protect")
    assert out["isolation"]["seccomp"], out["isolation"]["seccomp_detail"]
    canary.assert_not_leaked(out["output"])
    lines = {line.split()[0]: line.split()[1:] for line in out["output"].splitlines() if line.strip()}
    assert lines["search"][:2] == ["-1", str(errno.EPERM)], out["output"]
    assert lines["plant"] == ["-1", str(errno.EPERM)], out["output"]
    assert out["planted"] < 0  # nothing was left in the caller's keyring


@x86_64_only
def test_other_kernel_interfaces_fail_inside() -> None:
    code = textwrap.dedent("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        for name, nr in (("bpf", 321), ("userfaultfd", 323), ("io_uring_setup", 425), ("perf_event_open", 298)):
            rc = libc.syscall(nr, 0, 0, 0, 0, 0)
            print(name, rc, ctypes.get_errno())
    """)
    r = sandbox.run(["python3", "-c", code])
    got = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()}
    assert got == {n: ["-1", str(errno.EPERM)] for n in ("bpf", "userfaultfd", "io_uring_setup", "perf_event_open")}


# ----------------------------------------------------------------------------- argv and env

@pytest.mark.parametrize("argv", [["--bind", "/", "/host", "sh"], ["--", "sh"], ["--help"], ["-h"]])
def test_argv_cannot_be_read_as_bwrap_options(argv: list[str]) -> None:
    with pytest.raises(SandboxError, match="not installed"):
        sandbox.run(argv)


def test_option_like_arguments_reach_the_tool_verbatim() -> None:
    r = sandbox.run(["sh", "-c", 'ls /host 2>&1; printf "<%s>" "$@"', "sh", "--bind", "/", "/host", "--"],
                    env={"--bind": "/", "CF_X": "--share-net"})
    assert "<--bind></></host><-->" in r.stdout
    assert "No such file" in r.stdout


# ----------------------------------------------------------------------------- a job that is not root

CHILD = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    from synthesis import sandbox
    from synthesis.sandbox import Limits
    home, canary_file, port, ray_logs, marker = sys.argv[2:7]
    out = {"isolation": sandbox.isolation()}
    if out["isolation"]["mode"] == "bwrap":
        keys = os.path.join(home, ".ssh", "authorized_keys")
        r = sandbox.run(["sh", "-c", f"echo ssh-ed25519 EVIL >> {keys};"
                                     " echo ssh-ed25519 EVIL >> $HOME/.ssh/authorized_keys;"
                                     f" cat {canary_file}; echo planted > {ray_logs}/planted.txt;"
                                     " mkdir -p locked/inner && touch locked/inner/f && chmod 0 locked/inner locked"])
        out["attack_output"] = r.output
        code = ("import socket\\ntry:\\n socket.create_connection(('127.0.0.1', %s), timeout=2); print('CONNECTED')\\n"
                "except OSError as e:\\n print('refused', e)\\n" % port)
        out["connect"] = sandbox.run(["python3", "-c", code]).stdout
        fork = ("import os, time\\nn = 0\\nfor _ in range(200):\\n try: pid = os.fork()\\n except OSError: break\\n"
                " if pid == 0:\\n  time.sleep(30); os._exit(0)\\n n += 1\\nprint(n)")
        out["forked"] = sandbox.run(["python3", "-c", fork, marker], limits=Limits(max_processes=16)).stdout
        out["leftover"] = os.listdir(os.environ["TMPDIR"])
        out["uid"] = sandbox.run(["id", "-u"]).stdout.strip()
    print(json.dumps(out))
""")


def test_an_ordinary_user_job_is_contained(canary: Canary, loopback_server: int, ray_session_dir: Path,
                                           marker: str) -> None:
    """As a non-root user (Ray images run as ``ray``), bwrap works and nothing it owns is reachable."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() != 0 or shutil.which("setpriv") is None or python is None:
        pytest.skip("needs root, setpriv and a system python3 to run a job as another user")
    uid = 40000 + os.getpid() % 20000
    base = Path(tempfile.mkdtemp(prefix="cf-user-", dir="/tmp"))
    try:
        _contained_as(uid, base, python, canary, loopback_server, ray_session_dir, marker)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _contained_as(uid: int, base: Path, python: str, canary: Canary, port: int, ray_session_dir: Path,
                  marker: str) -> None:
    base.chmod(0o755)
    home, tmpdir = base / "home", base / "tmp"
    for d in (home, home / ".ssh", tmpdir):
        d.mkdir()
        os.chown(d, uid, uid)
    keys = home / ".ssh" / "authorized_keys"
    keys.write_text("ssh-ed25519 GOOD\n")
    os.chown(keys, uid, uid)
    keys.chmod(0o600)
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", python, "-c", CHILD,
            str(REPO_ROOT), str(home), str(canary.tmp_file), str(port), str(ray_session_dir / "logs"), marker]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=str(home),
                       env={"PATH": sandbox.SAFE_PATH, "HOME": str(home), "TMPDIR": str(tmpdir)})
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    if out["isolation"]["mode"] != "bwrap":
        pytest.skip(f"bwrap does not work for an unprivileged user here: {out['isolation']['detail']}")
    assert out["isolation"]["host_uid"] == uid and out["isolation"]["process_limit"] == "per-sandbox"
    assert keys.read_text() == "ssh-ed25519 GOOD\n"
    canary.assert_not_leaked(out["attack_output"])
    assert not (ray_session_dir / "logs" / "planted.txt").exists()
    assert "CONNECTED" not in out["connect"] and "refused" in out["connect"]
    assert 0 < int(out["forked"]) < 16
    assert out["leftover"] == []  # even the directory the tool locked (chmod 0) was removed
    assert out["uid"] == str(sandbox.NOBODY)
    assert_no_survivors(marker)


def test_each_run_names_its_isolation() -> None:
    r = sandbox.run(["true"])
    assert r.isolation == "bwrap"
    info = sandbox.isolation()
    assert set(sandbox.REQUIRED_NAMESPACES) <= set(info["namespaces"])
    assert info["uid_inside"] == sandbox.NOBODY
    assert info["host_uid"] != 0 or info["process_limit"] == "none"
    assert sandbox.network_isolation() == "userns+netns"
    assert sandbox.require_isolation(allow_unsandboxed=False) == "bwrap"
    assert set(info["run_watch"]) == {"deleted_files", "vfork_by_kcmp"}
    assert info["seccomp"] and "keyctl" in info["seccomp_detail"]
