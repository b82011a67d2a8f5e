"""The corpus pipeline: manifest → clone+read (Ray Data) → parse → dedup → ``DIR/modules/`` + report.

On a multi-node cluster ``output_dir`` must be shared storage (s3://, gs://, NFS): clone actors
write their per-repository status there (``_status/``) and the driver reads it back.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections import Counter
from typing import Any, Iterable, Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from chipforge import fs
from chipforge.config import Config
from chipforge.job import JobSpec, Run
from chipforge.stage import StageResources, map_stage
from corpus.clone import STATUS_SHARDS, CloneAndRead
from corpus.decontam import DecontamConfig  # decontam
from corpus.dedup import DedupConfig, SignatureStage
from corpus.files import DEFAULT_EXTENSIONS
from corpus.manifest import Repository, iter_manifest, local_roots_for
from corpus.verilog import ParseStage, merge_parse_stats
from pipelines.dedup import record, run_dedup


class CloneConfig(Config):
    """Clone+read stage: ``batch_size`` repositories per call, ``concurrency`` actors."""

    num_cpus: float = 1.0
    concurrency: int = 4  # clone actors (parallel repositories)
    # Repositories per clone call: 1 balances best; more cut Ray round trips per repository for
    # many small repositories (all of a call's files then go to one parse call, as one block).
    batch_size: int = Field(1, ge=1)
    # Check out only files with the configured extensions (and root licence files); with the
    # blob filter only their blobs are fetched. Off for repositories with submodules.
    sparse: bool = True
    # Clone, parse and sign in the same actor (the parse stage's actors and resources): no clone
    # actor processes and no file texts through the object store, so less CPU. Best when clones
    # are fast (local remotes, a nearby mirror); with slow network clones the parse CPUs would
    # wait on the network, so leave it off there.
    fused: bool = False
    timeout_s: float = 600.0
    retries: int = 3
    backoff_s: float = 2.0
    shallow: bool = True  # --depth 1 --filter=blob:none where the remote allows
    # Repositories are dealt into this many Ray Data blocks (None: 4 per clone actor; more where a
    # block would exceed MAX_BLOCK_ROWS repositories). One block
    # per repository balances best, but the driver's Ray Data bookkeeping grows ~40 KB per block.
    input_blocks: int | None = Field(None, ge=1)
    # Where local repositories (paths, file://) may live; None: the working directory and the
    # manifest's directory. A local path outside every root is a failed repository ("unsafe url").
    local_roots: list[str] | None = None


class ParseConfig(Config):
    num_cpus: float = 1.0
    concurrency: int = 2  # parser actors
    # None: whole blocks, so every repository's files are parsed together (`include`s resolve
    # within the repository); a block holds the repositories of one clone input block.
    batch_size: int | None = None
    # One file's parse (preprocess + tree-sitter + extraction) is cancelled after this long and
    # counted as a parse failure ("timeout"); None: no limit.
    parse_timeout_s: float | None = Field(30.0, gt=0)


class CorpusConfig(Config):
    manifest: str = "sample/manifest.yaml"
    output_dir: str = "out/sample/corpus"
    cache_dir: str = "~/.cache/chipforge/repos"  # per node; clone cache keyed by url and commit
    extensions: list[str] = Field(default_factory=lambda: list(DEFAULT_EXTENSIONS))
    max_file_bytes: int = 32 * 1024 * 1024  # a memory bound (corpus.files.DEFAULT_MAX_FILE_BYTES); content decides
    max_repo_bytes: int = 2_000_000_000
    grammar: Literal["systemverilog", "verilog"] = "systemverilog"
    clone: CloneConfig = Field(default_factory=CloneConfig)
    parse: ParseConfig = Field(default_factory=ParseConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    # decontam: modules matching a benchmark (VerilogEval / RTLLM checkouts) get contaminated_by; [] = off
    benchmark_paths: list[str] = Field(default_factory=list)
    decontam: DecontamConfig = Field(default_factory=DecontamConfig)
    # modules/ is sharded Parquet (a repo column, rows grouped by repository), not one directory per
    # repository: 100k repositories would be 100k tiny files (and pyarrow caps a write at 1,024
    # partitions). Ray bundles blocks until a file has at least this many rows.
    min_rows_per_file: int = Field(50_000, ge=1)


class TimedParse(ParseStage):
    """ParseStage that also writes {files, bytes, seconds, cpu_seconds} per batch to ``stats_dir`` (parse MB/s).

    ``cpu_seconds`` is the actor process's CPU time during the call: MB/s per core stays
    meaningful when a node runs more processes than it has cores; ``seconds`` is wall time.
    With ``dedup`` (a DedupConfig as a dict) the same call also signs its modules (norm_sha256,
    MinHash, LSH band keys: ``SignatureStage``), so parsed rows go through the object store
    once, already signed; that CPU is ``signature_cpu_seconds``, not ``cpu_seconds``.
    """

    def __init__(self, grammar: str, stats_dir: str, parse_timeout_s: float | None = 30.0,
                 dedup: dict[str, Any] | None = None) -> None:
        super().__init__(grammar, parse_timeout_s=parse_timeout_s)
        self.stats_dir = stats_dir
        self.sign = SignatureStage.from_config(DedupConfig(**dedup), with_rows=True) if dedup is not None else None

    def __call__(self, batch: Any) -> pa.Table:
        t0, c0 = time.perf_counter(), time.process_time()
        out = super().__call__(batch)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        n_bytes = batch["n_bytes"] if isinstance(batch, dict) else batch.column("n_bytes")
        stats = {"files": len(n_bytes), "bytes": int(sum(int(x) for x in n_bytes if x is not None)),
                 "seconds": seconds, "cpu_seconds": cpu_seconds, "modules": out.num_rows}
        stats.update(self.last_stats)  # per-file parse failures by reason (timeouts, expansion limits)
        if self.sign is not None:
            c1 = time.process_time()
            out = self.sign(out)
            stats["signature_cpu_seconds"] = time.process_time() - c1
        fs.write_json(fs.join(self.stats_dir, uuid.uuid4().hex + ".json"), stats)
        return out


COUNT_FIELDS = ("modules", "parse_ok", "error_line_share_sum", "lines", "kept", "exact", "near")


class CloneParseSign:
    """Clone+read, parse and sign in one actor (``clone.fused``): manifest rows → signed module rows."""

    def __init__(self, clone: dict[str, Any], parse: dict[str, Any]) -> None:
        self.clone = CloneAndRead(**clone)
        self.parse = TimedParse(**parse)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.parse(self.clone(batch))


def module_counts(batch: pa.Table) -> pa.Table:
    """Per-block, per-repository (``manifest_index``) counts over MODULES rows, one Arrow group-by."""
    if isinstance(batch, dict):
        batch = pa.table(batch)
    removed = pc.invert(batch.column("keep"))
    kind = batch.column("dup_kind")
    t = pa.table({
        "manifest_index": batch.column("manifest_index"),
        "parse_ok": pc.cast(batch.column("parse_ok"), pa.int64()),
        "share": pc.fill_null(batch.column("error_line_share"), 0.0),
        "lines": batch.column("n_lines"),
        "kept": pc.cast(batch.column("keep"), pa.int64()),
        "exact": pc.cast(pc.and_(removed, pc.equal(kind, "exact")), pa.int64()),
        "near": pc.cast(pc.and_(removed, pc.equal(kind, "near")), pa.int64()),
    })
    g = t.group_by("manifest_index").aggregate([("parse_ok", "count"), ("parse_ok", "sum"), ("share", "sum"),
                                                ("lines", "sum"), ("kept", "sum"), ("exact", "sum"), ("near", "sum")])
    cols = ["parse_ok_count", "parse_ok_sum", "share_sum", "lines_sum", "kept_sum", "exact_sum", "near_sum"]
    return pa.table({"manifest_index": g.column("manifest_index").cast(pa.int64()),
                     **{name: g.column(c) for name, c in zip(COUNT_FIELDS, cols)}}, schema=_COUNTS_SCHEMA)


class RepoCounts:
    """Module counts per repository in the driver: one numpy row per manifest entry (64 bytes each),
    filled from the count stage's files, so the driver's memory per repository stays small."""

    def __init__(self, n_repos: int) -> None:
        self.values = np.zeros((n_repos, len(COUNT_FIELDS)), dtype=np.float64)

    def add_table(self, table: pa.Table) -> None:
        """Rows of ``module_counts`` (one per repository and block), added in numpy: no Python row objects."""
        idx = table.column("manifest_index").to_numpy()
        cols = [pc.fill_null(table.column(f), 0).to_numpy().astype(np.float64) for f in COUNT_FIELDS]
        np.add.at(self.values, idx, np.stack(cols, axis=1) if cols else np.zeros((len(idx), 0)))

    def of(self, index: int) -> dict[str, int]:
        """Integer counts of one repository (its error-line share sum left out)."""
        return {f: int(v) for f, v in zip(COUNT_FIELDS, self.values[index]) if f != "error_line_share_sum"}

    def total(self) -> dict[str, float]:
        return dict(zip(COUNT_FIELDS, self.values.sum(axis=0).tolist()))


def count_modules(batch: pa.Table, stats_dir: str) -> pa.Table:
    """Pass-through stage fused before the write: per-repo counts of the batch go to ``stats_dir``
    as one Arrow IPC file (read by the driver into numpy, no row objects), so the driver never
    reads the written modules back."""
    c0 = time.process_time()
    fs.write_arrow(fs.join(stats_dir, f"counts-{uuid.uuid4().hex}.arrow"), module_counts(batch))
    record(stats_dir, "count", time.process_time() - c0)
    return batch


_COUNTS_SCHEMA = pa.schema([("manifest_index", pa.int64()), ("modules", pa.int64()), ("parse_ok", pa.int64()),
                            ("error_line_share_sum", pa.float64()), ("lines", pa.int64()), ("kept", pa.int64()),
                            ("exact", pa.int64()), ("near", pa.int64())])
# The report lists every repository's status up to this many; all of them go to repositories.parquet.
PER_REPO_IN_REPORT = 1000
FOLD_CHUNK = 1000  # statuses per repositories.parquet write: the driver holds this many
REPOSITORIES_SCHEMA = pa.schema(
    [(k, pa.string()) for k in ("repo", "url", "ref", "status", "reason", "error", "commit", "license")]
    + [("manifest_index", pa.int64()), ("cached", pa.bool_()), ("files_read", pa.int64()), ("bytes", pa.int64()),
       ("skipped", pa.string()), ("encodings", pa.string()), ("seconds", pa.float64()), ("cpu_seconds", pa.float64())]
    + [(k, pa.int64()) for k in COUNT_FIELDS if k != "error_line_share_sum"])


def _worker_url(repo: Repository) -> Repository:
    """Local paths under the driver's cwd become cwd-relative (the working_dir on every node)."""
    url = repo.url
    if "://" not in url and os.path.isabs(url):
        cwd = os.getcwd()
        if url.startswith(cwd.rstrip(os.sep) + os.sep):
            return repo.model_copy(update={"url": os.path.relpath(url, cwd)})
    return repo


