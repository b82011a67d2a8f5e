"""Ray Tune sweep (ASHA) of one phase's LoRA fine-tune; the best trial is written out and registered.

    python -m jobs.tune                                    # 2 trials of the tiny CPU model, bundled sample
    python -m jobs.tune --config jobs/configs/tune_cluster.yaml --phase routing --registry s3://b/registry.json

The dataset is prepared once (``pipelines.finetune.prepare``: validated, split, tokenised on
Ray Data) and shared by every trial. Each trial is a Train V2 ``TorchTrainer`` run launched
from a Tune driver function (``TuneReportCallback`` forwards rank-0 metrics and
``checkpoint_path``); one line per trial result is printed. The trial with the lowest final
``eval_loss`` wins: its adapter is written to OUTPUT/adapter (PEFT format) with the tokenizer,
config.yaml, report.json and sweep.json (every trial), and its entry replaces the phase's entry
in the specialist registry. A rerun with the same config and dataset is skipped (``--force``).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Literal

from pydantic import Field, ValidationError

from chipforge import fs
from chipforge.config import Config, ConfigError
from chipforge.job import JobError, JobSpec, Run
from pipelines.finetune import (
    VOLATILE,
    check_inputs,
    data_lines,
    extra_dataset_inputs,
    prepare,
    register,
    registered_line,
    rejected_report,
    train_plan,
)
from training.config import FinetuneConfig
from training.sweep import TARGETS, AshaSettings, SearchSpace, apply_trial, param_space


class TuneJobConfig(Config):
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)  # base of every trial
    output_dir: str = "out/tune"
    search: SearchSpace = Field(default_factory=SearchSpace)
    num_samples: int = Field(4, ge=1)
    max_concurrent_trials: int = Field(1, ge=1)  # cap to what the cluster holds: trial_cpus + Train workers each
    trial_cpus: float = Field(1.0, ge=0.0)  # the trial's driver function (it only waits on its TorchTrainer)
    # what each report of ``training.loop`` holds that a sweep can minimise (mode "min")
    metric: Literal["eval_loss", "eval_perplexity", "train_loss"] = "eval_loss"
    asha: AshaSettings = Field(default_factory=AshaSettings)
    seed: int = 0
    registry: str | None = "out/registry.json"  # None: do not register the winner


def trial_driver(config: dict[str, Any], *, base: dict[str, Any], datasets: dict[str, Any], train_rows: int,
                 base_path: str) -> None:
    """One Tune trial: a full TorchTrainer run with the trial's values."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from training.trainer import build_trainer

    cfg = apply_trial(FinetuneConfig.model_validate(base), config)
    plan = train_plan(cfg, train_rows, base_path)
    trial_id = tune.get_context().get_trial_id()
    build_trainer(cfg, datasets, plan, run_name=f"{cfg.resolved_run_name()}-{trial_id}",
                  callbacks=[TuneReportCallback()]).fit()


def best_result(results: list[Any], metric: str, trials: list[dict[str, Any]]) -> Any:
    """The finished trial (no error, a finite last ``metric``) with the lowest last ``metric``.

    Tune's ``get_best_result`` also ranks trials that failed after a report (a crashed trial's early
    eval loss could win) and, when every trial failed, raises a bare RuntimeError; here a failed
    trial never wins and a sweep with no finished trial is a JobError listing each trial's error."""
    finished = [r for r in results if r.error is None and isinstance((r.metrics or {}).get(metric), (int, float))
                and math.isfinite(r.metrics[metric])]
    if not finished:
        raise JobError(f"no trial of the sweep finished with a {metric}: "
                       + "; ".join(f"trial {t['trial_id']} {t['config']}: {t['error'] or 'no ' + metric}" for t in trials))
    return min(finished, key=lambda r: r.metrics[metric])


def check_search(cfg: "TuneJobConfig") -> None:
    """Before Ray: every value a trial can draw (choice/grid values, range bounds) makes a valid
    ``FinetuneConfig``; a bad one (``lora_r: 0``, ``warmup_ratio: 1.5``) used to fail its trials."""
    for name, dist in cfg.search:
        if dist is None:
            continue
        if dist.kind == "loguniform" and min(dist.values) <= 0:
            raise ConfigError(f"search.{name}: loguniform bounds must be > 0, not {dist.values}")
        for value in dist.values:
            try:
                apply_trial(cfg.finetune, {name: value})
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                raise ConfigError(f"search.{name}: value {value!r} is not a valid {TARGETS[name]} ({problems})") from None


def preflight(cfg: "TuneJobConfig") -> None:
    """The search space, then the base fine-tune's inputs and the registry the winner goes to
    (``pipelines.finetune.check_inputs``): a hand-broken registry fails now, not after the sweep."""
    check_search(cfg)
    check_inputs(cfg.finetune.model_copy(update={"registry": cfg.registry}))  # the registry the sweep writes


def _trial_callback(say: Any, metric: str) -> Any:
    from ray import tune

    class TrialProgress(tune.Callback):
        """One line per trial result and per finished trial (Tune's own tables stay off)."""

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            value = result.get(metric)
            shown = f"{value:.4f}" if isinstance(value, (int, float)) else value
            say(f"trial {trial.trial_id} {trial.config}: step {result.get('step')} {metric} {shown}")

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            say(f"trial {trial.trial_id} finished")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            say(f"trial {trial.trial_id} FAILED (its log: {trial.local_path})")

    return TrialProgress()


