"""Hostile or broken repositories met by the clone+read stage: leaked credentials, special files,
huge licence files. Each test failed before its fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pytest

import corpus.clone as clone_mod
from corpus.clone import CloneAndRead, redact_url, snapshot_id, status_path
from corpus.licenses import detect_repo
from corpus.manifest import Repository

SECRET = "ghp_s3cr3tT0KEN"
MIT = "Permission is hereby granted, free of charge, to any person obtaining a copy\n"


def _stage(tmp_path: Path) -> CloneAndRead:
    return CloneAndRead(status_dir=str(tmp_path / "status"), cache_dir=str(tmp_path / "cache"), retries=0,
                        timeout_s=20, local_roots=[str(tmp_path)])


def _run(stage: CloneAndRead, repos: list[Repository]) -> pa.Table:
    return stage(pa.table({"manifest_index": list(range(len(repos))),
                           "repository": [r.model_dump_json() for r in repos]}))


@pytest.mark.parametrize(("url", "shown"), [
    (f"https://user:{SECRET}@example.invalid/a/b.git", "https://example.invalid/a/b.git"),
    (f"https://{SECRET}@example.invalid/a/b.git", "https://example.invalid/a/b.git"),
    (f"http://x-access-token:{SECRET}@example.invalid:8080/b", "http://example.invalid:8080/b"),
    (f"ssh://git:{SECRET}@example.invalid/b.git", "ssh://git@example.invalid/b.git"),
    ("git@example.invalid:a/b.git", "git@example.invalid:a/b.git"),
    ("https://example.invalid/a@b.git", "https://example.invalid/a@b.git"),
    ("/data/repos/x", "/data/repos/x"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_credentials_in_urls_never_reach_statuses_or_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "a.v").write_text("module a; endmodule\n")
    real_clone = clone_mod.clone

    def fake_clone(repo: Repository, s: clone_mod.CloneSettings) -> tuple[str, str, bool]:
        if repo.name == "ok":  # stands in for a successful https clone with a token
            return str(checkout), "0" * 40, False
        return real_clone(repo, s)

    monkeypatch.setattr(clone_mod, "clone", fake_clone)
    repos = [Repository(name="ok", url=f"https://u:{SECRET}@example.invalid/ok.git"),
             Repository(name="unsafe", url=f"https://u:{SECRET}@-evil.invalid/x.git"),
             Repository(name="down", url=f"https://{SECRET}@127.0.0.1:9/x.git")]
    out = _run(_stage(tmp_path), repos)
    assert out.num_rows == 1 and out.column("url").to_pylist() == ["https://example.invalid/ok.git"]
    statuses = {r.name: Path(status_path(str(tmp_path / "status"), r.name)).read_text() for r in repos}
    assert all(SECRET not in text for text in statuses.values()), statuses
    assert json.loads(statuses["unsafe"])["reason"] == "unsafe url"
    assert json.loads(statuses["down"])["status"] == "failed"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_snapshot_of_a_directory_holding_a_fifo_does_not_hang(tmp_path: Path) -> None:
    d = tmp_path / "plain"
    d.mkdir()
    (d / "a.v").write_text("module a; endmodule\n")
    os.mkfifo(d / "pipe.v")
    # In a child process: the old code blocked forever in open() on the FIFO.
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r}); " \
           f"from corpus.clone import snapshot_id; print(snapshot_id({str(d)!r}))"
    try:
        got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("snapshot_id blocked on a FIFO")
    assert got.returncode == 0 and got.stdout.strip().startswith("dir:"), got.stderr
    stage = _stage(tmp_path)
    out = _run(stage, [Repository(name="plain", url=str(d))])
    assert out.column("path").to_pylist() == ["a.v"]
    status = json.loads(Path(status_path(str(tmp_path / "status"), "plain")).read_text())
    assert status["status"] == "ok" and status["skipped"] == {"unreadable": 1}


def test_snapshot_of_a_directory_with_non_utf8_names(tmp_path: Path) -> None:
    d = tmp_path / "plain"
    d.mkdir()
    with open(os.path.join(os.fsencode(str(d)), b"caf\xe9.v"), "w") as fh:
        fh.write("module c; endmodule\n")
    first = snapshot_id(str(d))
    assert first.startswith("dir:") and snapshot_id(str(d)) == first


def test_huge_licence_file_is_read_only_at_its_head(tmp_path: Path) -> None:
    with open(tmp_path / "LICENSE", "wb") as fh:
        fh.write(MIT.encode())
        fh.truncate(64 * 1024 * 1024)  # sparse: 64 MiB on paper, no disk
    tracemalloc.start()
    try:
        assert detect_repo(tmp_path) == "MIT"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, peak


def test_a_globally_installed_lfs_filter_never_runs_on_a_cloned_repository(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 999999999\n"
    repo = tmp_path / "origin"
    repo.mkdir()
    (repo / ".gitattributes").write_text("*.v filter=lfs diff=lfs merge=lfs -text\n")
    (repo / "big.v").write_text(pointer)
    (repo / "ok.sv").write_text("module ok; endmodule\n")
    git = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "c"]):
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True)
    # What `git lfs install` puts in ~/.gitconfig; this smudge stands in for the LFS download.
    marker = tmp_path / "lfs-download-ran"
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(f'[filter "lfs"]\n\tsmudge = touch {marker} && cat\n\trequired = true\n')
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    out = _run(_stage(tmp_path), [Repository(name="lfs", url=str(repo))])
    assert not marker.exists()
    status = json.loads(Path(status_path(str(tmp_path / "status"), "lfs")).read_text())
    assert out.column("path").to_pylist() == ["ok.sv"] and status["skipped"] == {"lfs_pointer": 1}
