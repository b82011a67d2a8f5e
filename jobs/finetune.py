"""Fine-tune one LoRA specialist for one phase with Ray Train V2 + DeepSpeed + PEFT.

    python -m jobs.finetune --config jobs/configs/finetune_tiny_cpu.yaml --output out/ft
    python -m jobs.finetune --config jobs/configs/finetune_rtl_design.yaml --dataset s3://b/dataset

Reads DIR/examples/phase=<phase>/split={train,validation}/*.parquet, tokenises with the base
model's chat template on Ray Data CPU workers (``TokenizeStage`` via ``map_batches``), then runs
``training.loop.train_loop_per_worker`` on ``scaling.num_workers`` workers. Checkpoints go to
``storage_path``/``run_name``; rerunning with the same output (or the same ``run_name`` and
``storage_path``) resumes from the latest checkpoint, and ``max_failures`` restarts dead workers
from it. Writes OUTPUT/adapter (PEFT), tokenizer, config.yaml, tensorboard/ and report.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from chipforge import fs
from chipforge.config import load_config
from chipforge.ray_utils import compute, init_ray
from training.config import TINY, FinetuneConfig

CONFIG_CLASS = FinetuneConfig
DEFAULT_CONFIG = "jobs/configs/finetune_tiny_cpu.yaml"
FLAGS = {"--dataset": "dataset_dir", "--phase": "phase", "--output": "output_dir"}


def read_split(cfg: FinetuneConfig, split: str) -> Any:
    import ray.data

    from training.data import parquet_files

    files = parquet_files(cfg.dataset_dirs(), cfg.phase, split)
    if not files:
        return None
    filesystem, _ = fs.resolve(cfg.dataset_dir)
    return ray.data.read_parquet(files, filesystem=filesystem, partitioning=None)


def load_splits(cfg: FinetuneConfig) -> tuple[Any, Any, dict[str, Any]]:
    """Train and validation datasets of the phase; no validation split → hold out a share of train."""
    from training.data import check_split, is_holdout

    check_split(cfg.dataset_dirs(), cfg.phase, "train")
    train = read_split(cfg, "train")
    evals = read_split(cfg, "validation")
    info: dict[str, Any] = {"validation": "validation split"}
    if evals is None:
        frac = cfg.validation_fraction
        train = train.materialize()
        evals = train.filter(lambda r: is_holdout(r["id"], frac))
        train = train.filter(lambda r: not is_holdout(r["id"], frac))
        info["validation"] = f"held out {frac:.0%} of train (no validation split)"
    if cfg.max_train_examples:
        train = train.limit(cfg.max_train_examples)
    return train, evals, info


def tokenize(cfg: FinetuneConfig, ds: Any, tokenizer_path: str) -> Any:
    from training.data import TokenizeStage

    return ds.map_batches(
        TokenizeStage,
        fn_constructor_kwargs=dict(
            tokenizer_path=tokenizer_path,
            max_length=cfg.max_length,
            packing=cfg.packing,
            trust_remote_code=cfg.trust_remote_code,
        ),
        batch_format="pyarrow",
        batch_size=cfg.tokenize_batch_size,
        num_cpus=cfg.tokenize_num_cpus,
        compute=compute(cfg.tokenize_concurrency, actors=True),
    ).materialize()


def dataset_texts(ds: Any, limit: int = 20000) -> list[str]:
    return [m["content"] for row in ds.take(limit) for m in (row["messages"] or []) if m.get("content")]


def prepare(cfg: FinetuneConfig) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Tokenised (materialised) datasets, the base model path, and dataset facts for the report."""
    from training.model import prepare_base

    train, evals, info = load_splits(cfg)
    base_path = prepare_base(cfg, dataset_texts(train) if cfg.base_model == TINY else None)
    train_tok = tokenize(cfg, train, base_path)
    eval_tok = tokenize(cfg, evals, base_path)
    info.update(train_rows=train_tok.count(), eval_rows=eval_tok.count())
    for split, n in (("train", info["train_rows"]), ("validation", info["eval_rows"])):
        if n == 0:
            raise ValueError(
                f"dataset {cfg.dataset_dir}: no {split} rows for phase {cfg.phase!r} after tokenisation: every "
                f"example's assistant reply starts beyond max_length={cfg.max_length} tokens (raise max_length)")
    return {"train": train_tok, "validation": eval_tok}, base_path, info


