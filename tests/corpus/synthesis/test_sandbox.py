"""The sandbox: fresh directory, limits, output cap, process-group kill, no network."""

from __future__ import annotations

import os
import socket
import time

import pytest

from corpus.synthesis import sandbox
from corpus.synthesis.sandbox import Limits, SandboxError


def test_runs_in_a_fresh_directory_each_time() -> None:
    r1 = sandbox.run(["sh", "-c", "ls; echo made > left.txt; pwd"], {"in.txt": "hello"})
    assert r1.ok and "in.txt" in r1.stdout
    workdir = r1.stdout.strip().splitlines()[-1]
    assert not os.path.exists(workdir)  # removed afterwards
    r2 = sandbox.run(["sh", "-c", "ls"], {})
    assert r2.ok and "left.txt" not in r2.stdout and r2.stdout.strip() == ""


def test_collects_named_output_files() -> None:
    r = sandbox.run(["sh", "-c", "echo 42 > out.txt"], collect=["out.txt", "absent.txt"])
    assert r.files == {"out.txt": b"42\n"}


def test_environment_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    monkeypatch.setenv("CF_SECRET_TOKEN", "s3cr3t")
    r = sandbox.run(["env"])
    assert "proxy" not in r.stdout.lower() and "s3cr3t" not in r.stdout
    assert "HOME=" in r.stdout


def test_timeout_kills_the_whole_process_group_fast() -> None:
    t0 = time.perf_counter()
    r = sandbox.run(["sh", "-c", "sleep 60 & echo $! > child.pid; sleep 60"], limits=Limits(timeout_s=1),
                    collect=["child.pid"])
    assert r.timed_out and r.returncode is None
    assert time.perf_counter() - t0 < 5
    child = int(r.files["child.pid"])
    deadline = time.time() + 5
    while time.time() < deadline:  # the background child was in the group: gone (or a reaped zombie)
        try:
            with open(f"/proc/{child}/status") as f:
                state = next(ln for ln in f if ln.startswith("State:"))
            if "Z" in state.split()[1]:
                break
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"background child {child} survived the timeout")


def test_output_is_capped_and_the_writer_killed() -> None:
    t0 = time.perf_counter()
    r = sandbox.run(["sh", "-c", "yes"], limits=Limits(timeout_s=20, max_output_bytes=4096))
    assert r.output_truncated and len(r.stdout) == 4096
    assert time.perf_counter() - t0 < 5


def test_memory_limit() -> None:
    r = sandbox.run(["python3", "-c", "x = bytearray(800 * 1024 * 1024); print('allocated')"],
                    limits=Limits(memory_mb=256))
    assert r.returncode != 0 and "allocated" not in r.stdout
    ok = sandbox.run(["python3", "-c", "x = bytearray(8 * 1024 * 1024); print('allocated')"],
                     limits=Limits(memory_mb=256))
    assert ok.ok and "allocated" in ok.stdout


def test_file_size_limit() -> None:
    r = sandbox.run(["sh", "-c", "head -c 3000000 /dev/zero > big.bin"], limits=Limits(max_file_bytes=1_000_000))
    assert r.returncode != 0


def test_cpu_limit() -> None:
    r = sandbox.run(["python3", "-c", "while True: pass"], limits=Limits(timeout_s=20, cpu_s=1))
    assert not r.timed_out and r.returncode != 0 and r.wall_s < 10


def test_no_network_when_the_kernel_allows_a_namespace() -> None:
    mode = sandbox.network_isolation()
    assert mode in {"netns", "userns+netns", "none"}
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2); print('CONNECTED')"
        r = sandbox.run(["python3", "-c", code], limits=Limits(timeout_s=10))
        if mode != "none":  # "none" (no namespace allowed): the job report says network is not isolated
            assert "CONNECTED" not in r.stdout and r.returncode != 0
        opened = sandbox.run(["python3", "-c", code], limits=Limits(timeout_s=10, network=True))
        assert "CONNECTED" in opened.stdout  # the same probe works when network is allowed
    finally:
        server.close()


def test_privileges_dropped_when_root() -> None:
    r = sandbox.run(["id", "-u"])
    assert int(r.stdout) == (sandbox.NOBODY if os.geteuid() == 0 else os.geteuid())


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/evil", "a/../../b", ""])
def test_file_names_must_stay_inside(name: str) -> None:
    with pytest.raises(SandboxError):
        sandbox.run(["true"], {name: "x"})


def test_missing_tool_is_a_clear_error() -> None:
    with pytest.raises(SandboxError, match="not installed"):
        sandbox.run(["cf-no-such-tool"])


def test_tool_versions_are_reported() -> None:
    versions = sandbox.tool_versions()
    assert set(versions) == {"iverilog", "verilator", "yosys", "tclsh"}
    assert all(v != "missing" for v in versions.values()), versions
