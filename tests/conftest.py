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
def ray_session() -> Iterator[None]:
    """A local Ray with small fixed resources, shared by every test that needs Ray."""
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
        runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO_ROOT)}},
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
