"""The line-preserving preprocessing pass (corpus/preprocess.py), without Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus.preprocess import Macro, preprocess, strip_comments


def lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.split("\n")]


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "assets" / "verilog").glob("*.*v")))
def test_line_count_is_preserved(path: Path) -> None:
    text = path.read_text()
    assert preprocess(text).text.count("\n") == text.count("\n")


def test_ifdef_else_endif_keeps_one_branch_and_blanks_directives() -> None:
    src = "a\n`ifdef F\nb\n`elsif G\nc\n`else\nd\n`endif\ne\n"
    assert lines(preprocess(src).text) == ["a", "", "", "", "", "", "d", "", "e", ""]
    assert lines(preprocess(src, {"F": Macro("F", "")}).text) == ["a", "", "b", "", "", "", "", "", "e", ""]
    assert lines(preprocess(src, {"G": Macro("G", "")}).text) == ["a", "", "", "", "c", "", "", "", "e", ""]


def test_nested_ifndef_and_defines_made_in_the_file() -> None:
    src = "`define A\n`ifndef A\nx\n`else\n`ifdef B\ny\n`else\nz\n`endif\n`endif\n"
    out = preprocess(src)
    assert lines(out.text) == ["", "", "", "", "", "", "", "z", "", "", ""]
    assert set(out.defines) == {"A"}
    assert out.n_conditionals == 2


def test_ifdef_expression_operand() -> None:
    src = "`ifdef (A && !B)\nyes\n`else\nno\n`endif\n"
    assert "yes" in preprocess(src, {"A": Macro("A", "")}).text
    assert "no" in preprocess(src, {"A": Macro("A", ""), "B": Macro("B", "")}).text


def test_unbalanced_directives_do_not_raise() -> None:
    out = preprocess("x\n`endif\n`else\ny\n`ifdef Q\nz\n")
    assert lines(out.text) == ["x", "", "", "y", "", "", ""]


def test_directives_inside_comments_and_strings_are_text() -> None:
    src = '// `ifdef X\n/* `define Y 1\n */ s = "`ifdef Z";\n'
    out = preprocess(src)
    assert out.text == src
    assert out.defines == {}


def test_object_and_function_macros_expand_and_multiline_calls_keep_lines() -> None:
    src = (
        "`define W 8\n"
        "`define ADD(a, b=1) ((a) + (b))\n"
        "`define LONG x + \\\n  y\n"
        "assign q = `ADD(p,\n  r) + `W'd3 + `ADD(s);\n"
        "assign z = `LONG;\n"
    )
    out = preprocess(src)
    got = out.text.split("\n")
    assert len(got) == src.count("\n") + 1
    # the call is replaced on its first line; what follows it stays on its own line
    assert got[4] == "assign q = ((p) + (r))"
    assert got[5] == " + 8'd3 + ((s) + (1));"
    assert got[6] == "assign z = x + y;"
    assert out.defines["ADD"].params == ("a", "b")
    assert out.n_expanded == 4


def test_token_pasting_and_stringification() -> None:
    src = '`define SIG(n) n``_q\n`define STR(n) `"n`"\nassign `SIG(data) = 0; $display(`STR(hi));\n'
    assert preprocess(src).text.split("\n")[2] == 'assign data_q = 0; $display("hi");'


def test_unknown_macros_get_neutral_tokens_only_where_the_grammar_needs_them() -> None:
    src = (
        "assign x = (y & `W'h1f) | 32'h`ADDR;\n"
        "wire [`R] w;\n"
        "wire [`W-1:0] v;\n"
        "`ASSERT(chk, a |-> ##1 b)\n"
        "`MYTYPE t;\n"
        "assign z = `F(y) + `N;\n"
    )
    out = preprocess(src).text.split("\n")
    assert out[0] == "assign x = (y & 32'h1f) | 32'h0;"
    assert out[1] == "wire [0:0] w;"
    assert out[2] == "wire [`W-1:0] v;"  # the grammar accepts this one as it is
    assert out[3].strip() == ""
    assert out[4] == "logic t;"
    assert out[5] == "assign z = `F(y) + `N;"


def test_include_contributes_defines_only() -> None:
    header = "`ifndef H_VH\n`define H_VH\n`define DEPTH 16\n`endif\n"
    seen: list[str] = []

    def resolve(name: str) -> str | None:
        seen.append(name)
        return header if name == "h.vh" else None

    src = '`include "h.vh"\n`include "missing.vh"\nlocalparam D = `DEPTH;\n'
    out = preprocess(src, resolve=resolve)
    assert out.text.split("\n")[2] == "localparam D = 16;"
    assert seen == ["h.vh", "missing.vh"]
    assert out.unresolved_includes == ["missing.vh"]


def test_other_directives_are_blanked() -> None:
    src = "`timescale 1ns/1ps\n`default_nettype none\n`undef X\n`resetall\nmodule m; endmodule\n"
    assert lines(preprocess(src).text) == ["", "", "", "", "module m; endmodule", ""]


def test_no_backtick_is_returned_unchanged() -> None:
    src = "module m; endmodule\n"
    assert preprocess(src).text is src


def test_strip_comments_keeps_strings_and_newlines() -> None:
    src = 'a // x\n/* b\n c */ s = "//not";\n'
    assert strip_comments(src) == 'a  \n \n s = "//not";\n'
