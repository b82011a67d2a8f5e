"""The corpus pipeline: manifest → clone+read (Ray Data) → parse → dedup → ``DIR/modules/`` + report.

On a multi-node cluster ``output_dir`` must be shared storage (s3://, gs://, NFS): clone actors
write their per-repository status there (``_status/``) and the driver reads it back.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter, defaultdict
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from chipforge import fs
from chipforge.config import Config
from chipforge.job import JobError, JobSpec, Run
from chipforge.stage import StageResources, map_stage
from corpus.clone import CloneAndRead
from corpus.dedup import DedupConfig
from corpus.files import DEFAULT_EXTENSIONS
from corpus.manifest import Repository, load_manifest, local_roots_for
from corpus.verilog import ParseStage, merge_parse_stats
from pipelines.dedup import run_dedup


class CloneConfig(Config):
    """Clone+read stage: one repository per call (batch_size is always 1)."""

    num_cpus: float = 1.0
    concurrency: int = 4  # clone actors (parallel repositories)
    timeout_s: float = 600.0
    retries: int = 3
    backoff_s: float = 2.0
    shallow: bool = True  # --depth 1 --filter=blob:none where the remote allows
    # Repositories are dealt into this many Ray Data blocks (None: 4 per clone actor). One block
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
    max_file_bytes: int = 1_000_000
    max_repo_bytes: int = 2_000_000_000
    grammar: Literal["systemverilog", "verilog"] = "systemverilog"
    clone: CloneConfig = Field(default_factory=CloneConfig)
    parse: ParseConfig = Field(default_factory=ParseConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)


class TimedParse(ParseStage):
    """ParseStage that also writes {files, bytes, seconds, cpu_seconds} per batch to ``stats_dir`` (parse MB/s).

    ``cpu_seconds`` is the actor process's CPU time during the call: MB/s per core stays
    meaningful when a node runs more processes than it has cores; ``seconds`` is wall time.
    """

    def __init__(self, grammar: str, stats_dir: str, parse_timeout_s: float | None = 30.0) -> None:
        super().__init__(grammar, parse_timeout_s=parse_timeout_s)
        self.stats_dir = stats_dir

    def __call__(self, batch: Any) -> pa.Table:
        t0, c0 = time.perf_counter(), time.process_time()
        out = super().__call__(batch)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        n_bytes = batch["n_bytes"] if isinstance(batch, dict) else batch.column("n_bytes")
        stats = {"files": len(n_bytes), "bytes": int(sum(int(x) for x in n_bytes if x is not None)),
                 "seconds": seconds, "cpu_seconds": cpu_seconds, "modules": out.num_rows}
        stats.update(self.last_stats)  # per-file parse failures by reason (timeouts, expansion limits)
        fs.write_json(fs.join(self.stats_dir, uuid.uuid4().hex + ".json"), stats)
        return out


def module_counts(batch: pa.Table) -> pa.Table:
    """Per-block, per-repo counts over MODULES rows (so the driver never holds module rows)."""
    if isinstance(batch, dict):
        batch = pa.table(batch)
    rows = []
    repos = batch.column("repo").to_pylist()
    for repo in sorted(set(repos)):
        sub = batch.filter(pc.equal(batch.column("repo"), repo))
        keep = sub.column("keep").to_pylist()
        kinds = Counter(k for k, kept in zip(sub.column("dup_kind").to_pylist(), keep) if not kept)
        rows.append({
            "repo": repo,
            "modules": sub.num_rows,
            "parse_ok": int(pc.sum(pc.cast(sub.column("parse_ok"), pa.int64())).as_py() or 0),
            "error_line_share_sum": float(pc.sum(pc.fill_null(sub.column("error_line_share"), 0.0)).as_py() or 0.0),
            "lines": int(pc.sum(sub.column("n_lines")).as_py() or 0),
            "kept": int(pc.sum(pc.cast(sub.column("keep"), pa.int64())).as_py() or 0),
            "exact": kinds.get("exact", 0),
            "near": kinds.get("near", 0),
        })
    return pa.Table.from_pylist(rows, schema=_COUNTS_SCHEMA)


_COUNTS_SCHEMA = pa.schema([("repo", pa.string()), ("modules", pa.int64()), ("parse_ok", pa.int64()),
                            ("error_line_share_sum", pa.float64()), ("lines", pa.int64()), ("kept", pa.int64()),
                            ("exact", pa.int64()), ("near", pa.int64())])


def _worker_url(repo: Repository) -> Repository:
    """Local paths under the driver's cwd become cwd-relative (the working_dir on every node)."""
    url = repo.url
    if "://" not in url and os.path.isabs(url):
        cwd = os.getcwd()
        if url.startswith(cwd.rstrip(os.sep) + os.sep):
            return repo.model_copy(update={"url": os.path.relpath(url, cwd)})
    return repo


def _abs(path: str) -> str:
    return path if fs.is_uri(path) else os.path.abspath(os.path.expanduser(path))


