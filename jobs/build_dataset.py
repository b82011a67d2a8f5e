"""Instruction dataset: corpus modules + doc chunks → per-phase, per-split chat examples.

Ray Data maps the example builders (actor classes that load the phase classifier once) over
module rows (``DIR/modules/repo=<name>/``) and doc chunks (``DIR/docs/``), then decontaminates
against local benchmark checkouts in a second map stage. The driver reads back only
(id, phase, group, skip) to count drops, apply the per-repository cap and assign each group
(repository for modules, documentation source for docs) to one split; a last map stage applies
that and the driver streams rows into ``DIR/examples/phase=<p>/split=<s>/part-00000.parquet``
(one ParquetWriter per partition, the whole ``examples/`` directory renamed into place).
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from chipforge import fs
from chipforge.config import Config, load_config
from chipforge.ray_utils import compute
from corpus.dataset import ApplySplits, DecontamStage, DocStage, ModuleStage, cap_per_group
from corpus.schema import EXAMPLES_SCHEMA, conform
from corpus.splits import assign_groups

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "dataset_sample.yaml"


class StageResources(Config):
    """Ray Data resources of one map stage (actor pool of ``concurrency`` actors).

    Module and doc actors run at the same time (union) beside the read tasks: on a 2-CPU laptop,
    whole-CPU actors would hold every CPU and starve the reads, hence 0.5 by default."""

    batch_size: int = 256
    num_cpus: float = 0.5
    concurrency: int = 1


class DatasetConfig(Config):
    corpus_dir: str = "out/sample/corpus"  # reads DIR/modules/ (hive: repo=<name>/)
    docs_dir: str = "out/sample/docs"  # reads DIR/docs/
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
    modules: StageResources = Field(default_factory=StageResources)
    docs: StageResources = Field(default_factory=StageResources)
    decontam: StageResources = Field(default_factory=StageResources)
    write: StageResources = Field(default_factory=StageResources)


BuildDatasetConfig = DatasetConfig
CONFIG_CLASS = DatasetConfig


def _map(ds: Any, cls: type, kwargs: dict[str, Any], res: StageResources) -> Any:
    return ds.map_batches(cls, fn_constructor_kwargs=kwargs, batch_format="pyarrow", batch_size=res.batch_size,
                          num_cpus=res.num_cpus, compute=compute(res.concurrency, actors=True))


def _dist(xs: list[int]) -> dict[str, int]:
    if not xs:
        return {}
    s = sorted(xs)
    q = lambda p: s[min(len(s) - 1, int(p * (len(s) - 1)))]  # noqa: E731
    return {"min": s[0], "p50": q(0.5), "p90": q(0.9), "max": s[-1]}


def build(cfg: DatasetConfig) -> Any:
    """Tagged examples (corpus.dataset.TAGGED_SCHEMA) from modules and docs, decontaminated."""
    import ray

    mods_dir, docs_dir = fs.join(cfg.corpus_dir, "modules"), fs.join(cfg.docs_dir, "docs")
    parts = []
    if fs.exists(mods_dir):
        # Ray's default partitioning is hive: repo=<name>/ directories give the repo column.
        parts.append(_map(ray.data.read_parquet(mods_dir), ModuleStage,
                          {"min_comment_chars": cfg.min_comment_chars, "max_error_share": cfg.max_error_share,
                           "classify": cfg.classify_modules, "model_path": cfg.classifier_path,
                           "min_confidence": cfg.module_min_confidence}, cfg.modules))
    if fs.exists(docs_dir):
        parts.append(_map(ray.data.read_parquet(docs_dir), DocStage,
                          {"model_path": cfg.classifier_path, "min_chars": cfg.min_doc_chars}, cfg.docs))
    if not parts:
        raise FileNotFoundError(f"no input: neither {mods_dir} nor {docs_dir} exists (run the corpus/docs jobs first)")
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    if cfg.benchmark_paths:
        ds = _map(ds, DecontamStage, {"benchmark_paths": cfg.benchmark_paths, "n": cfg.ngram}, cfg.decontam)
    return ds.materialize()


def run(cfg: DatasetConfig) -> dict[str, Any]:
    from chipforge.ray_utils import init_ray

    t0 = time.time()
    init_ray()
    tagged = build(cfg)
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
    examples = _map(tagged, ApplySplits, {"split_of": split_of, "keep": keep}, cfg.write)
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
    fs.write_json(fs.join(cfg.output_dir, "report.json"), report)
    return report


def summary(report: dict[str, Any]) -> str:
    """Readable table: examples per phase/split with token lengths, then drops."""
    lines = [f"dataset: {report['n_examples']} examples in {report['wall_s']} s",
             f"  {'phase/split':<28} {'count':>6}  tokens min/p50/p90/max   tasks"]
    for k, v in report["per_phase_split"].items():
        t = v["tokens"]
        lines.append(f"  {k:<28} {v['count']:>6}  {t.get('min')}/{t.get('p50')}/{t.get('p90')}/{t.get('max')}"
                     f"   {', '.join(f'{a}={b}' for a, b in sorted(v['tasks'].items()))}")
    lines.append(f"  per phase: {report['per_phase']}")
    lines.append(f"  groups per split: {report['groups_per_split']}")
    lines.append(f"  dropped: {report['dropped']}")
    lines.append(f"  contaminated per benchmark: {report['contaminated_per_benchmark']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = load_config(DatasetConfig, argv, prog="python -m jobs.build_dataset", default_config=DEFAULT_CONFIG,
                      flags={"--corpus": "corpus_dir", "--docs": "docs_dir", "--output": "output_dir"},
                      description=__doc__)
    print(summary(run(cfg)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
