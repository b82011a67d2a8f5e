"""The sandbox as the validator uses it: fresh directory, collection, environment, limits,
the validator's real tools inside bwrap, and the refusal to run unsandboxed unless allowed.

The attacks (escapes, symlinks, host files, services, fork bombs) are in
``tests/security/test_sandbox.py``.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time

import pytest

from synthesis import sandbox
from synthesis.sandbox import Limits, SandboxError, SandboxUnavailable

pytestmark = pytest.mark.tools("bwrap")

BWRAP = sandbox.isolation()["mode"] == "bwrap"
needs_bwrap = pytest.mark.skipif(not BWRAP and "not found" not in sandbox.isolation()["detail"],
                                 reason=f"the kernel forbids bwrap's namespaces: {sandbox.isolation()['detail']}")


@pytest.fixture(autouse=True)
def _unsandboxed_where_the_kernel_forbids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where bwrap is installed but namespaces are forbidden, test the rest unsandboxed."""
    if not BWRAP and "not found" not in sandbox.isolation()["detail"]:
        monkeypatch.setattr(sandbox, "_unsandboxed_allowed", True)


@pytest.fixture()
def unsandboxed(monkeypatch: pytest.MonkeyPatch) -> sandbox._Plan:
    """Pretend no isolation works here (as on a host without bubblewrap)."""
    plan = sandbox._Plan("none", sandbox.NOBODY if os.geteuid() == 0 else None, detail="bwrap not found (test)")
    monkeypatch.setattr(sandbox, "_plan", lambda: plan)
    monkeypatch.setattr(sandbox, "_unsandboxed_allowed", False)
    monkeypatch.delenv(sandbox.ALLOW_UNSANDBOXED_ENV, raising=False)
    return plan


@needs_bwrap
def test_runs_in_a_fresh_directory_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args, **kwargs) -> str:
        made.append(real_mkdtemp(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(sandbox.tempfile, "mkdtemp", recording_mkdtemp)
    r1 = sandbox.run(["sh", "-c", "ls; echo made > left.txt; pwd"], {"in.txt": "hello", "sub/dir.txt": b"x"})
    assert r1.ok and "in.txt" in r1.stdout and "sub" in r1.stdout
    assert r1.stdout.strip().splitlines()[-1] == sandbox.WORKDIR
    r2 = sandbox.run(["sh", "-c", "ls"], {})
    assert r2.ok and r2.stdout.strip() == ""
    assert len(made) == 2 and not any(os.path.exists(d) for d in made)  # removed afterwards


def test_collects_named_output_files() -> None:
    r = sandbox.run(["sh", "-c", "mkdir -p o && echo 42 > out.txt && echo 7 > o/n.txt"],
                    collect=["out.txt", "o/n.txt", "absent.txt"])
    assert r.files == {"out.txt": b"42\n", "o/n.txt": b"7\n"} and r.rejected_files == {}


def test_collected_file_over_the_cap_is_rejected_not_truncated() -> None:
    r = sandbox.run(["sh", "-c", "head -c 5000 /dev/zero > out.bin"], limits=Limits(max_output_bytes=1000),
                    collect=["out.bin"])
    assert r.files == {} and "larger" in r.rejected_files["out.bin"]


def test_environment_is_minimal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    monkeypatch.setenv("CF_SECRET_TOKEN", "s3cr3t")
    r = sandbox.run(["env"], env={"CF_EXTRA": "1"})
    assert "proxy" not in r.stdout.lower() and "s3cr3t" not in r.stdout
    names = {line.split("=", 1)[0] for line in r.stdout.splitlines()}
    assert names <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "PWD", "CF_EXTRA"} and "HOME" in names


def test_timeout_returns_fast() -> None:
    t0 = time.perf_counter()
    r = sandbox.run(["sh", "-c", "sleep 60 & sleep 60"], limits=Limits(timeout_s=1))
    assert r.timed_out and r.returncode is None and not r.ok
    assert time.perf_counter() - t0 < 5


def test_output_is_capped_and_the_writer_killed() -> None:
    t0 = time.perf_counter()
    r = sandbox.run(["sh", "-c", "yes"], limits=Limits(timeout_s=20, max_output_bytes=4096))
    assert r.output_truncated and len(r.stdout) == 4096
    assert time.perf_counter() - t0 < 5


def test_limits_leave_room_for_ordinary_work() -> None:
    r = sandbox.run(["python3", "-c", "x = bytearray(8 * 1024 * 1024); open('f', 'wb').write(x); print('allocated')"],
                    limits=Limits(memory_mb=256, max_file_bytes=16 * 1024 * 1024))
    assert r.ok and "allocated" in r.stdout


def test_network_is_opt_in() -> None:
    assert sandbox.network_isolation() in {"userns+netns", "none"}
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2); print('CONNECTED')"
        r = sandbox.run(["python3", "-c", code], limits=Limits(timeout_s=10))
        if sandbox.network_isolation() != "none":
            assert "CONNECTED" not in r.stdout and r.returncode != 0
        opened = sandbox.run(["python3", "-c", code], limits=Limits(timeout_s=10, network=True))
        assert "CONNECTED" in opened.stdout  # the same probe works when network is allowed
    finally:
        server.close()


