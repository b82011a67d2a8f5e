from __future__ import annotations

from pathlib import Path

import pytest

from chipforge import fs


def test_atomic_write_and_read(tmp_path: Path) -> None:
    target = str(tmp_path / "a" / "b.json")
    fs.write_json(target, {"x": 1})
    assert fs.read_json(target) == {"x": 1}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]  # no temporary left behind
    assert fs.read_json("file://" + target) == {"x": 1}


def test_atomic_dir_replaces_only_on_success(tmp_path: Path) -> None:
    out = str(tmp_path / "modules")
    with fs.atomic_dir(out) as tmp:
        Path(tmp, "part-0.txt").write_text("one")
    assert Path(out, "part-0.txt").read_text() == "one"

    with pytest.raises(RuntimeError):
        with fs.atomic_dir(out) as tmp:
            Path(tmp, "part-0.txt").write_text("two")
            raise RuntimeError("stage crashed")
    assert Path(out, "part-0.txt").read_text() == "one"  # the old output survives a failed rewrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["modules"]

    with fs.atomic_dir(out) as tmp:
        Path(tmp, "part-1.txt").write_text("new")
    assert sorted(p.name for p in Path(out).iterdir()) == ["part-1.txt"]


def test_exists_listdir_delete(tmp_path: Path) -> None:
    base = str(tmp_path / "d")
    assert not fs.exists(base) and fs.listdir(base) == []
    fs.write_text(fs.join(base, "x", "y.txt"), "hi")
    assert fs.exists(base)
    assert [Path(p).name for p in fs.listdir(base, recursive=True)] == ["x", "y.txt"]
    fs.delete(base)
    assert not fs.exists(base)
    with pytest.raises(FileNotFoundError):
        fs.read_bytes(str(tmp_path / "missing"))


def test_read_jsonl_numbers_lines_and_names_the_bad_one(tmp_path: Path) -> None:
    p = tmp_path / "rows.jsonl"
    p.write_text('{"a": 1}\n\n[2]\n')
    assert fs.read_jsonl(str(p)) == [(1, {"a": 1}), (3, [2])]
    p.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl:2: not JSON"):
        fs.read_jsonl(str(p))


def test_listdir_gives_paths_in_the_form_it_was_given(tmp_path: Path, monkeypatch) -> None:
    fs.write_text(str(tmp_path / "d" / "x" / "y.txt"), "hi")
    monkeypatch.chdir(tmp_path)
    listed = fs.listdir("d", recursive=True)
    assert listed == [str(tmp_path / "d" / "x"), str(tmp_path / "d" / "x" / "y.txt")]
    assert fs.listdir("file://" + str(tmp_path / "d"), recursive=True, files_only=True) == [listed[1]]
    assert [fs.relative(p, "d") for p in listed] == ["x", "x/y.txt"]
    with pytest.raises(ValueError, match="is not below"):
        fs.relative(str(tmp_path / "elsewhere"), "d")


def test_object_store_paths_round_trip(s3_env) -> None:
    """On S3 every listed path is an s3:// URI the other functions accept, and atomic_dir replaces a
    directory although object stores cannot rename one."""
    from tests.conftest import make_bucket

    root = make_bucket(s3_env, "cf-fs-test") + "/run"
    fs.write_json(fs.join(root, "a", "b.json"), {"x": 1})
    listed = fs.listdir(root, recursive=True)
    assert listed == [f"{root}/a", f"{root}/a/b.json"]
    assert fs.read_json(listed[1]) == {"x": 1} and fs.relative(listed[1], root + "/") == "a/b.json"

    out = fs.join(root, "modules")
    with fs.atomic_dir(out) as tmp:
        fs.write_text(fs.join(tmp, "part=0", "f.txt"), "one")
    with pytest.raises(RuntimeError):
        with fs.atomic_dir(out) as tmp:
            fs.write_text(fs.join(tmp, "part=0", "f.txt"), "two")
            raise RuntimeError("stage crashed")
    assert fs.read_text(fs.join(out, "part=0", "f.txt")) == "one"
    with fs.atomic_dir(out) as tmp:
        fs.write_text(fs.join(tmp, "g.txt"), "new")
    assert fs.listdir(out, recursive=True) == [f"{out}/g.txt"]
    assert [fs.relative(p, root) for p in fs.listdir(root)] == ["a", "modules"]  # no temporary left behind


def test_object_store_filesystems_are_cached_per_bucket_and_environment(s3_env, monkeypatch) -> None:
    a, path = fs.resolve("s3://cf-cache/x/y")
    assert path == "cf-cache/x/y" and fs.resolve("s3://cf-cache/z")[0] is a  # no region lookup per call
    assert fs.resolve("s3://cf-cache/a%20b")[1] == "cf-cache/a b"  # escapes: pyarrow's own parsing, as Ray's
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env["AWS_ENDPOINT_URL"] + "/")  # another endpoint (or key)
    assert fs.resolve("s3://cf-cache/x")[0] is not a


