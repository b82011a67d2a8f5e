"""Corpus job end to end on git repositories made by the test (plus the bundled sample)."""

import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.dataset as pads
import pytest

from corpus.schema import MODULES_SCHEMA, conform
from jobs.build_corpus import main

pytestmark = pytest.mark.integration

MARKER = "OUTSIDE_MARKER_91c2e"
GIT = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "-c", "init.defaultBranch=main"]
MIT = "MIT License\n\nPermission is hereby granted, free of charge, to any person obtaining a copy\n"
SHARED = """// Adds two words; shared by both repositories.
module shared_adder #(parameter W = 8) (input [W-1:0] a, input [W-1:0] b, output [W:0] y);
  assign y = a + b;
endmodule
"""


def make_repo(path: Path, files: dict[str, str | bytes], links: dict[str, Path] | None = None) -> None:
    path.mkdir(parents=True)
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data if isinstance(data, bytes) else data.encode())
    for rel, target in (links or {}).items():
        (path / rel).symlink_to(target)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run([*GIT, *args], cwd=path, check=True, capture_output=True)


def read_modules(out: Path) -> pa.Table:
    table = pads.dataset(out / "modules", format="parquet", partitioning="hive").to_table()
    return conform(table, MODULES_SCHEMA, stage="test")


def test_corpus_job_on_test_repositories(tmp_path: Path, ray_session: object) -> None:
    secret = tmp_path / "outside" / "secret.v"
    secret.parent.mkdir()
    secret.write_text(f"module leaked; // {MARKER}\nendmodule\n")
    make_repo(
        tmp_path / "alpha",
        {
            "LICENSE": MIT,
            "rtl/shared.v": SHARED,
            "rtl/counter.sv": "module counter(input logic clk, output logic [3:0] q);\n"
                              "  always_ff @(posedge clk) q <= q + 1;\nendmodule\n",
            "rtl/latin.v": "// r\xe9sum\xe9 of the block\nmodule latin_doc(input a, output b);\n"
                           "  assign b = a;\nendmodule\n".encode("latin-1"),
            "rtl/huge.v": "// " + "padding " * 1000 + "\nmodule huge; endmodule\n",
            "rtl/rom.v": "\n".join(f"{(i * 2654435761) & 0xFFFFFFFF:08x}" for i in range(200)) + "\n",
        },
        links={"rtl/leak.v": secret},
    )
    make_repo(tmp_path / "beta", {"src/shared.v": SHARED,
                                  "src/mux.v": "module mux2(input s, input a, input b, output y);\n"
                                               "  assign y = s ? b : a;\nendmodule\n"})
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(
        "repositories:\n"
        "  - {name: alpha, url: alpha}\n"
        f"  - {{name: beta, url: 'file://{tmp_path / 'beta'}'}}\n"
        f"  - {{name: badurl, url: 'file://{tmp_path / 'does-not-exist'}'}}\n"
        "  - {name: missingref, url: alpha, ref: no-such-branch}\n"
    )
    out = tmp_path / "out"
    argv = ["--manifest", str(manifest), "--output", str(out), f"cache_dir={tmp_path / 'cache'}",
            "max_file_bytes=4000", "clone.retries=0", "clone.concurrency=2", "parse.concurrency=1"]
    assert main(argv) == 0

    report = json.loads((out / "report.json").read_text())
    repos = report["repositories"]
    assert (repos["total"], repos["ok"]) == (4, 2)
    assert {f["repo"]: f["reason"] for f in repos["failed"]} == {"badurl": "bad url", "missingref": "missing ref"}
    per = {r["repo"]: r for r in repos["per_repo"]}
    assert per["alpha"]["license"] == "MIT" and per["beta"]["license"] == "NOASSERTION"
    skipped = per["alpha"]["skipped"]  # rom.v: "binary" or a content reason of corpus.files (e.g. "hex_image")
    assert skipped["too_large"] == 1 and skipped["symlink_outside"] == 1 and sum(skipped.values()) == 3
    assert per["alpha"]["encodings"] == {"utf-8": 2, "latin-1": 1}
    assert report["files"]["read"] == 5 and report["files"]["encodings"]["latin-1"] == 1
    assert report["modules"] == 5 and report["lines"] > 10
    assert report["parse_ok_share"] == 1.0 and report["parse"]["bytes"] > 0
    assert report["duplicates_removed"]["exact"] == 1 and report["modules_kept"] == 4
    assert not (out / "_status").exists()

    table = read_modules(out)
    assert table.schema == MODULES_SCHEMA and table.num_rows == 5
    rows = table.to_pylist()
    assert sorted(r["name"] for r in rows) == ["counter", "latin_doc", "mux2", "shared_adder", "shared_adder"]
    assert {r["repo"] for r in rows} == {"alpha", "beta"}
    shared = [r for r in rows if r["name"] == "shared_adder"]
    assert sorted(r["keep"] for r in shared) == [False, True]
    assert next(r for r in shared if r["keep"])["repo"] == "alpha"  # permissive licence first
    assert len({r["dup_cluster"] for r in shared}) == 1
    assert next(r for r in rows if r["name"] == "latin_doc")["encoding"] == "latin-1"
    for r in rows:
        assert MARKER not in json.dumps(r, default=str)
    for f in (out / "modules").rglob("*"):
        if f.is_file():
            assert MARKER.encode() not in f.read_bytes()
    # sharded Parquet with a repo column, not one directory per repository (100k would not scale)
    files = [p for p in (out / "modules").iterdir() if not p.name.startswith((".", "_"))]
    assert files and all(p.is_file() and p.suffix == ".parquet" for p in files)
    assert "repo" in pq.read_schema(files[0]).names

    # an unchanged rerun is skipped; a forced one hits the clone cache and replaces the output
    assert main(argv) == 0
    assert json.loads((out / "report.json").read_text()) == report
    assert main([*argv, "--force"]) == 0
    again = json.loads((out / "report.json").read_text())
    assert {r["repo"]: r["cached"] for r in again["repositories"]["per_repo"] if r["status"] == "ok"} == \
        {"alpha": True, "beta": True}
    assert read_modules(out).num_rows == 5
    assert not list(tmp_path.glob("out/modules.tmp-*"))


