"""Evaluation: every specialist against its base model, on the same prompts and sampling settings.

Reads the specialist registry (``--registry``), the instruction dataset (``--dataset``), local
checkouts of VerilogEval v2 and RTLLM (``benchmarks.verilog_eval_v2=PATH benchmarks.rtllm=PATH``),
the labelled routing set and the shipped smoke suite, then measures per phase, for each
specialist and its base model:

1. held-out loss and perplexity on the phase's test split (teacher-forced, assistant tokens only);
2. generation on the test split: Verilog answers → shares that parse, compile (``iverilog
   -g2012``) and lint (``verilator --lint-only``); text answers → ROUGE-L and chrF;
3. functional correctness on VerilogEval v2 (spec-to-rtl, code-complete) and RTLLM: pass@1
   (greedy) and pass@k (``benchmarks.n_samples`` samples, unbiased estimator), failures classed
   (no code, syntax, compile, simulation mismatch, timeout, ...);
4. with ``reference=true`` (``--reference``), the harness self-check: each problem answered with
   its own reference solution, i.e. the ceiling under the installed simulator, and why a
   problem cannot pass;
5. routing: accuracy, macro-F1 and confusion matrix of the phase classifier and, where
   registered, the triage specialist (and its base) on ``corpus/data/phase_eval.jsonl``;
6. the users' acceptance prompts (``evaluation/data/smoke.json``), simulated with their testbenches.

Every prompt row is built once and copied per model; engines (``hf``, ``vllm``, ``openai``) are
``evaluation.models``'. Every simulation and tool run happens in the bubblewrap sandbox, in its
own directory, inside a Ray task of the check stage (``map_stage``), so a cluster checks in
parallel and a hanging simulation is killed at its limit and counted. Writes
``DIR/report.json``, ``DIR/report.html`` (plots embedded) and ``DIR/samples/*.parquet`` (one row
per prompt and model), and records each specialist's metrics and the report's path in the registry.

With no arguments it runs offline on the bundled sample (``sample/dataset``) with the tiny
random model built in-process and no registry: the base model alone, the smoke suite and the
routing classifier (the numbers are a random model's; the run checks the harness).
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from chipforge import fs
from chipforge.config import Config, ConfigError
from chipforge.job import JobError, JobSpec, Run
from chipforge.stage import StageResources, cluster_cpus, fit_to_cluster, map_stage
from chipforge.vocab import PHASES, Phase
from corpus.phases import EVAL_PATH, TRAIN_PATH
from evaluation import benchmarks as bench
from evaluation import metrics
from evaluation import smoke as smoke_mod
from evaluation.checks import check_batch
from evaluation.models import (OUTPUT_SCHEMA, PROMPT_SCHEMA, ModelSpec, ModelWorker, OpenAIClientWorker,
                               build_vllm_processor, resolve_models, to_output)
from evaluation.prompts import row_hash, build_rows, dataset_phases
from evaluation.report import aggregate, random_base, registry_blocks, summary
from evaluation.simulate import SimSettings, simulator_versions
from synthesis import engines, sandbox
from synthesis.engines import EngineConfig, EngineUnavailable, SamplingConfig


class BenchmarksConfig(Config):
    verilog_eval_v2: str | None = None  # checkout of NVlabs/verilog-eval (main), or one dataset_* directory
    rtllm: str | None = None  # checkout of hkust-zhiyao/RTLLM (v1.1 or v2.0)
    verilog_eval_tasks: list[Literal["spec-to-rtl", "code-complete"]] = Field(
        default_factory=lambda: ["spec-to-rtl", "code-complete"])
    n_samples: int = Field(0, ge=0)  # sampled answers per problem for pass@k (engine.sampling); 0: greedy only
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10])
    problems: list[str] | None = None  # problem ids or fnmatch patterns (None: all)
    max_problems: int | None = Field(None, ge=1)  # per benchmark
    models: list[str] | None = None  # specialists run on the benchmarks (None: all); base models always

    @field_validator("ks")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError("ks must be positive integers")
        return sorted(set(v))


class SimulationConfig(Config):
    compile_timeout_s: float = Field(60.0, gt=0)
    sim_timeout_s: float = Field(30.0, gt=0)  # a simulation still running then is killed: class "timeout"
    memory_mb: int = Field(2048, ge=64)
    log_chars: int = Field(2000, ge=100)  # tool-log excerpt kept per sample
    # Run model-written code without bubblewrap where it cannot isolate (rlimits only). Off: the
    # job stops before generating anything and says how to install bubblewrap.
    allow_unsandboxed: bool = False
    # Check tasks. batch_size (samples per task) None: about four tasks per CPU of the cluster,
    # 4 to 64 samples each (check_batch_size): each task pays Ray's scheduling once (0.1-0.2 s
    # between tasks on a busy 2-core node, as much as two samples), each sample one sandbox start.
    resources: StageResources = Field(default_factory=lambda: StageResources(num_cpus=1))

    def settings(self) -> SimSettings:
        return SimSettings(compile_timeout_s=self.compile_timeout_s, sim_timeout_s=self.sim_timeout_s,
                           memory_mb=self.memory_mb, log_chars=self.log_chars)


class LossConfig(Config):
    enabled: bool = True
    max_examples: int | None = Field(256, ge=1)  # per phase (first by id)
    max_length: int = Field(2048, ge=16)
    batch_size: int = Field(4, ge=1)
    # transformers actors computing losses when the engine is vllm or openai (hf: the engine's own actors)
    resources: StageResources = Field(default_factory=lambda: StageResources(num_cpus=1, concurrency=1,
                                                                             batch_size=16))


class GenerationConfig(Config):
    enabled: bool = True
    max_examples: int | None = Field(32, ge=1)  # per phase (first by id)


class RoutingConfig(Config):
    enabled: bool = True
    eval_path: str = str(EVAL_PATH)
    train_path: str = str(TRAIN_PATH)
    classifier_path: str | None = None  # a saved PhaseClassifier artifact; None: trained on train_path
    max_items: int | None = Field(None, ge=1)  # items asked of the triage specialist and its base
    max_tokens: int = Field(32, ge=1)


class EvaluateConfig(Config):
    """Defaults: the bundled sample, the tiny in-process model, no registry (``evaluate_sample.yaml``)."""

    output_dir: str = "out/sample/evaluate"
    dataset_dir: str | None = "sample/dataset"  # the dataset job's output (examples/, synthetic/)
    registry: str | None = None  # specialist registry JSON; None: the base model alone
    phases: list[Phase] | None = None  # phases evaluated (None: every phase with data or a specialist)
    split: str = "test"
    fallback_split: str | None = "validation"  # used for a phase without a test split (the report says so)
    base_model: str | None = None  # None: each specialist's registered base; without a registry the engine's model
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig(
        name="hf", sampling=SamplingConfig(temperature=0.8, top_p=0.95, max_tokens=256, seed=0)))
    openai_adapter_name: str = "{phase}"  # engine openai: served name of a specialist ({phase}, {base})
    benchmarks: BenchmarksConfig = Field(default_factory=BenchmarksConfig)
    reference: bool = False  # harness self-check: each problem answered with its reference solution
    evaluate_models: bool = True  # false with reference=true: the self-check alone, no model loaded
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    smoke: bool = True
    update_registry: bool = True  # write each specialist's metrics and the report's path into the registry

    @field_validator("phases", mode="before")
    @classmethod
    def _phases(cls, v: Any) -> Any:
        if isinstance(v, str):  # --phases rtl_design,triage
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @model_validator(mode="after")
    def _check(self) -> "EvaluateConfig":
        if "{phase}" not in self.openai_adapter_name:
            raise ValueError("openai_adapter_name must contain {phase}")
        if not self.evaluate_models and not self.reference:
            raise ValueError("evaluate_models=false evaluates nothing unless reference=true")
        return self


# --------------------------------------------------------------------------- engines on Ray

def _blocks(n: int, batch: int) -> int:
    return max(1, min(200, math.ceil(n / max(1, batch))))


def dataset(rows: list[dict[str, Any]], schema: Any, batch: int) -> Any:
    """A Ray dataset of ``rows`` with an explicit schema, in about ``n / batch`` blocks (parallelism)."""
    import pyarrow as pa
    import ray

    n = _blocks(len(rows), batch)
    size = math.ceil(len(rows) / n)
    return ray.data.from_arrow([pa.Table.from_pylist(rows[i : i + size], schema=schema)
                                for i in range(0, len(rows), size)])


def hf_kwargs(cfg: EvaluateConfig, base: ModelSpec, group: Sequence[ModelSpec]) -> dict[str, Any]:
    return {"base_model": base.base_model, "adapters": {m.name: m.adapter_path for m in group if m.adapter_path},
            "base_names": [base.name], "dtype": cfg.engine.hf.dtype, "tiny": cfg.engine.hf.tiny.model_dump(),
            "allow_download": cfg.engine.hf.allow_download, "max_length": cfg.loss.max_length,
            "loss_batch_size": cfg.loss.batch_size}


def run_engines(cfg: EvaluateConfig, specs: Sequence[ModelSpec], rows: list[dict[str, Any]], job: Run
                ) -> tuple[list[Any], dict[str, Any]]:
    """Datasets of output rows (``OUTPUT_SCHEMA``) for ``rows``, one per engine group, and engine info."""
    info: dict[str, Any] = {}
    groups = defaultdict(list)
    for m in specs:
        groups[m.base].append(m)
    out: list[Any] = []

    def key(r: dict[str, Any]) -> tuple:  # rows of one model and sampling land in the same batches
        return (r["model"], r["kind"], r["temperature"], r["max_tokens"], r["seed"] or 0, r["row_id"])

    name = cfg.engine.name
    loss_rows = [r for r in rows if r["kind"] == "loss"]
    gen_rows = [r for r in rows if r["kind"] != "loss"] if name != "hf" else rows
    hf = StageResources(num_cpus=cfg.engine.hf.num_cpus, num_gpus=cfg.engine.hf.num_gpus,
                        concurrency=cfg.engine.hf.concurrency, batch_size=cfg.engine.hf.batch_size)
    pools = {f"hf:{b}": hf for b in groups} if name == "hf" else {}
    loss_skipped: dict[str, str] = {}
    if name != "hf" and loss_rows:
        for b, group in groups.items():
            problem = engines.local_model_problem(group[0].base_model, cfg.engine.hf.allow_download)
            if problem:
                loss_skipped[b] = problem
            else:
                pools[f"loss:{b}"] = cfg.loss.resources
    pools = fit_to_cluster(pools, cluster_cpus(), say=job.progress) if pools else {}
    for b, group in groups.items():
        base = next(m for m in group if m.kind == "base")
        names = {m.name for m in group}
        mine = sorted((r for r in gen_rows if r["model"] in names), key=key)
        if mine and name == "hf":
            ds = dataset(mine, PROMPT_SCHEMA, cfg.engine.hf.batch_size)
            out.append(map_stage(ds, ModelWorker, pools[f"hf:{b}"], kwargs=hf_kwargs(cfg, base, group)))
        elif mine and name == "vllm":
            processor, vinfo = build_vllm_processor(cfg.engine.vllm, group)
            info.setdefault("vllm", {})[b] = vinfo
            ds = dataset(mine, PROMPT_SCHEMA, cfg.engine.vllm.batch_size)
            out.append(map_stage(processor(ds), to_output, StageResources(num_cpus=0.25)))
        mine_loss = sorted((r for r in loss_rows if r["model"] in names), key=key)
        if name != "hf" and mine_loss and f"loss:{b}" in pools:
            ds = dataset(mine_loss, PROMPT_SCHEMA, 16)
            out.append(map_stage(ds, ModelWorker, pools[f"loss:{b}"], kwargs=hf_kwargs(cfg, base, group)))
    if name == "openai" and gen_rows:
        ds = dataset(sorted(gen_rows, key=key), PROMPT_SCHEMA, cfg.engine.openai.batch_size)
        out.append(openai_stage(cfg.engine.openai, specs)(ds))
    if loss_skipped:
        info["loss_skipped"] = loss_skipped
    info["actor_cpus"] = sum(r.num_cpus * (r.concurrency or 1) for r in pools.values())
    return out, info


def openai_stage(cfg: Any, specs: Sequence[ModelSpec], environ: Mapping[str, str] | None = None) -> Any:
    """``ds -> ds``: ``OpenAIClientWorker`` on an actor pool of ``cfg.concurrency`` clients; the key is
    read here, on the driver, so a missing variable fails before anything runs."""
    import ray.data

    key = engines.openai_api_key(cfg, environ) or ""
    served = {s.name: s.served_name or cfg.model for s in specs}
    pool = cfg.concurrency
    compute = (ray.data.ActorPoolStrategy(min_size=pool[0], max_size=pool[1]) if isinstance(pool, tuple)
               else ray.data.ActorPoolStrategy(size=pool))
    kwargs = {"cfg": cfg.model_dump(mode="json"), "served": served, "api_key": key}
    return lambda ds: map_stage(ds, OpenAIClientWorker, StageResources(num_cpus=0.25, batch_size=cfg.batch_size),
                                kwargs=kwargs, compute=compute)


def check_engine(cfg: EvaluateConfig, specs: Sequence[ModelSpec]) -> dict[str, Any]:
    """Fail fast (before anything runs) when the chosen engine cannot serve these models here."""
    from pipelines.synthesis import check_vllm_runnable

    if not specs:
        return {}
    if cfg.engine.name == "hf":
        for m in specs:
            if m.kind == "base":
                problem = engines.local_model_problem(m.base_model, cfg.engine.hf.allow_download)
                if problem:
                    raise ConfigError(problem.replace("engine.hf.model_path", "base model"))
            elif not fs.exists(m.adapter_path or ""):
                raise ConfigError(f"registry: adapter of specialist {m.name!r} not found: {m.adapter_path!r}")
        return {}
    if cfg.engine.name == "vllm":
        try:
            return {"preflight": check_vllm_runnable(cfg.engine.vllm)}
        except EngineUnavailable as exc:
            raise ConfigError(str(exc)) from exc
    try:
        engines.openai_api_key(cfg.engine.openai)
    except EngineUnavailable as exc:
        raise ConfigError(str(exc)) from exc
    return {}


# --------------------------------------------------------------------------- routing classifier

def classifier_eval(cfg: EvaluateConfig, route_items: list[dict[str, Any]], suite: dict[str, Any] | None
                    ) -> dict[str, Any]:
    from corpus.phases import PhaseClassifier

    if cfg.routing.classifier_path:
        clf = PhaseClassifier.read(cfg.routing.classifier_path)
    else:
        clf = PhaseClassifier.train_default(cfg.routing.train_path)
    texts = [r["text"] for r in route_items]
    pred = clf.predict(texts, tools=[r.get("tool") for r in route_items])
    out = metrics.routing_metrics([r["phase"] for r in route_items], pred, list(PHASES))
    out["model"] = cfg.routing.classifier_path or f"PhaseClassifier trained on {cfg.routing.train_path}"
    if suite is not None:
        items = [i for i in suite["items"] if i["kind"] == "routing"]
        got = clf.predict([i["prompt"] for i in items]) if items else []
        per = {i["id"]: {"expected": i["expected_phase"], "predicted": g, "ok": g == i["expected_phase"]}
               for i, g in zip(items, got)}
        out["smoke"] = {"passed": sum(v["ok"] for v in per.values()), "total": len(per), "items": per}
    return out


# --------------------------------------------------------------------------- the job body

def check_batch_size(n_rows: int, cpus: float, fixed: int | None = None) -> int:
    """Samples per check task: ``fixed`` when the config sets it; else about four tasks per CPU
    (so every worker gets several and the slow samples spread), 4 to 64 samples each."""
    if fixed:
        return fixed
    return max(4, min(64, math.ceil(n_rows / (4 * max(1.0, cpus)))))


def check_resources(cfg: EvaluateConfig, actor_cpus: float, job: Run) -> StageResources:
    """The check stage's resources, with each task's CPUs cut to what the engines' actors leave free
    (on a one- or two-CPU machine a 1-CPU task could otherwise never be scheduled beside them)."""
    res = cfg.simulation.resources
    free = cluster_cpus() - actor_cpus
    if cluster_cpus() and res.num_cpus > free:
        cpus = max(0.25, math.floor(free * 100) / 100)
        job.progress(f"check tasks: {res.num_cpus:g} CPU each does not fit beside the engine actors "
                     f"({actor_cpus:g} of {cluster_cpus():g} CPUs); using {cpus:g}")
        return res.model_copy(update={"num_cpus": cpus})
    return res


def load_registry(cfg: EvaluateConfig) -> dict[str, Any] | None:
    if not cfg.registry:
        return None
    if not fs.exists(cfg.registry):
        raise ConfigError(f"registry (--registry): {cfg.registry!r} does not exist (expected the specialist "
                          "registry JSON written by jobs.tune / jobs.finetune registry=...)")
    from training.registry import load

    try:
        return load(cfg.registry)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"registry (--registry): {exc}") from exc


def load_problems(cfg: EvaluateConfig) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(the selected benchmark problems, the problems skipped for a missing or unusable file, each
    with its reason: the report lists them). A checkout with no usable problem is a usage error."""
    problems: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    try:
        if cfg.benchmarks.verilog_eval_v2:
            problems += bench.load_verilog_eval_v2(cfg.benchmarks.verilog_eval_v2, cfg.benchmarks.verilog_eval_tasks,
                                                   skipped)
        if cfg.benchmarks.rtllm:
            problems += bench.load_rtllm(cfg.benchmarks.rtllm, skipped)
    except bench.BenchmarkError as exc:
        raise ConfigError(str(exc)) from exc
    patterns = cfg.benchmarks.problems
    return (bench.select(problems, patterns, cfg.benchmarks.max_problems),
            [s for s in skipped if bench.selected(s["problem"], patterns)])


