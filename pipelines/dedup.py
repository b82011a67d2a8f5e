"""Distributed deduplication of parsed modules as Ray Data steps (the corpus job's dedup stage).

signed rows (MinHash + LSH band keys, computed in the parse actors or here), materialised once →
  one key row per (band key | exact key, module), hash-partitioned by key into ``partitions``
  Arrow files per block under ``work_dir`` (an external shuffle through storage: no shuffle
  actors, one write and one read of the small key rows) → one task per partition groups its
  keys with numpy → verified edges + the keep fields of linked modules.
Edges and the keep-policy fields of linked modules go to one task (not the driver, whose memory
stays flat in the corpus size): union-find there, and the id → (cluster, kind, keep) map of
clustered rows it returns stays in the object store, broadcast to one map stage. Every row
stays; exactly one per cluster has keep=True.

Each stage writes its process CPU seconds per call to ``stats_dir`` when given (``record``),
so the job can report CPU per stage.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from chipforge import fs
from chipforge.stage import StageResources, cluster_cpus, map_stage
from corpus.dedup import (
    KEYS_SCHEMA,
    MODULES_PER_PARTITION,
    DedupConfig,
    SignatureStage,
    apply_assignment,
    assign,
    assignment_stats,
    bucket_edges,
    clusters,
    explode_keys,
)

_BROADCAST: dict[str, Any] = {}  # per worker process: object ref hex → assignment dict
# Rows per key task: many small parse blocks (one per clone call) are bundled into one task, so
# there are fewer tasks and key files. The apply stage is not bundled: its blocks go to the
# partitioned write (one directory per repository; pyarrow refuses more than 1,024 per block).
ROWS_PER_TASK = 8192


def record(stats_dir: str | None, stage: str, cpu_seconds: float, **extra: Any) -> None:
    """One JSON file ``{stage, cpu_seconds, ...}`` per call under ``stats_dir`` (nothing when None)."""
    if stats_dir:
        fs.write_json(fs.join(stats_dir, f"{stage}-{uuid.uuid4().hex}.json"),
                      {"stage": stage, "cpu_seconds": cpu_seconds, **extra})


def timed(stats_dir: str | None, stage: str, fn: Callable[..., pa.Table], *args: Any, **kwargs: Any) -> pa.Table:
    """``fn(*args, **kwargs)`` with this process's CPU time recorded under ``stage``."""
    c0 = time.process_time()
    out = fn(*args, **kwargs)
    record(stats_dir, stage, time.process_time() - c0, rows=out.num_rows)
    return out


def _signatures(batch: pa.Table, num_perm: int, shingle_size: int, seed: int, bands: int, rows: int,
                stats_dir: str | None = None) -> pa.Table:
    return timed(stats_dir, "signatures", SignatureStage(num_perm, shingle_size, seed, bands, rows, with_rows=True),
                 batch)


def _partition_keys(batch: pa.Table, work_dir: str, partitions: int, stats_dir: str | None = None) -> pa.Table:
    """Key rows of a batch, split by ``key % partitions`` into one Arrow file per partition; returns row counts."""
    c0 = time.process_time()
    keys = explode_keys(batch)
    part = pa.array(keys.column("key").to_numpy() % np.uint64(partitions), pa.uint64())
    name = uuid.uuid4().hex
    counts = []
    for p in range(partitions):
        sub = keys.filter(pc.equal(part, p))
        if sub.num_rows:
            fs.write_arrow(fs.join(work_dir, f"p={p}", name + ".arrow"), sub)
        counts.append(sub.num_rows)
    record(stats_dir, "dedup_keys", time.process_time() - c0, rows=keys.num_rows)
    return pa.table({"partition": pa.array(range(partitions), pa.int32()), "rows": pa.array(counts, pa.int64())})


def _buckets(batch: pa.Table, work_dir: str, threshold: float, max_bucket: int,
             stats_dir: str | None = None) -> pa.Table:
    """One partition (a one-row batch naming it) → LINKS rows of all its key files."""
    c0 = time.process_time()
    out = []
    for p in batch.column("partition").to_pylist():
        parts = [fs.read_arrow(f) for f in sorted(fs.listdir(fs.join(work_dir, f"p={p}"))) if f.endswith(".arrow")]
        if parts:
            out.append(bucket_edges(pa.concat_tables(parts), threshold, max_bucket))
    links = pa.concat_tables(out) if out else bucket_edges(KEYS_SCHEMA.empty_table(), threshold, max_bucket)
    record(stats_dir, "dedup_buckets", time.process_time() - c0, rows=links.num_rows)
    return links


def _apply(batch: pa.Table, ref: list[Any], stats_dir: str | None = None) -> pa.Table:
    return timed(stats_dir, "dedup_apply", apply_assignment, batch, _broadcast(ref))


def _broadcast(ref: list[Any]) -> Any:
    """Fetch a broadcast object once per worker process (``ref`` is a one-element list, so Ray leaves it a ref)."""
    import ray

    key = ref[0].hex()
    if key not in _BROADCAST:
        _BROADCAST.clear()
        _BROADCAST[key] = ray.get(ref[0])
    return _BROADCAST[key]


