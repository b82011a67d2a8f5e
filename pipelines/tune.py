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

A sweep stopped part way (Ctrl-C, SIGTERM, a lost driver) resumes when the same command is run
again: its Tune experiment, OUTPUT/tune/tune-<phase>-<key> (the key covers the config and the
dataset, like a fine-tune's checkpoint run name), is restored with ``Tuner.restore``. Finished
trials are kept (not trained again), unfinished ones continue from their Train run's latest
checkpoint, errored ones are retried (``on_errored``); a changed config or dataset is a new
experiment. ``--force`` deletes this config's experiment and trial checkpoints and starts over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any, Literal

from pydantic import Field, ValidationError

from chipforge import fs
from chipforge.config import Config, ConfigError
from chipforge.job import JobError, JobSpec, Run, Stopped, fingerprint
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
    # a rerun of a stopped sweep: what happens to trials that had failed (finished trials are always
    # kept, unfinished ones always continue). resume: from their latest checkpoint; restart: from
    # step 0 (a new trial); skip: kept as failed
    on_errored: Literal["resume", "restart", "skip"] = "resume"


def trial_driver(config: dict[str, Any], *, base: dict[str, Any], datasets: dict[str, Any], train_rows: int,
                 base_path: str, key: str) -> None:
    """One Tune trial: a full TorchTrainer run with the trial's values.

    The Train run is named ``<run_name>-<key>-<trial id>``: a trial resumed by ``Tuner.restore`` keeps
    its id, so its ``fit()`` picks up the latest checkpoint of that run (Train V2 reloads the run's
    snapshot from storage). A run that had already finished (the driver died before Tune recorded
    that) is not started again: its final checkpoint's metrics are reported as they are."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from training.trainer import build_trainer

    cfg = apply_trial(FinetuneConfig.model_validate(base), config)
    plan = train_plan(cfg, train_rows, base_path)
    run_name = trial_run_name(cfg, key, tune.get_context().get_trial_id())
    done = finished_run(cfg.resolved_storage_path(), run_name, plan.total_steps)
    if done is not None:
        tune.report(done)
        return
    build_trainer(cfg, datasets, plan, run_name=run_name, callbacks=[TuneReportCallback()]).fit()


def finished_run(storage: str, run_name: str, total_steps: int) -> dict[str, Any] | None:
    """The last report (with ``checkpoint_path``) of the Train run ``storage/run_name`` when its latest
    checkpoint is its final step, else None (no such run, or one to resume)."""
    import ray.train

    path = fs.join(storage, run_name)
    if not fs.exists(fs.join(path, "checkpoint_manager_snapshot.json")):
        return None
    filesystem, local = fs.resolve(path) if fs.is_uri(path) else (None, path)
    try:
        result = ray.train.Result.from_path(local, storage_filesystem=filesystem)
    except Exception:  # noqa: BLE001 - an unreadable snapshot: fit() resumes or reports what is wrong
        return None
    metrics = result.metrics or {}
    if result.checkpoint is None or metrics.get("step") != total_steps:
        return None
    return {**metrics, "checkpoint_path": result.checkpoint.path}


def experiment_key(cfg: "TuneJobConfig") -> str:
    """8 hex digits of the sweep's config and dataset fingerprint, without the fields that change neither
    what any trial trains nor how trials are ranked (resources, retries, where things go, the registry)."""
    volatile = (*SPEC.volatile, "registry", "finetune.registry", "on_errored")
    return fingerprint(dataclasses.replace(SPEC, volatile=volatile), cfg)[0][:8]


def trial_run_name(cfg: FinetuneConfig, key: str, trial_id: str) -> str:
    return f"{cfg.resolved_run_name()}-{key}-{trial_id}"


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


_SAY: Callable[[str], None] = print  # the running job's progress printer (set by ``run``)


def _progress(message: str) -> None:
    """Tune's callbacks print through here: ``Tuner.restore`` brings back the callbacks pickled by the
    first run, so they must not hold that run's printer (a module function pickles by name)."""
    _SAY(message)


def _trial_callback(metric: str) -> Any:
    from ray import tune

    class TrialProgress(tune.Callback):
        """One line per trial result and per finished trial (Tune's own tables stay off)."""

        def __init__(self) -> None:
            self.say = _progress

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            value = result.get(metric)
            shown = f"{value:.4f}" if isinstance(value, (int, float)) else value
            self.say(f"trial {trial.trial_id} {trial.config}: step {result.get('step')} {metric} {shown}")

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.say(f"trial {trial.trial_id} finished")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.say(f"trial {trial.trial_id} FAILED (its log: {trial.local_path})")

    return TrialProgress()


def earlier_trials(experiment: str) -> dict[str, str] | None:
    """None when ``experiment`` holds no Tune state to restore (``Tuner.can_restore``), else each earlier
    trial's id → ``kept`` (finished), ``errored`` or ``resumed`` (unfinished: it continues)."""
    from ray.tune import ExperimentAnalysis, Tuner

    if not Tuner.can_restore(experiment):
        return None
    states = {"TERMINATED": "kept", "ERROR": "errored"}
    return {t.trial_id: states.get(t.status, "resumed") for t in ExperimentAnalysis(experiment).trials}


def remove_experiment(experiment: str, base: FinetuneConfig, key: str) -> None:
    """Delete a sweep's Tune experiment and the Train runs (checkpoints) of its trials."""
    fs.delete(experiment)
    storage = base.resolved_storage_path()
    prefix = f"{base.resolved_run_name()}-{key}-"
    for path in fs.listdir(storage):
        if os.path.basename(path.rstrip("/")).startswith(prefix):
            fs.delete(path)


@contextlib.contextmanager
def stops_gracefully(on_stop: Callable[[], None]) -> Iterator[None]:
    """Around ``Tuner.fit`` in the main thread: the first SIGINT or SIGTERM asks Tune to stop the way its
    own Ctrl-C handler does (trials stopped, the experiment state saved one last time, so a rerun resumes
    from it), then the job stops as usual (``chipforge.job.Stopped`` for SIGTERM: exit 143; Ctrl-C: 130).

    Without it SIGTERM cut Tune's loop short (the state on disk could be 10 s old: a finished trial not
    recorded as such), and Ctrl-C let ``fit`` return a partial sweep whose best trial was registered
    as if the sweep had finished. A second signal, or one before Tune listens, stops at once."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def ask_tune_to_stop(signum: int, frame: Any) -> None:
        tune_stop = signal.getsignal(signal.SIGUSR1)  # Tune's own stop handler while its loop runs
        if got or not callable(tune_stop):
            raise Stopped if signum == signal.SIGTERM else KeyboardInterrupt
        got.append(signum)
        tune_stop(signal.SIGUSR1, frame)

    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    previous = {s: signal.getsignal(s) for s in watched}
    env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # SIGINT comes here, not to Tune's handler
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until Tune installs its handler
    signal.signal(signal.SIGINT, ask_tune_to_stop)
    signal.signal(signal.SIGTERM, ask_tune_to_stop)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        if env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env
    if got:
        on_stop()
        raise Stopped if got[0] == signal.SIGTERM else KeyboardInterrupt


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
    key = experiment_key(cfg)
    experiment = fs.join(storage, f"tune-{base.phase}-{key}")
    if job.force:  # redo means from scratch: this config's experiment and its trials' checkpoints go
        job.progress(f"--force: sweeping from scratch (removing {experiment} and its trials' checkpoints)")
        remove_experiment(experiment, base, key)
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, base=base.model_dump(mode="json"), datasets=data.datasets,
                             train_rows=data.info["train_rows"], base_path=data.base_path, key=key),
        {"cpu": cfg.trial_cpus})
    global _SAY
    _SAY = job.progress
    prior = earlier_trials(experiment)
    if prior is not None:
        counts = {s: sum(1 for v in prior.values() if v == s) for s in ("kept", "resumed", "errored")}
        job.progress(f"resuming the sweep in {experiment}: {counts['kept']} finished trial(s) kept, "
                     f"{counts['resumed']} unfinished continued, {counts['errored']} failed ({cfg.on_errored})")
        tuner = tune.Tuner.restore(experiment, trainable, param_space=param_space(cfg.search),
                                   resume_unfinished=True, resume_errored=cfg.on_errored == "resume",
                                   restart_errored=cfg.on_errored == "restart")
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(cfg.search),
            tune_config=tune.TuneConfig(
                metric=cfg.metric, mode="min", num_samples=cfg.num_samples,
                max_concurrent_trials=cfg.max_concurrent_trials,
                scheduler=ASHAScheduler(max_t=cfg.asha.max_t, grace_period=cfg.asha.grace_period,
                                        reduction_factor=cfg.asha.reduction_factor),
            ),
            run_config=tune.RunConfig(name=os.path.basename(experiment), storage_path=storage,
                                      verbose=1 if job.verbose else 0, callbacks=[_trial_callback(cfg.metric)]),
        )
    if not job.verbose:  # Tune's newer console output prints its tables even at verbose=0
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    with job.step("sweep"), stops_gracefully(lambda: job.progress(
            f"sweep stopped; its state is saved: rerun the same command to resume it ({experiment})")):
        grid = tuner.fit()
    trials = []

    def checkpoint_of(metrics: dict[str, Any]) -> str | None:  # reported inside the storage's filesystem
        path = metrics.get("checkpoint_path")
        return fs.on_storage_of(path, base.resolved_storage_path()) if path else None

    for r in grid:
        m = r.metrics or {}
        trials.append({"trial_id": m.get("trial_id"), "config": r.config, cfg.metric: m.get(cfg.metric),
                       "step": m.get("step"), "checkpoint_path": checkpoint_of(m),
                       "error": repr(r.error) if r.error else None,
                       "this_run": (prior or {}).get(m.get("trial_id"), "new")})
    best = best_result(list(grid), cfg.metric, trials)
    checkpoint = checkpoint_of(best.metrics or {})
    if checkpoint is None:
        raise JobError(f"sweep {out}: no trial reported a checkpoint; trials: {json.dumps(trials, default=str)}")
    winner = apply_trial(base, best.config)
    with ray.train.Checkpoint(checkpoint).as_directory() as d:
        report = write_outputs(winner, d, data.base_path, {
            "runner": "ray.tune", "best_trial": best.metrics.get("trial_id"), "best_config": best.config,
            "checkpoint": checkpoint, "n_trials": len(trials), "trials": trials,
            "experiment": experiment, "resumed": prior is not None,
            "failed_trials": sum(1 for t in trials if t["error"]),
            "dataset": base.dataset_dirs(), **data.info})
    fs.write_json(fs.join(out, "sweep.json"), {"metric": cfg.metric, "best_trial": report["best_trial"],
                                               "experiment": experiment, "trials": trials})
    if cfg.registry:
        report["registry_entry"] = register(base.model_copy(update={"registry": cfg.registry}), winner, report,
                                            run=f"{os.path.basename(experiment)}/{report['best_trial']}")
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
        earlier = {"kept": " (finished before, kept)", "resumed": " (resumed)",
                   "errored": f" (failed before: {r['config']['on_errored']})"}
        lines.append(f"  trial {t['trial_id']} {t['config']}: {metric} {shown}"
                     + (f" FAILED {t['error']}" if t.get("error") else "") + earlier.get(t.get("this_run", ""), "") + mark)
    if r.get("resumed"):
        n = {s: sum(1 for t in r["trials"] if t.get("this_run") == s) for s in ("kept", "resumed", "errored", "new")}
        lines.append(f"resumed sweep {r['experiment']}: {n['kept']} finished trial(s) kept, {n['resumed']} continued, "
                     f"{n['errored']} failed before ({r['config']['on_errored']}), {n['new']} new")
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
    volatile=("trial_cpus", "max_concurrent_trials", "on_errored", *(f"finetune.{v}" for v in VOLATILE)),
    outputs=lambda r: r["examples"]["train"], inputs_count=lambda r: r["examples"]["read"],
    description=__doc__, extra_inputs=lambda cfg: extra_dataset_inputs(cfg.finetune),
    preflight=preflight,
)
