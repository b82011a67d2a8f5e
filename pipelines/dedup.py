"""Distributed deduplication of parsed modules as Ray Data steps (the corpus job's dedup stage).

parsed → rows + signatures (one map stage, materialised once) →
  exact: group by norm_sha256 → edges;  near: explode LSH band keys → group by band →
  verified candidate edges (estimated Jaccard ≥ threshold).
Only edges and the keep-policy fields of rows that are in a cluster reach the driver; union-find
runs there, and the id → (cluster, kind, keep) map of clustered rows is broadcast back through
the object store to a map stage. Every row stays; exactly one per cluster has keep=True.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from chipforge.stage import StageResources, map_stage
from corpus.dedup import (
    DedupConfig,
    SignatureStage,
    apply_assignment,
    assign,
    assignment_stats,
    clusters,
    exact_edges,
    explode_bands,
    near_edges,
)

_KEEP_FIELDS = ["id", "norm_sha256", "license", "manifest_index", "path", "start_line"]
_BROADCAST: dict[str, Any] = {}  # per worker process: object ref hex → assignment dict


def _signatures(batch: pa.Table, num_perm: int, shingle_size: int, seed: int, bands: int, rows: int) -> pa.Table:
    return SignatureStage(num_perm, shingle_size, seed, bands, rows, with_rows=True)(batch)


def _members(batch: pa.Table, ref: list[Any]) -> pa.Table:
    ids = _broadcast(ref)
    t = batch.select(_KEEP_FIELDS)
    return t.filter(pc.is_in(t.column("id"), value_set=pa.array(sorted(ids), pa.string())))


def _apply(batch: pa.Table, ref: list[Any]) -> pa.Table:
    return apply_assignment(batch, _broadcast(ref))


def _broadcast(ref: list[Any]) -> Any:
    """Fetch a broadcast object once per worker process (``ref`` is a one-element list, so Ray leaves it a ref)."""
    import ray

    key = ref[0].hex()
    if key not in _BROADCAST:
        _BROADCAST.clear()
        _BROADCAST[key] = ray.get(ref[0])
    return _BROADCAST[key]


def run_dedup(ds: Any, cfg: DedupConfig) -> tuple[Any, dict[str, Any]]:
    """PARSED_MODULES dataset → (MODULES dataset, stats). Stats: rows, unique, exact/near dups removed, clusters."""
    import ray

    bands, rows = cfg.band_rows()
    # Whole rows + norm_sha256 + MinHash + band keys, materialised once (each text normalised once).
    sigs = map_stage(
        ds, _signatures,
        StageResources(num_cpus=cfg.num_cpus, concurrency=cfg.concurrency, batch_size=cfg.batch_size),
        kwargs={"num_perm": cfg.num_perm, "shingle_size": cfg.shingle_size, "seed": cfg.seed,
                "bands": bands, "rows": rows},
    ).materialize()
    n_rows = sigs.count()
    if not cfg.enabled or n_rows == 0:
        ref = ray.put({})
        out = map_stage(sigs, _apply, kwargs={"ref": [ref]})
        return out, {**assignment_stats(n_rows, {}), "enabled": cfg.enabled}

    exact = sigs.select_columns(["id", "norm_sha256"]).groupby("norm_sha256").map_groups(
        exact_edges, batch_format="pyarrow")
    near = map_stage(sigs, explode_bands).groupby("band").map_groups(
        near_edges, fn_kwargs={"threshold": cfg.threshold, "max_bucket": cfg.max_bucket}, batch_format="pyarrow")

    edges: set[tuple[str, str]] = set()
    n_exact = n_near = 0
    for name, part in (("exact", exact), ("near", near)):
        for batch in part.iter_batches(batch_format="pyarrow", batch_size=None):
            got = set(zip(batch.column("a").to_pylist(), batch.column("b").to_pylist()))
            if name == "exact":
                n_exact += len(got)
            else:
                n_near += len(got)
            edges |= got
    roots = clusters(edges)
    del edges

    members_by_root: dict[str, list[dict[str, Any]]] = {}
    if roots:
        ids_ref = ray.put(set(roots))
        for batch in map_stage(sigs, _members, kwargs={"ref": [ids_ref]}).iter_batches(
                batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                members_by_root.setdefault(roots[row["id"]], []).append(row)
        del ids_ref
    assignment = assign(members_by_root)
    del members_by_root, roots
    stats = {**assignment_stats(n_rows, assignment), "enabled": True, "threshold": cfg.threshold,
             "num_perm": cfg.num_perm, "bands": bands, "rows_per_band": rows,
             "exact_edges": n_exact, "near_edges": n_near}
    ref = ray.put(assignment)
    out = map_stage(sigs, _apply, kwargs={"ref": [ref]})
    return out, stats
