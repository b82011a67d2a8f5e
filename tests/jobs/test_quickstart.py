"""jobs.quickstart: step wiring with a fake runner, and the real corpus → docs → dataset steps on the sample."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from jobs import quickstart
from jobs.quickstart import QuickstartConfig

REPO = Path(__file__).resolve().parents[2]


def test_steps_feed_each_other_and_a_failure_stops_the_pipeline(tmp_path: Path, capsys) -> None:
    calls: list[tuple[str, list[str]]] = []

    def runner(module: str, argv: list[str]) -> int:
        calls.append((module, argv))
        return 3 if module == "jobs.build_dataset" else 0

    report = quickstart.run(QuickstartConfig(output_dir=str(tmp_path)), runner)
    assert [m for m, _ in calls] == ["jobs.build_corpus", "jobs.scrape_docs", "jobs.build_dataset"]
    dataset_argv = calls[2][1]
    assert dataset_argv[dataset_argv.index("--corpus") + 1] == calls[0][1][calls[0][1].index("--output") + 1]
    assert dataset_argv[dataset_argv.index("--docs") + 1] == calls[1][1][calls[1][1].index("--output") + 1]
    assert report["ok"] is False and report["steps"]["dataset"]["exit_code"] == 3 and "finetune" not in report["steps"]
    assert json.loads((tmp_path / "quickstart.json").read_text())["ok"] is False
    assert "step dataset failed with exit code 3" in capsys.readouterr().out


def test_a_step_that_raises_is_reported_not_a_crash(tmp_path: Path) -> None:
    def runner(module: str, argv: list[str]) -> int:
        raise ValueError(f"bad input for {module}")

    rc_report = quickstart.run(QuickstartConfig(output_dir=str(tmp_path), steps=["docs", "dataset"]), runner)
    assert rc_report["ok"] is False and list(rc_report["steps"]) == ["docs"]
    assert rc_report["steps"]["docs"]["error"] == "ValueError: bad input for jobs.scrape_docs"


def _ids(examples_dir: Path) -> set[tuple[str, str, str]]:
    table = pads.dataset(examples_dir, format="parquet", partitioning="hive").to_table(columns=["id", "phase", "split"])
    return set(zip(*(table.column(c).to_pylist() for c in ("id", "phase", "split"))))


@pytest.mark.integration
def test_sample_pipeline_reproduces_the_bundled_dataset(ray_session, tmp_path: Path) -> None:
    """The shipped sample/dataset (finetune's default input) is what corpus → docs → dataset makes now."""
    out = tmp_path / "qs"
    assert quickstart.main(["--output", str(out), "steps=[corpus, docs, dataset]",
                            f"corpus_config={REPO / 'jobs/configs/corpus_sample.yaml'}"]) == 0
    fresh = _ids(out / "dataset" / "examples")
    assert {p for _, p, _ in fresh} >= {"rtl_design", "triage", "synthesis", "placement", "routing"}
    assert {("rtl_design", "train"), ("rtl_design", "validation")} <= {(p, s) for _, p, s in fresh}
    assert fresh == _ids(REPO / "sample" / "dataset" / "examples"), (
        "sample/dataset is stale: regenerate it with `python -m jobs.quickstart` and copy out/quickstart/dataset")
