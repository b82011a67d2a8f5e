"""Fine-tune one LoRA specialist for one phase: Ray Data preparation → Ray Train (DeepSpeed + PEFT).

    python -m jobs.finetune                                         # tiny CPU model, bundled sample
    python -m jobs.finetune --dataset out/dataset --phase routing --output out/ft_routing
    ray job submit --working-dir . -- python -m jobs.finetune \\
        --config jobs/configs/finetune_rtl_design.yaml --dataset s3://BUCKET/dataset

Reads DIR/{examples,synthetic}/phase=<phase>/split={train,validation}/*.parquet. Rows are
validated at the stage boundary: a bad row (empty ``messages``, no assistant turn, unknown
role, non-string content) is rejected with its file and row and counted in the report; a run
whose every row is rejected fails. Without a validation split a share of train is held out.
Tokenising (the base model's chat template, assistant-only labels, packing) runs on Ray Data
CPU workers; training runs ``training.loop.train_loop_per_worker`` on ``scaling.num_workers``
workers, one progress line per logging step. Writes OUTPUT/adapter (PEFT), tokenizer/,
config.yaml, tensorboard/ and report.json.

A rerun with the same config and dataset is skipped (``--force`` redoes it); a changed config
or dataset (its ``_chipforge`` marker, written by ``jobs.build_dataset``) trains again. A run
that stopped part way resumes from its latest checkpoint when rerun.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from chipforge import fs
from chipforge.config import ConfigError
from chipforge.job import JobError, JobSpec, Run, fingerprint
from chipforge.stage import map_stage
from training.config import TINY, FinetuneConfig
from training.data import (
    STATUS_COLUMNS,
    TOKENS_SCHEMA,
    DatasetError,
    SplitPlan,
    check_plan,
    example_files,
    plan_splits,
    read_files,
    select_split,
    split_info,
    token_counts,
    tokenize_examples,
    tokenizer_texts,
    worker_path,
)
from training.loop import Plan

# Fields that do not change what is trained (resources, retries, logging, where checkpoints go).
VOLATILE = ("tokenize", "scaling.cpus_per_worker", "scaling.resources_per_worker", "scaling.accelerator_type",
            "scaling.resource_wait_s",
            "max_failures", "num_to_keep", "fail_at_step", "fail_marker", "tracking", "storage_path", "run_name",
            "log_every_steps")


@dataclass
class PreparedDatasets:
    """Token rows of both sides as Ray datasets (None when no row is usable), base model, report facts."""

    datasets: dict[str, Any] | None
    base_path: str | None
    plan: SplitPlan
    info: dict[str, Any]


def _collect(ds: Any, columns: list[str], schema: pa.Schema) -> pa.Table:
    batches = list(ds.select_columns(columns).iter_batches(batch_format="pyarrow", batch_size=None))
    return pa.concat_tables(batches) if batches else schema.empty_table().select(columns)


def prepare(cfg: FinetuneConfig, job: Run) -> PreparedDatasets:
    """Read + validate, split, tokenise and pack the phase's examples on Ray Data (materialised)."""
    import ray.data

    from training.data import CHECKED_SCHEMA
    from training.model import prepare_base

    check_inputs(cfg)
    files = example_files(cfg.dataset_dirs(), cfg.phase)
    res = cfg.tokenize
    with job.step("read + validate"):
        items = [{"path": worker_path(f["path"]), "split": f["split"]} for f in files]
        checked = map_stage(ray.data.from_items(items, override_num_blocks=min(len(items), 200)), read_files,
                            res.model_copy(update={"batch_size": 1}), kwargs={"phase": cfg.phase}).materialize()
        plan = plan_splits(_collect(checked, STATUS_COLUMNS, CHECKED_SCHEMA), cfg.validation_fraction)
    n_bad = sum(plan.rejected.values())
    job.progress(f"{plan.read} examples in {len(files)} files: {plan.train} train, {plan.validation} validation "
                 f"({plan.validation_from}), {n_bad} rejected")
    for line in plan.rejected_examples[:5]:
        job.progress(f"  rejected {line}")
    if not plan.train:
        nothing = token_counts(TOKENS_SCHEMA.empty_table())
        return PreparedDatasets(None, None, plan, split_info(plan, 0, nothing, nothing))
    try:
        check_plan(plan, cfg)
    except DatasetError as exc:
        raise JobError(str(exc)) from exc

    train = map_stage(checked, select_split, kwargs={"split": "train", "threshold": plan.threshold})
    if cfg.max_train_examples:
        train = train.limit(cfg.max_train_examples)
    evals = map_stage(checked, select_split, kwargs={"split": "validation", "threshold": plan.threshold})
    if cfg.base_model == TINY:  # a tokenizer trained on the examples + a random Llama, in OUTPUT/base_model
        with job.step("tiny base model"):
            base_path = prepare_base(cfg, tokenizer_texts(train.take(20000)))
    else:
        base_path = prepare_base(cfg)
    kwargs = {"tokenizer_path": base_path, "max_length": cfg.max_length, "packing": cfg.packing,
              "trust_remote_code": cfg.trust_remote_code, "row_tokens": cfg.row_tokens()}
    with job.step("tokenise + pack"):
        datasets = {"train": map_stage(train, tokenize_examples, res, kwargs=kwargs).materialize(),
                    "validation": map_stage(evals, tokenize_examples, res, kwargs=kwargs).materialize()}
        counts = {k: token_counts(_collect(v, ["n_tokens", "n_label_tokens", "n_examples"], TOKENS_SCHEMA))
                  for k, v in datasets.items()}
    n_train = min(plan.train, cfg.max_train_examples or plan.train)
    info = split_info(plan, n_train, counts["train"], counts["validation"])
    job.progress(f"token rows: {info['train_rows']} train, {info['eval_rows']} validation "
                 f"({info['tokens']['train']} train tokens, max_length {cfg.max_length})")
    return PreparedDatasets(datasets, base_path, plan, info)


