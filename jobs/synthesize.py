"""Synthetic examples for thin phases: an LLM writes them, EDA tools validate every one.

    python -m jobs.synthesize --config jobs/configs/synthesize_cluster.yaml \\
        --docs out/docs --corpus out/corpus --dataset out/dataset --output out/synth

Rounds: build prompts for the phases still under quota (oversampled by the observed keep
rate) → engine (vllm | openai | hf) → parse + validate in a sandbox (actor pool) →
decontaminate and near-dedup against the instruction dataset and the kept set → keep.
Stops when every quota is met or the budget (max prompts / max rounds) is spent. Writes
``DIR/synthetic/phase=<p>/split=<s>/part-00000.parquet`` (``EXAMPLES_SCHEMA``, source
``synthetic``; same layout as the dataset job's ``examples/``) and ``DIR/report.json``, where
generated = kept + rejected (by reason) for every phase.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, Literal

from pydantic import Field, field_validator

from chipforge import fs
from chipforge.config import Config, load_config
from corpus.schema import EXAMPLES_SCHEMA, from_rows
from corpus.synthesis import engines, seeds, templates, validate
from corpus.synthesis.engines import EngineConfig

DEFAULT_CONFIG = "jobs/configs/synthesize_cluster.yaml"
DONE_STATUSES = ("quotas_met", "budget_spent", "no_seeds")
THIN_PHASES = ("rtl_design", "synthesis", "placement", "routing", "timing_analysis", "power_analysis")


class PhaseConfig(Config):
    quota: int = Field(200, ge=0)  # kept examples wanted
    topics: list[str] | None = None  # None: seeds.DEFAULT_TOPICS[phase]
    tasks: list[str] | None = None  # template tasks to use (None: all of the phase)


class BudgetConfig(Config):
    max_prompts: int = Field(6000, ge=1)  # over all rounds and phases
    max_rounds: int = Field(5, ge=1)
    oversample: float = Field(2.0, ge=1.0)  # prompts per missing example before any keep rate is known
    max_oversample: float = Field(10.0, ge=1.0)


class ValidationConfig(Config):
    timeout_s: float = Field(30.0, gt=0)  # per tool run
    sim_timeout_s: float = Field(10.0, gt=0)  # per testbench simulation
    memory_mb: int = Field(2048, ge=64)
    max_output_kb: int = Field(256, ge=1)
    command_lists: Literal["auto", "docs", "fallback"] = "auto"
    concurrency: int | tuple[int, int] = 2
    batch_size: int = Field(8, ge=1)
    num_cpus: float = Field(1.0, gt=0)


class DedupConfig(Config):
    threshold: float = Field(0.8, gt=0.0, le=1.0)  # MinHash Jaccard for "near duplicate"
    num_perm: int = Field(128, ge=16)


class DecontamConfig(Config):
    benchmark_paths: list[str] = Field(default_factory=list)  # as in the dataset job
    ngram: int = Field(13, ge=4)


class SynthesizeConfig(Config):
    output_dir: str = "out/synthesize"
    docs_dir: str | None = None  # docs job output (DIR/docs/)
    corpus_dir: str | None = None  # corpus job output (DIR/modules/)
    dataset_dir: str | None = None  # dataset job output (DIR/examples/), for near-dup removal
    phases: dict[str, PhaseConfig] = Field(default_factory=lambda: {p: PhaseConfig() for p in THIN_PHASES})
    engine: EngineConfig = Field(default_factory=EngineConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    decontam: DecontamConfig = Field(default_factory=DecontamConfig)
    splits: dict[str, float] = Field(default_factory=lambda: {"train": 0.95, "validation": 0.05})
    seed: int = 0
    max_doc_chars: int = Field(3000, ge=200)
    module_lines: tuple[int, int] = (8, 150)
    force: bool = False  # redo even when report.json says this config already finished

    @field_validator("phases")
    @classmethod
    def _known_phases(cls, value: dict[str, PhaseConfig]) -> dict[str, PhaseConfig]:
        known = templates.template_phases()
        bad = sorted(set(value) - set(known))
        if bad:
            raise ValueError(f"no synthesis templates for phase(s) {bad}; phases with templates: {known}")
        for phase, pc in value.items():
            if pc.tasks is not None:
                have = {t.task for t in templates.templates_for(phase)}
                unknown = sorted(set(pc.tasks) - have)
                if unknown:
                    raise ValueError(f"phase {phase}: unknown task(s) {unknown}; known: {sorted(have)}")
        return value

    @field_validator("splits")
    @classmethod
    def _splits(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) - {"train", "validation", "test"} or not value or abs(sum(value.values()) - 1.0) > 1e-6:
            raise ValueError("splits must map train/validation/test to fractions summing to 1")
        return value


CONFIG_CLASS = SynthesizeConfig

Engine = Callable[[Any], Any]  # ray.data.Dataset (PROMPT_SCHEMA) -> Dataset (GENERATION_SCHEMA)


def make_engine(cfg: EngineConfig) -> tuple[Engine, dict[str, Any]]:
    """The engine as a Dataset → Dataset function. vllm is checked (fail fast) first."""
    info: dict[str, Any] = {}
    if cfg.name == "vllm":
        info["preflight"] = engines.check_vllm_runnable(cfg.vllm)
        processor = engines.build_vllm_processor(cfg.vllm, cfg.sampling)
        info["stages"] = engines.stage_summary(processor)
        return (lambda ds: processor(ds).map_batches(engines.to_generation_rows, batch_format="pyarrow")), info
    if cfg.name == "openai":
        processor = engines.build_openai_processor(cfg.openai, cfg.sampling)
        info["stages"] = engines.stage_summary(processor)
        return (lambda ds: processor(ds).map_batches(engines.to_generation_rows, batch_format="pyarrow")), info
    kwargs = engines.hf_map_kwargs(cfg.hf, cfg.sampling)
    return (lambda ds: ds.map_batches(engines.HFGenerator, **kwargs)), info


def split_of(example_id: str, splits: dict[str, float]) -> str:
    """Deterministic split from the example id (hash bucket in [0, 1))."""
    x = int(hashlib.sha256(example_id.encode()).hexdigest()[:8], 16) / 2**32
    acc = 0.0
    for name in ("train", "validation", "test"):
        acc += splits.get(name, 0.0)
        if x < acc:
            return name
    return "train"


def example_row(cand: dict[str, Any], cfg: SynthesizeConfig) -> dict[str, Any]:
    """A kept candidate → one ``EXAMPLES_SCHEMA`` row."""
    seed = json.loads(cand.get("seed_json") or "{}")
    messages = [{"role": "user", "content": cand["instruction"]}, {"role": "assistant", "content": cand["answer"]}]
    ident = hashlib.sha256(f"{cand['phase']}|{cand['task']}|{json.dumps(messages)}".encode()).hexdigest()
    return {
        "id": ident, "phase": cand["phase"], "task": cand["task"], "messages": messages, "source": "synthetic",
        "provenance": seeds.provenance(seed, cfg.engine.generator(cand["template_id"])),
        "license": seed.get("license"), "split": split_of(ident, cfg.splits),
        "prompt_tokens": None, "completion_tokens": None,
    }


class Filters:
    """Decontamination and near-duplicate checks on candidates that passed the tools."""

    def __init__(self, cfg: SynthesizeConfig) -> None:
        from corpus.dedup import NearDupIndex

        self.synthetic = NearDupIndex(threshold=cfg.dedup.threshold, num_perm=cfg.dedup.num_perm)
        self.dataset = None
        self.dataset_rows = 0
        if cfg.dataset_dir:
            self.dataset = NearDupIndex(threshold=cfg.dedup.threshold, num_perm=cfg.dedup.num_perm)
            for key, text in dataset_texts(cfg.dataset_dir, list(cfg.phases)):
                self.dataset.add(key, text)
                self.dataset_rows += 1
        self.bench = None
        if cfg.decontam.benchmark_paths:
            from corpus.decontam import BenchmarkIndex

            self.bench = BenchmarkIndex.from_paths(cfg.decontam.benchmark_paths, n=cfg.decontam.ngram)

    def reason(self, key: str, instruction: str, answer: str) -> str | None:
        text = f"{instruction}\n{answer}"
        if self.bench is not None and self.bench.contaminated(text):
            return "decontam/benchmark"
        if self.dataset is not None and self.dataset.query(text):
            return "dedup/near_dup_dataset"
        if self.synthetic.query(text):
            return "dedup/near_dup_synthetic"
        self.synthetic.add(key, text)
        return None


def dataset_texts(dataset_dir: str, phases: list[str]) -> list[tuple[str, str]]:
    """(id, user + assistant text) of the instruction dataset's examples in ``phases``."""
    import pyarrow.dataset as pads

    path = fs.join(dataset_dir, "examples")
    if not fs.exists(path):
        raise FileNotFoundError(f"dataset input {dataset_dir!r} has no examples/ directory")
    filesystem, p = fs.resolve(path)
    ds = pads.dataset(p, filesystem=filesystem, format="parquet", partitioning="hive")
    table = ds.to_table(columns=["id", "messages"], filter=pads.field("phase").isin(phases))
    out = []
    for r in table.to_pylist():
        text = "\n".join(m["content"] or "" for m in r["messages"] or [] if m["role"] in {"user", "assistant"})
        out.append((r["id"], text))
    return out


