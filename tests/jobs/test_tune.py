"""jobs.tune before any trial runs: leaves, flags and usage errors (the sweep itself, stopped and resumed, is
tests/jobs/test_tune_resume.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from jobs import tune

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
