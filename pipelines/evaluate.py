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

import hashlib
import json
import math
import os
import re
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
from chipforge.vocab import PHASES, SYSTEM_PROMPTS, Phase
from corpus.phases import EVAL_PATH, TRAIN_PATH
from evaluation import benchmarks as bench
from evaluation import metrics
from evaluation import smoke as smoke_mod
from evaluation.checks import check_batch
from evaluation.models import (OUTPUT_SCHEMA, PROMPT_SCHEMA, ModelSpec, ModelWorker, build_openai_processor, build_vllm_processor,
                               engine_row, resolve_models, to_output)
from evaluation.simulate import FAILURE_CLASSES, SimSettings, simulator_versions
from synthesis import engines, sandbox
from synthesis.engines import EngineConfig, EngineUnavailable, SamplingConfig

KINDS = ("loss", "generation", "benchmark", "smoke", "routing")
REFERENCE = "reference"


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
    resources: StageResources = Field(default_factory=lambda: StageResources(num_cpus=1, batch_size=2))

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


# --------------------------------------------------------------------------- prompt rows

def _hash(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:20]


class Rows:
    """Prompt rows: one prompt copied to each model, with identical messages and sampling."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, kind: str, suite: str, item_id: str, messages: list[dict[str, str]], models: Sequence[str], *,
            sampling: Mapping[str, Any], sample: int = -1, target: Mapping[str, Any] | None = None) -> None:
        prompt_id = _hash(kind, suite, item_id, sample)
        text = json.dumps(messages, ensure_ascii=False)
        for model in models:
            self.rows.append({
                "row_id": _hash(prompt_id, model), "prompt_id": prompt_id, "kind": kind, "suite": suite,
                "item_id": item_id, "model": model, "sample": sample, "messages_json": text,
                "temperature": float(sampling["temperature"]), "top_p": float(sampling["top_p"]),
                "max_tokens": int(sampling["max_tokens"]), "seed": sampling.get("seed"),
                "target_json": json.dumps(dict(target or {}), ensure_ascii=False),
            })


def greedy(sampling: SamplingConfig, max_tokens: int | None = None) -> dict[str, Any]:
    return {"temperature": 0.0, "top_p": 1.0, "max_tokens": max_tokens or sampling.max_tokens,
            "seed": sampling.seed if sampling.seed is not None else 0}


def sampled(sampling: SamplingConfig, i: int) -> dict[str, Any]:
    return {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens,
            "seed": (sampling.seed if sampling.seed is not None else 0) + i}


def read_split(dataset_dir: str, phase: str, split: str) -> list[dict[str, Any]]:
    """Rows of one phase's split (the dataset job's ``examples/`` and the synthesis job's ``synthetic/``)."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for sub in ("examples", "synthetic"):
        base = fs.join(dataset_dir, sub, f"phase={phase}", f"split={split}")
        for p in fs.listdir(base):
            if p.endswith(".parquet"):
                filesystem, inner = fs.resolve(p if not fs.is_uri(dataset_dir) else
                                               dataset_dir.split("://", 1)[0] + "://" + p)
                with filesystem.open_input_file(inner) as f:
                    rows += pq.read_table(f, columns=["id", "messages"]).to_pylist()
    return sorted({r["id"]: r for r in reversed(rows)}.values(), key=lambda r: r["id"])  # an id once


def dataset_phases(dataset_dir: str | None) -> list[str]:
    if not dataset_dir:
        return []
    found = set()
    for sub in ("examples", "synthetic"):
        for p in fs.listdir(fs.join(dataset_dir, sub)):
            name = p.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("phase="):
                found.add(name.split("=", 1)[1])
    return [p for p in PHASES if p in found]