def test_a_run_where_every_repository_fails_is_a_failure_and_is_retried(tmp_path: Path, ray_session: object,
                                                                        capsys) -> None:
    """No clone succeeds (the network is down): exit 1 and no completion marker, so the next run retries."""
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("repositories:\n"
                        f"  - {{name: gone, url: 'file://{tmp_path / 'does-not-exist'}'}}\n"
                        f"  - {{name: gone2, url: 'file://{tmp_path / 'nor-this'}'}}\n")
    argv = ["--manifest", str(manifest), "--output", str(tmp_path / "out"), f"cache_dir={tmp_path / 'cache'}",
            "clone.retries=0"]
    assert main(argv) == 1
    assert "no output from 2 inputs" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "report.json").read_text())["status"] == "failed"
    assert main(argv) == 1
    assert "up to date" not in capsys.readouterr().out


def test_sample_config_end_to_end(tmp_path: Path, ray_session: object) -> None:
    out = tmp_path / "sample"
    assert main(["--output", str(out), f"cache_dir={tmp_path / 'cache'}"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["repositories"]["ok"] == 4 and not report["repositories"]["failed"]
    table = read_modules(out)
    assert set(table.column("repo").to_pylist()) == {"tinycores", "svperiph", "dspkit", "student_labs"}
    assert table.num_rows == report["modules"] > 4
    licences = dict(zip(table.column("repo").to_pylist(), table.column("license").to_pylist()))
    assert licences["tinycores"] == "MIT" and licences["svperiph"] == "Apache-2.0"
    assert all(c.startswith("dir:") for c in table.column("commit").to_pylist())
    # CPU per stage, each measured in the process that ran it, and every repository in repositories.parquet
    cpu = report["cpu_seconds"]
    assert all(cpu[k] > 0 for k in ("clone", "parse", "signatures", "dedup_keys", "dedup_buckets", "driver"))
    assert cpu["total"] >= sum(v for k, v in cpu.items() if k != "total") - 0.01
    repos = pq.read_table(out / "repositories.parquet").sort_by("manifest_index")  # rows in any order
    assert repos.column("modules").to_pylist() == [r["modules"] for r in report["repositories"]["per_repo"]]


def test_fused_clone_parse_gives_the_same_modules(tmp_path: Path, ray_session: object) -> None:
    """clone.fused=true (clone, parse and sign in one actor) writes the same rows as the two-stage job."""
    for name, extra in (("two", []), ("fused", ["clone.fused=true", "clone.batch_size=2"])):
        assert main(["--output", str(tmp_path / name), f"cache_dir={tmp_path / 'cache'}", *extra]) == 0
    two, fused = (read_modules(tmp_path / n).sort_by("id") for n in ("two", "fused"))
    assert fused.num_rows == two.num_rows > 4
    for col in ("id", "norm_sha256", "dup_cluster", "keep", "source"):
        assert fused.column(col).to_pylist() == two.column(col).to_pylist(), col


def test_bad_values_and_paths_fail_before_ray_naming_their_source(tmp_path: Path, capsys) -> None:
    """grammar=vhdl, an output that is a file, a missing manifest: exit 2 with one clear message each."""
    assert main(["--output", str(tmp_path / "o"), "grammar=vhdl"]) == 2
    err = capsys.readouterr().err
    assert "grammar" in err and "command-line override 'grammar=vhdl'" in err and "Traceback" not in err
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    assert main(["--output", str(a_file)]) == 2
    assert f"--output {a_file}: output" in capsys.readouterr().err
    assert main(["--manifest", str(tmp_path / "none.yaml"), "--output", str(tmp_path / "o")]) == 2
    assert "--manifest" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_benchmark_paths_mark_contaminated_modules(tmp_path: Path, ray_session: object, capsys) -> None:
    """decontam: a renamed, comment-free copy of a (test-written) VerilogEval reference is marked
    with its problem id; an unrelated module is not; benchmark files key the completion marker."""
    from tests.corpus.test_decontam import PLANTED_COPY, PLANTED_ID, PLANTED_REF, UNRELATED

    bench = tmp_path / "verilog-eval" / "dataset_spec-to-rtl"
    bench.mkdir(parents=True)
    (bench / f"{PLANTED_ID}_prompt.txt").write_text("Detect the bit sequence 1, 0, 1 and pulse found.\n")
    (bench / f"{PLANTED_ID}_ref.sv").write_text(PLANTED_REF)
    make_repo(tmp_path / "gamma", {"LICENSE": MIT, "rtl/watch.v": PLANTED_COPY, "rtl/blink.v": UNRELATED})
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("repositories:\n  - {name: gamma, url: gamma}\n")
    out = tmp_path / "out"
    argv = ["--manifest", str(manifest), "--output", str(out), f"cache_dir={tmp_path / 'cache'}",
            f"benchmark_paths=[{tmp_path / 'verilog-eval'}]", "clone.concurrency=1", "parse.concurrency=1"]
    assert main(argv) == 0
    marks = {r["name"]: r["contaminated_by"] for r in read_modules(out).to_pylist()}
    assert marks == {"pattern_watch": f"verilogeval-v2/dataset_spec-to-rtl/{PLANTED_ID}", "blink_ctrl": None}
    report = json.loads((out / "report.json").read_text())
    assert report["decontamination"]["contaminated"] == 1 and report["decontamination"]["modules_checked"] == 2
    assert report["decontamination"]["by_method"] == {"canonical": 1}
    # a changed benchmark file invalidates the finished run; a missing benchmark path fails before any work
    (bench / f"{PLANTED_ID}_ref.sv").write_text(UNRELATED)
    capsys.readouterr()
    assert main(argv) == 0
    assert "rerunning (inputs changed: benchmark:0)" in capsys.readouterr().out
    assert {r["name"]: r["contaminated_by"] for r in read_modules(out).to_pylist()} == \
        {"pattern_watch": None, "blink_ctrl": f"verilogeval-v2/dataset_spec-to-rtl/{PLANTED_ID}"}
    assert main([*argv[:-2], f"benchmark_paths=[{tmp_path / 'nope'}]"]) == 2
