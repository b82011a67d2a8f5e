"""The specialist registry: one JSON file mapping phase → the adapter that serves it.

Evaluation and serving read it. Format (``version: 1``)::

    {"version": 1,
     "specialists": {
       "rtl_design": {"phase": "rtl_design", "base_model": "Qwen/Qwen2.5-Coder-7B-Instruct",
                      "adapter_path": "s3://bucket/sweeps/rtl_design/adapter",
                      "dataset_version": "sha256:…", "metrics": {"eval_loss": 0.81, …},
                      "config": {… resolved FinetuneConfig …}, "run": "tune-rtl_design/…",
                      "registered_at": "2026-11-25T03:30:00Z"}}}

Updates are read-modify-write under a lock file (local paths) and land with an atomic rename,
so a reader never sees a half-written registry and concurrent writers do not drop entries.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

from chipforge import fs

VERSION = 1


def dataset_version(dataset_dir: str | Sequence[str], phase: str) -> str:
    """sha256 over (relative path, bytes) of every parquet file of the phase, all splits, every directory."""
    from training.data import EXAMPLE_SUBDIRS, dataset_roots

    h = hashlib.sha256()
    n = 0
    for root in dataset_roots(dataset_dir):
        for sub in EXAMPLE_SUBDIRS:
            base = fs.join(root, sub, f"phase={phase}")
            for p in (p for p in fs.listdir(base, recursive=True) if p.endswith(".parquet")):
                n += 1
                h.update(f"{sub}/phase={phase}/".encode() + fs.relative(p, base).encode() + b"\0")
                h.update(hashlib.sha256(fs.read_bytes(p)).digest())
    if not n:
        raise FileNotFoundError(f"dataset {', '.join(dataset_roots(dataset_dir))}: no parquet files for phase {phase!r}")
    return "sha256:" + h.hexdigest()


def load(path: str) -> dict[str, Any]:
    """The registry (an empty one when the file does not exist yet)."""
    if not fs.exists(path):
        return {"version": VERSION, "specialists": {}}
    data = fs.read_json(path)
    if data.get("version") != VERSION or not isinstance(data.get("specialists"), dict):
        raise ValueError(f"registry {path}: unsupported format (version {data.get('version')!r})")
    return data


def get(path: str, phase: str) -> dict[str, Any] | None:
    return load(path)["specialists"].get(phase)


@contextlib.contextmanager
def lock(path: str) -> Iterator[None]:
    """Exclusive lock (``<path>.lock``, flock) held by every writer of the registry file."""
    if fs.is_uri(path):  # object stores: last writer wins (each write is still atomic)
        yield
        return
    import fcntl

    lock_path = os.path.abspath(os.path.expanduser(path)) + ".lock"
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def register(
    path: str,
    phase: str,
    *,
    base_model: str,
    adapter_path: str,
    dataset_version: str,
    metrics: dict[str, Any],
    config: dict[str, Any],
    run: str | None = None,
) -> dict[str, Any]:
    """Set the specialist of ``phase`` (replacing the previous one); returns the new entry."""
    entry = {
        "phase": phase,
        "base_model": base_model,
        "adapter_path": adapter_path,
        "dataset_version": dataset_version,
        "metrics": metrics,
        "config": config,
        "run": run,
        "registered_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    with lock(path):
        data = load(path)
        data["specialists"][phase] = entry
        fs.write_json(path, data)
    return entry