def split_example(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str] | None:
    """(the prompt: messages before the last assistant reply, that reply) or None without a reply."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or not (messages[last]["content"] or "").strip():
        return None
    return [{"role": m["role"], "content": m["content"]} for m in messages[:last]], messages[last]["content"]


def answer_kind(reply: str) -> str:
    """``verilog`` when the reference reply is Verilog code, else ``text``."""
    fenced = re.search(r"```[ \t]*(?:verilog|systemverilog|sv)\b", reply, re.I)
    if (fenced or bench.MODULE_DECL.search(reply)) and bench.extract_verilog(reply):
        return "verilog"
    return "text"


def build_rows(cfg: EvaluateConfig, specs: Sequence[ModelSpec], phases: Sequence[str], problems: list[dict[str, Any]],
               suite: dict[str, Any] | None, route_items: list[dict[str, Any]]
               ) -> tuple[Rows, list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(prompt rows for the engines, reference rows (self-check, already answered), phase info)."""
    rows = Rows()
    refs: list[dict[str, Any]] = []
    s = cfg.engine.sampling
    bases = [m for m in specs if m.kind == "base"]
    specialist = {m.phase: m for m in specs if m.kind == "specialist"}
    phase_info: dict[str, dict[str, Any]] = {}

    def phase_models(phase: str) -> list[str]:
        sp = specialist.get(phase)
        return [sp.name, sp.base] if sp else [b.name for b in bases]

    for phase in phases:
        info: dict[str, Any] = {"specialist": specialist[phase].name if phase in specialist else None,
                                "models": phase_models(phase) if specs else []}
        examples, used = [], None
        if cfg.dataset_dir:
            for split in [cfg.split] + ([cfg.fallback_split] if cfg.fallback_split else []):
                examples = read_split(cfg.dataset_dir, phase, split)
                if examples:
                    used = split
                    break
        info.update(split=used, split_fallback=used is not None and used != cfg.split, n_examples=len(examples))
        phase_info[phase] = info
        if not specs or not examples:
            continue
        models = phase_models(phase)
        parsed = [(e["id"], split_example(e["messages"] or [])) for e in examples]
        parsed = [(i, p) for i, p in parsed if p is not None]
        if cfg.loss.enabled:
            chosen = parsed[: cfg.loss.max_examples] if cfg.loss.max_examples else parsed
            info["loss_examples"] = len(chosen)
            for eid, (prompt, reply) in chosen:
                rows.add("loss", phase, eid, prompt + [{"role": "assistant", "content": reply}], models,
                         sampling=greedy(s))
        if cfg.generation.enabled:
            chosen = parsed[: cfg.generation.max_examples] if cfg.generation.max_examples else parsed
            kinds = Counter()
            for eid, (prompt, reply) in chosen:
                k = answer_kind(reply)
                kinds[k] += 1
                rows.add("generation", phase, eid, prompt, models, sampling=greedy(s),
                         target={"answer_kind": k, "reference": reply})
            info["generation_examples"] = dict(kinds)

    bench_models = [b.name for b in bases] + [m.name for m in specs if m.kind == "specialist" and (
        cfg.benchmarks.models is None or m.name in cfg.benchmarks.models)]
    for p in problems:
        msgs = bench.messages(p)
        target = {"problem": p["key"]}
        if specs:
            rows.add("benchmark", p["benchmark"], p["id"], msgs, bench_models, sampling=greedy(s), target=target)
            for i in range(cfg.benchmarks.n_samples):
                rows.add("benchmark", p["benchmark"], p["id"], msgs, bench_models, sampling=sampled(s, i), sample=i,
                         target=target)
        if cfg.reference:
            refs.append(reference_row("benchmark", p["benchmark"], p["id"], msgs, p["reference"],
                                      {**target, "raw": True}))

    triage = specialist.get("triage")
    routers = [triage.name, triage.base] if triage else []
    if suite is not None:
        for item in suite["items"]:
            if item["kind"] == "routing":
                msgs = [{"role": "system", "content": SYSTEM_PROMPTS["triage"]},
                        {"role": "user", "content": item["prompt"]}]
                if routers:
                    rows.add("routing", "smoke", item["id"], msgs, routers,
                             sampling=greedy(s, cfg.routing.max_tokens), target={"expected": item["expected_phase"]})
                continue
            msgs = [{"role": "system", "content": SYSTEM_PROMPTS[item["phase"]]},
                    {"role": "user", "content": item["prompt"]}]
            if item["kind"] == "verilog":
                target = {"problem": f"smoke/{item['id']}"}
            else:
                target = {"expect_terms": item.get("expect_terms", []), "reference": item.get("reference_text", "")}
            if specs:
                rows.add("smoke", "smoke", item["id"], msgs, [m.name for m in specs], sampling=greedy(s),
                         target=target)
            if cfg.reference:
                refs.append(reference_row("smoke", "smoke", item["id"], msgs, item["reference_text"],
                                          {**target, "raw": True}))
    if routers:
        for item in route_items:
            msgs = [{"role": "system", "content": SYSTEM_PROMPTS["triage"]}, {"role": "user", "content": item["text"]}]
            rows.add("routing", "phase_eval", item["id"], msgs, routers, sampling=greedy(s, cfg.routing.max_tokens),
                     target={"expected": item["phase"]})
    return rows, refs, phase_info


