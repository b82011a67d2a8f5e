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


# -- issue 9: constructs of the users' repositories, on Verilog written for these tests --
def test_comment_inside_a_multi_line_macro_argument_does_not_swallow_the_call() -> None:
    src = (
        "`define CHECK(name, expr) name: assert property (@(posedge clk) (expr));\n"
        "module watch (input clk, req, ack);\n"
        "  `CHECK(req_ack_A,\n"
        "         // a request is answered on the next cycle\n"
        "         req |=> ack)\n"
        "  assign unused = req;\n"
        "endmodule\n"
    )
    out = preprocess(src).text.split("\n")
    assert len(out) == src.count("\n") + 1
    assert out[2].strip() == "req_ack_A: assert property (@(posedge clk) (req |=> ack));"
    assert "//" not in out[2]
    assert out[5] == "  assign unused = req;"


def test_include_used_as_inline_text_is_inserted_on_its_line() -> None:
    header = "parameter int DIV = 4, // divider\n  parameter int MUL = `MUL_DEFAULT\n"

    def resolve(name: str) -> str | None:
        return header if name == "pll_params.vh" else None

    src = '`define MUL_DEFAULT 8\nmodule pll_wrap #(`include "pll_params.vh") (input clk);\nendmodule\n'
    out = preprocess(src, resolve=resolve)
    got = out.text.split("\n")
    assert len(got) == 4
    assert got[1] == "module pll_wrap #(parameter int DIV = 4, parameter int MUL = 8) (input clk);"
    assert out.n_inline_includes == 1 and out.includes == ["pll_params.vh"]
    missing = preprocess('module m #(`include "nope.vh") ();\n').text
    assert missing.split("\n")[0] == "module m #( ) ();"  # the rest of the line stays
    assert preprocess(src, resolve=resolve).text.count("\n") == src.count("\n")


def test_c_preprocessor_lines_are_evaluated_like_their_backtick_twins() -> None:
    src = "module cfg;\n#ifdef FAST\n  wire a;\n#else\n  wire b;\n#endif\n#include \"x.h\"\nendmodule\n"
    out = preprocess(src)
    assert lines(out.text) == ["module cfg;", "", "", "", "wire b;", "", "", "endmodule", ""]
    assert out.n_cpp_directives == 4
    assert lines(preprocess(src, {"FAST": Macro("FAST", "")}).text)[2] == "wire a;"
    assert lines(preprocess("#define FAST\n#if defined(FAST)\nx\n#endif\n").text) == ["", "", "x", "", ""]
    assert preprocess("initial #5 a = 1;\nassign #(2) b = c;\n").text == "initial #5 a = 1;\nassign #(2) b = c;\n"


def test_unknown_macros_taking_statements_or_naming_members() -> None:
    src = (
        '  `WAIT_OR_FAIL(wait (done == 1);, 100, "timed out")\n'
        "  x = regs[i].`FIELD_NAME;\n"
        '  `LOG("a; b")\n'
    )
    out = preprocess(src).text.split("\n")
    assert out[0].strip() == ""
    assert out[1] == "  x = regs[i].FIELD_NAME;"
    assert out[2] == '  `LOG("a; b")'  # a `;` inside a string is not a statement


def test_grammar_gap_rewrites_keep_lines_and_are_counted() -> None:
    src = (
        "assign narrow = $clog2(DEPTH)'(count) + $bits(w)'(v);\n"
        "fifo #(.DEPTH,\n  .WIDTH(8)) u_fifo (.clk, .d(d));\n"
        "logic global, other;\n"
        "global clocking gclk @(posedge clk); endclocking\n"
        "assign expect = top.expect;\n"
        "covergroup cg; st_cross: cross u_core.state, mode iff (u_core.en); endgroup\n"
        "initial $fatal(1);\n"
    )
    out = preprocess(src)
    got = out.text.split("\n")
    assert len(got) == src.count("\n") + 1
    assert got[0] == "assign narrow = (count) + (v);"
    assert got[1] == "fifo #(.DEPTH(DEPTH),"
    assert got[2] == "  .WIDTH(8)) u_fifo (.clk(clk), .d(d));"
    assert got[3] == "logic \\global , other;"
    assert got[4] == "global clocking gclk @(posedge clk); endclocking"
    assert got[5] == "assign \\expect  = top.\\expect ;"
    assert got[6] == "covergroup cg; st_cross: cross u_core_state, mode iff (u_core.en); endgroup"
    assert got[7] == 'initial $fatal(1, "");'
    assert out.rewrites == {"function_cast": 2, "dot_name_shorthand": 2, "keyword_identifier": 3,
                            "cross_hierarchical_item": 1, "fatal_finish_number": 1}
    assert preprocess(src, rewrite=False).text == src


def test_include_cache_keeps_results_that_depend_on_prior_defines_and_location() -> None:
    from corpus.verilog import include_resolver

    files = {
        "inc/w.vh": "`ifdef WIDE\n`define W 64\n`else\n`define W 32\n`endif\n`include \"leaf.vh\"\n",
        "a/leaf.vh": "`define LEAF 1\n",
        "b/leaf.vh": "`define LEAF 2\n",
    }
    by_base = {"w.vh": "inc/w.vh"}
    src_wide = '`define WIDE\n`include "w.vh"\nlocalparam P = `W + `LEAF;\n'
    src_narrow = '`include "w.vh"\n\nlocalparam P = `W + `LEAF;\n'
    got = []
    for path, src in [("a/x.v", src_wide), ("a/y.v", src_narrow), ("b/z.v", src_narrow), ("a/y2.v", src_narrow)]:
        resolve = include_resolver(files, by_base, path, scope="batch-under-test")
        got.append(preprocess(src, resolve=resolve).text.split("\n")[2])
    assert got == ["localparam P = 64 + 1;", "localparam P = 32 + 1;", "localparam P = 32 + 2;",
                   "localparam P = 32 + 1;"]