def check_inputs(cfg: FinetuneConfig) -> None:
    """Before Ray starts: the dataset has the phase, every extra dataset directory exists, the base
    model resolves as the workers will load it (``training.data.base_model_problem``: a Hub id that
    is not in the cache offline fails now, not in the tokeniser after Ray started), and the
    registry to write (``registry=``) is readable: a hand-broken one fails now, not after training."""
    from training.data import base_model_problem
    from training.registry import RegistryError, check as check_registry

    try:
        example_files(cfg.dataset_dirs(), cfg.phase)
    except DatasetError as exc:  # a phase the dataset lacks: a usage error, like a bad flag
        raise ConfigError(str(exc)) from exc
    for d in cfg.extra_dataset_dirs:
        if not fs.exists(d):
            raise ConfigError(f"extra_dataset_dirs: input {d!r} does not exist (expected a dataset directory)")
    problem = base_model_problem(cfg.base_model, cfg.trust_remote_code)
    if problem:
        raise ConfigError(problem)
    if cfg.registry:
        try:
            check_registry(cfg.registry)
        except RegistryError as exc:
            raise ConfigError(f"registry: {exc}") from None
        except OSError as exc:  # storage that cannot be reached or read (pyarrow's errors are OSErrors)
            raise ConfigError(f"registry: {cfg.registry!r} cannot be read: {' '.join(str(exc).split())[:400]} "
                              "(set registry=PATH to a registry this job can write)") from None


def extra_dataset_inputs(cfg: FinetuneConfig) -> dict[str, str]:
    """``extra_dataset_dirs`` as inputs: their content is part of the fingerprint too."""
    return {f"extra_dataset_dirs[{i}]": d for i, d in enumerate(cfg.extra_dataset_dirs)}


# Fields that change neither the trained weights nor how they are trained: left out of the key
# that names a run's checkpoint directory (changing the registry re-registers, it does not retrain).
CHECKPOINT_VOLATILE = (*VOLATILE, "registry", "eval_every_steps", "eval_max_batches")


def checkpoint_run_name(cfg: FinetuneConfig) -> str:
    """``<run_name>-<key>``: the key covers the config and the dataset's fingerprint, so a rerun of an
    unfinished run resumes from its checkpoints and a changed config or dataset never picks up
    another run's state (the torchrun entry uses the same name)."""
    key = fingerprint(dataclasses.replace(SPEC, volatile=CHECKPOINT_VOLATILE), cfg)[0][:8]
    return f"{cfg.resolved_run_name()}-{key}"


def train_plan(cfg: FinetuneConfig, train_rows: int, base_path: str) -> Plan:
    """The optimizer-step schedule; a dataset too small for one step is a clear error."""
    from training.data import load_tokenizer

    pad_id = load_tokenizer(base_path, cfg.trust_remote_code).pad_token_id
    try:
        return Plan.make(cfg, train_rows, cfg.scaling.num_workers, pad_id, base_path)
    except ValueError as exc:
        raise JobError(f"{exc}: lower optim.micro_batch_size or scaling.num_workers, or add examples") from exc


def rejected_report(cfg: FinetuneConfig, data: PreparedDatasets) -> dict[str, Any]:
    """The report of a run that could not train: what was read and why each row was rejected."""
    return {"phase": cfg.phase, "dataset": cfg.dataset_dirs(), **data.info}


