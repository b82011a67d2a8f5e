"""jobs.tune: a 2-trial sweep whose better trial (lower eval loss) is registered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import tune
from tests.training._data import rows, write_dataset
from training.registry import dataset_version

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "jobs" / "configs" / "tune_tiny_cpu.yaml")


@pytest.mark.integration
@pytest.mark.slow
def test_two_trial_sweep_registers_the_lower_eval_loss_trial(ray_session, tmp_path):
    dataset = write_dataset(tmp_path / "ds", rows(n_train=32, n_val=6))
    out, registry = tmp_path / "tune", tmp_path / "registry.json"
    argv = ["--config", CONFIG, "--dataset", str(dataset), "--output", str(out), "--registry", str(registry),
            "finetune.max_length=128", "finetune.optim.epochs=2", "finetune.eval_every_steps=4",
            "search.lr={kind: grid, values: [0.00001, 0.008]}"]
    assert tune.main(argv) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    trials = sweep["trials"]
    assert len(trials) == 2 and all(t["error"] is None and t["eval_loss"] is not None for t in trials)
    best = min(trials, key=lambda t: t["eval_loss"])
    worst = max(trials, key=lambda t: t["eval_loss"])
    assert best["eval_loss"] < worst["eval_loss"] and best["config"] == {"lr": 0.008}
    assert sweep["best_trial"] == best["trial_id"]

    entry = json.loads(registry.read_text())["specialists"]["rtl_design"]
    assert entry["metrics"]["eval_loss"] == pytest.approx(best["eval_loss"])
    assert entry["config"]["optim"]["lr"] == 0.008
    assert entry["adapter_path"] == str(out / "adapter") and (out / "adapter" / "adapter_model.safetensors").exists()
    assert entry["base_model"] == str(out / "base_model")
    assert entry["dataset_version"] == dataset_version(str(dataset), "rtl_design")
    report = json.loads((out / "report.json").read_text())
    assert report["best_trial"] == best["trial_id"] and report["eval_loss"] == pytest.approx(best["eval_loss"])
