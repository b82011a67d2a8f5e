"""Synthesis pipeline: seeds → prompts → engine → parse + validate (sandboxed actors) → filters → keep.

Rounds: build prompts for the phases still under quota (oversampled by the observed keep
rate) → engine (``vllm`` | ``openai`` through ``ray.data.llm`` processors, or ``hf`` as an actor
pool) → parse and validate in a sandbox (actor pool) → decontaminate and near-dedup against
the instruction dataset and the kept set → keep. Stops when every quota is met or the budget
(max prompts / max rounds / max wall time) is spent. Writes ``DIR/synthetic/phase=<p>/split=<s>/part-00000.parquet``
(``EXAMPLES_SCHEMA``; the same example builder as the dataset job: its system prompt and id
formula, ``source`` ``synthetic``) and ``DIR/report.json``, where generated = kept + rejected
(by reason) for every phase.

Splits: an example goes into the split of its seed's group (repository or documentation
source) as the dataset job assigned it (``split_of_group`` in ``dataset_dir/report.json``), so
a seed from a validation or test group never yields a training example. Groups the dataset
does not know (and topic seeds) are split by a hash of the group.

Inputs: ``docs_dir`` (docs job output), ``doc_sources`` (local documentation directories
chunked in-process, e.g. the bundled ``sample/docs``), ``corpus_dir`` (corpus job output, for
RTL seeds) and ``dataset_dir`` (dataset job output: splits and near-dup removal). The default
run needs no other job: sample docs, ``sample/dataset`` and a tiny random model built
in-process, offline.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator

from chipforge import fs
from chipforge.config import Config, ConfigError
from chipforge.job import JobError, JobSpec, Run
from chipforge.vocab import SPECIALIST_PHASES, unit_interval
from chipforge.stage import StageResources, cluster_cpus, fit_to_cluster, map_stage
from corpus.dataset import make_example
from corpus.decontam import check_benchmark_paths
from corpus.docs.sources import LocalSource
from corpus.schema import EXAMPLES_SCHEMA, from_rows
from synthesis import engines, sandbox, seeds, signatures, templates, validate
from synthesis.engines import EngineConfig, EngineUnavailable, SamplingConfig, VLLMConfig

THIN_PHASES = SPECIALIST_PHASES
SAMPLE_DOCS = (("yosys", "yosys"), ("openroad", "openroad"), ("opensta", "opensta"), ("magic", "magic"),
               ("dreamplace", "dreamplace"))


def sample_doc_sources() -> list[LocalSource]:
    """The bundled sample documentation, named as in ``jobs/configs/docs_sample.yaml``."""
    return [LocalSource(name=f"{d}-sample", tool=tool, path=f"sample/docs/{d}", license="Apache-2.0")
            for d, tool in SAMPLE_DOCS]


class PhaseConfig(Config):
    quota: int = Field(200, ge=0)  # kept examples wanted
    topics: list[str] | None = None  # None: seeds.DEFAULT_TOPICS[phase]
    tasks: list[str] | None = None  # template tasks to use (None: all of the phase)


class BudgetConfig(Config):
    max_prompts: int = Field(6000, ge=1)  # over all rounds and phases
    max_rounds: int = Field(5, ge=1)
    # Wall time of the whole job (None: unbounded), like a batch API's completion window: after it no
    # round starts and the openai engine sends no request and cuts those in flight (rows counted as
    # engine/deadline); the examples kept so far are written. Other engines finish the round under way.
    max_wall_s: float | None = Field(None, gt=0)
    oversample: float = Field(2.0, ge=1.0)  # prompts per missing example before any keep rate is known
    max_oversample: float = Field(10.0, ge=1.0)


class ValidationConfig(Config):
    timeout_s: float = Field(30.0, gt=0)  # per tool run
    sim_timeout_s: float = Field(10.0, gt=0)  # per testbench simulation
    memory_mb: int = Field(2048, ge=64)
    max_output_kb: int = Field(256, ge=1)
    command_lists: Literal["auto", "docs", "fallback"] = "auto"
    # Run model-written code without bubblewrap where it cannot isolate (rlimits only). Off: the
    # job stops before generating anything and says how to install bubblewrap.
    allow_unsandboxed: bool = False
    concurrency: int | None = Field(1, ge=1)  # validator actors (None: autoscale from one)
    batch_size: int = Field(8, ge=1)
    num_cpus: float = Field(1.0, gt=0)


class NearDupConfig(Config):
    threshold: float = Field(0.8, gt=0.0, le=1.0)  # MinHash Jaccard for "near duplicate"
    num_perm: int = Field(128, ge=16)


DedupConfig = NearDupConfig


class DecontamConfig(Config):
    benchmark_paths: list[str] = Field(default_factory=list)  # as in the dataset job
    ngram: int = Field(13, ge=4)


# --- fpga_flow (issue 13): grounded placement/routing/timing examples from yosys + nextpnr-ice40 ---
class FpgaFlowConfig(Config):
    """Examples whose answers are built from a real flow's reports (``synthesis/fpga_flow.py``)."""

    enabled: bool = False
    max_per_phase: int = Field(40, ge=0)  # flow examples kept per phase (at most its quota; they count toward it)
    cache_dir: str | None = None  # local directory for flow results (None: cached in process only)
    timeout_s: float = Field(120.0, gt=0)  # per tool run


