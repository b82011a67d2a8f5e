"""The specialist registry: one JSON file mapping phase → the adapter that serves it.

Evaluation and serving read it. Format (``version: 1``)::

    {"version": 1,
     "specialists": {
       "rtl_design": {"phase": "rtl_design", "base_model": "Qwen/Qwen2.5-Coder-7B-Instruct",
                      "adapter_path": "s3://bucket/sweeps/rtl_design/adapter",
                      "dataset_version": "sha256:…", "metrics": {"eval_loss": 0.81, …},
                      "config": {… resolved FinetuneConfig …}, "run": "tune-rtl_design/…",
                      "registered_at": "2026-11-25T03:30:00Z"}}}

Every writer (:func:`register` here, ``evaluation.registry.record_evaluations``) goes through
:func:`update`: a read-modify-write that lands with an atomic rename, so a reader never sees a
half-written registry. On local (and NFS) paths writers hold ``<path>.lock`` (``filelock``), so
concurrent writers do not drop entries. Object stores have no locks: there a writer re-reads the
file just before writing (and starts over if it changed) and reads it back after writing; an
entry another writer's stale update overwrote is written again, and one still lost after
:data:`S3_ATTEMPTS` tries is a :class:`RegistryError` naming the file and the phase. That narrows
the race to the milliseconds between the re-read and the write, without closing it: run jobs
that may finish together against a local or NFS registry, or one after the other.

A file that is not JSON, or not this format, is a :class:`RegistryError` naming it: jobs that
register call :func:`check` before training, so a hand-edited registry fails the job at once.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from chipforge import fs

VERSION = 1
S3_ATTEMPTS = 5  # object stores: tries before a lost update is an error
S3_SETTLE_S = 1.0  # object stores: wait before reading a write back (a writer that read before it lands within)


class RegistryError(ValueError):
    """The registry file cannot be used (not JSON, another format) or an update to it was lost."""


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
    """The registry (an empty one when the file does not exist yet); a file that is not a registry
    is a :class:`RegistryError` naming it."""
    if not fs.exists(path):
        return {"version": VERSION, "specialists": {}}
    try:
        data = json.loads(fs.read_text(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"registry {path}: not valid JSON ({exc}); fix the file or move it away "
                            f"(the next registration starts a new one)") from None
    if not isinstance(data, dict):
        raise RegistryError(f"registry {path}: expected a JSON object with \"version\" and \"specialists\", "
                            f"found {type(data).__name__}")
    if data.get("version") != VERSION:
        raise RegistryError(f"registry {path}: unsupported format (version {data.get('version')!r}, expected {VERSION})")
    specialists = data.get("specialists")
    if not isinstance(specialists, dict):
        raise RegistryError(f"registry {path}: \"specialists\" must be an object mapping phase -> entry, "
                            f"found {type(specialists).__name__}")
    for phase, entry in specialists.items():
        if not isinstance(entry, dict):
            raise RegistryError(f"registry {path}: specialist {phase!r} must be an object, found {type(entry).__name__}")
    return data


def check(path: str) -> None:
    """Before training: the registry a job will write is readable (absent is fine)."""
    load(path)


def get(path: str, phase: str) -> dict[str, Any] | None:
    return load(path)["specialists"].get(phase)


@contextlib.contextmanager
def lock(path: str) -> Iterator[None]:
    """Exclusive lock (``<path>.lock``, ``filelock``) held by every writer of a local registry file.

    ``path`` is resolved first, so ``reg.json``, ``./reg.json`` and ``file:///…/reg.json`` take one
    lock. Object stores have no locks: nothing is held there (see :func:`register`)."""
    if fs.is_uri(path):
        yield
        return
    from filelock import FileLock

    lock_path = fs.resolve(path)[1] + ".lock"
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    with FileLock(lock_path):
        yield


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
    update(path, lambda specialists: {phase: entry})
    return entry


Change = Callable[[dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]


def update(path: str, change: Change) -> dict[str, dict[str, Any]]:
    """Read-modify-write of the registry, the one way every writer (registration, evaluation) updates it.

    ``change`` gets the current specialists (phase → entry; a copy) and returns the entries to set
    (phase → the whole new entry; ``{}`` writes nothing); it may be called more than once, each time
    with the registry as it is then. Returns the entries set. A local registry is updated under
    :func:`lock`; an object store's as :func:`_update_unlocked` says."""
    if fs.is_uri(path):
        return _update_unlocked(path, change)
    with lock(path):
        data = load(path)
        new = change(copy.deepcopy(data["specialists"]))
        if new:
            data["specialists"].update(new)
            fs.write_json(path, data)
    return new


def _update_unlocked(path: str, change: Change) -> dict[str, dict[str, Any]]:
    """Object stores: read-modify-write with a re-read before the write and a read-back after it;
    start over while another writer's update interleaves, :class:`RegistryError` when it never settles.

    An entry of ours is lost when the read-back shows the entry we replaced (a writer that read before
    our write landed after it); one that shows a third version was replaced by a later update of that
    phase (a newer registration), which wins as it would under the lock."""
    lost: list[str] = []
    for _ in range(S3_ATTEMPTS):
        data = load(path)
        before = _canonical(data["specialists"])
        base = copy.deepcopy(data["specialists"])
        new = change(copy.deepcopy(base))
        if not new:
            return new
        lost = sorted(new)
        if _canonical(load(path)["specialists"]) != before:
            continue  # another writer landed since we read: start over from their version
        data["specialists"].update(new)
        fs.write_json(path, data)
        time.sleep(S3_SETTLE_S)  # a writer that read before our write lands within this
        landed = load(path)["specialists"]
        lost = [phase for phase, entry in new.items() if _overwritten(landed.get(phase), entry, base.get(phase))]
        if not lost:
            return new
    which = ", ".join(repr(p) for p in lost)
    raise RegistryError(f"registry {path}: the {which} entr{'y was' if len(lost) == 1 else 'ies were'} overwritten "
                        f"by concurrent writers {S3_ATTEMPTS} times (an object store has no locks); rerun the job, "
                        f"or use a local/NFS registry")


def _overwritten(landed: dict[str, Any] | None, ours: dict[str, Any], replaced: dict[str, Any] | None) -> bool:
    """Whether our write of an entry was undone: the file holds the entry we replaced (or none, as
    before) instead of ours. Blocks another writer added to ours (an evaluation) are fine."""
    if landed is not None and _canonical({k: landed.get(k) for k in ours}) == _canonical(ours):
        return False
    return _canonical(landed) == _canonical(replaced)


def _canonical(value: Any) -> str:
    """``value`` as the registry file holds it (NaN metrics compare equal to themselves)."""
    return json.dumps(value, sort_keys=True, default=str)
