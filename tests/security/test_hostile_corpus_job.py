"""The corpus job end to end on hostile repositories: one of them never fails the job, what it
held is counted in report.json, and credentials of a manifest URL appear in no output."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from jobs.build_corpus import main

pytestmark = pytest.mark.integration

GIT = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "-c", "init.defaultBranch=main"]
SECRET = "ghp_n0tInTheReport"
LFS = "version https://git-lfs.github.com/spec/v1\noid sha256:" + "b" * 64 + "\nsize 123456\n"


def test_hostile_repository_is_counted_not_fatal(tmp_path: Path, ray_session: object) -> None:
    repo = tmp_path / "hostile"
    repo.mkdir()
    raw = os.fsencode(str(repo))
    with open(os.path.join(raw, b"caf\xe9.v"), "w") as fh:  # a file name that is not UTF-8
        fh.write("module latin_name(input a); endmodule\n")
    (repo / "mac.v").write_bytes(b"// classic Mac line ends\rmodule mac(input a);\r  wire w;\rendmodule\r")
    (repo / "wide.v").write_bytes("\ufeffmodule wide(input a); endmodule\n".encode("utf-16-le"))
    (repo / "core.v").write_text(LFS)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "c"]):
        subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True)
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("repositories:\n  - {name: hostile, url: hostile}\n"
                        f"  - {{name: private, url: 'https://user:{SECRET}@127.0.0.1:9/p.git'}}\n")
    out = tmp_path / "out"
    argv = ["--manifest", str(manifest), "--output", str(out), f"cache_dir={tmp_path / 'cache'}",
            "clone.retries=0", "clone.concurrency=1", "parse.concurrency=1"]
    assert main(argv) == 0

    report = json.loads((out / "report.json").read_text())
    assert (report["repositories"]["total"], report["repositories"]["ok"]) == (2, 1)
    assert report["files"]["skipped"] == {"lfs_pointer": 1}
    assert report["files"]["encodings"] == {"utf-8": 2, "utf-16": 1}
    assert report["modules"] == 3
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