def add_fpga_flow_rows(cfg: SynthesizeConfig, tally: Tally, filters: Filters, split_map: Mapping[str, str],
                       job: Run) -> dict[str, Any]:
    """Run the flow cases, fold their examples into ``tally`` (through the same filters and split
    rule as engine examples); the report section. Skipped, with the reason, without nextpnr-ice40."""
    from synthesis import fpga_flow

    fc = cfg.fpga_flow
    cases = fpga_flow.default_cases()
    info: dict[str, Any] = {"enabled": fc.enabled, "cases": len(cases), "kept": {}, "rejected": {}}
    if not fc.enabled:
        return info | {"skipped": "disabled (fpga_flow.enabled: false)"}
    problem = fpga_flow.available()
    if problem:
        job.progress(f"fpga_flow skipped: {problem}")
        return info | {"skipped": problem, "skipped_cases": len(cases)}
    reports = fpga_flow.run_cases(cases, cache_dir=fc.cache_dir, timeout_s=fc.timeout_s,
                                  memory_mb=cfg.validation.memory_mb)
    kept: Counter = Counter()
    rejected: Counter = Counter()
    for row in fpga_flow.example_rows(reports, set(cfg.phases)):
        phase, group = row["phase"], row.pop("group")
        if kept[phase] >= min(fc.max_per_phase, cfg.phases[phase].quota):  # never more than the quota asks for
            continue
        tally.generated[phase] += 1
        generator = row["provenance"]["generator"]
        reason = filters.reason(row["id"], row["messages"][1]["content"], row["messages"][2]["content"])
        if reason is not None:
            tally.reject({"phase": phase, "prompt_id": row["id"], "template_id": generator, "detail": group},
                         reason, rejected)
            continue
        split, how = split_for({"group": group}, split_map, cfg.splits)
        row["split"] = split
        tally.kept[phase] += 1
        tally.kept_by_split[split] += 1
        tally.split_how[how] += 1
        tally.rows.append(row)
        kept[phase] += 1
    job.progress(f"fpga_flow: {len(reports)} flow runs, kept {dict(kept)}, rejected {dict(rejected)}")
    return info | {"skipped": None, "tools": fpga_flow.tool_versions(), "kept": dict(sorted(kept.items())),
                   "rejected": dict(sorted(rejected.items())),
                   "runs": {r["case"]: r["stage_failed"] or "ok" for r in reports}}
# --- end fpga_flow ---


class SynthesizeConfig(Config):
    """Defaults: the bundled sample with the tiny in-process model (``synthesize_tiny_cpu.yaml``)."""

    output_dir: str = "out/sample/synthesize"
    docs_dir: str | None = None  # docs job output (DIR/docs/)
    # Local documentation directories, chunked in-process (no docs job needed); read only when
    # docs_dir is not set, so `--docs DIR` replaces the bundled sample rather than adding to it.
    doc_sources: list[LocalSource] = Field(default_factory=sample_doc_sources)
    doc_chunk_chars: int = Field(1500, ge=200)  # chunk size for doc_sources (docs_sample.yaml's)
    corpus_dir: str | None = None  # corpus job output (DIR/modules/), seeds RTL tasks
    dataset_dir: str | None = "sample/dataset"  # dataset job output: split_of_group, near-dup removal
    phases: dict[str, PhaseConfig] = Field(default_factory=lambda: {"synthesis": PhaseConfig(quota=2),
                                                                    "timing_analysis": PhaseConfig(quota=2)})
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig(
        name="hf", sampling=SamplingConfig(temperature=0.8, max_tokens=48, seed=0)))
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    budget: BudgetConfig = Field(default_factory=lambda: BudgetConfig(max_prompts=8, max_rounds=2))
    dedup: NearDupConfig = Field(default_factory=NearDupConfig)
    decontam: DecontamConfig = Field(default_factory=DecontamConfig)
    fpga_flow: FpgaFlowConfig = Field(default_factory=FpgaFlowConfig)  # issue 13: grounded flow examples
    # Splits of groups the dataset does not know (and of topic seeds), by a hash of the group.
    splits: dict[str, float] = Field(default_factory=lambda: {"train": 0.95, "validation": 0.05})
    seed: int = 0
    max_doc_chars: int = Field(3000, ge=200)
    module_lines: tuple[int, int] = (8, 150)

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


Engine = Callable[[Any], Any]  # ray.data.Dataset (PROMPT_SCHEMA) -> Dataset (GENERATION_SCHEMA)


