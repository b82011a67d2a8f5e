import json
import secrets
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pytest

from corpus.clone import CloneAndRead, CloneError, CloneSettings, clone, snapshot_id, status_path
from corpus.manifest import Repository
from corpus.schema import FILES_SCHEMA

GIT = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "-c", "init.defaultBranch=main"]


def sh(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(path: Path, files: dict[str, str]) -> str:
    path.mkdir(parents=True)
    sh(path, "init", "-q")
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    sh(path, "add", "-A")
    sh(path, "commit", "-qm", "c")
    return sh(path, "rev-parse", "HEAD")


@pytest.fixture
def origin(tmp_path: Path) -> tuple[Path, str, str]:
    repo = tmp_path / "origin"
    first = make_repo(repo, {"a.v": "module a; endmodule\n"})
    sh(repo, "tag", "v1")
    (repo / "b.v").write_text("module b; endmodule\n")
    sh(repo, "add", "-A")
    sh(repo, "commit", "-qm", "second")
    sh(repo, "checkout", "-qb", "dev")
    (repo / "c.v").write_text("module c; endmodule\n")
    sh(repo, "add", "-A")
    sh(repo, "commit", "-qm", "dev")
    sh(repo, "checkout", "-q", "main")
    return repo, first, sh(repo, "rev-parse", "HEAD")


def settings(tmp_path: Path, **kw: object) -> CloneSettings:
    kw.setdefault("local_roots", (str(tmp_path),))
    return CloneSettings(cache_dir=str(tmp_path / "cache"), retries=0, backoff_s=0.01, **kw)  # type: ignore[arg-type]


def test_clone_refs_and_cache(tmp_path: Path, origin: tuple[Path, str, str]) -> None:
    repo, first, head = origin
    s = settings(tmp_path)
    d, commit, hit = clone(Repository(name="o", url=str(repo)), s)
    assert (commit, hit) == (head, False) and sorted(p.name for p in Path(d).glob("*.v")) == ["a.v", "b.v"]
    assert Path(d, ".complete").exists() and Path(d).parent.parent == tmp_path / "cache"
    assert clone(Repository(name="o", url=str(repo)), s) == (d, head, True)
    assert clone(Repository(name="o", url="file://" + str(repo)), s)[1] == head
    d1, c1, _ = clone(Repository(name="o", url=str(repo), ref="v1"), s)
    assert c1 == first and not Path(d1, "b.v").exists()
    d2, c2, hit2 = clone(Repository(name="o", url=str(repo), ref=first), s)
    assert (d2, c2, hit2) == (d1, first, True)
    _, c3, _ = clone(Repository(name="o", url=str(repo), ref="dev"), s)
    assert c3 == sh(repo, "rev-parse", "dev")
    # a rerun after the branch moved clones the new commit
    (repo / "d.v").write_text("module d; endmodule\n")
    sh(repo, "add", "-A")
    sh(repo, "commit", "-qm", "more")
    assert clone(Repository(name="o", url=str(repo)), s)[1:] == (sh(repo, "rev-parse", "HEAD"), False)


def test_commit_not_at_a_ref_uses_full_fetch_fallback(tmp_path: Path, origin: tuple[Path, str, str]) -> None:
    repo, first, head = origin
    s = settings(tmp_path)
    _, commit, _ = clone(Repository(name="o", url=str(repo), ref=first), s)
    assert commit == first


@pytest.mark.parametrize(
    ("url", "ref", "reason"),
    [("missing_dir", None, "bad url"), ("file://MISSING", None, "bad url"), ("file:///nonexistent/x", None, "unsafe url"),
     ("ORIGIN", "no-such-branch", "missing ref"), ("ORIGIN", "0" * 40, "missing ref")],
)
def test_failures_have_reasons(tmp_path: Path, origin: tuple[Path, str, str], url: str, ref: str | None,
                               reason: str) -> None:
    url = str(origin[0]) if url == "ORIGIN" else (str(tmp_path / url) if url == "missing_dir" else url)
    url = url.replace("MISSING", str(tmp_path / "nonexistent"))
    with pytest.raises(CloneError) as info:
        clone(Repository(name="o", url=url, ref=ref), settings(tmp_path))
    assert info.value.reason == reason
    assert not list((tmp_path / "cache").glob("*/.tmp-*"))


def test_too_big(tmp_path: Path, origin: tuple[Path, str, str]) -> None:
    with pytest.raises(CloneError) as info:
        clone(Repository(name="o", url=str(origin[0])), settings(tmp_path, max_repo_bytes=100))
    assert info.value.reason == "too big"
    assert not [p for p in (tmp_path / "cache").rglob(".complete")]


def test_snapshot_of_plain_directory(tmp_path: Path) -> None:
    d = tmp_path / "plain"
    d.mkdir()
    (d / "a.v").write_text("module a; endmodule\n")
    root, commit, _ = clone(Repository(name="p", url=str(d)), settings(tmp_path))
    assert root == str(d) and commit.startswith("dir:") and len(commit) == 20
    assert snapshot_id(str(d)) == commit
    (d / "a.v").write_text("module a2; endmodule\n")
    assert snapshot_id(str(d)) != commit


class _Handler(BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def do_GET(self) -> None:  # noqa: N802
        kind = self.path.strip("/").split("/")[0]
        _Handler.hits[kind] = _Handler.hits.get(kind, 0) + 1
        if kind == "hang":
            time.sleep(30)
            return
        code = {"auth": 401, "gone": 404, "busy": 503}[kind]
        self.send_response(code)
        if code == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="x"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_url() -> Iterator[str]:
    _Handler.hits = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_failures_retry_only_transient(tmp_path: Path, http_url: str) -> None:
    s = settings(tmp_path, timeout_s=2.0)
    s.retries = 2
    expected = {"auth": "needs credentials", "gone": "bad url", "busy": "network"}
    for kind, reason in expected.items():
        with pytest.raises(CloneError) as info:
            clone(Repository(name=kind, url=f"{http_url}/{kind}/r.git"), s)
        assert info.value.reason == reason, info.value
    assert _Handler.hits["gone"] == 1
    assert _Handler.hits["busy"] == 3  # 1 + 2 retries
    t0 = time.perf_counter()
    s.retries = 0
    with pytest.raises(CloneError) as info:
        clone(Repository(name="hang", url=f"{http_url}/hang/r.git"), s)
    assert info.value.reason == "timeout" and time.perf_counter() - t0 < 10


def test_clone_and_read_stage(tmp_path: Path, origin: tuple[Path, str, str]) -> None:
    repo, _, head = origin
    stage = CloneAndRead(status_dir=str(tmp_path / "status"), cache_dir=str(tmp_path / "cache"), retries=0,
                         local_roots=[str(tmp_path)])
    batch = pa.table({
        "manifest_index": [0, 1],
        "repository": [Repository(name="good", url=str(repo), license="MIT").model_dump_json(),
                       Repository(name="bad", url=str(repo), ref="nope").model_dump_json()],
    })
    out = stage(batch)
    assert out.schema == FILES_SCHEMA
    assert out.column("path").to_pylist() == ["a.v", "b.v"]
    assert set(out.column("commit").to_pylist()) == {head} and set(out.column("license").to_pylist()) == {"MIT"}
    good = json.loads(Path(status_path(str(tmp_path / "status"), "good")).read_text())
    bad = json.loads(Path(status_path(str(tmp_path / "status"), "bad")).read_text())
    assert (good["status"], good["commit"], good["files_read"], good["manifest_index"]) == ("ok", head, 2, 0)
    assert (bad["status"], bad["reason"]) == ("failed", "missing ref") and "nope" in bad["error"]
    assert good["cpu_seconds"] > 0  # the actor's CPU plus its git children, for the report's cpu_seconds


def test_sparse_checkout_fetches_only_selected_files(tmp_path: Path) -> None:
    big = secrets.token_hex(200_000)  # 400 KB that no compression shrinks below 200 KB
    repo = tmp_path / "origin"
    make_repo(repo, {"rtl/a.v": "module a; endmodule\n", "rtl/B.SV": "module b; endmodule\n", "LICENSE": "MIT License\n",
                     "docs/big.bin": big, "sw/main.c": "int main() { return 0; }\n", "rtl/notes.vhd": "entity\n"})
    sh(repo, "config", "uploadpack.allowFilter", "true")
    s = settings(tmp_path, sparse_extensions=(".v", ".sv"))
    d, commit, hit = clone(Repository(name="o", url=str(repo)), s)
    got = sorted(str(p.relative_to(d)) for p in Path(d).rglob("*") if p.is_file() and ".git" not in p.parts)
    assert got == [".complete", "LICENSE", "rtl/B.SV", "rtl/a.v"] and not hit
    # blob:none + sparse: the large blob never crossed the wire
    objects = subprocess.run(["git", "count-objects", "-v"], cwd=d, capture_output=True, text=True).stdout
    size_kb = sum(int(line.split()[1]) for line in objects.splitlines() if line.startswith(("size:", "size-pack:")))
    assert size_kb < 100
    # a full checkout of the same commit is a different cache entry, never the sparse one
    full, commit2, hit2 = clone(Repository(name="o", url=str(repo)), settings(tmp_path))
    assert (commit2, hit2) == (commit, False) and full != d and Path(full, "docs", "big.bin").exists()
    assert clone(Repository(name="o", url=str(repo)), s) == (d, commit, True)


def test_cache_entries_appear_complete_and_stale_ones_are_replaced(tmp_path: Path, origin: tuple[Path, str, str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout enters the cache with its marker already inside (one rename), so a worker cloning
    the same URL at the same moment sees a complete entry or none; a leftover without a marker is
    replaced."""
    import os

    import corpus.clone as clone_module

    repo, _, head = origin
    s = settings(tmp_path)
    renamed: list[tuple[str, bool]] = []
    real_rename = os.rename

    def rename(src: str, dst: str) -> None:
        renamed.append((dst, Path(src, ".complete").exists()))
        real_rename(src, dst)

    monkeypatch.setattr(clone_module.os, "rename", rename)
    d, commit, hit = clone(Repository(name="o", url=str(repo)), s)
    assert (commit, hit) == (head, False) and renamed == [(d, True)]
    # an older run's half-written entry (no marker) under the same key
    (Path(d) / ".complete").unlink()
    (Path(d) / "junk.v").write_text("module junk; endmodule\n")
    d2, _, hit2 = clone(Repository(name="o2", url=str(repo)), s)
    assert (d2, hit2) == (d, False) and Path(d, ".complete").exists() and not Path(d, "junk.v").exists()
    assert sorted(p.name for p in Path(d).parent.iterdir()) == [Path(d).name]  # nothing set aside is left


def test_workers_cloning_one_url_at_once_all_get_the_checkout(tmp_path: Path, origin: tuple[Path, str, str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """One URL under several manifest names: workers finishing their fetch together share one entry."""
    import corpus.clone as clone_module

    repo, _, head = origin
    s = settings(tmp_path)
    together = threading.Barrier(4)
    real = clone_module.tree_bytes
    monkeypatch.setattr(clone_module, "tree_bytes", lambda p: (together.wait(30), real(p))[1])
    results: list[object] = [None] * 4

    def work(i: int) -> None:
        try:
            d, commit, _ = clone(Repository(name=f"n{i}", url=str(repo)), s)
            results[i] = (d, commit, Path(d, "a.v").exists() and Path(d, ".complete").exists())
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[i] = repr(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len({r if isinstance(r, str) else r[0] for r in results}) == 1, results
    assert all(isinstance(r, tuple) and r[1:] == (head, True) for r in results), results
