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