def plan_round(cfg: SynthesizeConfig, kept: Counter, generated: Counter, spent: int, usable: set[str]) -> dict[str, int]:
    """Prompts per phase this round: missing × (1 / observed keep rate), within the budget."""
    left = cfg.budget.max_prompts - spent
    want: dict[str, int] = {}
    for phase, pc in cfg.phases.items():
        missing = pc.quota - kept[phase]
        if missing <= 0 or phase not in usable:
            continue
        rate = kept[phase] / generated[phase] if generated[phase] else None
        factor = cfg.budget.oversample if rate is None else min(cfg.budget.max_oversample, 1.1 / max(rate, 1e-9))
        want[phase] = max(1, math.ceil(missing * factor))
    total = sum(want.values())
    if left <= 0 or not want:
        return {}
    if total > left:  # share what is left in proportion (largest remainders), at least 1 each
        exact = {p: n * left / total for p, n in want.items()}
        scaled = {p: max(1, math.floor(x)) for p, x in exact.items()}
        for p in sorted(exact, key=lambda p: exact[p] - math.floor(exact[p]), reverse=True):
            if sum(scaled.values()) >= left:
                break
            scaled[p] += 1
        while sum(scaled.values()) > left:
            scaled[max(scaled, key=scaled.get)] -= 1
        want = {p: n for p, n in scaled.items() if n > 0}
    return want


