"""Shared fixtures: one small local Ray for the whole session, tiny on-disk assets."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Token auth is on by default in Ray 2.60; tests run a private local cluster without it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
# Debian package of each external tool the tests run (README: `apt-get install -y ...`).
TOOL_PACKAGES = {"iverilog": "iverilog", "vvp": "iverilog", "verilator": "verilator", "yosys": "yosys",
                 "tclsh": "tcl", "bwrap": "bubblewrap", "git": "git", "g++": "g++"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tools(*names): needs these programs on PATH (skipped, naming the "
                                       "Debian packages to install, when one is missing)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    import shutil

    for mark in item.iter_markers("tools"):
        missing = [t for t in mark.args if shutil.which(t) is None]
        if missing:
            pkgs = sorted({TOOL_PACKAGES.get(t, t) for t in missing})
            pytest.skip(f"needs {', '.join(missing)}: install with `apt-get install -y {' '.join(pkgs)}`")
    if item.get_closest_marker("gpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU (run on a GPU machine: bench/gpu_check.sh)")
ASSETS = Path(__file__).resolve().parent / "assets"


@pytest.fixture(scope="session")
def s3_env() -> Iterator[dict[str, str]]:
    """A local S3 for the session: moto's server on 127.0.0.1, reached through ``AWS_ENDPOINT_URL``.

    Its variables are set in this process and, through ``ray_session``, in every Ray worker, so an
    ``s3://`` path in any test reaches this server and never the network. Buckets: ``make_bucket``.
    """
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto's S3 server did not start on {endpoint} (pip install -e '.[dev]')")
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(10)


def make_bucket(s3_env: dict[str, str], name: str) -> str:
    """Create bucket ``name`` on the session's S3; returns ``s3://name``."""
    import pyarrow.fs as pafs

    pafs.S3FileSystem(endpoint_override=s3_env["AWS_ENDPOINT_URL"], allow_bucket_creation=True).create_dir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_session(s3_env: dict[str, str]) -> Iterator[None]:
    """A local Ray with small fixed resources, shared by every test that needs Ray (workers see ``s3_env``)."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(
        address="local",  # never attach to a cluster another test or person started
        num_cpus=4,
        num_gpus=0,
        object_store_memory=512 * 1024**2,
        include_dashboard=True,
        log_to_driver=False,
        runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO_ROOT), **s3_env}},
    )
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def assets() -> Path:
    return ASSETS