def run(cfg: FinetuneConfig, job: Run) -> dict[str, Any]:
    """The job's body: prepare, train (resuming this config's checkpoints), write outputs, register."""
    from training.loop import write_outputs
    from training.trainer import ProgressRelay, build_trainer, resource_wait_message

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    data = prepare(cfg, job)
    if data.datasets is None:
        return rejected_report(cfg, data)
    assert data.base_path is not None
    plan = train_plan(cfg, data.info["train_rows"], data.base_path)
    run_name = checkpoint_run_name(cfg)
    if job.force:  # redo means from scratch, not from this config's last checkpoint
        job.progress(f"--force: training from scratch (removing {cfg.resolved_storage_path()}/{run_name})")
        fs.delete(fs.join(cfg.resolved_storage_path(), run_name))
    with job.step("train"), ProgressRelay(job.progress) as relay:
        try:
            result = build_trainer(cfg, data.datasets, plan, run_name=run_name, relay=relay.queue).fit()
        except Exception as exc:  # ray.train.TrainingFailedError: one line, and how to go on
            waited = resource_wait_message(cfg, exc)
            if waited:  # workers never placed (use_gpu on a cluster without GPUs): nothing ran
                raise JobError(waited) from exc
            raise JobError(f"training failed after {cfg.max_failures} restart(s): {failure_message(exc)}; "
                           f"rerun the same command to resume from the latest checkpoint "
                           f"(in {cfg.resolved_storage_path()}/{run_name})") from exc
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise JobError(f"run {run_name} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        report = write_outputs(cfg, d, data.base_path, {
            "runner": "ray", "world_size": cfg.scaling.num_workers, "dataset": cfg.dataset_dirs(), **data.info,
            "plan": plan.__dict__, "run_name": run_name,
            "checkpoint": fs.on_storage_of(result.checkpoint.path, cfg.resolved_storage_path())})
    if cfg.registry:
        report["registry_entry"] = register(cfg, cfg, report, run=run_name)
    return report


def failure_message(exc: BaseException) -> str:
    """The last line of each worker's error (a ``WorkerGroupError`` holds one per rank), else of ``exc``."""
    def last_line(e: BaseException) -> str:
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        return lines[-1].strip() if lines else type(e).__name__

    failures = getattr(exc, "worker_failures", None) or {}
    if failures:
        return "; ".join(f"rank {rank}: {last_line(e)}" for rank, e in sorted(failures.items()))
    return last_line(exc)


def register(cfg: FinetuneConfig, trained: FinetuneConfig, report: dict[str, Any], *, run: str) -> dict[str, Any]:
    """Make the adapter of ``report`` the specialist of ``cfg.phase`` in ``cfg.registry`` (recording
    ``trained``, the config it was trained with: a sweep's winner differs from its base)."""
    from training.registry import dataset_version, register as put

    assert cfg.registry
    return put(cfg.registry, cfg.phase, base_model=report["base_model"], adapter_path=report["adapter_path"],
               dataset_version=dataset_version(cfg.dataset_dirs(), cfg.phase),
               metrics={"eval_loss": report["eval_loss"], "eval_perplexity": report["eval_perplexity"],
                        "train_loss_last": report["train_loss_last"], "steps": report["optimizer_steps"]},
               config=trained.model_dump(mode="json"), run=run)


def data_lines(r: dict[str, Any]) -> list[str]:
    """The summary's lines on what was read, split and rejected (finetune and tune)."""
    ex = r["examples"]
    lines = [f"examples: {ex['read']} read; {ex['train']} train, {ex['validation']} validation "
             f"({ex['validation_from']})"]
    if r.get("rejected"):
        lines.append(f"rejected: {sum(r['rejected'].values())} rows {r['rejected']}")
        lines += [f"  {m}" for m in r.get("rejected_examples", [])[:3]]
    return lines


def registered_line(r: dict[str, Any]) -> list[str]:
    return [f"registered as the {r['phase']} specialist in {r['config']['registry']}"] if r.get("registry_entry") else []


def summary(r: dict[str, Any]) -> str:
    lines = data_lines(r)
    if "optimizer_steps" not in r:
        lines.append("not trained: no valid training example")
        return "\n".join(lines)
    first, last = r["train_loss_first"], r["train_loss_last"]
    change = f" ({100 * (last - first) / first:+.0f}%)" if first else ""
    resumed = f", resumed after step(s) {r['resumed_from_step']}" if r.get("resumed_from_step") else ""
    lines[:0] = [f"loss: {first:.3f} -> {last:.3f}{change}; eval loss {r['eval_loss']:.3f} "
                 f"(perplexity {r['eval_perplexity']:.1f})"]
    lines += [
        f"training: {r['optimizer_steps']} steps ({r['epochs_done']} epochs) on {r['train_rows']} token rows, "
        f"{r['tokens_per_s']:.0f} tokens/s, {r['train_time_s']:.1f} s in training steps{resumed}",
        f"adapter: {r['adapter_path']} (PEFT; tokenizer/, config.yaml, tensorboard/ beside it)",
    ]
    return "\n".join(lines + registered_line(r))


SPEC = JobSpec(
    name="finetune", config=FinetuneConfig, default_config="jobs/configs/finetune_tiny_cpu.yaml", summary=summary,
    flags={"--dataset": "dataset_dir", "--phase": "phase", "--output": "output_dir"},
    inputs={"dataset_dir": "a dataset written by python -m jobs.build_dataset"},
    volatile=VOLATILE, outputs=lambda r: r["examples"]["train"], inputs_count=lambda r: r["examples"]["read"],
    description=__doc__, extra_inputs=extra_dataset_inputs, preflight=check_inputs,
)
