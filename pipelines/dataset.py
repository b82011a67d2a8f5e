"""The dataset pipeline: corpus modules + doc chunks → per-phase, per-split chat examples.

Ray Data maps the example builders (actor classes that load the phase classifier once) over
module rows (``DIR/modules/repo=<name>/``) and doc chunks (``DIR/docs/``), then decontaminates
against local benchmark checkouts in a second map stage. The driver reads back only
(id, phase, group, skip) to count drops, apply the per-repository cap and assign each group
(repository for modules, documentation source for docs) to one split; a last map stage applies
that and the driver streams rows into ``DIR/examples/phase=<p>/split=<s>/part-00000.parquet``
(one ParquetWriter per partition, the whole ``examples/`` directory renamed into place).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from chipforge import fs
from chipforge.config import Config
from chipforge.job import JobError, JobSpec, Run
from chipforge.stage import StageResources, cluster_cpus, fit_to_cluster, map_stage
from corpus.dataset import (DOC_REQUIRED, MODULE_REQUIRED, ApplySplits, DecontamStage, DocStage, ModuleStage,
                            cap_per_group, check_input_files)
from corpus.schema import EXAMPLES_SCHEMA, SchemaError, conform
from corpus.splits import assign_groups


def _resources() -> StageResources:
    """Module, doc and decontamination actors run at the same time beside the read tasks;
    :func:`chipforge.stage.fit_to_cluster` shrinks them further on a small machine."""
    return StageResources(batch_size=256, num_cpus=0.5, concurrency=1)


class DatasetConfig(Config):
    corpus_dir: str | None = "out/sample/corpus"  # reads DIR/modules/ (hive: repo=<name>/); None: no modules
    docs_dir: str | None = "out/sample/docs"  # reads DIR/docs/; None: no docs
    output_dir: str = "out/sample/dataset"
    seed: int = 0
    split_ratios: dict[str, float] = Field(default_factory=lambda: {"train": 0.8, "validation": 0.1, "test": 0.1})
    max_group_share: float = 0.25  # per phase, per repository/doc source (floor: see corpus.dataset.cap_per_group)
    min_comment_chars: int = 20  # modules whose header comment is shorter are skipped (no description)
    max_error_share: float = 0.05  # modules with a larger share of lines in parse ERROR nodes are skipped
    min_doc_chars: int = 80  # shorter doc chunks are skipped
    classify_modules: bool = True  # let a confident classifier move a module out of rtl_design
    module_min_confidence: float = 0.6
    classifier_path: str | None = None  # None: train from the shipped set (corpus/data/phase_train.jsonl)
    benchmark_paths: list[str] = Field(default_factory=list)  # VerilogEval / RTLLM checkouts
    ngram: int = 13
    modules: StageResources = Field(default_factory=_resources)
    docs: StageResources = Field(default_factory=_resources)
    decontam: StageResources = Field(default_factory=_resources)
    write: StageResources = Field(default_factory=_resources)


def _dist(xs: list[int]) -> dict[str, int]:
    if not xs:
        return {}
    s = sorted(xs)
    q = lambda p: s[min(len(s) - 1, int(p * (len(s) - 1)))]  # noqa: E731
    return {"min": s[0], "p50": q(0.5), "p90": q(0.9), "max": s[-1]}


def build(cfg: DatasetConfig, job: Run | None = None) -> Any:
    """Tagged examples (corpus.dataset.TAGGED_SCHEMA) from modules and docs, decontaminated."""
    import ray

    mods_dir = fs.join(cfg.corpus_dir, "modules") if cfg.corpus_dir else ""
    docs_dir = fs.join(cfg.docs_dir, "docs") if cfg.docs_dir else ""
    for given, sub in ((cfg.corpus_dir, mods_dir), (cfg.docs_dir, docs_dir)):
        if given and not fs.exists(sub):
            raise JobError(f"{given} has no {sub.rsplit('/', 1)[-1]}/ directory: is it the output of the "
                           f"{'corpus' if sub == mods_dir else 'docs'} job?")
    try:
        if mods_dir:
            check_input_files(mods_dir, MODULE_REQUIRED, "modules")
        if docs_dir:
            check_input_files(docs_dir, DOC_REQUIRED, "docs")
    except SchemaError as exc:
        raise JobError(str(exc)) from exc
    stages = {"modules": cfg.modules, "docs": cfg.docs, **({"decontam": cfg.decontam} if cfg.benchmark_paths else {})}
    res = fit_to_cluster(stages, cluster_cpus(), say=job.progress if job else None)
    parts = []
    if mods_dir:
        # Ray's default partitioning is hive: repo=<name>/ directories give the repo column.
        parts.append(map_stage(ray.data.read_parquet(mods_dir), ModuleStage, res["modules"], kwargs=
                          {"min_comment_chars": cfg.min_comment_chars, "max_error_share": cfg.max_error_share,
                           "classify": cfg.classify_modules, "model_path": cfg.classifier_path,
                           "min_confidence": cfg.module_min_confidence}))
    if docs_dir:
        parts.append(map_stage(ray.data.read_parquet(docs_dir), DocStage, res["docs"],
                               kwargs={"model_path": cfg.classifier_path, "min_chars": cfg.min_doc_chars}))
    if not parts:
        raise JobError("no input: set corpus_dir (--corpus) and/or docs_dir (--docs)")
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    if cfg.benchmark_paths:
        ds = map_stage(ds, DecontamStage, res["decontam"], kwargs={"benchmark_paths": cfg.benchmark_paths, "n": cfg.ngram})
    return ds.materialize()


def run(cfg: DatasetConfig, job: Run) -> dict[str, Any]:
    """The job's body: example builders and decontamination on Ray Data; splits assigned on the driver."""
    t0 = time.time()
    with job.step("build examples"):
        tagged = build(cfg, job)
    # Driver: small metadata only (id, phase, group, skip) → drops, cap, split map.
    meta = tagged.select_columns(["id", "phase", "group", "skip"]).take_all()
    dropped: Counter[str] = Counter()
    contaminated: Counter[str] = Counter()
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for m in sorted(meta, key=lambda m: (m["id"] or "", m["group"] or "")):
        if m["skip"]:
            dropped[m["skip"].split(":")[0]] += 1
            if m["skip"].startswith("contaminated:"):
                contaminated[m["skip"].split(":", 1)[1]] += 1
        elif m["id"] in seen:
            dropped["duplicate_example"] += 1
        else:
            seen.add(m["id"])
            rows.append(m)
    rows, n_capped = cap_per_group(rows, "group", cfg.max_group_share)
    dropped["repo_cap"] += n_capped
    split_of = assign_groups(Counter(r["group"] for r in rows), cfg.split_ratios, seed=cfg.seed)
    keep = {(r["id"], r["group"]) for r in rows}
    examples = map_stage(tagged, ApplySplits, cfg.write, kwargs={"split_of": split_of, "keep": keep})
    stats: dict[tuple[str, str], dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    with fs.atomic_dir(fs.join(cfg.output_dir, "examples")) as tmp:
        writers: dict[tuple[str, str], pq.ParquetWriter] = {}
        try:
            for batch in examples.iter_batches(batch_format="pyarrow", batch_size=4096):
                table = conform(batch, EXAMPLES_SCHEMA, stage="dataset.write")
                for r in table.select(["phase", "split", "task", "source", "prompt_tokens", "completion_tokens"]).to_pylist():
                    st = stats[(r["phase"], r["split"])]
                    for k in ("task", "source"):
                        st[k].append(r[k])
                    st["tokens"].append(r["prompt_tokens"] + r["completion_tokens"])
                for (phase, split) in {(p, s) for p, s in zip(table.column("phase").to_pylist(), table.column("split").to_pylist())}:
                    mask = pc.and_(pc.equal(table.column("phase"), phase), pc.equal(table.column("split"), split))
                    if (phase, split) not in writers:
                        d = fs.join(tmp, f"phase={phase}", f"split={split}")
                        fs.makedirs(d)
                        writers[(phase, split)] = pq.ParquetWriter(fs.join(d, "part-00000.parquet"), EXAMPLES_SCHEMA)
                    writers[(phase, split)].write_table(table.filter(mask))
        finally:
            for w in writers.values():
                w.close()
    per = {f"{p}/{s}": {"count": len(v["tokens"]), "tokens": _dist(v["tokens"]),
                        "sources": dict(Counter(v["source"])), "tasks": dict(Counter(v["task"]))}
           for (p, s), v in sorted(stats.items())}
    report = {"n_examples": sum(v["count"] for v in per.values()), "per_phase_split": per,
              "dropped": dict(dropped),
              "dropped_units": "inputs (modules, doc chunks) for skip reasons; examples for repo_cap, "
                               "duplicate_example and contaminated", "contaminated_per_benchmark": dict(contaminated),
              "groups_per_split": dict(Counter(split_of.values())), "split_of_group": split_of,
              "token_count": "approx: ceil(chars/4) of system+user (prompt) and assistant (completion)",
              "wall_s": round(time.time() - t0, 2)}
    phase_counts: Counter[str] = Counter()
    for (p, _), v in stats.items():
        phase_counts[p] += len(v["tokens"])
    report["per_phase"] = dict(sorted(phase_counts.items()))
    report["n_inputs"] = len(meta)
    return report


def summary(report: dict[str, Any]) -> str:
    """Compact table: examples per phase and split (median tokens), then what was dropped."""
    splits = ("train", "validation", "test")
    lines = [f"{report['n_examples']} examples from {report.get('n_inputs', '?')} inputs; "
             f"groups per split {report['groups_per_split']}",
             f"  {'phase':<16}" + "".join(f"{s:>11}" for s in splits) + "   tokens p50"]
    for phase in sorted(report["per_phase"]):
        cells = [report["per_phase_split"].get(f"{phase}/{s}", {}) for s in splits]
        p50 = max((c.get("tokens", {}).get("p50") or 0) for c in cells)
        lines.append(f"  {phase:<16}" + "".join(f"{c.get('count', 0):>11}" for c in cells) + f"   {p50:>10}")
    lines.append(f"  dropped: {report['dropped'] or 'none'}; contaminated: {report['contaminated_per_benchmark'] or 'none'}")
    return "\n".join(lines)


SPEC = JobSpec(
    name="dataset", config=DatasetConfig, default_config="jobs/configs/dataset_sample.yaml", summary=summary,
    flags={"--corpus": "corpus_dir", "--docs": "docs_dir", "--output": "output_dir"},
    inputs={"corpus_dir": "a directory written by python -m jobs.build_corpus",
            "docs_dir": "a directory written by python -m jobs.scrape_docs",
            "classifier_path": "a phase classifier saved by corpus.phases"},
    volatile=("modules", "docs", "decontam", "write"),
    outputs=lambda r: r["n_examples"], inputs_count=lambda r: r["n_inputs"],
    extra_inputs=lambda cfg: {f"benchmark:{i}": p for i, p in enumerate(cfg.benchmark_paths)},
    description=__doc__,
)
