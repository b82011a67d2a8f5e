"""jobs.build_dataset end to end on small Parquet inputs; output loads with `datasets`."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from corpus.schema import DOCS_SCHEMA, EXAMPLES_SCHEMA, MODULES_SCHEMA, from_rows
from jobs.build_dataset import main


def _module(repo: str, i: int, source: str | None = None, comment: str | None = None) -> dict:
    src = source or f"module m_{repo}_{i} (\n  input clk,\n  output reg q\n);\n  always @(posedge clk) q <= ~q ^ {i % 2};\nendmodule"
    return {"id": f"{repo}-{i}", "repo": repo, "path": f"rtl/m{i}.v", "commit": "c0", "name": f"m_{repo}_{i}",
            "comment": comment or f"Toggles q on every clock edge, variant number {i} of repository {repo}.",
            "ports": [{"name": "clk", "direction": "input", "type": None}], "parameters": [], "source": src,
            "parse_ok": True, "error_line_share": 0.0, "keep": True, "start_line": 1, "end_line": 6, "license": "MIT"}


@pytest.mark.integration
def test_build_dataset_end_to_end(ray_session: None, tmp_path: Path, assets: Path) -> None:
    ref = (assets / "benchmarks/rtllm/toggle_counter/verified_toggle_counter.v").read_text()
    mods = [_module(f"repo{r}", i) for r in range(6) for i in range(4)] + [_module("big", i) for i in range(30)]
    mods.append(_module("repo0", 99, source=ref, comment="A planted copy of a benchmark reference solution."))
    mods.append({**_module("repo1", 50), "keep": False})
    mods.append({**_module("repo1", 51), "parse_ok": False})
    for repo in sorted({m["repo"] for m in mods}):  # the corpus job's hive layout: modules/repo=<name>/
        (tmp_path / f"c/modules/repo={repo}").mkdir(parents=True)
        rows = [m for m in mods if m["repo"] == repo]
        pq.write_table(from_rows(rows, MODULES_SCHEMA, stage="test"), tmp_path / f"c/modules/repo={repo}/part-0.parquet")
    docs = [{"id": f"d{i}", "source": src, "tool": tool, "url": f"http://127.0.0.1/{src}/{i}", "title": tool,
             "section_path": [tool, f"Section {i}"], "text": text + f" (page {i})", "license": "ISC"}
            for i in range(3)
            for src, tool, text in [("yosys", "yosys", "The abc pass maps the generic logic onto the gates of a Liberty library during synthesis; run stat afterwards to count cells."),
                                    ("opensta", "opensta", "report_checks prints the path with the worst setup slack, with each cell and net delay along the path and the required time."),
                                    ("openroad", "openroad", "global_placement spreads the standard cells across the core with a target density; detailed_placement then legalises them onto rows.")]]
    (tmp_path / "d/docs").mkdir(parents=True)
    pq.write_table(from_rows(docs, DOCS_SCHEMA, stage="test"), tmp_path / "d/docs/part.parquet")
    out = tmp_path / "out"
    bench = [str(assets / "benchmarks/rtllm"), str(assets / "benchmarks/verilogeval")]
    assert main(["--corpus", str(tmp_path / "c"), "--docs", str(tmp_path / "d"), "--output", str(out),
                 f"benchmark_paths={json.dumps(bench)}"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["dropped"]["contaminated"] >= 1 and rep["contaminated_per_benchmark"] == {"rtllm": rep["dropped"]["contaminated"]}
    assert rep["dropped"]["not_kept_by_dedup"] == 1 and rep["dropped"]["parse_error"] == 1
    assert rep["dropped"]["repo_cap"] > 0
    for part in out.glob("examples/phase=*/split=*/*.parquet"):
        t = pq.read_table(part)
        assert t.schema == EXAMPLES_SCHEMA
        phase, split = part.parent.parent.name.split("=")[1], part.parent.name.split("=")[1]
        assert set(t.column("phase").to_pylist()) == {phase} and set(t.column("split").to_pylist()) == {split}
    # the glob the issue promises, and the reader of the fine-tuning job
    import datasets

    train = datasets.load_dataset("parquet", data_files={"train": str(out / "examples/phase=*/split=train/*.parquet")},
                                  split="train")
    assert train.num_rows > 0 and set(train["split"]) == {"train"}
    from training.data import read_local

    assert read_local(str(out), "rtl_design").column("split").to_pylist().count("train") == sum(
        1 for p, s in zip(train["phase"], train["split"]) if p == "rtl_design")

    files = [str(p) for p in sorted(out.glob("examples/phase=*/split=*/*.parquet"))]
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    rows = ds.to_list()
    assert len(rows) == rep["n_examples"] > 0
    phases = {r["phase"] for r in rows}
    assert {"rtl_design", "triage", "synthesis", "timing_analysis", "placement"} <= phases
    split_of: dict[str, set[str]] = {}
    # router (triage) rows: labelled questions in train/validation only, none from the held-out eval file
    triage = [r for r in rows if r["phase"] == "triage"]
    assert triage and {r["split"] for r in triage} == {"train", "validation"} and {r["task"] for r in triage} == {"route"}
    assert rep["router"]["n_in_dataset"] == len(triage) and rep["router"]["eval"]["macro_f1"] >= 0.85
    held_out = {json.loads(line)["text"] for line in open(rep["router"]["eval_path"])}
    assert not held_out & {m["content"] for r in rows for m in r["messages"]}
    for r in rows:
        assert "toggle_in" not in json.dumps(r["messages"])
        if r["phase"] == "triage":
            continue
        g = r["provenance"]["repo"] or r["provenance"]["url"]  # a repository, or a documentation page
        split_of.setdefault(g, set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())
    # issue 13: split within each phase by group, so a phase with three groups or more has every split
    groups_of: dict[str, set[str]] = {}
    for r in rows:
        if r["phase"] != "triage":
            groups_of.setdefault(r["phase"], set()).add(r["provenance"]["repo"] or r["provenance"]["url"])
    assert len(groups_of["timing_analysis"]) >= 3  # three OpenSTA pages: one source, no longer one group
    for phase, groups in groups_of.items():
        cells = {s: rep["per_phase_split"].get(f"{phase}/{s}", {}).get("count", 0) for s in ("train", "validation", "test")}
        if len(groups) >= 3:
            assert min(cells.values()) >= 1, (phase, cells)
            assert not [w for w in rep["split_warnings"] if w.startswith(f"phase {phase}:")]
        else:
            assert cells["train"] >= 1 and [w for w in rep["split_warnings"] if w.startswith(f"phase {phase}:")]
    # what each filter removed, per phase and split, adds up to the totals
    removed: dict[str, int] = {}
    for cell in rep["per_phase_split"].values():
        for reason, n in cell["removed"].items():
            removed[reason] = removed.get(reason, 0) + n
    assert removed == {k: v for k, v in rep["dropped"].items() if v}
    repo0 = rep["split_of_group"]["repo0"]
    assert rep["per_phase_split"][f"rtl_design/{repo0}"]["removed"]["contaminated"] >= 1
    rtl = [r for r in rows if r["phase"] == "rtl_design"]
    assert sum(r["provenance"]["repo"] == "big" for r in rtl) <= 0.25 * (len(rtl) + rep["dropped"]["repo_cap"]) + 1
    # report: per phase and split with token distribution, and a rerun is identical (deterministic)
    v = rep["per_phase_split"]["rtl_design/" + rtl[0]["split"]]
    assert v["count"] > 0 and v["tokens"]["min"] <= v["tokens"]["p50"] <= v["tokens"]["max"]
    ids = sorted(r["id"] for r in rows)
    assert main(["--corpus", str(tmp_path / "c"), "--docs", str(tmp_path / "d"), "--output", str(out),
                 f"benchmark_paths={json.dumps(bench)}", "--force"]) == 0
    again = datasets.load_dataset("parquet", data_files=[str(p) for p in sorted(out.glob("examples/*/*/*.parquet"))],
                                  split="train", download_mode="force_redownload")
    assert sorted(again["id"]) == ids


def test_missing_input_dir_is_an_error_before_ray(tmp_path: Path, capsys) -> None:
    """`--corpus <missing>` used to give a docs-only dataset and exit 0."""
    (tmp_path / "d/docs").mkdir(parents=True)
    assert main(["--corpus", str(tmp_path / "nope"), "--docs", str(tmp_path / "d"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--corpus" in err and "does not exist" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("override,field", [('benchmark_paths=["{nope}"]', "benchmark_paths"),
                                            ('router.questions_paths=["{nope}"]', "router.questions_paths")])
def test_missing_benchmark_or_question_paths_exit_2_before_ray(override: str, field: str, tmp_path: Path, capsys,
                                                               ray_forbidden: None) -> None:
    nope = tmp_path / "nope"
    (tmp_path / "c/modules").mkdir(parents=True)
    (tmp_path / "d/docs").mkdir(parents=True)
    argv = [override.format(nope=nope), "--corpus", str(tmp_path / "c"), "--docs", str(tmp_path / "d")]
    assert main([*argv, "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"error: {field}:" in err and str(nope) in err and "Traceback" not in err


# --------------------------------------------------------------------------- resources (issue 13)

def test_resource_plan_fits_small_clusters() -> None:
    """Actor pools plus one read task fit the cluster: three 0.5-CPU pools on 2 CPUs left the reads
    no CPU and the job waited forever; on 1 CPU a 1-CPU read task can never start."""
    from pipelines.dataset import DatasetConfig, plan_resources

    cfg = DatasetConfig(benchmark_paths=["bench"])
    for total in (1.0, 2.0, 3.0, 64.0):
        res, read = plan_resources(cfg, total)
        actors = sum(r.num_cpus * (r.concurrency or 1) for r in res.values())
        assert set(res) == {"modules", "docs", "decontam"}
        assert 0 < read["num_cpus"] <= 1.0 and actors + read["num_cpus"] <= total + 1e-9, (total, res, read)
    assert plan_resources(cfg, 0.0)[1] == {}  # no Ray attached: Ray's defaults


TWO_CPU_RUN = """
import os, sys
import ray
ray.init(address="local", num_cpus=2, num_gpus=0, object_store_memory=256 * 1024**2, include_dashboard=False,
         log_to_driver=False, runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": os.getcwd()}})
from jobs.build_dataset import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.integration
def test_dataset_job_with_benchmarks_finishes_on_a_2_cpu_ray(tmp_path: Path, assets: Path, repo_root: Path) -> None:
    """The default stage resources with benchmark_paths on a 2-CPU Ray (the tests' shared Ray has 4
    CPUs and missed the hang): a fresh Ray in a subprocess, which must finish well within the timeout."""
    import os
    import subprocess
    import sys

    mods = [_module(f"repo{r}", i) for r in range(3) for i in range(3)]
    for repo in sorted({m["repo"] for m in mods}):
        (tmp_path / f"c/modules/repo={repo}").mkdir(parents=True)
        pq.write_table(from_rows([m for m in mods if m["repo"] == repo], MODULES_SCHEMA, stage="test"),
                       tmp_path / f"c/modules/repo={repo}/part-0.parquet")
    docs = [{"id": f"d{i}", "source": "opensta", "tool": "opensta", "url": f"http://127.0.0.1/sta/{i}", "title": f"Page {i}",
             "section_path": [f"Page {i}"], "license": "ISC",
             "text": f"report_checks prints the path with the worst setup slack and the required time (page {i})."}
            for i in range(3)]
    (tmp_path / "d/docs").mkdir(parents=True)
    pq.write_table(from_rows(docs, DOCS_SCHEMA, stage="test"), tmp_path / "d/docs/part.parquet")
    bench = [str(assets / "benchmarks/rtllm"), str(assets / "benchmarks/verilogeval")]
    out = tmp_path / "out"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(repo_root)}
    try:
        proc = subprocess.run([sys.executable, "-c", TWO_CPU_RUN, "--corpus", str(tmp_path / "c"), "--docs",
                               str(tmp_path / "d"), "--output", str(out), f"benchmark_paths={json.dumps(bench)}"],
                              cwd=repo_root, env=env, capture_output=True, text=True, timeout=420)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the dataset job hung on a 2-CPU Ray: {(exc.stdout or b'')[-2000:]!r}") from None
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "scaled to fit" in proc.stdout  # the plan was checked against the 2 CPUs
    rep = json.loads((out / "report.json").read_text())
    assert rep["per_phase_split"]["rtl_design/train"]["count"] > 0