MANIFEST_SCHEMA = pa.schema([("manifest_index", pa.int64()), ("repository", pa.string())])
# The driver holds at most this many manifest rows at once (one input block, or one write chunk).
MAX_BLOCK_ROWS = 10_000


def stage_manifest(manifest: str, path: str, chunk: int = 1000) -> int:
    """Validate every manifest entry, streaming, into a local Arrow IPC file of (``manifest_index``,
    ``repository`` JSON) rows at ``path``; returns the number of repositories.

    The driver holds ``chunk`` entries at a time, never the whole manifest: its memory does not
    grow with the number of repositories. A bad entry raises ValueError (naming the file) before
    any Ray work starts, as ``load_manifest`` does.
    """
    n = 0
    rows: dict[str, list[Any]] = {"manifest_index": [], "repository": []}
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, MANIFEST_SCHEMA) as writer:
        for n, repo in enumerate(iter_manifest(manifest), 1):
            rows["manifest_index"].append(n - 1)
            rows["repository"].append(_worker_url(repo).model_dump_json())
            if len(rows["repository"]) >= chunk:
                writer.write_table(pa.table(rows, schema=MANIFEST_SCHEMA))
                rows = {"manifest_index": [], "repository": []}
        if rows["repository"] or n == 0:
            writer.write_table(pa.table(rows, schema=MANIFEST_SCHEMA))
    return n