# --------------------------------------------------------------------------- engines on Ray

def _vllm_on_gpu_node(runtime_env: dict[str, Any] | None, timeout_s: float = 120.0) -> bool:
    """Is vllm importable on a GPU node? (A zero-CPU task pinned to one; never waits for GPUs.)"""
    import importlib.util

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0]
    if not nodes:
        return False

    @ray.remote(num_cpus=0)
    def probe() -> bool:
        return importlib.util.find_spec("vllm") is not None

    ref = probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[0]["NodeID"], soft=False),
                        runtime_env=runtime_env).remote()
    try:
        return bool(ray.get(ref, timeout=timeout_s))
    except Exception:  # noqa: BLE001 - an unreachable node means "not usable"
        ray.cancel(ref, force=True)
        return False


def check_vllm_runnable(cfg: VLLMConfig) -> dict[str, Any]:
    """Fail fast (``EngineUnavailable``) when the vLLM engine cannot run on this Ray cluster.

    Checks the cluster's GPUs (and accelerator type) and that vllm is importable on the driver,
    else on a GPU node. With ``wait_for_gpus_s`` it first asks the autoscaler for the GPUs and
    waits that long.
    """
    import importlib.util

    import ray

    need = cfg.tensor_parallel_size * cfg.pipeline_parallel_size
    resources = ray.cluster_resources()
    if cfg.wait_for_gpus_s > 0 and resources.get("GPU", 0) < need:
        from ray.autoscaler.sdk import request_resources

        bundle = {"GPU": 1} | ({f"accelerator_type:{cfg.accelerator_type}": 0.001} if cfg.accelerator_type else {})
        request_resources(bundles=[bundle] * need)
        deadline = time.monotonic() + cfg.wait_for_gpus_s
        while time.monotonic() < deadline and resources.get("GPU", 0) < need:
            time.sleep(5)
            resources = ray.cluster_resources()
    found_on = "driver" if importlib.util.find_spec("vllm") is not None else None
    if found_on is None and resources.get("GPU", 0) >= need and _vllm_on_gpu_node(cfg.runtime_env):
        found_on = "gpu_node"
    engines.vllm_preflight(resources, found_on is not None, tensor_parallel_size=cfg.tensor_parallel_size,
                           pipeline_parallel_size=cfg.pipeline_parallel_size, accelerator_type=cfg.accelerator_type)
    return {"gpus": resources.get("GPU", 0), "vllm_found_on": found_on}


def vllm_processor_config(cfg: VLLMConfig) -> Any:
    from ray.data.llm import vLLMEngineProcessorConfig

    engine_kwargs = {"max_model_len": cfg.max_model_len, "tensor_parallel_size": cfg.tensor_parallel_size,
                     "pipeline_parallel_size": cfg.pipeline_parallel_size, **cfg.engine_kwargs}
    return vLLMEngineProcessorConfig(
        model_source=cfg.model_source, engine_kwargs=engine_kwargs, concurrency=cfg.concurrency,
        batch_size=cfg.batch_size, accelerator_type=cfg.accelerator_type, runtime_env=cfg.runtime_env,
        max_concurrent_batches=cfg.max_concurrent_batches, should_continue_on_error=cfg.should_continue_on_error,
        chat_template_stage=True, tokenize_stage=True, detokenize_stage=True,
    )


def build_vllm_processor(cfg: VLLMConfig, sampling: SamplingConfig) -> Any:
    """The ``ray.data.llm`` processor (chat template → tokenize → vLLM → detokenize).

    Building needs neither vllm nor GPUs; running it needs both (``check_vllm_runnable``).
    """
    import functools

    from ray.data.llm import build_processor

    return build_processor(vllm_processor_config(cfg),
                           preprocess=functools.partial(engines.vllm_request, sampling=sampling.params()),
                           postprocess=engines.vllm_reply)


def openai_stage(cfg: engines.OpenAIConfig, sampling: SamplingConfig, environ: Mapping[str, str] | None = None,
                 *, deadline: float | None = None) -> tuple[Engine, dict[str, Any]]:
    """The ``openai`` engine: ``engines.OpenAIChat`` on an actor pool (``cfg.concurrency`` clients,
    ``cfg.batch_size`` requests in flight per client). Each row's reply, whatever the server sends,
    is that row's text or ``engine_error``; the key is read here, so a missing variable fails before
    anything runs. ``deadline`` (epoch seconds) is the job's: no request is sent after it."""
    import ray.data

    key = engines.openai_api_key(cfg, environ)
    kwargs = {"cfg": cfg.model_dump(mode="json"), "sampling": sampling.params(), "api_key": key or "",
              "deadline": deadline}
    pool = cfg.concurrency
    compute = (ray.data.ActorPoolStrategy(min_size=pool[0], max_size=pool[1]) if isinstance(pool, tuple)
               else ray.data.ActorPoolStrategy(size=pool))
    resources = StageResources(num_cpus=0.25, batch_size=cfg.batch_size)
    info = {"stages": [{"stage": "OpenAIChat", "concurrency": pool, "batch_size": cfg.batch_size, "num_cpus": 0.25}]}
    return (lambda ds: map_stage(ds, engines.OpenAIChat, resources, kwargs=kwargs, compute=compute)), info