def reference_row(kind: str, suite: str, item_id: str, messages: list[dict[str, str]], answer: str,
                  target: Mapping[str, Any]) -> dict[str, Any]:
    """A self-check row: the problem answered by its own reference solution (no engine)."""
    prompt_id = _hash(kind, suite, item_id, -1)
    row = {"row_id": _hash(prompt_id, REFERENCE), "prompt_id": prompt_id, "kind": kind, "suite": suite,
           "item_id": item_id, "model": REFERENCE, "sample": -1,
           "messages_json": json.dumps(messages, ensure_ascii=False),
           "temperature": None, "top_p": None, "max_tokens": None, "seed": None,
           "target_json": json.dumps(dict(target))}
    return engine_row(row, completion=answer, prompt_sha=None)


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
        processor = build_openai_processor(cfg.engine.openai, specs)
        ds = dataset(sorted(gen_rows, key=key), PROMPT_SCHEMA, cfg.engine.openai.batch_size)
        out.append(map_stage(processor(ds), to_output, StageResources(num_cpus=0.25)))
    if loss_skipped:
        info["loss_skipped"] = loss_skipped
    info["actor_cpus"] = sum(r.num_cpus * (r.concurrency or 1) for r in pools.values())
    return out, info


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
        engines.openai_headers(cfg.engine.openai)
    except EngineUnavailable as exc:
        raise ConfigError(str(exc)) from exc
    return {}


# --------------------------------------------------------------------------- aggregation