def load_route_items(cfg: EvaluateConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(every labelled routing item, the ones asked of the routers: ``routing.max_items`` of them).

    A labelled file that cannot be read (not JSON lines, a phase outside the vocabulary), holds
    no item or an item without its own ``id``, and a classifier training set that cannot be read,
    are usage errors naming the field.
    """
    from corpus.phases import load_labelled

    if not cfg.routing.enabled:
        return [], []
    fields = {"routing.eval_path": cfg.routing.eval_path}
    if not cfg.routing.classifier_path:
        fields["routing.train_path"] = cfg.routing.train_path
    items: dict[str, list[dict[str, Any]]] = {}
    for name, path in fields.items():
        try:
            items[name] = load_labelled(path, list(PHASES))
        except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSON errors are ValueErrors
            raise ConfigError(f"{name}: {path!r}: {exc}") from exc
        if not items[name]:
            raise ConfigError(f"{name}: {path!r} holds no labelled item (set routing.enabled=false to skip routing)")
    all_items = items["routing.eval_path"]
    ids = Counter(i.get("id") for i in all_items)
    bad = [i for i, n in ids.items() if not isinstance(i, str) or not i or n > 1]
    if bad:  # rows and verdicts are keyed by the item id
        raise ConfigError(f"routing.eval_path: {cfg.routing.eval_path!r}: every item needs its own \"id\" string; "
                          f"missing or repeated: {bad[:5]}")
    return all_items, sorted(all_items, key=lambda r: row_hash(r["id"]))[: cfg.routing.max_items or len(all_items)]


def preflight(cfg: EvaluateConfig) -> None:
    """Before Ray starts: every benchmark checkout holds usable problems, the routing sets read."""
    load_problems(cfg)
    load_route_items(cfg)


def run(cfg: EvaluateConfig, job: Run) -> dict[str, Any]:
    """The job's body: prompts → engines → sandboxed checks (Ray tasks) → report, HTML, registry."""
    t0 = time.perf_counter()
    out = cfg.output_dir.rstrip("/")
    try:  # before any generation: model-written code runs only in a sandbox (or when allowed)
        isolation_mode = sandbox.require_isolation(cfg.simulation.allow_unsandboxed)
    except sandbox.SandboxUnavailable as exc:
        raise JobError(f"{exc} (or set simulation.allow_unsandboxed=true to run the tools without isolation)") from exc
    registry = load_registry(cfg)
    default_base = cfg.engine.model if cfg.engine.name != "openai" else cfg.engine.openai.model
    specs = resolve_models(registry, phases=cfg.phases, default_base=default_base, base_override=cfg.base_model,
                           engine=cfg.engine.name, openai_model=cfg.engine.openai.model,
                           openai_adapter_name=cfg.openai_adapter_name) if cfg.evaluate_models else []
    if cfg.phases is not None:
        phases = list(cfg.phases)
    else:
        phases = [p for p in PHASES if p in set(dataset_phases(cfg.dataset_dir)) | {m.phase for m in specs}]
    problems, skipped_problems = load_problems(cfg)
    if skipped_problems:
        job.progress(f"{len(skipped_problems)} benchmark problem(s) skipped (listed in report.json): "
                     + "; ".join(f"{s['benchmark']}/{s['problem']}: {s['reason']}" for s in skipped_problems[:3])
                     + (" ..." if len(skipped_problems) > 3 else ""))
    suite = smoke_mod.load_suite() if cfg.smoke else None
    smoke_problems = [smoke_mod.problem(i) for i in (suite or {}).get("items", []) if i["kind"] == "verilog"]
    all_items, route_items = load_route_items(cfg)
    job.progress("models: " + (", ".join(f"{m.name} ({m.kind}{', ' + m.adapter_path if m.adapter_path else ''})"
                                         for m in specs) or "none") + (" + reference" if cfg.reference else ""))
    engine_info = check_engine(cfg, specs)

    with job.step("prompts"):
        rows, refs, phase_info = build_rows(cfg, specs, phases, problems, suite, route_items)
    by_kind = Counter(r["kind"] for r in rows.rows)
    job.progress(f"{len(rows.rows)} prompt rows for {len(specs)} model(s) ({dict(sorted(by_kind.items()))}), "
                 f"{len(refs)} reference answers; {len(problems)} benchmark problems, phases {phases}")

    classifier = None
    if cfg.routing.enabled:
        with job.step("routing classifier"):
            classifier = classifier_eval(cfg, all_items, suite)
        job.progress(f"classifier: accuracy {classifier['accuracy']:.3f}, macro-F1 {classifier['macro_f1']:.3f} "
                     f"on {classifier['n']} items")

    small: list[dict[str, Any]] = []
    samples_dir = fs.join(out, "samples")
    with fs.atomic_dir(samples_dir) as tmp:
        worker_tmp = tmp if fs.is_uri(tmp) else os.path.abspath(tmp)
        datasets, run_info = run_engines(cfg, specs, rows.rows, job) if rows.rows else ([], {})
        engine_info.update(run_info)
        total = len(rows.rows) + len(refs)
        per_task = check_batch_size(total, cluster_cpus(), cfg.simulation.resources.batch_size)
        engine_info["check_batch_size"] = per_task
        if refs:
            datasets.append(dataset(refs, OUTPUT_SCHEMA, per_task))
        if datasets:
            ds = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
            all_problems = {p["key"]: p for p in problems + smoke_problems}
            resources = check_resources(cfg, engine_info.pop("actor_cpus", 0.0), job)
            resources = resources.model_copy(update={"batch_size": per_task})
            checked = map_stage(ds, check_batch, resources, kwargs={
                "problems": all_problems, "settings": asdict(cfg.simulation.settings()), "phases": list(PHASES),
                "samples_dir": worker_tmp, "allow_unsandboxed": cfg.simulation.allow_unsandboxed})
            with job.step("generate + check"):
                next_report, t_last = 0.5, time.perf_counter()
                for batch in checked.iter_batches(batch_format="pyarrow", batch_size=None):
                    small += batch.to_pylist()
                    done = len(small) / max(1, total)
                    if done >= next_report or time.perf_counter() - t_last > 30:
                        passed = sum(r["verdict"] == "pass" for r in small)
                        job.progress(f"checked {len(small)}/{total} rows ({100 * done:.0f}%), {passed} passed")
                        next_report, t_last = done + 0.5, time.perf_counter()
        if len(small) != total or len({r["row_id"] for r in small}) != total:  # samples/ is left as it was
            raise JobError(f"{total} rows sent, {len(small)} verdicts came back "
                           f"({len({r['row_id'] for r in small})} distinct)")
    with job.step("aggregate"):
        report = aggregate(small, cfg, specs, phase_info, problems, suite, classifier, route_items, engine_info)
    report.update({
        "benchmark_problems_skipped": skipped_problems,
        "output_dir": out, "samples_dir": samples_dir, "report_html": fs.join(out, "report.html"),
        "registry": cfg.registry, "dataset_dir": cfg.dataset_dir, "phases_evaluated": phases,
        "engine": engines.engine_summary(cfg.engine), "prompt_version": bench.PROMPT_VERSION,
        "simulator": simulator_versions(),
        "sandbox": {"mode": isolation_mode, "isolation": sandbox.isolation(),
                    "compile_timeout_s": cfg.simulation.compile_timeout_s,
                    "sim_timeout_s": cfg.simulation.sim_timeout_s, "memory_mb": cfg.simulation.memory_mb},
        "random_weights": cfg.engine.name == "hf" and any(random_base(m.base_model) for m in specs),
        "body_wall_s": round(time.perf_counter() - t0, 2),
    })
    with job.step("report.html"):
        from evaluation.html import render

        fs.write_text(report["report_html"], render(report))
    if cfg.registry and cfg.update_registry and registry is not None:
        from evaluation.registry import record_evaluations

        blocks = registry_blocks(report, specs)
        report["registry_updated"] = record_evaluations(cfg.registry, blocks)
        job.progress(f"registry {cfg.registry}: evaluation recorded for {report['registry_updated']}")
    return report


def local_inputs(cfg: EvaluateConfig) -> dict[str, str]:
    """The registered adapters and base models (their content keys the completion marker). The
    registry file itself is not an input: this job writes its results into it."""
    if not cfg.registry or not fs.exists(cfg.registry):
        return {"registry": cfg.registry or ""}
    try:
        from training.registry import load

        entries = load(cfg.registry)["specialists"]
    except (ValueError, KeyError, OSError):
        return {"registry": cfg.registry}
    out = {}
    for phase, e in sorted(entries.items()):
        if cfg.phases is None or phase in cfg.phases:
            out[f"adapter:{phase}"] = e.get("adapter_path", "")
            out[f"base:{phase}"] = cfg.base_model or e.get("base_model", "")
    return out


SPEC = JobSpec(
    name="evaluate", config=EvaluateConfig, default_config="jobs/configs/evaluate_sample.yaml", summary=summary,
    flags={"--output": "output_dir", "--registry": "registry", "--dataset": "dataset_dir", "--engine": "engine.name",
           "--phases": "phases", "--reference": "reference"},
    inputs={"dataset_dir": "the dataset job's output (DIR/examples/)",
            "benchmarks.verilog_eval_v2": "a VerilogEval v2 checkout (dataset_*/ProbNNN_*)",
            "benchmarks.rtllm": "an RTLLM checkout (<design>/design_description.txt)",
            "routing.eval_path": "a labelled JSONL file"},
    volatile=("simulation.resources", "simulation.allow_unsandboxed", "loss.resources", "loss.batch_size",
              "engine.hf.concurrency", "engine.hf.num_cpus", "engine.hf.num_gpus", "engine.hf.batch_size",
              "engine.vllm.concurrency", "engine.vllm.runtime_env", "engine.vllm.wait_for_gpus_s",
              "engine.vllm.max_concurrent_batches", "engine.openai.concurrency", "engine.openai.qps",
              "engine.openai.timeout_s", "update_registry"),
    outputs=lambda r: r["rows"]["total"], extra_inputs=local_inputs, description=__doc__, preflight=preflight,
)
