"""A real two-node local Ray cluster: the corpus job submitted with the Jobs SDK and a working_dir.

The cluster is private to this test: its own ports and temp dirs, token auth off. It is
stopped by killing only the processes whose command line names this test's temp dirs (``ray
stop`` would stop every Ray on the machine, including other people's clusters).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as pads
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
GIT = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "-c", "init.defaultBranch=main"]
EXCLUDES = ["out/", "runs/", "bench/results/", "sample/dataset/", ".git/", ".pytest_cache/", ".benchmarks/",
            "**/__pycache__/", "*.egg-info/"]
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def ray_cli() -> str:
    return shutil.which("ray") or str(Path(sys.executable).with_name("ray"))


def pids_mentioning(marker: str) -> list[int]:
    """Pids of processes whose command line contains ``marker`` (this cluster's temp dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry))
    return found


def stop_cluster(marker: str, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, every process of this cluster only (raylet, gcs, dashboard, workers)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = pids_mentioning(marker)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        while pids_mentioning(marker) and time.time() < deadline:
            time.sleep(0.2)
        if not pids_mentioning(marker):
            return


def make_repo(path: Path, files: dict[str, str]) -> None:
    path.mkdir(parents=True)
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run([*GIT, *args], cwd=path, check=True, capture_output=True)


@pytest.fixture
def cluster() -> Iterator[dict]:
    # Short base path: Ray's unix socket paths under the temp dir must stay under 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="cfray", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")} | ENV
    (gcs, dash, client, agent_grpc, agent_http, metrics, nm, om, rta,
     w_agent_grpc, w_agent_http, w_metrics, w_nm, w_om, w_rta) = free_ports(15)
    head = [ray_cli(), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
            "--dashboard-agent-grpc-port", str(agent_grpc), "--dashboard-agent-listen-port", str(agent_http),
            "--metrics-export-port", str(metrics), "--node-manager-port", str(nm), "--object-manager-port", str(om),
            "--runtime-env-agent-port", str(rta), "--num-cpus", "2", "--num-gpus", "0",
            "--temp-dir", str(base / "h"), "--disable-usage-stats"]
    worker = [ray_cli(), "start", "--address", f"127.0.0.1:{gcs}", "--node-ip-address", "127.0.0.1",
              "--dashboard-agent-grpc-port", str(w_agent_grpc), "--dashboard-agent-listen-port", str(w_agent_http),
              "--metrics-export-port", str(w_metrics), "--node-manager-port", str(w_nm),
              "--object-manager-port", str(w_om), "--runtime-env-agent-port", str(w_rta),
              "--num-cpus", "1", "--num-gpus", "0", "--resources", '{"node2": 1}',
              "--temp-dir", str(base / "w"), "--disable-usage-stats"]
    try:
        for cmd in (head, worker):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
        yield {"dashboard": f"http://127.0.0.1:{dash}", "base": base, "env": env}
    finally:
        stop_cluster(str(base))
        assert not pids_mentioning(str(base)), "cluster processes left running"
        shutil.rmtree(base, ignore_errors=True)


def wait_for_nodes(address: str, n: int, timeout_s: float = 60) -> None:
    from ray.util.state import list_nodes

    deadline = time.time() + timeout_s
    alive = []
    while time.time() < deadline:
        try:
            alive = [x for x in list_nodes(address=address) if x.state == "ALIVE"]
        except Exception:  # dashboard still starting
            alive = []
        if len(alive) >= n:
            return
        time.sleep(1)
    raise AssertionError(f"only {len(alive)} of {n} nodes alive after {timeout_s} s")


def test_corpus_job_on_two_node_cluster(cluster: dict, tmp_path: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    wait_for_nodes(cluster["dashboard"], 2)
    adder = "module adder #(parameter W = 8)(input [W-1:0] a, b, output [W:0] y);\n  assign y = a + b;\nendmodule\n"
    make_repo(tmp_path / "repos" / "one", {"LICENSE": "MIT License\n\nPermission is hereby granted, free of charge, "
                                                       "to any person obtaining a copy\n", "rtl/adder.v": adder,
                                           "rtl/inv.v": "module inv(input a, output y);\n  assign y = ~a;\nendmodule\n"})
    make_repo(tmp_path / "repos" / "two", {"src/adder_copy.v": "// copied\n" + adder,
                                           "src/mux.sv": "module mux(input logic s, a, b, output logic y);\n"
                                                         "  assign y = s ? b : a;\nendmodule\n"})
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("repositories:\n"
                        f"  - {{name: one, url: {(tmp_path / 'repos' / 'one').as_uri()}}}\n"
                        f"  - {{name: two, url: {tmp_path / 'repos' / 'two'}}}\n"
                        f"  - {{name: missing, url: {(tmp_path / 'repos' / 'nope').as_uri()}}}\n")
    out = tmp_path / "out"
    client = JobSubmissionClient(cluster["dashboard"])
    job_id = client.submit_job(
        entrypoint=(f"python -m jobs.build_corpus --manifest {manifest} --output {out} "
                    f"cache_dir={tmp_path / 'cache'} clone.concurrency=1 parse.concurrency=1"),
        runtime_env={"working_dir": str(REPO), "excludes": EXCLUDES, "env_vars": dict(ENV)},
    )
    deadline = time.time() + 240
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.time() < deadline:
        time.sleep(2)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    if not status.is_terminal():
        client.stop_job(job_id)
    assert status == JobStatus.SUCCEEDED, f"job {job_id} {status}\n{logs[-6000:]}"
    assert "corpus summary" in logs

    report = json.loads((out / "report.json").read_text())
    assert report["repositories"]["ok"] == 2
    assert [f["repo"] for f in report["repositories"]["failed"]] == ["missing"]
    table = pads.dataset(out / "modules", format="parquet", partitioning="hive").to_table()
    rows = {r["name"]: r for r in table.to_pylist()}
    assert set(rows) >= {"adder", "inv", "mux"} and table.num_rows == 4
    assert sorted(set(table.column("repo").to_pylist())) == ["one", "two"]
    assert report["duplicates_removed"]["exact"] == 1 and report["modules_kept"] == 3
