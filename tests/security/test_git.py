"""Issue 8 (git side): manifest URLs and refs are untrusted input.

Each test is an attack that worked before the fix: an option-looking URL or ref that git ran as
a command, remote-helper and unknown schemes, and local paths outside the allowed roots.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest

from corpus.clone import (
    NETWORK_PROTOCOLS,
    CloneAndRead,
    CloneError,
    CloneSettings,
    check_ref,
    clone,
    git,
    resolve_url,
    status_path,
)
from corpus.manifest import Repository, load_manifest, local_roots_for

ROOT = Path(__file__).resolve().parents[2]
GIT = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "-c", "init.defaultBranch=main"]


def make_repo(path: Path, files: dict[str, str]) -> str:
    path.mkdir(parents=True)
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "c"]):
        subprocess.run([*GIT, *args], cwd=path, check=True, capture_output=True)
    return subprocess.run([*GIT, "rev-parse", "HEAD"], cwd=path, check=True, capture_output=True,
                          text=True).stdout.strip()


def settings(tmp_path: Path, roots: list[Path]) -> CloneSettings:
    return CloneSettings(cache_dir=str(tmp_path / "cache"), retries=0, backoff_s=0.01, timeout_s=30,
                         local_roots=tuple(str(r) for r in roots))


def test_upload_pack_url_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    repo = Repository(name="evil", url=f"--upload-pack=touch {marker} #://")
    with pytest.raises(CloneError) as info:
        clone(repo, settings(tmp_path, [tmp_path]))
    assert info.value.reason == "unsafe url" and "'evil'" in str(info.value)
    assert not marker.exists()


def test_option_looking_ref_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    make_repo(tmp_path / "origin", {"a.v": "module a; endmodule\n"})
    marker = tmp_path / "pwned"
    repo = Repository(name="evil-ref", url=str(tmp_path / "origin"), ref=f"--upload-pack=touch {marker};git-upload-pack")
    with pytest.raises(CloneError) as info:
        clone(repo, settings(tmp_path, [tmp_path]))
    assert info.value.reason == "unsafe ref" and "'evil-ref'" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("url", [
    "ext::sh -c touch% /tmp/chipforge-pwned",
    "fd::17",
    "-oProxyCommand=touch /tmp/chipforge-pwned",
    "ssh://-oProxyCommand=touch%20x/repo",
    "git@-oProxyCommand=x:repo",
    "gopher://example.invalid/repo",
    "foo+bar://example.invalid/repo",
    "https://example.invalid/a\nb",
    "file://otherhost/srv/repo",
    "https:///no-host",
])
def test_unsafe_urls_are_refused_before_git(tmp_path: Path, url: str) -> None:
    with pytest.raises(CloneError) as info:
        resolve_url(url, [str(tmp_path)])
    assert info.value.reason == "unsafe url", info.value


@pytest.mark.parametrize("ref", ["-b", "--upload-pack=x", "a..b", "a b", "x~1", "x^", "a:b", "x.lock", ".hidden",
                                 "a//b", "@", "a@{1}", "", "end/", "a\\b", "tab\tx"])
def test_bad_refs_are_refused(ref: str) -> None:
    with pytest.raises(CloneError) as info:
        check_ref(ref)
    assert info.value.reason == "unsafe ref"


@pytest.mark.parametrize("ref", [None, "main", "v1.0.2", "release/2024-01", "heads/dev", "0" * 40, "nvdlav1"])
def test_good_refs_pass(ref: str | None) -> None:
    check_ref(ref)


def test_good_urls_pass(tmp_path: Path) -> None:
    for url in ("https://github.com/lowRISC/ibex.git", "http://127.0.0.1:8080/r.git", "ssh://git@host/o/r.git",
                "git://host/r.git", "git@github.com:o/r.git"):
        assert resolve_url(url, [str(tmp_path)]) == (url, False)
    (tmp_path / "plain").mkdir()
    assert resolve_url(str(tmp_path / "plain"), [str(tmp_path)]) == (str((tmp_path / "plain").resolve()), True)


def test_local_paths_are_confined_to_the_roots(tmp_path: Path) -> None:
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    make_repo(outside / "repo", {"secret.v": "module secret; endmodule\n"})
    (inside / "link").symlink_to(outside / "repo")
    s = settings(tmp_path, [inside])
    for url in (str(outside / "repo"), "file://" + str(outside / "repo"), str(inside / "link"),
                str(inside / ".." / "outside" / "repo"), "/etc"):
        with pytest.raises(CloneError) as info:
            clone(Repository(name="outside", url=url), s)
        assert info.value.reason == "unsafe url", url
        assert "'outside'" in str(info.value) and "allowed local roots" in str(info.value)
    make_repo(inside / "repo", {"ok.v": "module ok; endmodule\n"})
    d, _, _ = clone(Repository(name="inside", url=str(inside / "repo")), s)
    assert Path(d, "ok.v").exists()


def test_default_roots_are_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "work" / "plain").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    s = CloneSettings(cache_dir=str(tmp_path / "cache"), retries=0)
    assert clone(Repository(name="p", url="plain"), s)[0] == str((tmp_path / "work" / "plain").resolve())
    with pytest.raises(CloneError) as info:
        clone(Repository(name="e", url=str(tmp_path / "elsewhere")), s)
    assert info.value.reason == "unsafe url"


def test_sample_manifest_keeps_working_with_its_default_roots(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(ROOT)
    roots = local_roots_for("sample/manifest.yaml")
    assert roots == [".", "sample"]
    s = CloneSettings(cache_dir=str(tmp_path / "cache"), retries=0, local_roots=tuple(roots))
    for repo in load_manifest("sample/manifest.yaml").repositories:
        root, commit, _ = clone(repo, s)
        assert commit.startswith("dir:") and Path(root).is_dir()


def test_manifest_dir_is_a_default_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    (tmp_path / "m" / "repos" / "a").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    manifest = tmp_path / "m" / "manifest.yaml"
    manifest.write_text("repositories:\n  - {name: a, url: repos/a}\n  - {name: up, url: ../secret}\n"
                        "  - {name: evil, url: '--upload-pack=touch x #://'}\n  - {name: helper, url: 'ext::sh'}\n")
    repos = {r.name: r for r in load_manifest(manifest).repositories}
    assert repos["evil"].url == "--upload-pack=touch x #://" and repos["helper"].url == "ext::sh"  # not made paths
    roots = local_roots_for(manifest)
    assert roots == [".", str((tmp_path / "m").resolve())]
    s = CloneSettings(cache_dir=str(tmp_path / "cache"), retries=0, local_roots=tuple(roots))
    assert clone(repos["a"], s)[1].startswith("dir:")
    for name in ("up", "evil", "helper"):
        with pytest.raises(CloneError) as info:
            clone(repos[name], s)
        assert info.value.reason == "unsafe url" and repr(name) in str(info.value)
    assert local_roots_for(manifest, [str(tmp_path / "secret")]) == [str(tmp_path / "secret")]


def test_git_commands_carry_a_protocol_allow_list(tmp_path: Path) -> None:
    make_repo(tmp_path / "origin", {"a.v": "module a; endmodule\n"})
    url = "file://" + str(tmp_path / "origin")
    assert git(["ls-remote", "--", url, "HEAD"], timeout_s=30, protocols=("file",))
    with pytest.raises(CloneError) as info:
        git(["ls-remote", "--", url, "HEAD"], timeout_s=30, protocols=NETWORK_PROTOCOLS)
    assert "not allowed" in info.value.detail


def test_submodules_never_use_file_even_for_a_local_repository(tmp_path: Path) -> None:
    make_repo(tmp_path / "secret", {"secret.v": "module secret; endmodule\n"})
    top = tmp_path / "top"
    make_repo(top, {"a.v": "module a; endmodule\n"})
    subprocess.run([*GIT, "-c", "protocol.file.allow=always", "submodule", "add", "-q",
                    "file://" + str(tmp_path / "secret"), "sub"], cwd=top, check=True, capture_output=True)
    subprocess.run([*GIT, "commit", "-qam", "sub"], cwd=top, check=True, capture_output=True)
    with pytest.raises(CloneError) as info:
        clone(Repository(name="top", url=str(top), submodules=True), settings(tmp_path, [top]))
    assert "not allowed" in info.value.detail
    assert not list((tmp_path / "cache").rglob("secret.v"))


def test_rejected_repository_is_a_reported_failure_not_a_job_failure(tmp_path: Path) -> None:
    make_repo(tmp_path / "origin", {"a.v": "module a; endmodule\n"})
    marker = tmp_path / "pwned"
    stage = CloneAndRead(status_dir=str(tmp_path / "status"), cache_dir=str(tmp_path / "cache"), retries=0,
                         local_roots=[str(tmp_path)])
    batch = pa.table({
        "manifest_index": [0, 1, 2],
        "repository": [Repository(name="good", url=str(tmp_path / "origin")).model_dump_json(),
                       Repository(name="evil", url=f"--upload-pack=touch {marker} #://").model_dump_json(),
                       Repository(name="etc", url="/etc").model_dump_json()],
    })
    out = stage(batch)
    assert out.column("path").to_pylist() == ["a.v"] and not marker.exists()
    for name in ("evil", "etc"):
        status = json.loads(Path(status_path(str(tmp_path / "status"), name)).read_text())
        assert (status["status"], status["reason"]) == ("failed", "unsafe url")
        assert repr(name) in status["error"]
    assert os.listdir(tmp_path / "status")