def stage_summary(processor: Any) -> list[dict[str, Any]]:
    """Stage names and their ``map_batches`` kwargs (for logs and tests; nothing executes)."""
    out = []
    for name in processor.list_stage_names():
        kw = processor.get_stage_by_name(name).map_batches_kwargs
        out.append({"stage": name, **{k: v for k, v in kw.items() if k in
                                      {"num_gpus", "num_cpus", "concurrency", "accelerator_type", "max_concurrency"}}})
    return out


def hf_resources(cfg: engines.HFConfig) -> StageResources:
    return StageResources(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, concurrency=cfg.concurrency,
                          batch_size=cfg.batch_size)


def validate_resources(cfg: ValidationConfig) -> StageResources:
    return StageResources(num_cpus=cfg.num_cpus, concurrency=cfg.concurrency, batch_size=cfg.batch_size)


def make_engine(cfg: EngineConfig, hf: StageResources | None = None, *,
                deadline: float | None = None) -> tuple[Engine, dict[str, Any]]:
    """The engine as a Dataset → Dataset function. vllm is checked (fail fast) first. ``deadline``
    (epoch seconds) bounds the openai engine's requests; the others do not look at it."""
    info: dict[str, Any] = {}
    post = StageResources(num_cpus=0.25)
    if cfg.name == "vllm":
        info["preflight"] = check_vllm_runnable(cfg.vllm)
        processor = build_vllm_processor(cfg.vllm, cfg.sampling)
        info["stages"] = stage_summary(processor)
        return (lambda ds: map_stage(processor(ds), engines.to_generation_rows, post)), info
    if cfg.name == "openai":
        return openai_stage(cfg.openai, cfg.sampling, deadline=deadline)
    kwargs = {"model_path": cfg.hf.model_path, "sampling": cfg.sampling.model_dump(), "dtype": cfg.hf.dtype,
              "tiny": cfg.hf.tiny.model_dump(), "allow_download": cfg.hf.allow_download}
    resources = hf or hf_resources(cfg.hf)
    return (lambda ds: map_stage(ds, engines.HFGenerator, resources, kwargs=kwargs)), info


class ValidateRows:
    """Validation actor: generation rows → ``CANDIDATE_SCHEMA`` rows, one per row, always.

    Wraps ``validate.ValidateStage``'s validator; a row whose validation raises becomes a
    ``validate/error`` rejection instead of failing the batch (and the job). With
    ``allow_unsandboxed`` the actor process allows unsandboxed tools as the driver did.
    """

    def __init__(self, settings: dict[str, Any], load_parser: bool, allow_unsandboxed: bool = False) -> None:
        if allow_unsandboxed:
            sandbox.require_isolation(True)
        self.stage = validate.ValidateStage(settings, load_parser=load_parser)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for row in batch.to_pylist():
            try:
                out.append(validate.validate_row(row, self.stage.validator))
            except Exception as exc:  # noqa: BLE001 - one bad reply is one rejection
                out.append(rejected_candidate(row, "validate/error", f"{type(exc).__name__}: {exc}"))
        return pa.Table.from_pylist(out, schema=validate.CANDIDATE_SCHEMA)


def rejected_candidate(row: Mapping[str, Any], reason: str, detail: str) -> dict[str, Any]:
    out = {name: row.get(name) for name in validate.CANDIDATE_SCHEMA.names}
    out.update(reason=reason, detail=detail[:600], instruction=None, answer=None)
    return out


# --------------------------------------------------------------------------- splits and rows

def load_split_map(dataset_dir: str) -> dict[str, str]:
    """``split_of_group`` from the dataset job's report (group → train/validation/test)."""
    path = fs.join(dataset_dir, "report.json")
    problem = None
    if not fs.exists(path):
        problem = "has no report.json"
    else:
        split_of = fs.read_json(path).get("split_of_group")
        if isinstance(split_of, dict) and all(isinstance(v, str) for v in split_of.values()):
            return {str(k): v for k, v in split_of.items()}
        problem = "has a report.json without split_of_group"
    raise ConfigError(f"dataset_dir (--dataset) {dataset_dir!r} {problem}: expected the dataset job's output "
                      "(its report maps each repository / documentation source to its split)")


def split_of(key: str, splits: Mapping[str, float]) -> str:
    """Deterministic split from a key (hash bucket in [0, 1))."""
    x = unit_interval(key)
    acc = 0.0
    for name in ("train", "validation", "test"):
        acc += splits.get(name, 0.0)
        if x < acc:
            return name
    return "train"


