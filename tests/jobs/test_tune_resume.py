"""``jobs.tune`` stopped part way and run again: the same command resumes the same Tune experiment
(``Tuner.restore``): finished trials are kept, not trained again; a changed config or dataset is a new
experiment. The stop itself (SIGTERM, Ctrl-C) lets Tune save its state before the job exits."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chipforge.config import load_config
from chipforge.job import Stopped
from pipelines.tune import TuneJobConfig

REPO = Path(__file__).resolve().parents[2]


def tune_config(*overrides: str) -> TuneJobConfig:
    return load_config(TuneJobConfig, ["--config", str(REPO / "jobs/configs/tune_tiny_cpu.yaml"), *overrides], prog="t")


def test_the_experiment_key_follows_what_trials_train_not_where_things_go(tmp_path: Path, monkeypatch) -> None:
    """The experiment directory is keyed like a fine-tune's checkpoint run name: a rerun of the same
    config and dataset finds its experiment; another search space, fine-tune setting or dataset does not."""
    from pipelines.tune import experiment_key

    monkeypatch.chdir(REPO)  # the shipped config's dataset path is relative to the repository
    key = experiment_key(tune_config())
    same = ["registry=elsewhere.json", "trial_cpus=1", "max_concurrent_trials=2", "on_errored=skip",
            f"output_dir={tmp_path}/o", "finetune.max_failures=3", f"finetune.storage_path={tmp_path}/t"]
    for override in same:
        assert experiment_key(tune_config(override)) == key, override
    other = ['search.lr={"kind": "grid", "values": [0.001, 0.01]}', "num_samples=2", "metric=train_loss",
             "finetune.lora.r=8", "finetune.optim.epochs=1", "finetune.eval_every_steps=5", "asha.grace_period=2"]
    keys = {experiment_key(tune_config(o)) for o in other}
    assert len(keys) == len(other) and key not in keys

    import shutil

    dataset = tmp_path / "dataset"
    shutil.copytree(REPO / "sample" / "dataset", dataset)
    copy_key = experiment_key(tune_config(f"finetune.dataset_dir={dataset}"))
    parquet = next(dataset.rglob("phase=rtl_design/split=train/*.parquet"))
    parquet.write_bytes(parquet.read_bytes() + b"\0")  # another dataset (no marker: its files count)
    assert experiment_key(tune_config(f"finetune.dataset_dir={dataset}")) != copy_key


@pytest.mark.parametrize("signum,raised", [(signal.SIGTERM, Stopped), (signal.SIGINT, KeyboardInterrupt)])
def test_a_stop_during_the_sweep_asks_tune_to_save_and_stop_then_stops_the_job(signum, raised) -> None:
    """Tune's stop handler (SIGUSR1 while its loop runs) is what the first signal reaches; the job only
    stops once ``fit`` has returned. Before, SIGTERM cut Tune's loop short (its last saved state could
    miss a finished trial) and Ctrl-C made ``fit`` return a partial sweep that was then registered."""
    from pipelines.tune import stops_gracefully

    tune_stopped = threading.Event()
    said: list[str] = []
    with pytest.raises(raised):
        with stops_gracefully(lambda: said.append("stopped")):
            signal.signal(signal.SIGUSR1, lambda s, f: tune_stopped.set())  # what tune.run installs
            os.kill(os.getpid(), signum)
            time.sleep(0.2)
            assert tune_stopped.is_set() and not said  # fit would now return after saving its state
    assert said == ["stopped"]
    assert signal.getsignal(signal.SIGTERM) is not None and os.environ.get("TUNE_DISABLE_SIGINT_HANDLER") is None

    with pytest.raises(raised):  # before Tune listens (or a second signal): at once
        with stops_gracefully(lambda: said.append("again")):
            os.kill(os.getpid(), signum)
            time.sleep(5)
    assert said == ["stopped"]


TRIAL_LINE = re.compile(r"trial (\w+) \{'lr': ([0-9.e-]+)\}: step (\d+) eval_loss ([0-9.]+)")


@pytest.mark.integration
@pytest.mark.slow
def test_a_stopped_sweep_resumes_keeping_finished_trials_and_continuing_unfinished_ones(tmp_path: Path) -> None:
    """SIGTERM once the first trial has finished and the second has reported its first checkpoint: exit 143.
    The same command again restores that experiment: the finished trial keeps its id and result and is not
    trained again; the unfinished one keeps its id and continues after its checkpoint (its first report is
    a later step); the sweep has its 2 trials, exits 0 and registers the winner. Before, the rerun started
    a new experiment in the same directory and trained both trials from step 0. Config, dataset and model are
    the no-argument defaults but for one Train worker per trial; a third run is skipped as up to date."""
    from chipforge import fs
    from training.registry import dataset_version

    out, registry = tmp_path / "tune", tmp_path / "registry.json"
    cmd = [sys.executable, "-m", "jobs.tune", "--output", str(out), "--registry", str(registry),
           "finetune.scaling.num_workers=1"]  # one Train worker per trial: quicker to start on 2 cores
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", CHIPFORGE_LOG_DIR=str(tmp_path / "logs"))
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    done: str | None = None
    try:
        deadline = time.monotonic() + 500
        for line in first.stdout:  # type: ignore[union-attr]
            lines.append(line)
            finished, result = re.search(r"trial (\w+) finished", line), TRIAL_LINE.search(line)
            done = done or (finished.group(1) if finished else None)
            if done and result and result.group(1) != done:  # the next trial's first checkpoint
                first.send_signal(signal.SIGTERM)
                break
            assert time.monotonic() < deadline, "".join(lines)
        rest, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    printed = "".join(lines) + rest
    assert first.returncode == 143, printed + stderr[-3000:]
    assert "stopped (SIGTERM)" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert "rerun the same command to resume" in printed
    assert not (out / "report.json").exists() and not registry.exists()
    before = {m.group(1): (float(m.group(2)), int(m.group(3)), float(m.group(4))) for m in TRIAL_LINE.finditer(printed)}
    assert done is not None and len(before) == 2, printed
    unfinished = next(t for t in before if t != done)
    experiments = list((out / "tune").glob("tune-rtl_design-*"))
    assert len(experiments) == 1

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming the sweep" in again.stdout and "1 finished trial(s) kept, 1 unfinished continued" in again.stdout
    trained = [(m.group(1), int(m.group(3))) for m in TRIAL_LINE.finditer(again.stdout)]
    assert trained and {t for t, _ in trained} == {unfinished}, again.stdout  # the finished trial is not retrained
    assert trained[0][1] > before[unfinished][1], again.stdout  # continued after its checkpoint, not from step 0
    assert list((out / "tune").glob("tune-rtl_design-*")) == experiments  # the same experiment, no new one

    sweep = json.loads((out / "sweep.json").read_text())
    trials = {t["trial_id"]: t for t in sweep["trials"]}
    assert set(trials) == {done, unfinished} and all(t["error"] is None for t in trials.values())
    lr, step, loss = before[done]
    assert trials[done]["this_run"] == "kept" and trials[done]["step"] == step and trials[done]["config"] == {"lr": lr}
    assert trials[done]["eval_loss"] == pytest.approx(loss, abs=1e-4)
    assert trials[unfinished]["this_run"] == "resumed" and trials[unfinished]["step"] == step  # same schedule
    report = json.loads((out / "report.json").read_text())
    assert report["resumed"] is True and report["experiment"] == str(experiments[0])
    best = min(trials.values(), key=lambda t: t["eval_loss"])
    assert report["best_trial"] == best["trial_id"]
    entry = json.loads(registry.read_text())["specialists"]["rtl_design"]
    assert entry["metrics"]["eval_loss"] == pytest.approx(best["eval_loss"])
    assert "(finished before, kept)" in again.stdout and "(resumed)" in again.stdout
    assert best["config"] == {"lr": 0.01}  # the tiny model learns faster with the larger rate
    assert all(t["checkpoint_path"].startswith(str(out / "trials") + "/") and fs.exists(t["checkpoint_path"])
               for t in trials.values())
    assert entry["config"]["optim"]["lr"] == 0.01 and entry["base_model"] == str(out / "base_model")
    assert entry["adapter_path"] == str(out / "adapter") and (out / "adapter" / "adapter_model.safetensors").exists()
    assert entry["dataset_version"] == dataset_version(str(REPO / "sample/dataset"), "rtl_design")
    assert report["examples"]["validation"] >= 1 and report["eval_rows"] >= 1
    assert again.stdout.rstrip().splitlines()[-1].startswith("registered as the rtl_design specialist")

    skipped = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert skipped.returncode == 0 and "up to date, skipped" in skipped.stdout, skipped.stdout + skipped.stderr


def test_force_removes_this_configs_experiment_and_its_trials_checkpoints_only(tmp_path: Path) -> None:
    """``--force`` sweeps from scratch: a restored experiment would otherwise keep its finished trials."""
    from pipelines.tune import remove_experiment
    from training.config import FinetuneConfig

    base = FinetuneConfig(phase="rtl_design", output_dir=str(tmp_path), storage_path=str(tmp_path / "trials"))
    mine, other = tmp_path / "tune" / "tune-rtl_design-aaaa1111", tmp_path / "tune" / "tune-rtl_design-bbbb2222"
    runs = {name: tmp_path / "trials" / name for name in
            ("finetune-rtl_design-aaaa1111-c7813_00000", "finetune-rtl_design-bbbb2222-22ee4_00000")}
    for d in (mine, other, *runs.values()):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "f").write_text("x")
    remove_experiment(str(mine), base, "aaaa1111")
    assert not mine.exists() and not runs["finetune-rtl_design-aaaa1111-c7813_00000"].exists()
    assert other.exists() and runs["finetune-rtl_design-bbbb2222-22ee4_00000"].exists()
    remove_experiment(str(mine), base, "aaaa1111")  # nothing there: no error