def scaling_config(cfg: FinetuneConfig) -> Any:
    from ray.train import ScalingConfig

    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **s.resources_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker or 1
    return ScalingConfig(
        num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources, accelerator_type=s.accelerator_type
    )


def build_trainer(cfg: FinetuneConfig, datasets: dict[str, Any], base_path: str, info: dict[str, Any],
                  callbacks: list[Any] | None = None, run_name: str | None = None) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from training.data import load_tokenizer
    from training.loop import Plan, train_loop_per_worker

    pad_id = load_tokenizer(base_path, cfg.trust_remote_code).pad_token_id
    plan = Plan.make(cfg, info["train_rows"], cfg.scaling.num_workers, pad_id, base_path)
    info["plan"] = plan.__dict__
    storage = cfg.resolved_storage_path()
    storage_filesystem = None
    if fs.is_uri(storage):
        storage_filesystem, storage = fs.resolve(storage)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "plan": plan.__dict__},
        scaling_config=scaling_config(cfg),
        datasets=datasets,
        run_config=RunConfig(
            name=run_name or cfg.resolved_run_name(),
            storage_path=storage,
            storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.num_to_keep),
            callbacks=callbacks or [],
        ),
    )


def run(cfg: FinetuneConfig) -> dict[str, Any]:
    """Train, then write the outputs from the latest checkpoint; returns the report."""
    from training.loop import write_outputs

    t0 = time.perf_counter()
    datasets, base_path, info = prepare(cfg)
    result = build_trainer(cfg, datasets, base_path, info).fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"run {cfg.resolved_run_name()} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        report = write_outputs(
            cfg, d, base_path,
            {"runner": "ray", "world_size": cfg.scaling.num_workers, "dataset": cfg.dataset_dir, **info,
             "checkpoint": result.checkpoint.path, "wall_s": round(time.perf_counter() - t0, 2)},
        )
    if cfg.registry:
        from training.registry import dataset_version, register

        register(cfg.registry, cfg.phase, base_model=base_path, adapter_path=report["adapter_path"],
                 dataset_version=dataset_version(cfg.dataset_dirs(), cfg.phase),
                 metrics={k: report[k] for k in ("eval_loss", "eval_perplexity", "train_loss_last", "steps")},
                 config=cfg.model_dump(mode="json"), run=cfg.resolved_run_name())
    return report


def main(argv: Sequence[str] | None = None) -> int:
    cfg = load_config(FinetuneConfig, argv, prog="python -m jobs.finetune", default_config=DEFAULT_CONFIG,
                      flags=FLAGS, description=__doc__)
    done = fs.join(cfg.output_dir, "report.json")
    if fs.exists(done) and not cfg.overwrite:
        print(f"{done} exists: run already finished (set overwrite=true to train again)")
        return 0
    from training.data import DatasetError, check_split

    try:
        check_split(cfg.dataset_dirs(), cfg.phase, "train")
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    init_ray()
    report = run(cfg)
    print("\n=== finetune summary")
    for key in ("phase", "steps", "train_loss_first", "train_loss_last", "eval_loss", "eval_perplexity",
                "tokens_per_s", "wall_s", "validation"):
        print(f"  {key:<17} {report.get(key)}")
    print(f"  outputs           {cfg.output_dir}/{{adapter,tokenizer,config.yaml,report.json,tensorboard}}")
    print(json.dumps({"ok": True, "output_dir": cfg.output_dir}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
