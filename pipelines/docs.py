"""The docs pipeline: EDA documentation → clean, section-level chunks (``DOCS_SCHEMA``).

One Ray task per source (a crawl is I/O bound; a source is a natural shard), then extract +
chunk as a map stage over the pages, exact dedup by text hash, and ``DIR/docs/part-00000.parquet``
written atomically. The report holds per-source page counts (fetched / cached / revalidated /
failed, with each failure's reason), chunks, dedup drops and bytes. A page or source that
fails is recorded, never fatal.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from chipforge import fs
from chipforge.config import Config
from chipforge.job import JobSpec, Run
from chipforge.stage import StageResources, map_stage
from corpus.docs.chunk import CHUNKS_STAGE_SCHEMA, ChunkConfig, ExtractChunk, dedup_table, split_status
from corpus.docs.crawl import PAGES_SCHEMA, CrawlConfig, fetch_source
from corpus.docs.sources import LocalSource, SiteSource
from corpus.schema import DOCS_SCHEMA, conform


class SourceTaskConfig(Config):
    """Resources of the per-source fetch task (I/O bound: a fraction of a CPU is enough)."""

    num_cpus: float = Field(0.25, gt=0)
    max_retries: int = Field(1, ge=0)  # Ray task retries if a worker dies (page errors never raise)


class ScrapeDocsConfig(Config):
    output_dir: str = "out/docs"
    sources: list[SiteSource | LocalSource] = Field(min_length=1)
    crawl: CrawlConfig = Field(default_factory=CrawlConfig)
    fetch_task: SourceTaskConfig = Field(default_factory=SourceTaskConfig)
    chunk: ChunkConfig = Field(default_factory=ChunkConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> "ScrapeDocsConfig":
        names = [s.name for s in self.sources]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"source names must be unique, repeated: {dups}")
        return self


def _resolved(source: SiteSource | LocalSource) -> SiteSource | LocalSource:
    """A local source's relative path made absolute from the driver's working directory.

    Ray workers keep the directory Ray was started in, not the driver's; on a multi-node
    cluster give local sources a shared absolute path or a URI (s3://...) instead.
    """
    if isinstance(source, LocalSource) and not fs.is_uri(source.path) and not os.path.isabs(source.path):
        return source.model_copy(update={"path": os.path.abspath(source.path)})
    return source


def _fetch_all(cfg: ScrapeDocsConfig) -> tuple[list[pa.Table], list[dict[str, Any]]]:
    import ray

    task = ray.remote(fetch_source).options(num_cpus=cfg.fetch_task.num_cpus, max_retries=cfg.fetch_task.max_retries)
    refs = [task.remote(_resolved(src), cfg.crawl) for src in cfg.sources]
    tables, stats = [], []
    for src, ref in zip(cfg.sources, refs):
        try:
            table, st = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - a broken source is reported, the others go on
            table = PAGES_SCHEMA.empty_table()
            st = {"source": src.name, "kind": src.kind, "pages": 0, "fetched": 0, "revalidated": 0, "cached": 0,
                  "failed": 1, "failures": [{"url": "*", "reason": f"source_error:{type(exc).__name__}: {exc}"}],
                  "failure_reasons": {"source_error": 1}, "bytes": 0, "retries": 0, "skipped": {},
                  "robots_failures": []}
        tables.append(table)
        stats.append(st)
    return tables, stats


def run(cfg: ScrapeDocsConfig, job: Run) -> dict[str, Any]:
    """The job's body: one fetch task per source, extract + chunk as a map stage, dedup, one Parquet file."""
    import ray

    t0 = time.perf_counter()
    with job.step(f"fetch {len(cfg.sources)} sources"):
        tables, source_stats = _fetch_all(cfg)
    pages = pa.concat_tables([conform(t, PAGES_SCHEMA, stage="docs.pages") for t in tables])
    staged = CHUNKS_STAGE_SCHEMA.empty_table()
    if pages.num_rows:
        ds = map_stage(ray.data.from_arrow(pages), ExtractChunk,
                       StageResources(num_cpus=cfg.chunk.num_cpus, concurrency=cfg.chunk.concurrency,
                                      batch_size=cfg.chunk.batch_size),
                       kwargs={"max_chars": cfg.chunk.max_chars, "min_chars": cfg.chunk.min_chars})
        with job.step(f"extract + chunk {pages.num_rows} pages"):
            staged = pa.concat_tables([staged, *ray.get(ds.to_arrow_refs())])
    chunks, too_short, extract_errors = split_status(staged)
    n_before = chunks.num_rows
    chunks, dup_dropped = dedup_table(chunks)
    chunks = conform(chunks, DOCS_SCHEMA, stage="docs.write")  # dedup_table: (source, url, document) order

    docs_dir = fs.join(cfg.output_dir, "docs")
    with fs.atomic_dir(docs_dir) as tmp:
        filesystem, path = fs.resolve(fs.join(tmp, "part-00000.parquet"))
        pq.write_table(chunks, path, filesystem=filesystem)

    by_source = chunks.group_by("source").aggregate([("id", "count"), ("n_chars", "sum")]).to_pylist()
    per_source_chunks = {r["source"]: {"chunks": r["id_count"], "chars": r["n_chars_sum"]} for r in by_source}
    for st in source_stats:
        st.update(per_source_chunks.get(st["source"], {"chunks": 0, "chars": 0}))
        st["extract_errors"] = [e for e in extract_errors if e["source"] == st["source"]]
    report = {
        "output_dir": cfg.output_dir,
        "docs_dir": docs_dir,
        "sources": source_stats,
        "totals": {
            "sources": len(source_stats),
            "pages": pages.num_rows,
            "fetched": sum(s["fetched"] for s in source_stats),
            "cached": sum(s["cached"] for s in source_stats),
            "revalidated": sum(s["revalidated"] for s in source_stats),
            "failed": sum(s["failed"] for s in source_stats),
            "bytes": sum(s["bytes"] for s in source_stats),
            "extract_errors": len(extract_errors),
            "chunks_before_dedup": n_before,
            "dedup_dropped": dup_dropped,
            "too_short_dropped": too_short,
            "chunks": chunks.num_rows,
            "chunks_with_code": sum(chunks.column("has_code").to_pylist()),
            "chars": sum(chunks.column("n_chars").to_pylist()),
        },
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    return report


def summary(report: dict[str, Any]) -> str:
    t = report["totals"]
    lines = [f"docs: {t['chunks']} chunks ({t['chunks_with_code']} with code, {t['chars']} chars) from {t['pages']} pages "
             f"of {t['sources']} sources in {report['wall_s']} s -> {report['docs_dir']}",
             f"  pages: fetched {t['fetched']}, revalidated (304) {t['revalidated']}, cached {t['cached']}, "
             f"failed {t['failed']}; {t['bytes']} bytes downloaded/read",
             f"  chunks: {t['chunks_before_dedup']} before dedup, {t['dedup_dropped']} exact duplicates dropped, "
             f"{t['too_short_dropped']} too short dropped, {t['extract_errors']} pages failed extraction"]
    for s in (s for s in report["sources"] if s["failed"]):
        reasons = ", ".join(f"{k} {v}" for k, v in s["failure_reasons"].items()) or "none"
        lines.append(f"  {s['source']:<18} {s['kind']:<5} pages {s['pages']:>4}  chunks {s['chunks']:>5}  "
                     f"failed {s['failed']:>3} ({reasons})")
    return "\n".join(lines)


def local_inputs(cfg: ScrapeDocsConfig) -> dict[str, str]:
    """Local documentation folders: their content keys the job's completion marker."""
    return {f"source:{s.name}": s.path for s in cfg.sources if isinstance(s, LocalSource)}


SPEC = JobSpec(
    name="docs", config=ScrapeDocsConfig, default_config="jobs/configs/docs_sample.yaml", summary=summary,
    flags={"--output": "output_dir", "--cache-dir": "crawl.cache_dir"},
    volatile=("crawl.cache_dir", "fetch_task", "chunk.num_cpus", "chunk.concurrency", "chunk.batch_size"),
    outputs=lambda r: r["totals"]["chunks"], inputs_count=lambda r: r["totals"]["pages"],
    extra_inputs=local_inputs, description=__doc__,
)
