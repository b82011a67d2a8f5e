"""jobs.tune: with no arguments it sweeps the bundled sample (offline, tiny model) and registers the better trial."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from chipforge import fs
from jobs import tune
from training.registry import dataset_version

REPO = Path(__file__).resolve().parents[2]


def test_training_jobs_are_leaves():
    """Entry points import pipelines and libraries, never another job module."""
    for name in ("finetune", "tune", "train_torchrun"):
        tree = ast.parse((REPO / "jobs" / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in imported if m == "jobs" or m.startswith("jobs.")}, (name, imported)
        if name != "train_torchrun":  # config, spec and body live in pipelines/
            assert len((REPO / "jobs" / f"{name}.py").read_text().splitlines()) <= 45


def test_help_names_the_flags(capsys):
    with pytest.raises(SystemExit):
        tune.main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--dataset DATASET_DIR", "--phase PHASE", "--output OUTPUT_DIR", "--registry REGISTRY", "--force"):
        assert flag in out


@pytest.mark.integration
@pytest.mark.slow
def test_tune_with_no_arguments_sweeps_the_bundled_sample(ray_session, s3_env, tmp_path, capsys, monkeypatch):
    from tests.conftest import make_bucket

    monkeypatch.chdir(REPO)  # the shipped config's paths (sample/dataset) are relative to the repository
    out, registry = tmp_path / "tune", tmp_path / "registry.json"
    # only where results go is changed: config, dataset and model are the defaults; the trials'
    # checkpoints go to object storage, as on a cluster (Ray reports their paths without the scheme)
    trials_uri = make_bucket(s3_env, "cf-tune-trials") + "/trials"
    argv = ["--output", str(out), "--registry", str(registry), f"finetune.storage_path={trials_uri}"]
    assert tune.main(argv) == 0
    printed = capsys.readouterr().out
    sweep = json.loads((out / "sweep.json").read_text())
    trials = sweep["trials"]
    assert len(trials) == 2 and all(t["error"] is None and t["eval_loss"] is not None for t in trials)
    best = min(trials, key=lambda t: t["eval_loss"])
    worst = max(trials, key=lambda t: t["eval_loss"])
    assert best["eval_loss"] < worst["eval_loss"] and best["config"] == {"lr": 0.01}
    assert sweep["best_trial"] == best["trial_id"]
    assert all(t["checkpoint_path"].startswith(trials_uri + "/") and fs.exists(t["checkpoint_path"]) for t in trials)
    assert sum(f"trial {t['trial_id']} finished" in printed for t in trials) == 2

    entry = json.loads(registry.read_text())["specialists"]["rtl_design"]
    assert entry["metrics"]["eval_loss"] == pytest.approx(best["eval_loss"])
    assert entry["config"]["optim"]["lr"] == 0.01
    assert entry["adapter_path"] == str(out / "adapter") and (out / "adapter" / "adapter_model.safetensors").exists()
    assert entry["base_model"] == str(out / "base_model")
    assert entry["dataset_version"] == dataset_version("sample/dataset", "rtl_design")
    report = json.loads((out / "report.json").read_text())
    assert report["best_trial"] == best["trial_id"] and report["eval_loss"] == pytest.approx(best["eval_loss"])
    assert report["examples"]["validation"] >= 1 and report["eval_rows"] >= 1
    assert printed.rstrip().splitlines()[-1].startswith("registered as the rtl_design specialist")

    assert tune.main(argv) == 0  # same inputs: skipped
    assert "up to date, skipped" in capsys.readouterr().out


def test_a_metric_trials_do_not_report_is_a_config_error(tmp_path: Path, capsys) -> None:
    """It used to fail in Ray Tune after the first trial had trained."""
    assert tune.main(["metric=accuracy", "--output", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "metric: Input should be 'eval_loss', 'eval_perplexity' or 'train_loss'" in err


@pytest.mark.parametrize("override,message", [
    ('search.lora_r={"kind": "choice", "values": [8, 0]}', "search.lora_r: value 0 is not a valid lora.r"),
    ('search.warmup_ratio={"kind": "grid", "values": [0.1, 1.5]}', "search.warmup_ratio: value 1.5 is not a valid optim.warmup_ratio"),
    ('search.lr={"kind": "loguniform", "values": [0, 0.001]}', "search.lr: loguniform bounds must be > 0"),
])
def test_a_search_value_the_fine_tune_rejects_exits_2_before_ray(override, message, tmp_path: Path, capsys,
                                                                  ray_forbidden: None) -> None:
    """Such a value used to fail its trials inside Ray Tune (a ValidationError per trial)."""
    assert tune.main([override, "--output", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_failed_trial_never_wins_and_no_finished_trial_is_a_clear_error() -> None:
    """Tune's get_best_result ranks a trial that crashed after reporting an early (low) eval loss,
    and raises a bare RuntimeError when every trial failed."""
    from types import SimpleNamespace

    from chipforge.job import JobError
    from pipelines.tune import best_result

    crashed = SimpleNamespace(error=RuntimeError("worker died"), metrics={"eval_loss": 0.1})
    ok = SimpleNamespace(error=None, metrics={"eval_loss": 0.5})
    nan = SimpleNamespace(error=None, metrics={"eval_loss": float("nan")})
    trials = [{"trial_id": "a", "config": {"lr": 1}, "error": "RuntimeError('worker died')"},
              {"trial_id": "b", "config": {"lr": 2}, "error": None}]
    assert best_result([crashed, nan, ok], "eval_loss", trials) is ok
    with pytest.raises(JobError, match=r"no trial of the sweep finished with a eval_loss: trial a \{'lr': 1\}: "
                                       r"RuntimeError\('worker died'\); trial b \{'lr': 2\}: no eval_loss"):
        best_result([crashed, nan], "eval_loss", trials)


def test_a_broken_registry_exits_2_before_the_sweep(tmp_path: Path, capsys, ray_forbidden: None) -> None:
    """The registry the winner is written to is checked before Ray (it used to fail after the sweep)."""
    registry = tmp_path / "registry.json"
    registry.write_text("{not json")
    assert tune.main(["--output", str(tmp_path / "t"), "--registry", str(registry)]) == 2
    err = capsys.readouterr().err
    assert str(registry) in err and "Traceback" not in err