def split_for(seed: Mapping[str, Any], split_map: Mapping[str, str], splits: Mapping[str, float]) -> tuple[str, str]:
    """(split, how) of an example grown from ``seed``: its group's split in the dataset
    (``"dataset"``), else a hash of the group (``"group_hash"``), never of the example."""
    group = seeds.group_of(seed)
    if group in split_map:
        return split_map[group], "dataset"
    return split_of(group, splits), "group_hash"


def example_row(cand: Mapping[str, Any], generator: str, split: str) -> dict[str, Any]:
    """A kept candidate → one ``EXAMPLES_SCHEMA`` row, built as the dataset job builds real ones
    (``corpus.dataset.make_example``: the phase's system prompt, the same id formula)."""
    seed = json.loads(cand.get("seed_json") or "{}")
    row = make_example(cand["phase"], cand["task"], cand["instruction"], cand["answer"], "synthetic",
                       seeds.provenance(seed, generator), seed.get("license"))
    row["split"] = split
    return row


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
        raise ConfigError(f"dataset_dir (--dataset) {dataset_dir!r} has no examples/ directory "
                          "(expected the dataset job's output)")
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


class Tally:
    """Counts over the whole run: generated = kept + rejected (by reason) for every phase."""

    def __init__(self, phases: Sequence[str]) -> None:
        self.kept: Counter = Counter()
        self.generated: Counter = Counter()
        self.prompts: Counter = Counter()
        self.rejected: dict[str, Counter] = {p: Counter() for p in phases}
        self.kept_by_split: Counter = Counter()
        self.split_how: Counter = Counter()
        self.samples: dict[str, list[dict[str, Any]]] = {}
        self.rows: list[dict[str, Any]] = []

    def reject(self, cand: Mapping[str, Any], reason: str, round_counts: Counter) -> None:
        self.rejected.setdefault(cand["phase"], Counter())[reason] += 1
        round_counts[reason] += 1
        bucket = self.samples.setdefault(reason, [])
        if len(bucket) < 3:
            bucket.append({"prompt_id": cand.get("prompt_id"), "template_id": cand.get("template_id"),
                           "detail": cand.get("detail")})


DEADLINE_REASON = "engine/deadline"


def collect(candidates: list[dict[str, Any]], prompts: list[dict[str, Any]], tally: Tally, filters: Filters,
            cfg: SynthesizeConfig, split_map: Mapping[str, str]) -> tuple[int, Counter]:
    """Fold one round's candidates into ``tally`` (kept rows with their inherited split, rejections
    by reason); rows an engine dropped count as ``engine/missing_row``. Returns (kept, rejections)."""
    round_counts: Counter = Counter()
    round_kept = 0
    for cand in sorted(candidates, key=lambda r: r["prompt_id"]):
        tally.generated[cand["phase"]] += 1
        try:
            reason = cand.get("reason")
            if reason == "engine/error" and str(cand.get("detail") or "").startswith(engines.DEADLINE_ERROR):
                reason = DEADLINE_REASON  # not answered because the job's time was up, not the server's fault
            if reason is None:
                reason = filters.reason(cand["prompt_id"], cand["instruction"], cand["answer"])
            if reason is None:
                split, how = split_for(json.loads(cand.get("seed_json") or "{}"), split_map, cfg.splits)
                row = example_row(cand, cfg.engine.generator(cand["template_id"]), split)
        except Exception as exc:  # noqa: BLE001 - one bad row is one rejection, never an aborted run
            reason = "pipeline/error"
            cand = {**cand, "detail": f"{type(exc).__name__}: {exc}"[:600]}
        if reason is not None:
            tally.reject(cand, reason, round_counts)
            continue
        tally.kept[cand["phase"]] += 1
        tally.kept_by_split[split] += 1
        tally.split_how[how] += 1
        tally.rows.append(row)
        round_kept += 1
    lost = len(prompts) - len(candidates)
    if lost:  # rows an engine dropped are rejections too, so the counts add up
        by_phase = Counter(p["phase"] for p in prompts) - Counter(c["phase"] for c in candidates)
        for phase, n in by_phase.items():
            tally.generated[phase] += n
            tally.rejected.setdefault(phase, Counter())["engine/missing_row"] += n
        round_counts["engine/missing_row"] += lost
    return round_kept, round_counts


# --------------------------------------------------------------------------- the job body