@needs_bwrap
def test_tools_run_as_nobody_inside() -> None:
    r = sandbox.run(["id", "-u"])
    assert int(r.stdout) == sandbox.NOBODY and r.isolation == "bwrap"


VERILOG = "module inv(input a, output y); assign y = ~a; endmodule\n"
TB = ('module tb; reg a; wire y; inv d(.a(a), .y(y));\n'
      'initial begin a = 0; #1 $display("TEST PASSED %b", y); end endmodule\n')


@needs_bwrap
def test_the_validators_tools_work_inside() -> None:
    """The validator's real invocations: iverilog (+ivl helpers), vvp, verilator, yosys (+abc), tclsh."""
    comp = sandbox.run(["iverilog", "-g2012", "-o", "sim.vvp", "design.sv", "tb.sv", "-s", "tb"],
                       {"design.sv": VERILOG, "tb.sv": TB}, collect=["sim.vvp"])
    assert comp.ok and "sim.vvp" in comp.files, comp.output
    sim = sandbox.run(["vvp", "-n", "sim.vvp"], {"sim.vvp": comp.files["sim.vvp"]})
    assert sim.ok and "TEST PASSED 1" in sim.stdout, sim.output
    lint = sandbox.run(["verilator", "--lint-only", "-Wno-fatal", "--timing", "design.sv"], {"design.sv": VERILOG})
    assert lint.ok, lint.output
    ys = sandbox.run(["yosys", "-q", "-s", "script.ys"],
                     {"design.v": VERILOG, "script.ys": "read_verilog design.v\nsynth -top inv\nabc\nstat\n"})
    assert ys.ok and "ERROR" not in ys.output, ys.output
    tcl = sandbox.run(["tclsh", "c.tcl"], {"c.tcl": 'puts [info complete "set a 1"]\n'})
    assert tcl.ok and tcl.stdout.strip() == "1", tcl.output


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/evil", "a/../../b", "", "a\x00b"])
def test_file_names_must_stay_inside(name: str) -> None:
    with pytest.raises(SandboxError):
        sandbox.run(["true"], {name: "x"})


def test_files_that_cannot_be_written_are_a_sandbox_error_naming_them() -> None:
    with pytest.raises(SandboxError, match="'a/b' cannot be written"):
        sandbox.run(["true"], {"a": "x", "a/b": "y"})
    with pytest.raises(SandboxError, match="surrogates"):
        sandbox.run(["true"], {"a\udc80": "x"})
    with pytest.raises(SandboxError, match="must be str or bytes"):
        sandbox.run(["true"], {"a": None})
    with pytest.raises(SandboxError, match="content is not valid text"):
        sandbox.run(["true"], {"a": "x\ud800"})
    with pytest.raises(SandboxError, match="longer than 1024"):
        sandbox.run(["true"], {"/".join(["d"] * 1500): "x"})


def test_missing_tool_is_a_clear_error() -> None:
    with pytest.raises(SandboxError, match="not installed"):
        sandbox.run(["cf-no-such-tool"])


def test_tool_versions_are_reported() -> None:
    versions = sandbox.tool_versions()
    assert set(versions) == {"iverilog", "verilator", "yosys", "tclsh"}
    assert all(v != "missing" for v in versions.values()), versions


# ----------------------------------------------------------------------------- no isolation available

def test_without_isolation_runs_are_refused_with_how_to_fix(unsandboxed: sandbox._Plan) -> None:
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap") as exc:
        sandbox.require_isolation(allow_unsandboxed=False)
    assert "synthesis.allow_unsandboxed=true" in str(exc.value) and "bwrap not found (test)" in str(exc.value)
    with pytest.raises(SandboxUnavailable):
        sandbox.run(["true"])
    assert isinstance(exc.value, SandboxError)  # validate_row's handler still catches it
    assert sandbox.network_isolation() == "none" and sandbox.isolation()["mode"] == "none"


def test_unsandboxed_runs_only_when_explicitly_allowed(unsandboxed: sandbox._Plan) -> None:
    assert sandbox.require_isolation(allow_unsandboxed=True) == "none"
    r = sandbox.run(["sh", "-c", "id -u; pwd"], {"in.txt": "x"}, collect=["in.txt"])
    assert r.ok and r.isolation == "none" and r.files == {"in.txt": b"x"}
    assert int(r.stdout.split()[0]) == (sandbox.NOBODY if os.geteuid() == 0 else os.geteuid())
    assert sandbox.isolation()["unsandboxed_allowed"] is True
    t0 = time.perf_counter()
    slow = sandbox.run(["sh", "-c", "sleep 60"], limits=Limits(timeout_s=1))
    assert slow.timed_out and time.perf_counter() - t0 < 5


def test_unsandboxed_can_be_allowed_by_environment(unsandboxed: sandbox._Plan,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sandbox.ALLOW_UNSANDBOXED_ENV, "1")  # how Ray actors inherit the job's choice
    assert sandbox.run(["true"]).ok