def manifest_dataset(path: str, n_repos: int, n_blocks: int) -> Any:
    """The staged manifest (a local Arrow IPC file) as a Ray Data dataset of
    ``max(1, min(n_repos, n_blocks))`` blocks (more when a block would exceed MAX_BLOCK_ROWS rows).

    The driver computes each block's metadata from a zero-copy slice of the memory-mapped file.
    Up to MAX_BLOCK_ROWS repositories it puts the blocks itself (at most ~1.5 MB of pages). Past
    that, each block is read by a zero-CPU task pinned to this node (``fs.read_ipc_rows``), which
    writes it into the object store, so the driver holds no manifest rows and its memory stays
    flat in the number of repositories (blocks put by the driver kept their pages in its RSS,
    ~0.2 KB per repository; tasks cost a worker process's start-up, which a small job would
    notice). Either way the blocks exist when this returns (the staging file may then go)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    blocks = max(1, min(n_repos, n_blocks), -(-n_repos // MAX_BLOCK_ROWS))
    per_block = max(1, -(-n_repos // blocks))
    read = ray.remote(fs.read_ipc_rows).options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=False))
    out: list[tuple[Any, Any]] = []
    with pa.memory_map(path) as source:
        table = pa.ipc.open_file(source).read_all()
        for start in range(0, max(n_repos, 1), per_block):
            rows = table.slice(start, min(n_repos, start + per_block) - start)
            if n_repos <= MAX_BLOCK_ROWS:
                ref = ray.put(rows.combine_chunks())
            else:
                ref = read.remote(path, start, start + rows.num_rows)
            out.append((ref, _block_meta(rows)))
    ray.wait([ref for ref, _ in out], num_returns=len(out), fetch_local=False)
    return _from_blocks(out)


def _block_meta(table: pa.Table) -> Any:
    """Ray Data's metadata of a block (None on another Ray version: ``from_arrow_refs`` computes it)."""
    try:
        from ray.data.block import BlockMetadataWithSchema
        return BlockMetadataWithSchema.from_block(table)
    except Exception:  # noqa: BLE001
        return None