def load_seeds(cfg: SynthesizeConfig, job: Run) -> tuple[list[dict], list[dict], list[dict], dict[str, Any]]:
    """(doc seeds, raw doc rows for command lists, module seeds, doc_sources stats)."""
    doc_seeds: list[dict] = []
    doc_rows: list[dict] = []
    missing = [f"doc_sources[{i}].path: {s.path!r} does not exist (source {s.name})"
               for i, s in enumerate(cfg.doc_sources) if not cfg.docs_dir and not fs.exists(s.path)]
    if missing:
        raise ConfigError("invalid paths:\n  " + "\n  ".join(missing))
    if cfg.docs_dir:
        try:
            found, raw = seeds.load_doc_seeds(cfg.docs_dir, max_chars=cfg.max_doc_chars)
        except FileNotFoundError as exc:
            raise ConfigError(f"docs_dir (--docs): {exc}") from exc
        doc_seeds, doc_rows = doc_seeds + found, doc_rows + raw
    local_stats: dict[str, Any] = {}
    if cfg.doc_sources and cfg.docs_dir:
        job.progress(f"doc_sources ({len(cfg.doc_sources)}) not read: docs_dir is set and takes precedence")
    elif cfg.doc_sources:
        rows, local_stats = seeds.read_local_docs(cfg.doc_sources, chunk_chars=cfg.doc_chunk_chars)
        found, raw = seeds.doc_seeds(rows, max_chars=cfg.max_doc_chars)
        doc_seeds, doc_rows = doc_seeds + found, doc_rows + raw
    module_seeds: list[dict] = []
    if cfg.corpus_dir and "rtl_design" in cfg.phases:
        try:
            module_seeds = seeds.load_module_seeds(cfg.corpus_dir, min_lines=cfg.module_lines[0],
                                                   max_lines=cfg.module_lines[1])
        except FileNotFoundError as exc:
            raise ConfigError(f"corpus_dir (--corpus): {exc}") from exc
    job.progress(f"seeds: {len(doc_seeds)} doc chunks, {len(module_seeds)} modules")
    return doc_seeds, doc_rows, module_seeds, local_stats