def run(cfg: CorpusConfig, job: Run) -> dict[str, Any]:
    """The job's body: clone + parse + dedup on Ray Data, the modules written once, the report returned."""
    import ray

    t0 = time.perf_counter()
    try:
        manifest = load_manifest(cfg.manifest)
    except ValueError as exc:  # bad manifest: clear message naming the file
        raise JobError(str(exc)) from exc
    repos = [_worker_url(r) for r in manifest.repositories]
    out = _abs(cfg.output_dir)
    status_dir, stats_dir = fs.join(out, "_status"), fs.join(out, "_status", "parse")
    fs.delete(fs.join(out, "_status"))
    fs.makedirs(stats_dir)
    job.progress(f"{len(repos)} repositories from {cfg.manifest}")

    items = [{"manifest_index": i, "repository": r.model_dump_json()} for i, r in enumerate(repos)]
    n_blocks = cfg.clone.input_blocks or 4 * cfg.clone.concurrency
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), n_blocks)))
    files = map_stage(
        ds, CloneAndRead,
        StageResources(num_cpus=cfg.clone.num_cpus, batch_size=1,
                       concurrency=min(cfg.clone.concurrency, max(1, len(repos)))),
        kwargs={
            "status_dir": status_dir, "cache_dir": cfg.cache_dir, "extensions": cfg.extensions,
            "max_file_bytes": cfg.max_file_bytes, "max_repo_bytes": cfg.max_repo_bytes,
            "timeout_s": cfg.clone.timeout_s, "retries": cfg.clone.retries, "backoff_s": cfg.clone.backoff_s,
            "shallow": cfg.clone.shallow, "local_roots": local_roots_for(cfg.manifest, cfg.clone.local_roots),
        },
    )
    parsed = map_stage(files, TimedParse, StageResources(num_cpus=cfg.parse.num_cpus, concurrency=cfg.parse.concurrency,
                                                         batch_size=cfg.parse.batch_size),
                       kwargs={"grammar": cfg.grammar, "stats_dir": stats_dir,
                               "parse_timeout_s": cfg.parse.parse_timeout_s})
    modules_dir = fs.join(out, "modules")
    with job.step("clone + parse + dedup"):
        modules, dedup_stats = run_dedup(parsed, cfg.dedup)
        with fs.atomic_dir(modules_dir) as tmp:
            modules.write_parquet(tmp, partition_cols=["repo"])

    per_repo: dict[str, Counter] = defaultdict(Counter)
    if fs.listdir(modules_dir):
        counts = map_stage(ray.data.read_parquet(modules_dir).select_columns(
            ["repo", "parse_ok", "error_line_share", "n_lines", "keep", "dup_kind"]), module_counts)
        for batch in counts.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                per_repo[row.pop("repo")].update(row)

    statuses = [fs.read_json(p) for p in sorted(fs.listdir(status_dir)) if p.endswith(".json")]
    parse_stats = [fs.read_json(p) for p in fs.listdir(stats_dir) if p.endswith(".json")]
    fs.delete(status_dir)
    return build_report(statuses, per_repo, parse_stats, dedup_stats, time.perf_counter() - t0, cfg)


def build_report(statuses: list[dict[str, Any]], per_repo: dict[str, Counter], parse_stats: list[dict[str, Any]],
                 dedup_stats: dict[str, Any], wall_s: float, cfg: CorpusConfig) -> dict[str, Any]:
    statuses = sorted(statuses, key=lambda s: s["manifest_index"])
    skipped: Counter = Counter()
    encodings: Counter = Counter()
    for s in statuses:
        skipped.update(s.get("skipped") or {})
        encodings.update(s.get("encodings") or {})
        s.update({k: int(v) for k, v in per_repo.get(s["repo"], Counter()).items() if k != "error_line_share_sum"})
    total: Counter = Counter()
    for c in per_repo.values():
        total.update(c)
    n_mod = total["modules"]
    p_bytes = sum(p["bytes"] for p in parse_stats)
    p_secs = sum(p["seconds"] for p in parse_stats)
    p_cpu = sum(p.get("cpu_seconds", 0.0) for p in parse_stats)
    return {
        "manifest": cfg.manifest,
        "output_dir": cfg.output_dir,
        "grammar": cfg.grammar,
        "repositories": {
            "total": len(statuses),
            "ok": sum(s["status"] == "ok" for s in statuses),
            "failed": [{k: s.get(k) for k in ("repo", "url", "ref", "reason", "error")} for s in statuses
                       if s["status"] != "ok"],
            "per_repo": statuses,
        },
        "files": {
            "read": sum(s.get("files_read", 0) for s in statuses),
            "bytes": sum(s.get("bytes", 0) for s in statuses),
            "skipped": dict(skipped),
            "encodings": dict(encodings),
        },
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
    ]
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def local_inputs(cfg: CorpusConfig) -> dict[str, str]:
    """Local repositories named by the manifest: their content keys the job's completion marker."""
    try:
        repos = load_manifest(cfg.manifest).repositories
    except (ValueError, OSError):
        return {}
    return {f"repo:{r.name}": r.url.removeprefix("file://") for r in repos
            if "://" not in r.url or r.url.startswith("file://")}


SPEC = JobSpec(
    name="corpus", config=CorpusConfig, default_config="jobs/configs/corpus_sample.yaml", summary=summary,
    flags={"--manifest": "manifest", "--output": "output_dir"}, inputs={"manifest": "a manifest YAML file"},
    volatile=("cache_dir", "clone", "parse.concurrency", "parse.num_cpus", "dedup.num_cpus", "dedup.concurrency"),
    outputs=lambda r: r["modules"], inputs_count=lambda r: r["files"]["read"], extra_inputs=local_inputs,
    description=__doc__,
)