def test_a_failed_final_move_leaves_no_temporary_behind(s3_env, monkeypatch) -> None:
    from tests.conftest import make_bucket

    root = make_bucket(s3_env, "cf-fs-move") + "/run"

    def broken(*args, **kwargs):
        raise OSError("copy refused")

    monkeypatch.setattr(fs, "_move_tree", broken)
    with pytest.raises(OSError, match="copy refused"):
        with fs.atomic_dir(fs.join(root, "out")) as tmp:
            fs.write_text(fs.join(tmp, "f.txt"), "x")
    assert fs.listdir(root) == []  # the job fails without a marker; nothing half-named is left


def test_storage_options_in_a_uri_are_refused_naming_the_variables_to_set() -> None:
    """``s3://b/p?endpoint_override=…`` worked for that one path, but a path joined onto it put the
    subpath inside the options (``…&scheme=http/sub``) and a listed path lost them (the default
    endpoint): options come from the environment, and such a URI is an error that says which."""
    with pytest.raises(ValueError, match=r"use the plain URI 's3://cf-opts/run' and set "
                                         r"AWS_ENDPOINT_URL=http://127\.0\.0\.1:9000 in the job's environment"):
        fs.resolve("s3://cf-opts/run?endpoint_override=127.0.0.1:9000&scheme=http")
    with pytest.raises(ValueError, match="AWS_DEFAULT_REGION=eu-west-1"):
        fs.exists("s3://cf-opts/run?region=eu-west-1")
    problem = fs.options_problem("s3://cf-opts/run?access_key=AKIA&secret_key=s3cr3t")
    assert "AWS_SECRET_ACCESS_KEY=..." in problem and "s3cr3t" not in problem and "AKIA" not in problem
    assert "GCS: GOOGLE_APPLICATION_CREDENTIALS" in fs.options_problem("gs://cf-opts/run?endpoint_override=localhost:4443")
    for fine in ("s3://cf-opts/run", "s3://cf-opts/a%20b", "https://llm.example/v1?api-key=x", "/tmp/what?",
                 "file:///tmp/what?"):
        assert fs.options_problem(fine) is None, fine


def test_files_over_the_server_copy_limit_are_streamed_not_copied_by_the_store(s3_env, monkeypatch) -> None:
    """pyarrow's S3 move is one CopyObject, which S3 refuses over 5 GiB (a merged model's shard: transformers
    saves up to 50 GB per shard). Above the limit (lowered here) a file is streamed, a chunk at a time."""
    from tests.conftest import make_bucket

    root = make_bucket(s3_env, "cf-fs-large") + "/run"
    monkeypatch.setattr(fs, "SERVER_COPY_MAX_BYTES", 1000)
    monkeypatch.setattr(fs, "STREAM_CHUNK_BYTES", 256)
    streamed, real = [], fs._stream_copy
    monkeypatch.setattr(fs, "_stream_copy", lambda filesystem, src, dst: (streamed.append(dst), real(filesystem, src, dst)))
    big = bytes(range(256)) * 10  # 2,560 bytes: over the limit, 10 chunks
    out = fs.join(root, "merged")
    with fs.atomic_dir(out) as tmp:
        fs.write_bytes(fs.join(tmp, "model.safetensors"), big)  # write_bytes' own rename: streamed
        fs.write_text(fs.join(tmp, "config.json"), "{}")  # small: the store's copy
    assert [p.rsplit("/", 1)[-1] for p in streamed] == ["model.safetensors", "model.safetensors"]
    assert fs.read_bytes(fs.join(out, "model.safetensors")) == big and fs.read_json(fs.join(out, "config.json")) == {}
    assert fs.listdir(root, recursive=True) == [out, f"{out}/config.json", f"{out}/model.safetensors"]


def test_a_streamed_copy_that_fails_leaves_no_partial_file(s3_env, monkeypatch) -> None:
    from tests.conftest import make_bucket

    root = make_bucket(s3_env, "cf-fs-large-fail") + "/run"
    fs.write_bytes(fs.join(root, "old.bin"), b"x" * 50)
    filesystem, src = fs.resolve(fs.join(root, "old.bin"))
    monkeypatch.setattr(fs, "STREAM_CHUNK_BYTES", "not a size")  # the first read fails, the output stream is open
    with pytest.raises(TypeError):
        fs._stream_copy(filesystem, src, src.replace("old.bin", "new.bin"))
    assert fs.listdir(root) == [f"{root}/old.bin"] and fs.read_bytes(f"{root}/old.bin") == b"x" * 50