def _cluster_links(n_rows: int, stats_dir: str | None, *blocks: pa.Table) -> tuple[dict[str, Any], dict[str, Any]]:
    """LINKS blocks (edges, and the keep fields of linked modules) → (stats, id → assignment map).

    Runs as one Ray task (its memory: ~300 bytes per clustered module)."""
    c0 = time.process_time()
    edges: set[tuple[str, str]] = set()
    members: dict[str, dict[str, Any]] = {}
    for batch in blocks:
        for row in batch.to_pylist():
            if row["b"] is None:
                row["id"] = row.pop("a")
                del row["b"]
                members[row["id"]] = row
            else:
                edges.add((row["a"], row["b"]))
    roots = clusters(edges)
    norm_of = {mid: row.get("norm_sha256") for mid, row in members.items()}
    n_exact = sum(1 for a, b in edges if norm_of.get(a) is not None and norm_of.get(a) == norm_of.get(b))
    n_edges = len(edges)
    del edges, norm_of
    members_by_root: dict[str, list[dict[str, Any]]] = {}
    for mid, root in roots.items():
        members_by_root.setdefault(root, []).append(members[mid])
    del members, roots
    assignment = assign(members_by_root)
    record(stats_dir, "dedup_cluster", time.process_time() - c0, rows=len(assignment))
    return ({**assignment_stats(n_rows, assignment), "exact_edges": n_exact, "near_edges": n_edges - n_exact},
            assignment)


def run_dedup(ds: Any, cfg: DedupConfig, *, signed: bool = False, stats_dir: str | None = None,
              work_dir: str | None = None) -> tuple[Any, dict[str, Any]]:
    """PARSED_MODULES dataset → (MODULES dataset, stats). Stats: rows, unique, exact/near dups removed, clusters.

    ``signed``: ``ds`` already carries ``norm_sha256``, ``signature`` and ``bands`` (the corpus
    job signs in its parse actors); otherwise a signature stage runs first. The signed rows are
    materialised once: the key stage and the final apply stage both read them. ``work_dir``
    holds the partitioned key files (shared storage on a multi-node cluster; None: a local
    temporary directory, enough for one node); it is deleted afterwards.
    """
    import ray

    bands, rows = cfg.band_rows()
    if not signed:
        ds = map_stage(
            ds, _signatures,
            StageResources(num_cpus=cfg.num_cpus, concurrency=cfg.concurrency, batch_size=cfg.batch_size),
            kwargs={"num_perm": cfg.num_perm, "shingle_size": cfg.shingle_size, "seed": cfg.seed,
                    "bands": bands, "rows": rows, "stats_dir": stats_dir},
        )
    sigs = ds.materialize()
    n_rows, n_blocks = sigs.count(), sigs.num_blocks()
    if not cfg.enabled or n_rows == 0:
        ref = ray.put({})
        out = map_stage(sigs, _apply, kwargs={"ref": [ref], "stats_dir": stats_dir})
        return out, {**assignment_stats(n_rows, {}), "enabled": cfg.enabled, "blocks": n_blocks}

    partitions = cfg.partitions or max(1, int(cluster_cpus()), -(-n_rows // MODULES_PER_PARTITION))
    own_dir = work_dir is None
    work_dir = work_dir or tempfile.mkdtemp(prefix="chipforge-dedup-")
    try:
        written = map_stage(sigs, _partition_keys, StageResources(batch_size=ROWS_PER_TASK),
                            kwargs={"work_dir": work_dir, "partitions": partitions, "stats_dir": stats_dir})
        n_keys = sum(int(b.column("rows").to_numpy().sum())
                     for b in written.iter_batches(batch_format="pyarrow", batch_size=None))
        parts = ray.data.from_items([{"partition": p} for p in range(partitions)], override_num_blocks=partitions)
        links = map_stage(parts, _buckets, StageResources(num_cpus=cfg.num_cpus, batch_size=1),
                          kwargs={"work_dir": work_dir, "threshold": cfg.threshold, "max_bucket": cfg.max_bucket,
                                  "stats_dir": stats_dir})
        link_refs = links.to_arrow_refs()  # executed; the blocks stay in the object store
    finally:
        if own_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            fs.delete(work_dir)

    # The duplicate graph is folded in one task, not in the driver: its size grows with the number
    # of clustered modules, and the driver's memory must stay flat in the corpus size.
    task = ray.remote(_cluster_links).options(num_cpus=cfg.num_cpus or 1, num_returns=2)
    stats_ref, ref = task.remote(n_rows, stats_dir, *link_refs)
    stats = {**ray.get(stats_ref), "enabled": True, "threshold": cfg.threshold, "num_perm": cfg.num_perm,
             "bands": bands, "rows_per_band": rows, "partitions": partitions, "key_rows": n_keys,
             "blocks": n_blocks}
    del link_refs
    out = map_stage(sigs, _apply, kwargs={"ref": [ref], "stats_dir": stats_dir})  # per block: see ROWS_PER_TASK
    return out, stats