def _scores(r: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(r.get("scores_json") or "{}")


def benchmark_summary(rows: list[dict[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """One (benchmark, model) cell: counts, pass@1 (greedy), pass@k (sampled; greedy when none)."""
    greedy_rows = [r for r in rows if r["sample"] < 0]
    sampled_rows = [r for r in rows if r["sample"] >= 0]
    per_problem: dict[str, dict[str, Any]] = {}
    for r in greedy_rows:
        per_problem.setdefault(r["item_id"], {"n": 0, "c": 0})["greedy"] = r["failure_class"] or "pass"
    for r in sampled_rows:
        cell = per_problem.setdefault(r["item_id"], {"n": 0, "c": 0})
        cell["n"] += 1
        cell["c"] += r["verdict"] == "pass"
    n_problems = len(per_problem)
    counts = ([(v["n"], v["c"]) for v in per_problem.values() if v["n"]] if sampled_rows else
              [(1, int(v.get("greedy") == "pass")) for v in per_problem.values()])
    passed = sum(r["verdict"] == "pass" for r in rows)
    failures = metrics.failure_counts((r["failure_class"] for r in rows if r["verdict"] != "pass"), FAILURE_CLASSES)
    greedy_passed = sum(r["verdict"] == "pass" for r in greedy_rows)
    out = {
        "n_problems": n_problems, "samples": len(rows), "passed": passed, "failed": len(rows) - passed,
        "failures": failures, "counts_add_up": len(rows) == passed + sum(failures.values()),
        "pass_at_1": greedy_passed / len(greedy_rows) if greedy_rows else None,
        "greedy": {"n": len(greedy_rows), "passed": greedy_passed,
                   "failures": metrics.failure_counts((r["failure_class"] for r in greedy_rows
                                                       if r["verdict"] != "pass"), FAILURE_CLASSES)},
        "n_samples_per_problem": max((v["n"] for v in per_problem.values()), default=0),
        "pass_at_k": {str(k): v for k in ks if (v := metrics.mean_pass_at_k(counts, k)) is not None},
        "pass_at_k_from": "sampled" if sampled_rows else "greedy",
        "problems": {pid: per_problem[pid] for pid in sorted(per_problem)},
    }
    return out


def aggregate(small: list[dict[str, Any]], cfg: EvaluateConfig, specs: Sequence[ModelSpec],
              phase_info: dict[str, dict[str, Any]], problems: list[dict[str, Any]], suite: dict[str, Any] | None,
              classifier_routing: dict[str, Any] | None, route_items: list[dict[str, Any]],
              engine_info: dict[str, Any]) -> dict[str, Any]:
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in small:
        by_kind[r["kind"]].append(r)
    model_names = [m.name for m in specs] + ([REFERENCE] if cfg.reference else [])

    # 1-2: phases
    phases_out: dict[str, Any] = {}
    for phase, info in phase_info.items():
        loss: dict[str, Any] = {}
        for (model,), rs in metrics.counts_by([r for r in by_kind["loss"] if r["suite"] == phase], "model").items():
            ok = [r for r in rs if not r["failure_class"]]
            nll = sum(_scores(r).get("nll_sum") or 0.0 for r in ok)
            tokens = sum(_scores(r).get("n_tokens") or 0 for r in ok)
            lo, ppl = metrics.perplexity(nll, tokens)
            loss[model] = {"loss": lo, "perplexity": ppl, "tokens": tokens, "examples": len(rs),
                           "errors": len(rs) - len(ok)}
        gen: dict[str, Any] = {}
        for (model,), rs in metrics.counts_by([r for r in by_kind["generation"] if r["suite"] == phase],
                                              "model").items():
            v = [r for r in rs if "parse" in _scores(r)]
            t = [r for r in rs if "rouge_l" in _scores(r)]
            gen[model] = {
                "n": len(rs), "engine_errors": sum(r["failure_class"] == "engine_error" for r in rs),
                "verilog": {"n": len(v), "parse_rate": metrics.share(_scores(r)["parse"] for r in v),
                            "compile_rate": metrics.share(_scores(r)["compile"] for r in v),
                            "lint_rate": metrics.share(_scores(r)["lint"] for r in v)},
                "text": {"n": len(t), "rouge_l": metrics.mean(_scores(r)["rouge_l"] for r in t),
                         "chrf": metrics.mean(_scores(r)["chrf"] for r in t)},
            }
        phases_out[phase] = {**info, "loss": loss, "generation": gen}

    # 3-4: benchmarks and the self-check
    benchmarks_out: dict[str, Any] = {}
    for (suite_name, model), rs in sorted(metrics.counts_by(by_kind["benchmark"], "suite", "model").items()):
        benchmarks_out.setdefault(suite_name, {})[model] = benchmark_summary(rs, cfg.benchmarks.ks)
    reference_check = None
    if cfg.reference:
        reference_check = {"simulator": simulator_versions(), "benchmarks": {}}
        ref_rows = [r for r in small if r["model"] == REFERENCE]
        for (suite_name,), rs in sorted(metrics.counts_by(ref_rows, "suite").items()):
            if suite_name == "smoke":
                continue
            failed = [r for r in rs if r["verdict"] != "pass"]
            reference_check["benchmarks"][suite_name] = {
                "n_problems": len(rs), "passed": len(rs) - len(failed),
                "ceiling": (len(rs) - len(failed)) / len(rs) if rs else None,
                "cannot_pass": [{"problem": r["item_id"], "failure_class": r["failure_class"], "log": r.get("log")}
                                for r in sorted(failed, key=lambda r: r["item_id"])]}
        smoke_ref = [r for r in ref_rows if r["suite"] == "smoke"]
        if smoke_ref:
            reference_check["smoke"] = {"n_items": len(smoke_ref),
                                        "passed": sum(r["verdict"] == "pass" for r in smoke_ref),
                                        "cannot_pass": [{"item": r["item_id"], "failure_class": r["failure_class"],
                                                         "log": r.get("log")}
                                                        for r in smoke_ref if r["verdict"] != "pass"]}

    # 5: routing
    phases_all = list(PHASES)
    routing_out: dict[str, Any] | None = None
    if cfg.routing.enabled:
        routing_out = {"eval_path": cfg.routing.eval_path, "n_items": len(route_items), "routers": {}}
        if classifier_routing is not None:
            routing_out["routers"]["classifier"] = classifier_routing
        for (model,), rs in metrics.counts_by([r for r in by_kind["routing"] if r["suite"] == "phase_eval"],
                                              "model").items():
            expected = {i["id"]: i["phase"] for i in route_items}
            rs = sorted(rs, key=lambda r: r["item_id"])
            routing_out["routers"][model] = metrics.routing_metrics(
                [expected[r["item_id"]] for r in rs], [_scores(r).get("predicted", metrics.UNPARSED) for r in rs],
                phases_all)

    # 6: smoke
    smoke_out = None
    if suite is not None:
        smoke_out = {"items": [{k: i.get(k) for k in ("id", "kind", "phase", "expected_phase", "top")}
                               for i in suite["items"]], "models": {}, "routing": {}}
        for (model,), rs in metrics.counts_by(by_kind["smoke"], "model").items():
            smoke_out["models"][model] = {
                "passed": sum(r["verdict"] == "pass" for r in rs), "total": len(rs),
                "items": {r["item_id"]: {"verdict": r["verdict"], "failure_class": r["failure_class"],
                                         "scores": _scores(r)} for r in sorted(rs, key=lambda r: r["item_id"])}}
        routing_items = [i for i in suite["items"] if i["kind"] == "routing"]
        if classifier_routing is not None and routing_items:
            smoke_out["routing"]["classifier"] = classifier_routing.get("smoke", {})
        for (model,), rs in metrics.counts_by([r for r in by_kind["routing"] if r["suite"] == "smoke"],
                                              "model").items():
            exp = {i["id"]: i["expected_phase"] for i in routing_items}
            items = {r["item_id"]: {"expected": exp[r["item_id"]], "predicted": _scores(r).get("predicted"),
                                    "ok": r["verdict"] == "pass"} for r in rs}
            smoke_out["routing"][model] = {"passed": sum(v["ok"] for v in items.values()), "total": len(items),
                                           "items": items}
        if classifier_routing is not None:
            classifier_routing.pop("smoke", None)

    side = side_by_side(specs, phases_out, benchmarks_out, routing_out, smoke_out, cfg)
    counts = Counter(r["kind"] for r in small)
    judged = Counter(r["kind"] for r in small if r["verdict"] is not None or r["kind"] == "loss")
    return {
        "models": {m.name: m.as_dict() for m in specs} | (
            {REFERENCE: {"name": REFERENCE, "kind": "reference"}} if cfg.reference else {}),
        "model_names": model_names,
        "phases": phases_out, "benchmarks": benchmarks_out, "reference_check": reference_check,
        "routing": routing_out, "smoke": smoke_out, "side_by_side": side,
        "problems": dict(sorted(Counter(p["benchmark"] for p in problems).items())),
        "rows": {"total": len(small), "by_kind": dict(sorted(counts.items())),
                 "judged": sum(judged.values()), "all_judged": sum(judged.values()) == len(small)},
        "engine_info": engine_info,
    }


def side_by_side(specs: Sequence[ModelSpec], phases_out: dict[str, Any], benchmarks_out: dict[str, Any],
                 routing_out: dict[str, Any] | None, smoke_out: dict[str, Any] | None,
                 cfg: EvaluateConfig) -> list[dict[str, Any]]:
    """Every metric of each specialist next to its base's, with the difference (specialist - base)."""
    out: list[dict[str, Any]] = []

    def add(sp: ModelSpec, area: str, metric: str, a: float | None, b: float | None, better: str) -> None:
        out.append({"phase": sp.phase, "specialist": sp.name, "base": sp.base, "area": area, "metric": metric,
                    "specialist_value": a, "base_value": b, "difference": metrics.difference(a, b),
                    "higher_is_better": better == "higher"})

    for sp in (m for m in specs if m.kind == "specialist"):
        ph = phases_out.get(sp.phase, {})
        ls, lb = ph.get("loss", {}).get(sp.name, {}), ph.get("loss", {}).get(sp.base, {})
        if ls or lb:
            add(sp, f"test split ({ph.get('split')})", "loss", ls.get("loss"), lb.get("loss"), "lower")
            add(sp, f"test split ({ph.get('split')})", "perplexity", ls.get("perplexity"), lb.get("perplexity"),
                "lower")
        gs, gb = ph.get("generation", {}).get(sp.name), ph.get("generation", {}).get(sp.base)
        if gs and gb:
            for k in ("parse_rate", "compile_rate", "lint_rate"):
                if gs["verilog"]["n"]:
                    add(sp, "generation (verilog)", k, gs["verilog"][k], gb["verilog"][k], "higher")
            for k in ("rouge_l", "chrf"):
                if gs["text"]["n"]:
                    add(sp, "generation (text)", k, gs["text"][k], gb["text"][k], "higher")
        for name, cells in benchmarks_out.items():
            if sp.name in cells and sp.base in cells:
                a, b = cells[sp.name], cells[sp.base]
                add(sp, name, "pass@1", a["pass_at_1"], b["pass_at_1"], "higher")
                if a["pass_at_k_from"] == "sampled":
                    for k in a["pass_at_k"]:
                        add(sp, name, f"pass@{k} (n={a['n_samples_per_problem']})", a["pass_at_k"].get(k),
                            b["pass_at_k"].get(k), "higher")
        if routing_out and sp.name in routing_out["routers"] and sp.base in routing_out["routers"]:
            a, b = routing_out["routers"][sp.name], routing_out["routers"][sp.base]
            add(sp, "routing", "accuracy", a["accuracy"], b["accuracy"], "higher")
            add(sp, "routing", "macro_f1", a["macro_f1"], b["macro_f1"], "higher")
        if smoke_out and sp.name in smoke_out["models"] and sp.base in smoke_out["models"]:
            a, b = smoke_out["models"][sp.name], smoke_out["models"][sp.base]
            add(sp, "smoke", "pass_rate", a["passed"] / a["total"], b["passed"] / b["total"], "higher")
        if smoke_out and sp.name in smoke_out["routing"] and sp.base in smoke_out["routing"]:
            a, b = smoke_out["routing"][sp.name], smoke_out["routing"][sp.base]
            add(sp, "smoke routing", "pass_rate", a["passed"] / a["total"], b["passed"] / b["total"], "higher")
    return out


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


def load_problems(cfg: EvaluateConfig) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = []
    try:
        if cfg.benchmarks.verilog_eval_v2:
            problems += bench.load_verilog_eval_v2(cfg.benchmarks.verilog_eval_v2, cfg.benchmarks.verilog_eval_tasks)
        if cfg.benchmarks.rtllm:
            problems += bench.load_rtllm(cfg.benchmarks.rtllm)
    except bench.BenchmarkError as exc:
        raise ConfigError(str(exc)) from exc
    return bench.select(problems, cfg.benchmarks.problems, cfg.benchmarks.max_problems)


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
    problems = load_problems(cfg)
    suite = smoke_mod.load_suite() if cfg.smoke else None
    smoke_problems = [smoke_mod.problem(i) for i in (suite or {}).get("items", []) if i["kind"] == "verilog"]
    all_items: list[dict[str, Any]] = []
    route_items: list[dict[str, Any]] = []
    if cfg.routing.enabled:
        from corpus.phases import load_labelled

        all_items = load_labelled(cfg.routing.eval_path, list(PHASES))
        route_items = sorted(all_items, key=lambda r: _hash(r["id"]))[: cfg.routing.max_items or len(all_items)]
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
        if refs:
            datasets.append(dataset(refs, OUTPUT_SCHEMA, 2))
        total = len(rows.rows) + len(refs)
        if datasets:
            ds = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
            all_problems = {p["key"]: p for p in problems + smoke_problems}
            resources = check_resources(cfg, engine_info.pop("actor_cpus", 0.0), job)
            checked = map_stage(ds, check_batch, resources, kwargs={
                "problems": all_problems, "settings": asdict(cfg.simulation.settings()), "phases": list(PHASES),
                "samples_dir": worker_tmp, "allow_unsandboxed": cfg.simulation.allow_unsandboxed})
            with job.step("generate + check"):
                next_report, t_last = 0.1, time.perf_counter()
                for batch in checked.iter_batches(batch_format="pyarrow", batch_size=None):
                    small += batch.to_pylist()
                    done = len(small) / max(1, total)
                    if done >= next_report or time.perf_counter() - t_last > 30:
                        passed = sum(r["verdict"] == "pass" for r in small)
                        job.progress(f"checked {len(small)}/{total} rows ({100 * done:.0f}%), {passed} passed")
                        next_report, t_last = done + 0.1, time.perf_counter()
        if len(small) != total or len({r["row_id"] for r in small}) != total:  # samples/ is left as it was
            raise JobError(f"{total} rows sent, {len(small)} verdicts came back "
                           f"({len({r['row_id'] for r in small})} distinct)")
    with job.step("aggregate"):
        report = aggregate(small, cfg, specs, phase_info, problems, suite, classifier, route_items, engine_info)
    report.update({
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


def random_base(path: str) -> bool:
    """The in-process tiny model, or one the fine-tuning job built (``base_model: tiny`` stamps it)."""
    return path == engines.TINY or (not fs.is_uri(path) and os.path.exists(os.path.join(path, "chipforge_base.json")))


def registry_blocks(report: dict[str, Any], specs: Sequence[ModelSpec]) -> dict[str, dict[str, Any]]:
    """Per specialist: its side-by-side metrics (specialist, base, difference) and the report's path."""
    out = {}
    for sp in (m for m in specs if m.kind == "specialist"):
        rows = [r for r in report["side_by_side"] if r["specialist"] == sp.name]
        out[sp.phase] = {
            "report": report["output_dir"] + "/report.json", "report_html": report["report_html"],
            "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "adapter_path": sp.adapter_path,
            "base_model": sp.base_model, "engine": report["engine"]["name"],
            "metrics": {f"{r['area']}/{r['metric']}": {"specialist": r["specialist_value"], "base": r["base_value"],
                                                        "difference": r["difference"]} for r in rows},
        }
    return out


# --------------------------------------------------------------------------- summary

def _f(x: Any, nd: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}f}" if math.isfinite(x) else str(x)
    return str(x)


def summary(r: dict[str, Any]) -> str:
    bases = sorted({m.get("base_model") for m in r["models"].values() if m.get("kind") == "base"})
    lines = [f"models: {', '.join(r['model_names']) or 'none'}; engine {r['engine']['name']}; "
             f"base model {', '.join(map(str, bases)) or '-'}",
             f"simulator: {r['simulator'].get('iverilog')} / {r['simulator'].get('vvp')}; "
             f"sandbox {r['sandbox']['mode']}"]
    for phase, ph in r["phases"].items():
        bits = []
        for m, v in ph["loss"].items():
            bits.append(f"{m} loss {_f(v['loss'])} ppl {_f(v['perplexity'], 1)}")
        for m, v in ph["generation"].items():
            if v["verilog"]["n"]:
                bits.append(f"{m} parse/compile/lint {_f(v['verilog']['parse_rate'], 2)}/"
                            f"{_f(v['verilog']['compile_rate'], 2)}/{_f(v['verilog']['lint_rate'], 2)}")
            if v["text"]["n"]:
                bits.append(f"{m} rougeL {_f(v['text']['rouge_l'])} chrF {_f(v['text']['chrf'], 1)}")
        split = ph.get("split") or "no data"
        lines.append(f"{phase} [{split}{' (fallback)' if ph.get('split_fallback') else ''}, {ph['n_examples']} ex]: "
                     + ("; ".join(bits) or "-"))
    for name, cells in r["benchmarks"].items():
        for m, c in cells.items():
            pk = (f"{c['n_samples_per_problem']} samples/problem: "
                  + " ".join(f"pass@{k} {_f(v)}" for k, v in c["pass_at_k"].items())
                  if c["pass_at_k_from"] == "sampled" else "greedy only")
            fails = ", ".join(f"{k}={v}" for k, v in c["failures"].items() if v)
            lines.append(f"{name} {m}: pass@1 {_f(c['pass_at_1'])} ({c['greedy']['passed']}/{c['n_problems']}); {pk}; "
                         f"samples {c['samples']} = {c['passed']} passed + {c['failed']} failed ({fails or 'none'})")
    if r.get("reference_check"):
        for name, c in r["reference_check"]["benchmarks"].items():
            cannot = ", ".join(f"{x['problem']} ({x['failure_class']})" for x in c["cannot_pass"][:8])
            lines.append(f"self-check {name}: {c['passed']}/{c['n_problems']} references pass"
                         + (f"; cannot pass: {cannot}" if cannot else ""))
    if r.get("routing"):
        for m, v in r["routing"]["routers"].items():
            lines.append(f"routing {m}: accuracy {_f(v['accuracy'])} macro-F1 {_f(v['macro_f1'])} on {v['n']} items"
                         + (f" ({v['unparsed']} unparsed)" if v.get("unparsed") else ""))
    if r.get("smoke"):
        lines.append("smoke: " + "; ".join(f"{m} {v['passed']}/{v['total']}" for m, v in r["smoke"]["models"].items())
                     + (" | routing " + "; ".join(f"{m} {v['passed']}/{v['total']}"
                                                  for m, v in r["smoke"]["routing"].items())
                        if r["smoke"]["routing"] else ""))
    diffs = [x for x in r["side_by_side"] if x["difference"] is not None]
    if diffs:
        lines.append("specialist vs base (difference = specialist - base):")
        for x in diffs[:24]:
            lines.append(f"  {x['specialist']:<16} {x['area'][:28]:<28} {x['metric']:<13} {_f(x['specialist_value'])} "
                         f"vs {_f(x['base_value'])} ({x['difference']:+.3f})")
        if len(diffs) > 24:
            lines.append(f"  ... {len(diffs) - 24} more in report.json / report.html")
    lines.append(f"rows: {r['rows']['total']} judged {r['rows']['judged']}; samples → {r['samples_dir']}; "
                 f"report → {r['report_html']}")
    if r.get("random_weights"):
        lines.append("note: the base is a tiny random-weight model (built in-process or by the fine-tuning job's "
                     "base_model: tiny): its answers are noise, so generation and benchmark scores are ~0. This run "
                     "checks the harness (prompts, engines, sandboxed checks, counts); evaluate real models with a "
                     "registry of real specialists and --engine vllm/openai.")
    return "\n".join(lines)


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
           "--phases": "phases"},
    inputs={"dataset_dir": "the dataset job's output (DIR/examples/)",
            "benchmarks.verilog_eval_v2": "a VerilogEval v2 checkout (dataset_*/ProbNNN_*)",
            "benchmarks.rtllm": "an RTLLM checkout (<design>/design_description.txt)",
            "routing.eval_path": "a labelled JSONL file"},
    volatile=("simulation.resources", "simulation.allow_unsandboxed", "loss.resources", "loss.batch_size",
              "engine.hf.concurrency", "engine.hf.num_cpus", "engine.hf.num_gpus", "engine.hf.batch_size",
              "engine.vllm.concurrency", "engine.vllm.runtime_env", "engine.vllm.wait_for_gpus_s",
              "engine.vllm.max_concurrent_batches", "engine.openai.concurrency", "engine.openai.qps",
              "engine.openai.timeout_s", "update_registry"),
    outputs=lambda r: r["rows"]["total"], extra_inputs=local_inputs, description=__doc__,
)
