"""jobs.quickstart: step wiring with a fake runner; the real corpus → docs → dataset steps, rerun and changed."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from chipforge.job import Run
from tests.conftest import make_bucket
from jobs import quickstart
from pipelines.quickstart import QuickstartConfig, run

REPO = Path(__file__).resolve().parents[2]


def test_steps_feed_each_other_and_a_failure_stops_the_pipeline(tmp_path: Path, capsys) -> None:
    calls: list[tuple[str, list[str]]] = []

    def runner(step: str, argv: list[str]) -> int:
        calls.append((step, argv))
        return 3 if step == "dataset" else 0

    report = run(QuickstartConfig(output_dir=str(tmp_path)), Run("quickstart", str(tmp_path), force=True), runner)
    assert [s for s, _ in calls] == ["corpus", "docs", "dataset"]
    dataset_argv = calls[2][1]
    assert dataset_argv[dataset_argv.index("--corpus") + 1] == calls[0][1][calls[0][1].index("--output") + 1]
    assert dataset_argv[dataset_argv.index("--docs") + 1] == calls[1][1][calls[1][1].index("--output") + 1]
    assert all("--force" in argv for _, argv in calls)  # --force reaches every step
    assert report["ok"] is False and report["step_results"]["dataset"]["exit_code"] == 3
    assert "finetune" not in report["step_results"]
    assert "step dataset failed with exit code 3" in capsys.readouterr().out


def test_a_failed_step_makes_the_quickstart_exit_non_zero(tmp_path: Path, ray_forbidden, capsys) -> None:
    # the dataset step alone: its corpus input was never written, which only the step itself finds
    assert quickstart.main(["--output", str(tmp_path / "q"), "steps=[dataset]"]) == 1
    assert json.loads((tmp_path / "q" / "report.json").read_text())["ok"] is False
    assert "does not exist (expected a directory written by python -m jobs.build_corpus)" in capsys.readouterr().err


def test_every_step_config_is_checked_before_the_first_step_runs(tmp_path: Path, ray_forbidden, s3_env, capsys) -> None:
    bad = tmp_path / "ft.yaml"
    bad.write_text("# launch: python -m jobs.finetune --config ft.yaml\noptim: {lr: -1}\n")
    argv = ["--output", str(tmp_path / "q"), f"finetune_config={bad}"]
    assert quickstart.main(argv) == 2  # before the corpus step, not after three steps' work
    err = capsys.readouterr().err
    assert "quickstart step finetune rtl_design (python -m jobs.finetune --config" in err and "optim.lr" in err
    assert "another job" not in err and not (tmp_path / "q").exists()
    assert quickstart.main([*argv[:2], f"docs_config={tmp_path / 'missing.yaml'}"]) == 2
    assert "config file not found" in capsys.readouterr().err
    # a tiny base cannot be built on object storage: said up front, naming the step
    bucket = make_bucket(s3_env, "cf-quickstart-preflight")
    assert quickstart.main(["--output", f"{bucket}/qs", "steps=[finetune]"]) == 2
    assert f"must be a local path (not {bucket}/qs/specialists/rtl_design)" in capsys.readouterr().err


def _ids(examples_dir: Path) -> set[tuple[str, str, str]]:
    table = pads.dataset(examples_dir, format="parquet", partitioning="hive").to_table(columns=["id", "phase", "split"])
    return set(zip(*(table.column(c).to_pylist() for c in ("id", "phase", "split"))))


@pytest.mark.integration
def test_sample_pipeline_reruns_only_what_changed(ray_session, tmp_path: Path, capfd) -> None:
    """The bundled dataset is reproduced; a rerun skips every step; a changed dataset config reruns it alone."""
    out = tmp_path / "qs"
    argv = ["--output", str(out), "steps=[corpus, docs, dataset]"]
    assert quickstart.main(argv) == 0
    first = capfd.readouterr()
    assert len((first.out + first.err).splitlines()) < 45, first.out + first.err
    assert "core_worker" not in first.out + first.err
    fresh = _ids(out / "dataset" / "examples")
    assert {p for _, p, _ in fresh} >= {"rtl_design", "triage", "synthesis", "placement", "routing"}
    assert fresh == _ids(REPO / "sample" / "dataset" / "examples"), (
        "sample/dataset is stale: regenerate it with `python -m jobs.quickstart` and copy out/quickstart/dataset")

    assert quickstart.main(argv) == 0
    assert (capfd.readouterr().out.count("up to date, skipped")) == 3

    changed = tmp_path / "dataset.yaml"
    changed.write_text((REPO / "jobs/configs/dataset_sample.yaml").read_text() + "\nseed: 7\n")
    assert quickstart.main([*argv, f"dataset_config={changed}"]) == 0
    text = capfd.readouterr().out
    assert text.count("up to date, skipped") == 2 and "== dataset: rerunning (config changed)" in text
