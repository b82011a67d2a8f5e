"""Ray Tune sweep (ASHA) of one phase's LoRA fine-tune; the best trial is registered.

    python -m jobs.tune --config jobs/configs/tune_tiny_cpu.yaml --output out/tune
    python -m jobs.tune --config jobs/configs/tune_cluster.yaml --phase routing --registry s3://b/registry.json

Each trial is a Train V2 ``TorchTrainer`` run launched from a Tune driver function (the pattern
Ray 2.60 supports: ``TuneReportCallback`` forwards rank-0 metrics and ``checkpoint_path``). The
dataset is tokenised once, before the sweep, and shared by every trial. The trial with the
lowest final ``eval_loss`` wins: its adapter is written to OUTPUT/adapter (PEFT format) with
the tokenizer, config.yaml and report.json (plus sweep.json with every trial), and its entry
replaces the phase's entry in the specialist registry.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from chipforge import fs
from chipforge.config import Config, load_config
from chipforge.ray_utils import init_ray
from training.config import FinetuneConfig
from training.sweep import AshaSettings, SearchSpace, apply_trial, param_space

DEFAULT_CONFIG = "jobs/configs/tune_tiny_cpu.yaml"


class TuneJobConfig(Config):
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)  # base of every trial
    output_dir: str = "out/tune"
    search: SearchSpace = Field(default_factory=SearchSpace)
    num_samples: int = Field(4, ge=1)
    max_concurrent_trials: int = Field(1, ge=1)  # cap to what the cluster holds: trial_cpus + Train workers each
    trial_cpus: float = Field(1.0, ge=0.0)  # the trial's driver function (it only waits on its TorchTrainer)
    metric: str = "eval_loss"
    asha: AshaSettings = Field(default_factory=AshaSettings)
    seed: int = 0
    registry: str | None = "out/registry.json"  # None: do not register the winner


CONFIG_CLASS = TuneJobConfig
FLAGS = {
    "--dataset": "finetune.dataset_dir",
    "--phase": "finetune.phase",
    "--output": "output_dir",
    "--registry": "registry",
}


def trial_driver(config: dict[str, Any], *, base: dict[str, Any], datasets: dict[str, Any], base_path: str,
                 info: dict[str, Any]) -> None:
    """One Tune trial: a full TorchTrainer run with the trial's values."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from jobs.finetune import build_trainer

    cfg = apply_trial(FinetuneConfig.model_validate(base), config)
    trial_id = tune.get_context().get_trial_id()
    trainer = build_trainer(cfg, datasets, base_path, dict(info), callbacks=[TuneReportCallback()],
                            run_name=f"{cfg.resolved_run_name()}-{trial_id}")
    trainer.fit()


def run(cfg: TuneJobConfig) -> dict[str, Any]:
    import ray.train
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from jobs.finetune import prepare
    from training.loop import write_outputs
    from training.registry import dataset_version, register

    t0 = time.perf_counter()
    out = cfg.output_dir
    base = cfg.finetune.model_copy(update={"output_dir": out})
    if base.storage_path is None:
        base = base.model_copy(update={"storage_path": fs.join(out, "trials")})
    base = FinetuneConfig.model_validate(base.model_dump())
    datasets, base_path, info = prepare(base)
    storage = fs.join(out, "tune")
    storage = storage if fs.is_uri(storage) else os.path.abspath(storage)
    trainable = tune.with_parameters(trial_driver, base=base.model_dump(mode="json"), datasets=datasets,
                                     base_path=base_path, info=info)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": cfg.trial_cpus}),
        param_space=param_space(cfg.search),
        tune_config=tune.TuneConfig(
            metric=cfg.metric,
            mode="min",
            num_samples=cfg.num_samples,
            max_concurrent_trials=cfg.max_concurrent_trials,
            scheduler=ASHAScheduler(max_t=cfg.asha.max_t, grace_period=cfg.asha.grace_period,
                                    reduction_factor=cfg.asha.reduction_factor),
        ),
        run_config=tune.RunConfig(name=f"tune-{base.phase}", storage_path=storage),
    )
    grid = tuner.fit()
    trials = []
    for r in grid:
        m = r.metrics or {}
        trials.append({"trial_id": m.get("trial_id"), "config": r.config, cfg.metric: m.get(cfg.metric),
                       "step": m.get("step"), "checkpoint_path": m.get("checkpoint_path"),
                       "error": repr(r.error) if r.error else None})
    best = grid.get_best_result(cfg.metric, "min", scope="last")
    if best.metrics is None or not best.metrics.get("checkpoint_path"):
        raise RuntimeError(f"sweep {out}: no trial reported a checkpoint; trials: {json.dumps(trials, default=str)}")
    winner = apply_trial(base, best.config)
    ckpt = ray.train.Checkpoint(best.metrics["checkpoint_path"])
    with ckpt.as_directory() as d:
        report = write_outputs(winner, d, base_path, {
            "runner": "ray.tune", "best_trial": best.metrics.get("trial_id"), "best_config": best.config,
            "checkpoint": best.metrics["checkpoint_path"], "n_trials": len(trials), **info,
            "wall_s": round(time.perf_counter() - t0, 2)})
    fs.write_json(fs.join(out, "sweep.json"), {"metric": cfg.metric, "best_trial": report["best_trial"], "trials": trials})
    if cfg.registry:
        entry = register(cfg.registry, base.phase, base_model=base_path, adapter_path=report["adapter_path"],
                         dataset_version=dataset_version(base.dataset_dirs(), base.phase),
                         metrics={k: report[k] for k in ("eval_loss", "eval_perplexity", "train_loss_last", "steps")},
                         config=winner.model_dump(mode="json"), run=f"tune-{base.phase}/{report['best_trial']}")
        report["registry_entry"] = entry
    return report


def main(argv: Sequence[str] | None = None) -> int:
    cfg = load_config(TuneJobConfig, argv, prog="python -m jobs.tune", default_config=DEFAULT_CONFIG, flags=FLAGS,
                      description=__doc__)
    from training.data import DatasetError, check_split

    try:
        check_split(cfg.finetune.dataset_dirs(), cfg.finetune.phase, "train")
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    init_ray()
    report = run(cfg)
    print("\n=== tune summary")
    for key in ("phase", "n_trials", "best_trial", "best_config", "eval_loss", "eval_perplexity", "steps", "wall_s"):
        print(f"  {key:<16} {report.get(key)}")
    if cfg.registry:
        print(f"  registered       {cfg.registry} [{report['phase']}] -> {report['adapter_path']}")
    print(json.dumps({"ok": True, "output_dir": cfg.output_dir}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