def _from_blocks(blocks: list[tuple[Any, Any]]) -> Any:
    """A dataset of blocks already in the object store with metadata computed in the driver, as
    ``ray.data.from_items`` builds it: ``from_arrow_refs`` would run one metadata task per block,
    i.e. start worker processes (CPU seconds each) before the job's own actors exist."""
    import ray

    refs = [ref for ref, _ in blocks]
    try:
        from ray.data._internal.logical.interfaces import LogicalPlan
        from ray.data._internal.logical.operators import FromArrow
        from ray.data._internal.stats import DatasetStats
        from ray.data.context import DataContext
        from ray.data.dataset import MaterializedDataset
    except ImportError:
        return ray.data.from_arrow_refs(refs)
    metas = [meta for _, meta in blocks]
    if any(m is None for m in metas):
        return ray.data.from_arrow_refs(refs)
    context = DataContext.get_current().copy()
    stats = DatasetStats(metadata={"FromArrow": metas}, parent=None)
    return MaterializedDataset(LogicalPlan(FromArrow(refs, metas), context), context, stats)


def _abs(path: str) -> str:
    return path if fs.is_uri(path) else os.path.abspath(os.path.expanduser(path))


def run(cfg: CorpusConfig, job: Run) -> dict[str, Any]:
    """The job's body: clone + parse + dedup on Ray Data, the modules written once, the report returned.

    Ray round trips: clone actors → parse actors (which also sign) → materialised once → key
    files per hash partition → one bucket task per partition → edges to one cluster task (not
    the driver) → one apply + count + write pass. Every stage writes its CPU seconds to
    ``_status/``; the report sums them per stage (``cpu_seconds``), with the driver's own CPU.
    """

    t0, c0 = time.perf_counter(), time.process_time()
    # Every entry is validated (streaming) into a local Arrow IPC staging file before any Ray work
    # and before the output is touched; the input blocks are then made from it (manifest_dataset).
    with tempfile.TemporaryDirectory(prefix="chipforge-manifest-") as tmp:
        staged = os.path.join(tmp, "manifest.arrow")
        try:
            n_repos = stage_manifest(cfg.manifest, staged)
        except ValueError as exc:  # bad manifest: the user's input, a usage error naming the file (exit 2)
            from chipforge.config import ConfigError

            raise ConfigError(str(exc)) from exc
        ds = manifest_dataset(staged, n_repos, cfg.clone.input_blocks or 4 * cfg.clone.concurrency)
    out = _abs(cfg.output_dir)
    status_dir, stats_dir = fs.join(out, "_status"), fs.join(out, "_status", "parse")
    cpu_dir, counts_dir = fs.join(status_dir, "cpu"), fs.join(status_dir, "counts")
    fs.delete(fs.join(out, "_status"))
    for d in (stats_dir, cpu_dir, counts_dir):
        fs.makedirs(d)
    job.progress(f"{n_repos} repositories from {cfg.manifest}")
    clone_kwargs = {
        "status_dir": status_dir, "cache_dir": cfg.cache_dir, "extensions": cfg.extensions,
        "max_file_bytes": cfg.max_file_bytes, "max_repo_bytes": cfg.max_repo_bytes,
        "timeout_s": cfg.clone.timeout_s, "retries": cfg.clone.retries, "backoff_s": cfg.clone.backoff_s,
        "shallow": cfg.clone.shallow, "local_roots": local_roots_for(cfg.manifest, cfg.clone.local_roots),
        "sparse": cfg.clone.sparse,
    }
    parse_kwargs = {"grammar": cfg.grammar, "stats_dir": stats_dir, "parse_timeout_s": cfg.parse.parse_timeout_s,
                    "dedup": cfg.dedup.model_dump()}
    if cfg.clone.fused:
        parsed = map_stage(ds, CloneParseSign, StageResources(
            num_cpus=cfg.parse.num_cpus, batch_size=cfg.clone.batch_size,
            concurrency=min(cfg.parse.concurrency, max(1, n_repos))),
            kwargs={"clone": clone_kwargs, "parse": parse_kwargs})
    else:
        files = map_stage(ds, CloneAndRead, StageResources(
            num_cpus=cfg.clone.num_cpus, batch_size=cfg.clone.batch_size,
            concurrency=min(cfg.clone.concurrency, max(1, n_repos))), kwargs=clone_kwargs)
        parsed = map_stage(files, TimedParse, StageResources(
            num_cpus=cfg.parse.num_cpus, concurrency=cfg.parse.concurrency, batch_size=cfg.parse.batch_size),
            kwargs=parse_kwargs)
    modules_dir = fs.join(out, "modules")
    with job.step("clone + parse + dedup"):
        modules, dedup_stats = run_dedup(parsed, cfg.dedup, signed=True, stats_dir=cpu_dir,
                                         work_dir=fs.join(status_dir, "dedup_keys"))
        modules = decontaminate(modules, cfg, fs.join(status_dir, "decontam"))  # decontam
        modules = map_stage(modules, count_modules, kwargs={"stats_dir": counts_dir})
        with fs.atomic_dir(modules_dir) as tmp:
            modules.write_parquet(tmp, min_rows_per_file=cfg.min_rows_per_file)

    counts = RepoCounts(n_repos)
    stage_cpu: Counter = Counter()
    for d in (cpu_dir, counts_dir):
        for path in fs.listdir(d):
            if path.endswith(".json"):
                stat = fs.read_json(path)
                stage_cpu[stat["stage"]] += stat.get("cpu_seconds") or 0.0
            elif path.endswith(".arrow"):
                counts.add_table(fs.read_arrow(path))
    parse_stats = [fs.read_json(p) for p in fs.listdir(stats_dir) if p.endswith(".json")]  # one per parse block
    repositories = fold_statuses(status_dir, counts, fs.join(out, "repositories.parquet"), stage_cpu)
    decontam = decontam_report(cfg, fs.join(status_dir, "decontam"))  # decontam
    fs.delete(status_dir)
    stage_cpu["parse"] = sum(p.get("cpu_seconds", 0.0) for p in parse_stats)
    stage_cpu["signatures"] = sum(p.get("signature_cpu_seconds", 0.0) for p in parse_stats)
    stage_cpu["driver"] = time.process_time() - c0
    cpu = {k: round(v, 3) for k, v in stage_cpu.items()} | {"total": round(sum(stage_cpu.values()), 3)}
    return build_report(repositories, counts.total(), parse_stats, dedup_stats, time.perf_counter() - t0, cfg,
                        cpu) | decontam


