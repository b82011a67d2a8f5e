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
    for r in rows:
        g = r["provenance"]["repo"] or r["provenance"]["url"].split("/")[3]
        split_of.setdefault(g, set()).add(r["split"])
        assert "toggle_in" not in json.dumps(r["messages"])
    assert all(len(s) == 1 for s in split_of.values())
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
