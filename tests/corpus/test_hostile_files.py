"""Files of hostile or broken repositories: odd encodings, line ends, names and LFS pointers."""

import json
import os
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest

from corpus.clone import CloneAndRead, status_path
from corpus.files import read_repo
from corpus.manifest import Repository
from corpus.schema import FILES_SCHEMA, from_rows
from corpus.verilog import VerilogParser

GIT = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "-c", "init.defaultBranch=main"]
RTL = "// adds one\nmodule inc(input [3:0] a, output [3:0] y);\n  assign y = a + 1;\nendmodule\n\nmodule two; endmodule\n"


@pytest.fixture(scope="module")
def parser() -> VerilogParser:
    return VerilogParser()


def _only(root: Path) -> dict:
    res = read_repo(str(root), repo="r")
    assert not res.skipped, res.skipped
    [row] = res.rows
    return row


def test_cr_only_line_ends_keep_modules_and_line_numbers(tmp_path: Path, parser: VerilogParser) -> None:
    (tmp_path / "mac.v").write_bytes(RTL.replace("\n", "\r").encode())
    row = _only(tmp_path)
    records = parser.parse(row["text"], row["path"])
    assert [(r["name"], r["start_line"], r["end_line"]) for r in records] == [("inc", 2, 4), ("two", 6, 6)]
    assert records[0]["comment"] == "adds one" and records[0]["source"].count("\n") == 2


def test_crlf_files_are_kept_byte_for_byte(tmp_path: Path) -> None:
    (tmp_path / "dos.v").write_bytes(RTL.replace("\n", "\r\n").encode())
    assert _only(tmp_path)["text"] == RTL.replace("\n", "\r\n")


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_with_bom_is_read_not_skipped_as_binary(tmp_path: Path, parser: VerilogParser, codec: str) -> None:
    bom = "\ufeff".encode(codec)
    (tmp_path / "wide.v").write_bytes(bom + RTL.encode(codec))
    row = _only(tmp_path)
    assert (row["text"], row["encoding"]) == (RTL, "utf-16")
    assert [r["name"] for r in parser.parse(row["text"], row["path"])] == ["inc", "two"]


def test_utf8_bom_is_dropped_so_the_first_comment_is_kept(tmp_path: Path, parser: VerilogParser) -> None:
    (tmp_path / "bom.v").write_bytes(b"\xef\xbb\xbf" + RTL.encode())
    row = _only(tmp_path)
    assert (row["text"], row["encoding"]) == (RTL, "utf-8")
    assert parser.parse(row["text"], row["path"])[0]["comment"] == "adds one"


def test_git_lfs_pointer_named_v_is_skipped_and_counted(tmp_path: Path) -> None:
    pointer = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n")
    (tmp_path / "big_core.v").write_text(pointer)
    (tmp_path / "real.v").write_text(RTL)
    res = read_repo(str(tmp_path), repo="r")
    assert [r["path"] for r in res.rows] == ["real.v"] and dict(res.skipped) == {"lfs_pointer": 1}


def test_file_names_that_are_not_utf8_fit_the_schema(tmp_path: Path) -> None:
    names = [b"caf\xe9.v", b"new\nline.v", b"-rf.v"]
    for name in names:
        with open(os.path.join(os.fsencode(str(tmp_path)), name), "w") as fh:
            fh.write("module m; endmodule\n")
    res = read_repo(str(tmp_path), repo="r")
    table = from_rows(res.rows, FILES_SCHEMA, stage="test")
    assert sorted(table.column("path").to_pylist()) == ["-rf.v", "caf\\xe9.v", "new\nline.v"]


def test_repository_with_a_non_utf8_file_name_does_not_fail_the_stage(tmp_path: Path) -> None:
    repo = tmp_path / "origin"
    repo.mkdir()
    with open(os.path.join(os.fsencode(str(repo)), b"bad\xff.v"), "w") as fh:
        fh.write("module bad; endmodule\n")
    (repo / "ok.v").write_text("module ok; endmodule\n")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "c"]):
        subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True)
    stage = CloneAndRead(status_dir=str(tmp_path / "status"), cache_dir=str(tmp_path / "cache"), retries=0,
                         local_roots=[str(tmp_path)])
    out = stage(pa.table({"manifest_index": [0], "repository": [Repository(name="o", url=str(repo)).model_dump_json()]}))
    assert out.column("path").to_pylist() == ["bad\\xff.v", "ok.v"]
    status = json.loads(Path(status_path(str(tmp_path / "status"), "o")).read_text())
    assert (status["status"], status["files_read"]) == ("ok", 2)


def test_modules_made_only_by_a_multiline_define_give_no_unit_named_by_the_macro_parameter(
        parser: VerilogParser) -> None:
    text = ("`define MAKE_REG(name) \\\n"
            "module name(input clk, input d, output reg q); \\\n"
            "  always @(posedge clk) q <= d; \\\n"
            "endmodule\n"
            "`MAKE_REG(reg_a)\n"
            "`MAKE_REG(reg_b)\n")
    records = parser.parse(text, "regs.v")
    assert [(r["name"], r["start_line"], r["parse_ok"]) for r in records] == [("reg_a", 5, True), ("reg_b", 6, True)]