def _read_json_files(paths: Iterable[str], threads: int = 16, chunk: int = 1000) -> Iterator[dict[str, Any]]:
    """JSON files in order, read ``threads`` at a time (object stores answer ~20 ms per GET), ``chunk``
    files in memory at once."""
    from concurrent.futures import ThreadPoolExecutor
    from itertools import islice

    paths = iter(paths)
    with ThreadPoolExecutor(threads) as pool:
        while batch := list(islice(paths, chunk)):
            yield from pool.map(fs.read_json, batch)


def _status_files(status_dir: str) -> Iterator[str]:
    """Per-repository status files, one shard directory listed at a time (see ``status_path``)."""
    for shard in fs.listdir(fs.join(status_dir, STATUS_SHARDS)):
        yield from (p for p in fs.listdir(shard) if p.endswith(".json"))


def fold_statuses(status_dir: str, counts: RepoCounts, table_path: str, stage_cpu: Counter) -> dict[str, Any]:
    """Read the per-repository status files one at a time into the report's ``repositories`` and
    ``files`` sections; every status (with its module counts) goes to ``table_path`` (Parquet, in
    chunks, rows in status-file order: sort by ``manifest_index``), and into the report itself only
    up to PER_REPO_IN_REPORT repositories. Clone CPU (git included) is added to ``stage_cpu["clone"]``."""
    import pyarrow.parquet as pq

    skipped: Counter = Counter()
    encodings: Counter = Counter()
    n_total = n_ok = files_read = n_bytes = 0
    failed: list[dict[str, Any]] = []
    per_repo: list[dict[str, Any]] | None = []
    chunk: list[dict[str, Any]] = []
    filesystem, path = fs.resolve(table_path)
    writer = None
    for st in _read_json_files(_status_files(status_dir)):
        st.update(counts.of(int(st["manifest_index"])) if st["status"] == "ok" else {})
        skipped.update(st.get("skipped") or {})
        encodings.update(st.get("encodings") or {})
        n_total += 1
        n_ok += st["status"] == "ok"
        files_read += st.get("files_read", 0)
        n_bytes += st.get("bytes", 0)
        stage_cpu["clone"] += st.get("cpu_seconds") or 0.0
        if st["status"] != "ok":
            failed.append({k: st.get(k) for k in ("repo", "url", "ref", "reason", "error")})
        if per_repo is not None:
            per_repo.append(st)
            if len(per_repo) > PER_REPO_IN_REPORT:
                per_repo = None
        chunk.append({k: (v if not isinstance(v, dict) else json.dumps(v, sort_keys=True)) for k, v in st.items()})
        if len(chunk) >= FOLD_CHUNK:
            if writer is None:
                writer = pq.ParquetWriter(path, REPOSITORIES_SCHEMA, filesystem=filesystem)
            writer.write_table(pa.Table.from_pylist(chunk, schema=REPOSITORIES_SCHEMA))
            chunk = []
    if chunk:
        if writer is None:
            writer = pq.ParquetWriter(path, REPOSITORIES_SCHEMA, filesystem=filesystem)
        writer.write_table(pa.Table.from_pylist(chunk, schema=REPOSITORIES_SCHEMA))
    if writer is not None:
        writer.close()
    if per_repo is not None:
        per_repo.sort(key=lambda s: s["manifest_index"])
    failed.sort(key=lambda f: str(f["repo"]))
    return {
        "repositories": {"total": n_total, "ok": n_ok, "failed": failed, "per_repo": per_repo,
                         "table": table_path},
        "files": {"read": files_read, "bytes": n_bytes, "skipped": dict(skipped), "encodings": dict(encodings)},
    }