def test_a_corrupt_classifier_artifact_exits_2_before_ray(tmp_path: Path, capsys, ray_forbidden: None) -> None:
    """A truncated classifier artifact used to fail inside every module/doc actor, after Ray started."""
    (tmp_path / "c/modules").mkdir(parents=True)
    (tmp_path / "d/docs").mkdir(parents=True)
    (tmp_path / "clf.json").write_text('{"kind": "phase-classifier", "vocab')
    argv = ["--corpus", str(tmp_path / "c"), "--docs", str(tmp_path / "d"), "--output", str(tmp_path / "o"),
            f"classifier_path={tmp_path / 'clf.json'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: classifier_path:" in err and "clf.json" in err and "Traceback" not in err


@pytest.mark.integration
def test_modules_from_another_version_and_bad_files_are_skipped_not_fatal(ray_session: None, tmp_path: Path) -> None:
    """A corpus file with a column this version does not know, one whose start_line column holds
    strings and one that is not Parquet at all: the job failed with a traceback (Ray's schema
    unification, a SchemaError in the module actor, or pyarrow on the driver). Now those files are
    counted as bad_file and named in the report; the other modules give their examples."""
    import pyarrow as pa

    for r in range(4):
        d = tmp_path / f"c/modules/repo=repo{r}"
        d.mkdir(parents=True)
        table = from_rows([_module(f"repo{r}", i) for i in range(3)], MODULES_SCHEMA, stage="test")
        if r == 2:
            table = table.append_column("new_in_v9", pa.array(["x", "y", "z"]))
        if r == 3:
            table = table.set_column(table.schema.get_field_index("start_line"), "start_line", pa.array(["1", "one", "1"]))
        pq.write_table(table, d / "part-0.parquet")
    (tmp_path / "c/modules/repo=repo3/part-1.parquet").write_bytes(b"PAR1 truncated")
    out = tmp_path / "out"
    assert main(["--corpus", str(tmp_path / "c"), "--output", str(out), "docs_dir=null"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["dropped"]["bad_file"] == 2
    assert sorted(p.rsplit("/", 2)[1:] for p in rep["bad_files"]) == [["repo=repo3", "part-0.parquet"],
                                                                       ["repo=repo3", "part-1.parquet"]]
    assert "start_line" in rep["bad_files"][str(tmp_path / "c/modules/repo=repo3/part-0.parquet")]
    assert rep["per_phase"]["rtl_design"] == 9 * 3  # the other nine modules: three tasks each
