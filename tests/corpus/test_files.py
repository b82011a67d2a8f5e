import os
from pathlib import Path

from corpus.files import decode, is_binary, read_repo, selected
from corpus.schema import FILES_SCHEMA, from_rows

MARKER = "OUTSIDE_SECRET_7f3a"


def _repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "rtl").mkdir(parents=True)
    (root / "tb").mkdir()
    (root / ".git").mkdir()
    (root / "rtl" / "top.v").write_text("module top; endmodule\n")
    (root / "rtl" / "pkg.svh").write_text("`define W 8\n")
    (root / "rtl" / "notes.txt").write_text("module not_verilog; endmodule\n")
    (root / "tb" / "top_tb.sv").write_text("module top_tb; endmodule\n")
    (root / ".git" / "x.v").write_text("module in_git; endmodule\n")
    (root / "rtl" / "latin.v").write_bytes("// caf\xe9\nmodule latin; endmodule\n".encode("latin-1"))
    (root / "rtl" / "big.v").write_text("// " + "x" * 5000 + "\nmodule big; endmodule\n")
    (root / "rtl" / "rom.v").write_text("\n".join(f"{i:08x}" for i in range(64)) + "\n")
    (root / "rtl" / "nul.v").write_bytes(b"module n;\x00 endmodule\n")
    secret = tmp_path / "secret.v"
    secret.write_text(f"module leak; // {MARKER}\nendmodule\n")
    (root / "rtl" / "link_out.v").symlink_to(secret)
    (root / "rtl" / "link_in.v").symlink_to(root / "rtl" / "top.v")
    (root / "rtl" / "broken.v").symlink_to(root / "rtl" / "missing.v")
    os.symlink("loop_b.v", root / "rtl" / "loop_a.v")
    os.symlink("loop_a.v", root / "rtl" / "loop_b.v")
    return root


def test_read_repo_skips_and_counts(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    res = read_repo(str(root), repo="r", url="u", commit="c", license="MIT", manifest_index=3, max_file_bytes=4000)
    paths = [r["path"] for r in res.rows]
    assert paths == ["rtl/latin.v", "rtl/link_in.v", "rtl/pkg.svh", "rtl/top.v", "tb/top_tb.sv"]
    assert dict(res.skipped) == {"too_large": 1, "binary": 2, "symlink_outside": 1, "symlink_broken": 1,
                                 "symlink_loop": 2}
    assert res.encodings == {"utf-8": 4, "latin-1": 1}
    latin = res.rows[0]
    assert latin["encoding"] == "latin-1" and "café" in latin["text"]
    assert all(MARKER not in r["text"] for r in res.rows)
    table = from_rows(res.rows, FILES_SCHEMA, stage="test")
    assert table.schema == FILES_SCHEMA and table.num_rows == 5
    assert set(table.column("manifest_index").to_pylist()) == {3}
    assert res.n_bytes == sum(r["n_bytes"] for r in res.rows)


def test_include_exclude_and_extensions(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    res = read_repo(str(root), repo="r", include=["rtl/*"], exclude=["*.svh", "rtl/l*"], max_file_bytes=4000)
    assert [r["path"] for r in res.rows] == ["rtl/top.v"]
    res = read_repo(str(root), repo="r", extensions=[".txt"])
    assert [r["path"] for r in res.rows] == ["rtl/notes.txt"]
    assert selected("a/B.SV", [".sv"], [], []) and not selected("a/b.sv", [".sv"], ["rtl/*"], [])


def test_binary_heuristic_and_decode() -> None:
    assert is_binary(b"@0000\n0000_00ff\nDEADBEEF\nxxxxzzzz\n")
    assert is_binary(b"module a;\x00")
    assert not is_binary(b"module a(input clk);\n  assign x = 8'hff;\nendmodule\n")
    assert not is_binary(b"// 0000\nmodule a; endmodule\nwire w;\n")
    assert not is_binary(b"")
    assert decode("é".encode()) == ("é", "utf-8")
    assert decode(b"\xe9") == ("é", "latin-1")