def build_report(repositories: dict[str, Any], total: dict[str, float], parse_stats: list[dict[str, Any]],
                 dedup_stats: dict[str, Any], wall_s: float, cfg: CorpusConfig,
                 cpu_seconds: dict[str, float] | None = None) -> dict[str, Any]:
    """The job's report from the folded statuses, the module count totals and the stage statistics."""
    total = {k: (v if k == "error_line_share_sum" else int(v)) for k, v in total.items()}
    n_mod = total["modules"]
    p_bytes = sum(p["bytes"] for p in parse_stats)
    p_secs = sum(p["seconds"] for p in parse_stats)
    p_cpu = sum(p.get("cpu_seconds", 0.0) for p in parse_stats)
    return {
        "manifest": cfg.manifest,
        "output_dir": cfg.output_dir,
        "grammar": cfg.grammar,
        **repositories,
        "lines": total["lines"],
        "modules": n_mod,
        "parse_ok_share": total["parse_ok"] / n_mod if n_mod else None,
        "mean_error_line_share": total["error_line_share_sum"] / n_mod if n_mod else None,
        "dedup": dedup_stats,
        "parse_failures": merge_parse_stats(parse_stats),
        "duplicates_removed": {"exact": total["exact"], "near": total["near"]},
        "modules_kept": total["kept"],
        "parse": {"batches": len(parse_stats), "bytes": p_bytes, "seconds": round(p_secs, 3),
                  "cpu_seconds": round(p_cpu, 3),
                  "mb_per_s_per_core": round(p_bytes / 1e6 / p_cpu, 3) if p_cpu else None,
                  "mb_per_s_per_worker": round(p_bytes / 1e6 / p_secs, 3) if p_secs else None},
        "cpu_seconds": cpu_seconds or {},
        "wall_s": round(wall_s, 2),
    }