def run(cfg: SynthesizeConfig, job: Run) -> dict[str, Any]:
    """The job's body: seeds, then rounds of generate → validate → filter; examples and the report."""
    import ray

    t0 = time.perf_counter()
    deadline = time.time() + cfg.budget.max_wall_s if cfg.budget.max_wall_s else None  # epoch: actors compare it
    out = cfg.output_dir.rstrip("/")
    try:  # before anything is generated: model-written code runs only in a sandbox (or when allowed)
        isolation_mode = sandbox.require_isolation(cfg.validation.allow_unsandboxed)
    except sandbox.SandboxUnavailable as exc:
        raise JobError(f"{exc} (or set validation.allow_unsandboxed=true to run the tools without isolation)") from exc
    with job.step("seeds"):
        doc_seeds, doc_rows, module_seeds, local_stats = load_seeds(cfg, job)
        split_map = load_split_map(cfg.dataset_dir) if cfg.dataset_dir else {}
    if cfg.engine.name == "hf":
        problem = engines.local_model_problem(cfg.engine.hf.model_path, cfg.engine.hf.allow_download)
        if problem:
            raise ConfigError(problem)

    allowed, command_info = validate.command_lists(doc_rows, cfg.validation.command_lists)
    settings = validate.Settings(
        timeout_s=cfg.validation.timeout_s, sim_timeout_s=cfg.validation.sim_timeout_s,
        memory_mb=cfg.validation.memory_mb, max_output_bytes=cfg.validation.max_output_kb * 1024,
        allowed_commands={k: sorted(v) for k, v in allowed.items()},
        signatures=signatures.signature_table(doc_rows, cfg.validation.command_lists),  # + options mined from docs
    )
    design = validate.design_context()
    phase_templates = {p: templates.templates_for(p, pc.tasks) for p, pc in cfg.phases.items()}
    phase_seeds = {p: seeds.seeds_by_kind(p, doc_seeds, module_seeds,
                                          pc.topics if pc.topics is not None else seeds.DEFAULT_TOPICS.get(p, []))
                   for p, pc in cfg.phases.items()}
    needs_parser = any("verilog" in t.requires for ts in phase_templates.values() for t in ts)
    usable = {p for p in cfg.phases if any(phase_seeds[p].get(t.seed_kind) for t in phase_templates[p])}
    seed_splits: Counter = Counter()
    for s in {seeds.group_of(s): s for s in doc_seeds + module_seeds}.values():
        seed_splits[split_for(s, split_map, cfg.splits)[0]] += 1

    stages = {"validate": validate_resources(cfg.validation)}
    if cfg.engine.name == "hf":
        stages["generate"] = hf_resources(cfg.engine.hf)
    stages = fit_to_cluster(stages, cluster_cpus(), say=job.progress)
    try:
        engine, engine_info = make_engine(cfg.engine, stages.get("generate"), deadline=deadline)
    except EngineUnavailable as exc:
        raise ConfigError(str(exc)) from exc
    filters = Filters(cfg)

    tally = Tally(list(cfg.phases))
    with job.step("fpga_flow"):  # issue 13: grounded examples first; they count toward the quotas
        fpga_info = add_fpga_flow_rows(cfg, tally, filters, split_map, job)
    rounds: list[dict[str, Any]] = []
    outcome, error = "budget_spent", None
    spent = 0
    for round_ in range(cfg.budget.max_rounds):
        plan = plan_round(cfg, tally.kept, tally.generated, spent, usable)
        if not plan:
            break
        if deadline is not None and time.time() >= deadline:
            outcome = "deadline"
            break
        tr = time.perf_counter()
        prompts = []
        for phase, n in sorted(plan.items()):
            prompts += seeds.build_prompts(phase, n, round_=round_, seed=cfg.seed, templates=phase_templates[phase],
                                           seeds=phase_seeds[phase], design=design, offset=tally.prompts[phase])
            tally.prompts[phase] += n
        spent += len(prompts)
        try:
            with job.step(f"round {round_}"):
                blocks = max(1, math.ceil(len(prompts) / cfg.validation.batch_size))
                generations = engine(ray.data.from_items(prompts, override_num_blocks=blocks))
                candidates = map_stage(generations, ValidateRows, stages["validate"], kwargs={
                    "settings": asdict(settings), "load_parser": needs_parser,
                    "allow_unsandboxed": cfg.validation.allow_unsandboxed}).take_all()
        except Exception as exc:  # noqa: BLE001 - the engine or a stage as a whole failed: stop with a report
            outcome, error = "aborted", f"round {round_}: {type(exc).__name__}: {exc}"[:2000]
            job.progress(error)
            break
        round_kept, round_counts = collect(candidates, prompts, tally, filters, cfg, split_map)
        rounds.append({"round": round_, "prompts": len(prompts), "kept": round_kept,
                       "rejected": dict(round_counts), "wall_s": round(time.perf_counter() - tr, 2)})
        job.progress(f"round {round_}: kept {round_kept} of {len(prompts)} prompts {dict(sorted(plan.items()))}; "
                     f"rejected {dict(round_counts)}")
        if round_counts[DEADLINE_REASON] or (deadline is not None and time.time() >= deadline):
            outcome = "deadline"
            break
    if outcome != "aborted":
        if all(tally.kept[p] >= pc.quota for p, pc in cfg.phases.items()):
            outcome = "quotas_met"
        elif not usable:
            outcome = "no_seeds"

    write_examples(out, tally.rows)
    phases_report = {}
    for phase, pc in cfg.phases.items():
        rej = dict(sorted(tally.rejected[phase].items()))
        phases_report[phase] = {
            "quota": pc.quota, "prompts": tally.prompts[phase], "generated": tally.generated[phase],
            "kept": tally.kept[phase], "rejected": rej, "rejected_total": sum(rej.values()),
            "quota_met": tally.kept[phase] >= pc.quota, "seeds": {k: len(v) for k, v in phase_seeds[phase].items()},
            "counts_add_up": tally.generated[phase] == tally.kept[phase] + sum(rej.values()),
        }
    totals_rej: Counter = Counter()
    for r in tally.rejected.values():
        totals_rej.update(r)
    report = {
        "outcome": outcome, "error": error, "output_dir": out,
        "engine": engines.engine_summary(cfg.engine) | engine_info,
        "templates": sorted({t.id for ts in phase_templates.values() for t in ts}),
        "totals": {"prompts": spent, "generated": sum(tally.generated.values()), "kept": sum(tally.kept.values()),
                   "rejected": dict(sorted(totals_rej.items())), "rejected_total": sum(totals_rej.values())},
        "phases": phases_report, "rounds": rounds,
        "budget": {"max_prompts": cfg.budget.max_prompts, "max_rounds": cfg.budget.max_rounds, "spent_prompts": spent,
                   "rounds_run": len(rounds), "max_wall_s": cfg.budget.max_wall_s,
                   "deadline_reached": outcome == "deadline", "not_answered_by_deadline": totals_rej[DEADLINE_REASON]},
        "seeds": {"docs": len(doc_seeds), "modules": len(module_seeds), "doc_sources": local_stats},
        "splits": {
            "policy": ("split of the seed's group in dataset_dir's split_of_group; other groups by hash of the group"
                       if split_map else "no dataset_dir: by hash of the seed's group (not aligned with a dataset)"),
            "dataset_groups": len(split_map), "seed_groups_by_split": dict(sorted(seed_splits.items())),
            "kept_by_split": dict(sorted(tally.kept_by_split.items())),
            "kept_by_rule": dict(sorted(tally.split_how.items())),
        },
        "dedup": {"dataset_examples_indexed": filters.dataset_rows, "threshold": cfg.dedup.threshold},
        "command_lists": command_info,
        "sandbox": {"mode": isolation_mode, "isolation": sandbox.isolation(),
                    "network_isolation": sandbox.network_isolation(), "timeout_s": settings.timeout_s,
                    "sim_timeout_s": settings.sim_timeout_s, "memory_mb": settings.memory_mb,
                    "max_output_bytes": settings.max_output_bytes},
        "tools": sandbox.tool_versions(),
        "rejection_samples": tally.samples,
        "fpga_flow": fpga_info,
        "body_wall_s": round(time.perf_counter() - t0, 2),
    }
    report["totals"]["counts_add_up"] = (report["totals"]["generated"]
                                         == report["totals"]["kept"] + report["totals"]["rejected_total"])
    if outcome == "aborted":
        fs.write_json(fs.join(out, "report.json"), {"job": "synthesize", "status": "failed", **report})
        raise JobError(f"aborted in {error}; the {report['totals']['kept']} examples kept before it and the report "
                       f"are in {out}")
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
    budget = report["budget"]
    why = report.get("error") or (f"budget.max_wall_s={budget['max_wall_s']:g} s reached: "
                                  f"{budget['not_answered_by_deadline']} prompts not sent or cut (engine/deadline); "
                                  "the examples kept so far are written" if report["outcome"] == "deadline" else None)
    lines = [f"outcome: {report['outcome']}" + (f" ({why})" if why else ""),
             f"{'phase':<16} {'quota':>6} {'kept':>6} {'gen':>6}  top rejections"]
    for phase, r in report["phases"].items():
        top = ", ".join(f"{k}={v}" for k, v in sorted(r["rejected"].items(), key=lambda kv: -kv[1])[:3])
        lines.append(f"{phase:<16} {r['quota']:>6} {r['kept']:>6} {r['generated']:>6}  {top}")
    t, sp = report["totals"], report["splits"]
    lines.append(f"total: {t['kept']} kept of {t['generated']} generated ({t['prompts']} prompts); "
                 f"counts add up: {t['counts_add_up']}")
    lines.append(f"seeds: {report['seeds']['docs']} doc chunks, {report['seeds']['modules']} modules; seed groups "
                 f"by split {sp['seed_groups_by_split'] or '{}'}; kept by split {sp['kept_by_split'] or '{}'}")
    lines.append(f"splits: {sp['policy']}")
    lines.append(f"sandbox: {report['sandbox']['mode']} ({report['sandbox']['isolation'].get('detail')})")
    if report["engine"].get("random_weights"):
        lines.append("note: engine hf with model 'tiny' is a random-weight model built in-process: its replies are "
                     "noise, so it keeps ~0 examples. This run checks the pipeline (seeds, prompts, generation, "
                     "parsing, validation, counts), not the data; for examples use --engine openai "
                     "(jobs/configs/synthesize_openai.yaml) or vllm (jobs/configs/synthesize_cluster.yaml).")
    return "\n".join(lines)