def fingerprint(cfg: SynthesizeConfig) -> str:
    data = cfg.model_dump(mode="json", exclude={"output_dir", "force"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def run(cfg: SynthesizeConfig, engine: Engine | None = None) -> dict[str, Any]:
    """Run the rounds and write outputs; ``engine`` replaces the configured one (tests)."""
    import ray

    from chipforge.ray_utils import init_ray

    t0 = time.perf_counter()
    out = cfg.output_dir.rstrip("/")
    report_path = fs.join(out, "report.json")
    fp = fingerprint(cfg)
    if not cfg.force and fs.exists(report_path):
        previous = fs.read_json(report_path)
        if previous.get("config_fingerprint") == fp and previous.get("status") in DONE_STATUSES:
            print(f"synthesize: {out} already holds a finished run of this config (status {previous['status']}); "
                  "set force=true to redo it")
            return previous
    init_ray()

    doc_seeds, doc_rows = (seeds.load_doc_seeds(cfg.docs_dir, max_chars=cfg.max_doc_chars) if cfg.docs_dir
                           else ([], []))
    module_seeds = (seeds.load_module_seeds(cfg.corpus_dir, min_lines=cfg.module_lines[0],
                                            max_lines=cfg.module_lines[1])
                    if cfg.corpus_dir and "rtl_design" in cfg.phases else [])
    allowed, command_info = validate.command_lists(doc_rows, cfg.validation.command_lists)
    settings = validate.Settings(
        timeout_s=cfg.validation.timeout_s, sim_timeout_s=cfg.validation.sim_timeout_s,
        memory_mb=cfg.validation.memory_mb, max_output_bytes=cfg.validation.max_output_kb * 1024,
        allowed_commands={k: sorted(v) for k, v in allowed.items()},
    )
    design = validate.design_context()
    phase_templates = {p: templates.templates_for(p, pc.tasks) for p, pc in cfg.phases.items()}
    phase_seeds = {p: seeds.seeds_by_kind(p, doc_seeds, module_seeds,
                                          pc.topics if pc.topics is not None else seeds.DEFAULT_TOPICS.get(p, []))
                   for p, pc in cfg.phases.items()}
    needs_parser = any("verilog" in t.requires for ts in phase_templates.values() for t in ts)
    usable = {p for p in cfg.phases if any(phase_seeds[p].get(t.seed_kind) for t in phase_templates[p])}

    engine_info: dict[str, Any] = {}
    if engine is None:
        engine, engine_info = make_engine(cfg.engine)
    filters = Filters(cfg)

    kept_rows: list[dict[str, Any]] = []
    kept: Counter = Counter()
    generated: Counter = Counter()
    prompts_sent: Counter = Counter()
    rejected: dict[str, Counter] = {p: Counter() for p in cfg.phases}
    samples: dict[str, list[dict[str, Any]]] = {}
    rounds: list[dict[str, Any]] = []
    status, error = "budget_spent", None
    spent = 0
    for round_ in range(cfg.budget.max_rounds):
        plan = plan_round(cfg, kept, generated, spent, usable)
        if not plan:
            break
        tr = time.perf_counter()
        prompts = []
        for phase, n in sorted(plan.items()):
            prompts += seeds.build_prompts(phase, n, round_=round_, seed=cfg.seed, templates=phase_templates[phase],
                                           seeds=phase_seeds[phase], design=design, offset=prompts_sent[phase])
            prompts_sent[phase] += n
        spent += len(prompts)
        print(f"synthesize: round {round_}: {len(prompts)} prompts {dict(sorted(plan.items()))}", flush=True)
        try:
            blocks = max(1, math.ceil(len(prompts) / cfg.validation.batch_size))
            generations = engine(ray.data.from_items(prompts, override_num_blocks=blocks))
            candidates = generations.map_batches(
                validate.ValidateStage, fn_constructor_kwargs={"settings": asdict(settings), "load_parser": needs_parser},
                compute=engines.actor_pool(cfg.validation.concurrency), batch_size=cfg.validation.batch_size,
                num_cpus=cfg.validation.num_cpus, batch_format="pyarrow",
            ).take_all()
        except Exception as exc:  # noqa: BLE001 — an engine failure ends the run with a report
            status, error = "aborted", f"round {round_}: {type(exc).__name__}: {exc}"[:2000]
            print(f"synthesize: {error}", flush=True)
            break
        round_counts: Counter = Counter()
        round_kept = 0
        for cand in sorted(candidates, key=lambda r: r["prompt_id"]):
            phase = cand["phase"]
            generated[phase] += 1
            reason = cand.get("reason")
            if reason is None:
                reason = filters.reason(cand["prompt_id"], cand["instruction"], cand["answer"])
            if reason is None:
                kept[phase] += 1
                round_kept += 1
                kept_rows.append(example_row(cand, cfg))
                continue
            rejected[phase][reason] += 1
            round_counts[reason] += 1
            bucket = samples.setdefault(reason, [])
            if len(bucket) < 3:
                bucket.append({"prompt_id": cand["prompt_id"], "template_id": cand.get("template_id"),
                               "detail": cand.get("detail")})
        lost = len(prompts) - len(candidates)
        if lost:  # rows an engine dropped are rejections too, so the counts add up
            by_phase = Counter(p["phase"] for p in prompts) - Counter(c["phase"] for c in candidates)
            for phase, n in by_phase.items():
                generated[phase] += n
                rejected[phase]["engine/missing_row"] += n
            round_counts["engine/missing_row"] += lost
        rounds.append({"round": round_, "prompts": len(prompts), "kept": round_kept,
                       "rejected": dict(round_counts), "wall_s": round(time.perf_counter() - tr, 2)})
        print(f"synthesize: round {round_}: kept {round_kept}/{len(prompts)}; rejected {dict(round_counts)}",
              flush=True)
    if status != "aborted":
        if all(kept[p] >= pc.quota for p, pc in cfg.phases.items()):
            status = "quotas_met"
        elif not usable:
            status = "no_seeds"

    write_examples(out, kept_rows)
    phases_report = {}
    for phase, pc in cfg.phases.items():
        rej = dict(sorted(rejected[phase].items()))
        phases_report[phase] = {
            "quota": pc.quota, "prompts": prompts_sent[phase], "generated": generated[phase], "kept": kept[phase],
            "rejected": rej, "rejected_total": sum(rej.values()), "quota_met": kept[phase] >= pc.quota,
            "seeds": {k: len(v) for k, v in phase_seeds[phase].items()},
            "counts_add_up": generated[phase] == kept[phase] + sum(rej.values()),
        }
    totals_rej: Counter = Counter()
    for r in rejected.values():
        totals_rej.update(r)
    report = {
        "status": status, "error": error, "config_fingerprint": fp, "output_dir": out,
        "engine": engines.engine_summary(cfg.engine) | engine_info,
        "templates": sorted({t.id for ts in phase_templates.values() for t in ts}),
        "totals": {"prompts": spent, "generated": sum(generated.values()), "kept": sum(kept.values()),
                   "rejected": dict(sorted(totals_rej.items())), "rejected_total": sum(totals_rej.values())},
        "phases": phases_report, "rounds": rounds,
        "budget": {"max_prompts": cfg.budget.max_prompts, "max_rounds": cfg.budget.max_rounds, "spent_prompts": spent,
                   "rounds_run": len(rounds)},
        "seeds": {"docs": len(doc_seeds), "modules": len(module_seeds)},
        "dedup": {"dataset_examples_indexed": filters.dataset_rows, "threshold": cfg.dedup.threshold},
        "command_lists": command_info,
        "sandbox": {"network_isolation": validate.sandbox.network_isolation(), "timeout_s": settings.timeout_s,
                    "sim_timeout_s": settings.sim_timeout_s, "memory_mb": settings.memory_mb,
                    "max_output_bytes": settings.max_output_bytes},
        "tools": validate.sandbox.tool_versions(),
        "rejection_samples": samples,
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    report["totals"]["counts_add_up"] = (report["totals"]["generated"]
                                         == report["totals"]["kept"] + report["totals"]["rejected_total"])
    fs.write_json(report_path, report)
    return report


def write_examples(out: str, rows: list[dict[str, Any]]) -> None:
    """``out/synthetic/phase=<p>/split=<s>/part-00000.parquet``, replaced atomically."""
    import pyarrow.parquet as pq

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: r["id"]):
        groups.setdefault((r["phase"], r["split"]), []).append(r)
    with fs.atomic_dir(fs.join(out, "synthetic")) as tmp:
        for (phase, split), items in sorted(groups.items()):
            table = from_rows(items, EXAMPLES_SCHEMA, stage="synthesize: write examples")
            path = fs.join(tmp, f"phase={phase}", f"split={split}", "part-00000.parquet")
            filesystem, p = fs.resolve(path)
            filesystem.create_dir(p.rsplit("/", 1)[0], recursive=True)
            with filesystem.open_output_stream(p) as f:
                pq.write_table(table, f)


def summary(report: dict[str, Any]) -> str:
    lines = [f"=== synthesize: {report['status']}" + (f" ({report['error']})" if report.get("error") else ""),
             f"{'phase':<16} {'quota':>6} {'kept':>6} {'gen':>6}  top rejections"]
    for phase, r in report["phases"].items():
        top = ", ".join(f"{k}={v}" for k, v in sorted(r["rejected"].items(), key=lambda kv: -kv[1])[:3])
        lines.append(f"{phase:<16} {r['quota']:>6} {r['kept']:>6} {r['generated']:>6}  {top}")
    t = report["totals"]
    lines.append(f"total: {t['kept']} kept of {t['generated']} generated ({t['prompts']} prompts); "
                 f"counts add up: {t['counts_add_up']}; sandbox network: {report['sandbox']['network_isolation']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = load_config(SynthesizeConfig, argv, prog="python -m jobs.synthesize", default_config=DEFAULT_CONFIG,
                      flags={"--output": "output_dir", "--docs": "docs_dir", "--corpus": "corpus_dir",
                             "--dataset": "dataset_dir", "--engine": "engine.name"},
                      description=__doc__)
    try:
        report = run(cfg)
    except engines.EngineUnavailable as exc:
        print(f"synthesize: {exc}")
        return 2
    except FileNotFoundError as exc:
        print(f"synthesize: input missing: {exc}")
        return 2
    print(summary(report))
    return 1 if report["status"] == "aborted" else 0


if __name__ == "__main__":
    raise SystemExit(main())