def summary(r: dict[str, Any]) -> str:
    repos, files = r["repositories"], r["files"]
    lines = [
        f"repositories: {repos['ok']} ok, {len(repos['failed'])} failed of {repos['total']}",
        *[f"  FAILED {f['repo']}: {f['reason']} ({f['error']})" for f in repos["failed"]],
        f"files: {files['read']} read ({files['bytes'] / 1e6:.2f} MB), skipped {files['skipped'] or 0}, "
        f"encodings {files['encodings']}",
        f"parse failures: {r['parse_failures']['files_failed']} files "
        f"{r['parse_failures']['failed_by_reason'] or ''}".rstrip(),
        f"modules: {r['modules']} in {r['lines']} lines; parse_ok {_pct(r['parse_ok_share'])}, "
        f"mean error-line share {_pct(r['mean_error_line_share'])}",
        f"duplicates removed: {r['duplicates_removed']['exact']} exact, {r['duplicates_removed']['near']} near; "
        f"kept {r['modules_kept']}",
        f"parse: {r['parse']['mb_per_s_per_core']} MB/s per core (CPU time), "
        f"{r['parse']['mb_per_s_per_worker']} MB/s per worker (wall); wall {r['wall_s']} s",
        "CPU s per stage: " + ", ".join(f"{k} {v:g}" for k, v in (r.get("cpu_seconds") or {}).items()),
    ]
    lines += decontam_summary(r)  # decontam
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def local_inputs(cfg: CorpusConfig) -> dict[str, str]:
    """Local repositories named by the manifest: their content keys the job's completion marker."""
    try:
        return {f"repo:{r.name}": r.url.removeprefix("file://") for r in iter_manifest(cfg.manifest)
                if "://" not in r.url or r.url.startswith("file://")}
    except (ValueError, OSError):
        return {}