def run(cfg: TuneJobConfig, job: Run) -> dict[str, Any]:
    """The job's body: prepare once, sweep, write and register the winner."""
    import ray.train
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from training.loop import write_outputs

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = cfg.output_dir
    base = cfg.finetune.model_copy(update={"output_dir": out, "registry": None})
    if base.storage_path is None:
        base = base.model_copy(update={"storage_path": fs.join(out, "trials")})
    base = FinetuneConfig.model_validate(base.model_dump())
    data = prepare(base, job)
    if data.datasets is None:
        return {**rejected_report(base, data), "trials": []}
    assert data.base_path is not None
    train_plan(base, data.info["train_rows"], data.base_path)  # a too-small dataset fails before any trial
    storage = fs.join(out, "tune")
    storage = storage if fs.is_uri(storage) else os.path.abspath(storage)
    trainable = tune.with_parameters(trial_driver, base=base.model_dump(mode="json"), datasets=data.datasets,
                                     train_rows=data.info["train_rows"], base_path=data.base_path)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": cfg.trial_cpus}),
        param_space=param_space(cfg.search),
        tune_config=tune.TuneConfig(
            metric=cfg.metric, mode="min", num_samples=cfg.num_samples,
            max_concurrent_trials=cfg.max_concurrent_trials,
            scheduler=ASHAScheduler(max_t=cfg.asha.max_t, grace_period=cfg.asha.grace_period,
                                    reduction_factor=cfg.asha.reduction_factor),
        ),
        run_config=tune.RunConfig(name=f"tune-{base.phase}", storage_path=storage, verbose=1 if job.verbose else 0,
                                  callbacks=[_trial_callback(job.progress, cfg.metric)]),
    )
    if not job.verbose:  # Tune's newer console output prints its tables even at verbose=0
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    with job.step("sweep"):
        grid = tuner.fit()
    trials = []

    def checkpoint_of(metrics: dict[str, Any]) -> str | None:  # reported inside the storage's filesystem
        path = metrics.get("checkpoint_path")
        return fs.on_storage_of(path, base.resolved_storage_path()) if path else None

    for r in grid:
        m = r.metrics or {}
        trials.append({"trial_id": m.get("trial_id"), "config": r.config, cfg.metric: m.get(cfg.metric),
                       "step": m.get("step"), "checkpoint_path": checkpoint_of(m),
                       "error": repr(r.error) if r.error else None})
    best = best_result(list(grid), cfg.metric, trials)
    checkpoint = checkpoint_of(best.metrics or {})
    if checkpoint is None:
        raise JobError(f"sweep {out}: no trial reported a checkpoint; trials: {json.dumps(trials, default=str)}")
    winner = apply_trial(base, best.config)
    with ray.train.Checkpoint(checkpoint).as_directory() as d:
        report = write_outputs(winner, d, data.base_path, {
            "runner": "ray.tune", "best_trial": best.metrics.get("trial_id"), "best_config": best.config,
            "checkpoint": checkpoint, "n_trials": len(trials), "trials": trials,
            "failed_trials": sum(1 for t in trials if t["error"]),
            "dataset": base.dataset_dirs(), **data.info})
    fs.write_json(fs.join(out, "sweep.json"), {"metric": cfg.metric, "best_trial": report["best_trial"], "trials": trials})
    if cfg.registry:
        report["registry_entry"] = register(base.model_copy(update={"registry": cfg.registry}), winner, report,
                                            run=f"tune-{base.phase}/{report['best_trial']}")
    return report


def summary(r: dict[str, Any]) -> str:
    lines = data_lines(r)
    if "best_trial" not in r:
        lines.append("no sweep: no valid training example")
        return "\n".join(lines)
    metric = r["config"]["metric"]
    for t in r["trials"]:
        value = t.get(metric)
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
        mark = "  <- best" if t["trial_id"] == r["best_trial"] else ""
        lines.append(f"  trial {t['trial_id']} {t['config']}: {metric} {shown}"
                     + (f" FAILED {t['error']}" if t.get("error") else "") + mark)
    lines += [
        f"best: trial {r['best_trial']} {r['best_config']}: eval loss {r['eval_loss']:.4f} "
        f"(perplexity {r['eval_perplexity']:.1f}), loss {r['train_loss_first']:.3f} -> {r['train_loss_last']:.3f}",
        f"adapter: {r['adapter_path']} (PEFT); every trial in sweep.json",
    ]
    return "\n".join(lines + registered_line(r))


SPEC = JobSpec(
    name="tune", config=TuneJobConfig, default_config="jobs/configs/tune_tiny_cpu.yaml", summary=summary,
    flags={"--dataset": "finetune.dataset_dir", "--phase": "finetune.phase", "--output": "output_dir",
           "--registry": "registry"},
    inputs={"finetune.dataset_dir": "a dataset written by python -m jobs.build_dataset"},
    volatile=("trial_cpus", "max_concurrent_trials", *(f"finetune.{v}" for v in VOLATILE)),
    outputs=lambda r: r["examples"]["train"], inputs_count=lambda r: r["examples"]["read"],
    description=__doc__, extra_inputs=lambda cfg: extra_dataset_inputs(cfg.finetune),
    preflight=preflight,
)