def _kept(report: dict[str, Any]) -> int | None:
    """Primary outputs for the exit-code policy; None for the random tiny model (0 kept is expected)."""
    return None if report["engine"].get("random_weights") else report["totals"]["kept"]


def preflight(cfg: SynthesizeConfig) -> None:
    """Before Ray starts: the benchmark paths, the openai engine's key (the variable
    ``engine.openai.api_key_env`` names must be set, unless it is null: a server without keys) and
    the hf engine's model (local, in the cache, or downloads allowed): each a ``ConfigError``."""
    check_benchmark_paths(cfg.decontam.benchmark_paths, "decontam.benchmark_paths")
    if cfg.engine.name == "openai":
        try:
            engines.openai_api_key(cfg.engine.openai)
        except EngineUnavailable as exc:
            raise ConfigError(f"engine.openai.api_key_env: {exc}") from None
    if cfg.engine.name == "hf":
        problem = engines.local_model_problem(cfg.engine.hf.model_path, cfg.engine.hf.allow_download)
        if problem:
            raise ConfigError(problem)


SPEC = JobSpec(
    name="synthesize", config=SynthesizeConfig, default_config="jobs/configs/synthesize_tiny_cpu.yaml",
    summary=summary,
    flags={"--output": "output_dir", "--docs": "docs_dir", "--corpus": "corpus_dir", "--dataset": "dataset_dir",
           "--engine": "engine.name"},
    inputs={"docs_dir": "the docs job's output (DIR/docs/)", "corpus_dir": "the corpus job's output (DIR/modules/)",
            "dataset_dir": "the dataset job's output (DIR/examples/, DIR/report.json)"},
    volatile=("validation.concurrency", "validation.num_cpus", "validation.batch_size", "engine.hf.concurrency",
              "engine.hf.num_cpus", "engine.hf.num_gpus", "engine.vllm.concurrency", "engine.vllm.runtime_env",
              "engine.vllm.wait_for_gpus_s", "engine.vllm.max_concurrent_batches", "engine.openai.concurrency",
              "engine.openai.qps", "engine.openai.timeout_s"),
    outputs=_kept, inputs_count=lambda r: r["totals"]["generated"],
    extra_inputs=lambda cfg: {f"doc_source:{s.name}": s.path for s in cfg.doc_sources},
    preflight=preflight,
    description=__doc__,
)