# --- decontamination (corpus.decontam; owner: decontam) -------------------------------------------

def check_benchmarks(cfg: CorpusConfig) -> None:
    """Preflight: a missing benchmark path, or one with no recognised benchmark, fails before Ray (exit 2)."""
    from corpus.decontam import check_benchmark_paths

    check_benchmark_paths(cfg.benchmark_paths, "benchmark_paths")


def decontaminate(modules: Any, cfg: CorpusConfig, stats_dir: str) -> Any:
    """MODULES dataset → the same rows with ``contaminated_by`` marked (unchanged when no benchmark_paths)."""
    from chipforge.stage import cluster_cpus, fit_to_cluster
    from corpus.decontam import ContaminationStage

    if not cfg.benchmark_paths:
        return modules
    res = fit_to_cluster({"decontam": cfg.decontam.resources}, cluster_cpus())["decontam"]
    return map_stage(modules, ContaminationStage, res, kwargs={
        "benchmark_paths": list(cfg.benchmark_paths), "stats_dir": stats_dir, **cfg.decontam.index_kwargs()})


def decontam_report(cfg: CorpusConfig, stats_dir: str) -> dict[str, Any]:
    """``decontamination`` section of the report: modules checked and flagged, per method and benchmark."""
    from corpus.decontam import merge_stats

    if not cfg.benchmark_paths:
        return {"decontamination": None}
    stats = [fs.read_json(p) for p in fs.listdir(stats_dir) if p.endswith(".json")] if fs.exists(stats_dir) else []
    return {"decontamination": {"benchmark_paths": list(cfg.benchmark_paths), **merge_stats(stats)}}


def decontam_summary(r: dict[str, Any]) -> list[str]:
    d = r.get("decontamination")
    if not d:
        return []
    return [f"contaminated: {d['contaminated']} of {d['modules_checked']} modules; by method {d['by_method'] or {}}, "
            f"per benchmark {d['per_benchmark'] or {}}"]


def job_inputs(cfg: CorpusConfig) -> dict[str, str]:
    """Local repositories and benchmark checkouts: their content keys the job's completion marker."""
    return {**local_inputs(cfg), **{f"benchmark:{i}": p for i, p in enumerate(cfg.benchmark_paths)}}


SPEC = JobSpec(
    name="corpus", config=CorpusConfig, default_config="jobs/configs/corpus_sample.yaml", summary=summary,
    flags={"--manifest": "manifest", "--output": "output_dir"}, inputs={"manifest": "a manifest YAML file"},
    volatile=("cache_dir", "clone", "parse.concurrency", "parse.num_cpus", "dedup.num_cpus", "dedup.concurrency",
              "dedup.partitions", "dedup.batch_size",
              "decontam.resources"),
    # files read, or where no repository gave any (every clone failed), the repositories: either
    # way no output from them is a failed run (exit 1, no completion marker)
    outputs=lambda r: r["modules"], inputs_count=lambda r: r["files"]["read"] or r["repositories"]["total"],
    extra_inputs=job_inputs,
    preflight=check_benchmarks,
    description=__doc__,
)
