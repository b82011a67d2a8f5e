"""The Verilog/SystemVerilog parse stage (corpus/verilog.py), without Ray."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from corpus.schema import FILES_SCHEMA, PARSED_MODULES_SCHEMA
from corpus.verilog import ParseStage, VerilogParser, detect_language, normalize

ASSETS = Path(__file__).parents[1] / "assets" / "verilog"
SAMPLE = Path(__file__).parents[2] / "sample" / "repos"


@pytest.fixture(scope="module")
def sv() -> VerilogParser:
    return VerilogParser()


@pytest.fixture(scope="module")
def vlog() -> VerilogParser:
    return VerilogParser("verilog")


def by_name(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in records}


def ports(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(p["name"], p["direction"], p["type"]) for p in record["ports"]]


def params(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(p["name"], p["default"], p["kind"]) for p in record["parameters"]]


ANSI = """\
// Header line one: describes the unit.
// Header line two.
module ansi_top #(
  parameter W = 8,
  parameter [3:0] D = 4'h2, N = 3,
  localparam L = W * 2
) (
  input  wire             clk,
  input        [W-1:0]    a, b,
  output reg   [W-1:0]    q,
  output logic signed [7:0] s,
  inout                   pad
);
  localparam int DEPTH = 16;
  parameter P2 = 5;
  sub #(.W(W)) u_sub (.a(a), .q(q));
  sub u_sub2 (.a(b), .q());
  leaf u_leaf (clk, pad);
endmodule
"""


def test_ansi_ports_parameters_instances_lines_and_comment(sv: VerilogParser) -> None:
    [r] = sv.parse(ANSI, "rtl/ansi_top.sv")
    assert (r["kind"], r["name"], r["language"]) == ("module", "ansi_top", "systemverilog")
    assert (r["start_line"], r["end_line"], r["n_lines"]) == (3, 19, 17)
    assert r["comment"] == "Header line one: describes the unit.\nHeader line two."
    assert params(r) == [
        ("W", "8", "parameter"),
        ("D", "4'h2", "parameter"),
        ("N", "3", "parameter"),
        ("L", "W * 2", "localparam"),
        ("DEPTH", "16", "localparam"),
        ("P2", "5", "parameter"),
    ]
    assert ports(r) == [
        ("clk", "input", "wire"),
        ("a", "input", "[W-1:0]"),
        ("b", "input", "[W-1:0]"),
        ("q", "output", "reg [W-1:0]"),
        ("s", "output", "logic signed [7:0]"),
        ("pad", "inout", ""),
    ]
    assert r["instances"] == ["sub", "leaf"]
    assert r["source"] == "\n".join(ANSI.split("\n")[2:19])
    assert (r["parse_ok"], r["error_line_share"], r["grammar"]) == (True, 0.0, "tree-sitter-systemverilog")


NON_ANSI = """\
module old_style (clk, d, q, valid, bus);
  parameter WIDTH = 4;
  input clk;
  input [WIDTH-1:0] d;
  output [WIDTH-1:0] q;
  output valid;
  inout [1:0] bus;
  reg [WIDTH-1:0] q;
  reg valid;
  wire [1:0] bus;
  always @(posedge clk) begin q <= d; valid <= 1'b1; end
endmodule
"""


@pytest.mark.parametrize("grammar", ["systemverilog", "verilog"])
def test_non_ansi_ports_merge_directions_and_types_from_the_body(grammar: str) -> None:
    [r] = VerilogParser(grammar).parse(NON_ANSI, "old_style.v")
    assert r["language"] == "verilog"
    assert ports(r) == [
        ("clk", "input", ""),
        ("d", "input", "[WIDTH-1:0]"),
        ("q", "output", "reg [WIDTH-1:0]"),
        ("valid", "output", "reg"),
        ("bus", "inout", "wire [1:0]"),
    ]
    assert params(r) == [("WIDTH", "4", "parameter")]
    assert r["parse_ok"] is True
    assert r["grammar"] == f"tree-sitter-{grammar}"


SV_UNITS = """\
/* Package of shared types.
 * Second line of the block comment.
 */
package bus_pkg;
  parameter int AW = 12;
  localparam type addr_t = logic [AW-1:0];
endpackage

// A bus interface with two modports.
interface bus_if #(parameter int W = 8) (input logic clk);
  logic [W-1:0] data;
  logic valid, ready;
  modport master (output data, valid, input ready);
  modport slave (input data, valid, output ready);
endinterface

program automatic tb_prog (input logic clk, bus_if.master m);
  initial begin end
endprogram

macromodule consumer (
  input logic clk,
  bus_if.slave s,
  bus_if raw
);
  import bus_pkg::*;
  bus_if #(.W(4)) local_bus (.clk(clk));
endmodule
"""


def test_interfaces_modports_packages_programs_and_macromodule(sv: VerilogParser) -> None:
    recs = sv.parse(SV_UNITS, "units.sv")
    assert [(r["kind"], r["name"], r["start_line"], r["end_line"]) for r in recs] == [
        ("package", "bus_pkg", 4, 7),
        ("interface", "bus_if", 10, 15),
        ("program", "tb_prog", 17, 19),
        ("module", "consumer", 21, 28),
    ]
    r = by_name(recs)
    assert r["bus_pkg"]["comment"] == "Package of shared types.\nSecond line of the block comment."
    assert params(r["bus_pkg"]) == [("AW", "12", "parameter"), ("addr_t", "logic [AW-1:0]", "localparam")]
    assert r["bus_if"]["comment"] == "A bus interface with two modports."
    assert ports(r["bus_if"]) == [("clk", "input", "logic")]
    assert params(r["bus_if"]) == [("W", "8", "parameter")]
    assert ports(r["tb_prog"]) == [("clk", "input", "logic"), ("m", "modport", "bus_if.master")]
    assert r["tb_prog"]["comment"] == ""  # code, not a comment, precedes it
    assert ports(r["consumer"]) == [
        ("clk", "input", "logic"),
        ("s", "modport", "bus_if.slave"),
        ("raw", "interface", "bus_if"),
    ]
    assert r["consumer"]["instances"] == ["bus_if"]
    assert all(x["parse_ok"] for x in recs)


UDP_AND_GENERATE = """\
`timescale 1ns/1ps
// 2:1 multiplexer as a user-defined primitive.
primitive mux2 (out, a, b, s);
  output out;
  input a, b, s;
  table
    0 ? 0 : 0;
    1 ? 0 : 1;
    ? 0 1 : 0;
    ? 1 1 : 1;
  endtable
endprimitive

`timescale 1ns/1ps

// Bank of muxes built in a generate loop.
module mux_bank #(parameter N = 4) (input [N-1:0] a, b, input s, output [N-1:0] y);
  genvar i;
  generate
    for (i = 0; i < N; i = i + 1) begin : g_bit
      mux2 u_mux (y[i], a[i], b[i], s);
      if (i == 0) begin : g_first
        probe #(.ID(0)) u_probe (.x(y[i]));
      end
    end
  endgenerate
endmodule
"""


@pytest.mark.parametrize("grammar", ["systemverilog", "verilog"])
def test_primitives_generate_instances_and_comments_after_timescale(grammar: str) -> None:
    recs = VerilogParser(grammar).parse(UDP_AND_GENERATE, "mux.v")
    assert [(r["kind"], r["name"], r["start_line"], r["end_line"]) for r in recs] == [
        ("primitive", "mux2", 3, 12),
        ("module", "mux_bank", 17, 27),
    ]
    udp, bank = recs
    assert udp["comment"] == "2:1 multiplexer as a user-defined primitive."
    assert [p["name"] for p in udp["ports"]] == ["out", "a", "b", "s"]
    assert [p["direction"] for p in udp["ports"]][1:] == ["input", "input", "input"]
    assert bank["comment"] == "Bank of muxes built in a generate loop."
    assert bank["instances"] == ["mux2", "probe"]
    assert ports(bank) == [
        ("a", "input", "[N-1:0]"),
        ("b", "input", "[N-1:0]"),
        ("s", "input", ""),
        ("y", "output", "[N-1:0]"),
    ]


IFDEF_PORTS = """\
`define W 8
module ifdef_ports (
  input clk
`ifdef WITH_EN
  , input en
`endif
  , input [`W-1:0] d
  , output reg [`W-1:0] q
);
  always @(
`ifdef WITH_EN
    posedge en or
`endif
    posedge clk) q <= d
`ifdef INVERT
    ^ {`W{1'b1}}
`endif
    ;
endmodule
"""


def test_ifdef_in_port_and_sensitivity_lists_and_expressions(sv: VerilogParser) -> None:
    [r] = sv.parse(IFDEF_PORTS, "p.v")
    assert [p["name"] for p in r["ports"]] == ["clk", "d", "q"]
    assert (r["parse_ok"], r["error_line_share"], r["start_line"], r["end_line"]) == (True, 0.0, 2, 19)
    assert r["source"].startswith("module ifdef_ports (\n  input clk\n`ifdef WITH_EN")  # original text
    [on] = sv.parse(IFDEF_PORTS, "p.v", defines={"WITH_EN": "", "INVERT": ""})
    assert [p["name"] for p in on["ports"]] == ["clk", "en", "d", "q"]
    assert on["parse_ok"] is True
    [raw] = sv.parse(IFDEF_PORTS, "p.v", preprocess=False)
    assert raw["parse_ok"] is False and raw["error_line_share"] > 0


def test_modules_in_inactive_branches_and_split_headers_are_found(sv: VerilogParser) -> None:
    recs = sv.parse((ASSETS / "header_split.v").read_text(), "header_split.v")
    assert [(r["name"], r["start_line"], r["end_line"], r["parse_ok"]) for r in recs] == [
        ("cfg_core", 5, 8, True),
        ("dbg_unit", 12, 14, True),
    ]
    assert ports(recs[0])[1] == ("d", "input", "[15:0]")  # the active (`else) header
    recs = sv.parse((ASSETS / "branch.v").read_text(), "branch.v")
    assert [(r["name"], r["start_line"], r["parse_ok"]) for r in recs] == [("br_a", 2, True), ("br_b", 5, True)]


def test_units_after_a_broken_unit_and_macro_ranges(sv: VerilogParser) -> None:
    recs = sv.parse((ASSETS / "lost.v").read_text(), "lost.v")
    assert [(r["name"], r["start_line"], r["end_line"], r["parse_ok"]) for r in recs] == [
        ("first", 2, 10, True),
        ("second", 13, 15, True),
        ("third", 18, 20, True),
    ]
    assert recs[0]["comment"] == "first: an ifdef around a leading-comma port"
    assert ports(recs[2]) == [("d", "input", "[7:0]"), ("q", "output", "[7:0]")]


MACROS = """\
`define ASSERT(name, prop) name: assert property (@(posedge clk) prop);
module checked (input clk, a, b);
  `ASSERT(a_implies_b, a |-> ##1 b)
  `UNKNOWN_ASSERT(chk2, a |=> b)
endmodule
"""


def test_macros_holding_properties(sv: VerilogParser) -> None:
    [r] = sv.parse(MACROS, "checked.sv")
    assert (r["name"], r["parse_ok"], r["start_line"]) == ("checked", True, 2)
    [raw] = sv.parse(MACROS, "checked.sv", preprocess=False)
    assert raw["parse_ok"] is False


def test_unit_the_grammar_cannot_parse_still_gets_a_record(sv: VerilogParser) -> None:
    text = (
        "module ok1 (input a); endmodule\n"
        "module broken (input a, output y);\n  assign y = a +* ;\n  foreach (d[i][j]) ;\nendmodule\n"
    )
    recs = by_name(sv.parse(text, "x.v"))
    assert set(recs) == {"ok1", "broken"}
    assert recs["ok1"]["parse_ok"] is True
    b = recs["broken"]
    assert (b["parse_ok"], b["start_line"], b["end_line"]) == (False, 2, 5)
    assert 0 < b["error_line_share"] <= 1
    assert b["source"] == "\n".join(text.split("\n")[1:5])


@pytest.mark.parametrize(
    "text",
    [
        "#ifdef X\nmodule p11; endmodule\n#endif\n",  # C preprocessor in a .v file
        "@0000\n" + "\n".join(f"{i:08X}" for i in range(200)) + "\n",  # a hex memory image named .v
        "\x00\x01binary\x02" * 50,
        "module",
        "endmodule endmodule",
        "`ifdef A\n`ifdef B\nmodule",
    ],
)
def test_non_verilog_input_never_raises(sv: VerilogParser, vlog: VerilogParser, text: str) -> None:
    for parser in (sv, vlog):
        recs = parser.parse(text, "mem.v")
        assert all(isinstance(r["parse_ok"], bool) for r in recs)
    assert sv.parse("@0000\nDEADBEEF\n", "mem.v") == []


def test_grammar_selection() -> None:
    assert VerilogParser("verilog").grammar == "tree-sitter-verilog"
    assert VerilogParser().grammar == "tree-sitter-systemverilog"
    with pytest.raises(ValueError, match="unknown grammar 'vhdl'"):
        VerilogParser("vhdl")


def test_comment_block_forms(sv: VerilogParser) -> None:
    text = (
        "// Copyright 2026 Example. SPDX-License-Identifier: MIT\n"
        "\n"
        "/**********************\n"
        " * counter: counts up.\n"
        " *   wraps at the top.\n"
        " **********************/\n"
        "(* keep_hierarchy *)\n"
        "module counter (input clk); endmodule // trailing\n"
        "module after (input clk); endmodule\n"
    )
    r = by_name(sv.parse(text, "c.v"))
    assert r["counter"]["comment"] == "counter: counts up.\n  wraps at the top."
    assert r["after"]["comment"] == ""


def test_detect_language() -> None:
    assert detect_language("a/b.vh", "logic x;") == "verilog"
    assert detect_language("a/b.SVH", "") == "systemverilog"
    assert detect_language("a/b.txt", "always_ff @(posedge clk)") == "systemverilog"
    assert detect_language("a/b.txt", "always @(posedge clk)") == "verilog"


def test_normalize_ignores_comments_and_whitespace_only() -> None:
    a = "module m(input a, output y); // c\n  assign y = a<=1;\nendmodule\n"
    b = "/* hdr */ module m (input a,\n output y);\n\tassign y=a <= 1;   endmodule"
    assert normalize(a) == normalize(b) == "module m ( input a , output y ) ; assign y = a < = 1 ; endmodule"
    assert normalize(a) != normalize(a.replace("y", "z"))
    assert normalize('s = "a  // b";') == 's = "a  // b" ;'


# -- the preprocessing measurement on the constructs of shared/notes/verilog-parsers.md --
P_FILES = {  # asset -> expected unit names
    "p1.sv": ["p1"], "p1u.sv": ["p1u"], "p2.v": ["p2"], "p3.v": ["p3"], "p4.v": ["p4"],
    "p6.v": ["p6"], "p6u.v": ["p6u"], "p7.v": ["p7"], "p7u.v": ["p7u"], "p8.v": ["p8"],
    "p9.v": ["p9"], "p10.v": ["p10"], "branch.v": ["br_a", "br_b"],
    "lost.v": ["first", "second", "third"], "header_split.v": ["cfg_core", "dbg_unit"],
}


def measure(parser: VerilogParser, **kw: bool) -> tuple[float, float, float]:
    """(share of expected units found, share parsed clean, mean error_line_share)."""
    found = clean = 0
    shares: list[float] = []
    total = sum(len(v) for v in P_FILES.values())
    for name, expected in P_FILES.items():
        recs = by_name(parser.parse((ASSETS / name).read_text(), name, **kw))
        for unit in expected:
            if unit in recs:
                found += 1
                clean += recs[unit]["parse_ok"]
                shares.append(recs[unit]["error_line_share"])
            else:
                shares.append(1.0)
    return found / total, clean / total, sum(shares) / len(shares)


@pytest.mark.parametrize("grammar", ["systemverilog", "verilog"])
def test_preprocessing_finds_every_unit_and_parses_them_clean(grammar: str) -> None:
    parser = VerilogParser(grammar)
    found, clean, err = measure(parser)
    assert (found, clean, err) == (1.0, 1.0, 0.0)
    raw_found, raw_clean, raw_err = measure(parser, preprocess=False, recover=False)
    assert raw_clean <= 0.5 and raw_err > 0.1  # what the raw grammar gives on the same files


# -- ParseStage --
def files_table(rows: list[dict[str, Any]]) -> pa.Table:
    base = {"url": "file:///r", "commit": "c0ffee", "license": "MIT", "encoding": "utf-8", "manifest_index": 0}
    return pa.Table.from_pylist(
        [{**base, **r, "n_bytes": len((r.get("text") or "").encode())} for r in rows], schema=FILES_SCHEMA
    )


def test_parse_stage_rows_schema_ids_and_includes() -> None:
    table = files_table(
        [
            {"repo": "r", "path": "inc/defs.vh", "text": "`ifndef D\n`define D\n`define RANGE 15:0\n`endif\n"},
            {"repo": "r", "path": "rtl/a.v", "text": '`include "defs.vh"\nmodule a (input [`RANGE] x); endmodule\n'},
            {"repo": "r", "path": "rtl/b.sv", "text": ANSI},
            {"repo": "r", "path": "rtl/empty.v", "text": ""},
            {"repo": "r", "path": "rtl/null.v", "text": None},
        ]
    )
    stage = ParseStage()
    out = stage(table)
    assert out.schema == PARSED_MODULES_SCHEMA
    rows = out.to_pylist()
    assert [(r["path"], r["name"], r["start_line"]) for r in rows] == [("rtl/a.v", "a", 2), ("rtl/b.sv", "ansi_top", 3)]
    a = rows[0]
    assert a["ports"] == [{"name": "x", "direction": "input", "type": "[15:0]"}]  # via the include
    assert a["parse_ok"] is True
    assert a["id"] == hashlib.sha256(b"file:///r|c0ffee|rtl/a.v|2").hexdigest()
    assert a["sha256"] == hashlib.sha256(a["source"].encode()).hexdigest()
    assert a["norm_sha256"] is None  # filled by the dedup signature step (corpus.dedup.SignatureStage)
    assert (a["repo"], a["url"], a["commit"], a["license"], a["encoding"], a["manifest_index"]) == (
        "r", "file:///r", "c0ffee", "MIT", "utf-8", 0,
    )
    assert a["language"] == "verilog" and rows[1]["language"] == "systemverilog"
    assert stage(table).equals(out)  # deterministic
    assert stage(table.to_batches()[0]).equals(out)
    assert stage(table.to_pydict()).equals(out)


def test_parse_stage_survives_a_file_that_breaks_the_parser(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    stage = ParseStage()
    real = stage.parser.parse

    def flaky(text: str, path: str = "", **kw: Any) -> list[dict[str, Any]]:
        if path == "bad.v":
            raise RecursionError("boom")
        return real(text, path, **kw)

    monkeypatch.setattr(stage.parser, "parse", flaky)
    table = files_table(
        [
            {"repo": "r", "path": "bad.v", "text": "module bad; endmodule\n"},
            {"repo": "r", "path": "good.v", "text": "module good; endmodule\n"},
        ]
    )
    with caplog.at_level(logging.WARNING, logger="corpus.verilog"):
        out = stage(table)
    assert out.column("name").to_pylist() == ["good"]
    assert stage.n_failed == 1
    assert "r:bad.v" in caplog.text and "RecursionError" in caplog.text


def test_parse_stage_rejects_a_batch_that_is_not_files() -> None:
    from corpus.schema import SchemaError

    with pytest.raises(SchemaError, match="parse"):
        ParseStage()(pa.table({"repo": ["r"], "path": ["a.v"], "bogus": [1]}))


# -- the bundled sample corpus --
def test_sample_corpus_units_comments_duplicates_and_licences(sv: VerilogParser) -> None:
    recs: list[tuple[str, dict[str, Any]]] = []
    for f in sorted(SAMPLE.rglob("*")):
        if f.suffix in (".v", ".sv", ".vh", ".svh"):
            headers = {h.name: h.read_text() for h in f.parents[1].rglob("*.*vh")}
            for r in sv.parse(f.read_text(), str(f.relative_to(SAMPLE)), resolve=headers.get):
                recs.append((str(f.relative_to(SAMPLE)), r))
    assert 25 <= len(recs) <= 40
    assert all(r["parse_ok"] and r["comment"] and r["ports"] or r["kind"] == "package" for _, r in recs)
    kinds = {r["kind"] for _, r in recs}
    assert kinds == {"module", "interface", "package", "primitive"}
    assert {Path(p).suffix for p in (q for q, _ in recs)} == {".v", ".sv"}
    assert {f.suffix for f in SAMPLE.rglob("*")} >= {".v", ".sv", ".vh", ".svh"}
    norm: dict[str, list[str]] = {}
    for path, r in recs:
        norm.setdefault(hashlib.sha256(normalize(r["source"]).encode()).hexdigest(), []).append(path)
    dups = [v for v in norm.values() if len(v) > 1]
    assert dups == [["dspkit/src/fifo_sync.v", "tinycores/rtl/sync_fifo.v"]]
    counters = [r for _, r in recs if r["name"] == "tc_counter"]
    assert len(counters) == 2 and normalize(counters[0]["source"]) != normalize(counters[1]["source"])
    licences = {d.name: (d / "LICENSE").read_text() if (d / "LICENSE").exists() else None for d in SAMPLE.iterdir()}
    assert "Permission is hereby granted" in licences["tinycores"]
    assert "Apache License" in licences["svperiph"] and "Version 2.0" in licences["svperiph"]
    assert "Redistribution and use in source and binary forms" in licences["dspkit"]
    assert licences["student_labs"] is None
    assert not any((d / ".git").exists() for d in SAMPLE.iterdir())
    assert sum(f.stat().st_size for f in SAMPLE.rglob("*") if f.is_file()) < 150_000


# -- issue 9: grammar gaps and constructs of the users' repositories (Verilog written for these tests) --
GAPS = """\
`define CHECK(name, expr) name: assert property (@(posedge clk) (expr));
// Exercises constructs tree-sitter-systemverilog rejects as written.
module gap_zoo #(
  parameter int DEPTH = 8
) (
  input  logic clk,
  input  logic global,
  output logic expect
);
  logic [$clog2(DEPTH)-1:0] count;
  assign expect = count == $clog2(DEPTH)'(DEPTH - 1);
  fifo #(.DEPTH, .WIDTH(4)) u_fifo (.clk, .global(global));
  covergroup cg @(posedge clk);
    cp_a: coverpoint u_fifo.level;
    cp_b: coverpoint count;
    ab: cross u_fifo.level, cp_b iff (u_fifo.valid);
  endgroup
  always_ff @(posedge clk) if (count > DEPTH) $fatal(1);
  `CHECK(count_A,
         // never past the top
         count <= DEPTH)
endmodule
"""


def test_grammar_gaps_parse_clean_and_names_read_as_written(sv: VerilogParser) -> None:
    [r] = sv.parse(GAPS, "gap_zoo.sv")
    assert (r["name"], r["start_line"], r["end_line"]) == ("gap_zoo", 3, 22)
    assert (r["parse_ok"], r["error_line_share"]) == (True, 0.0)
    assert ports(r) == [("clk", "input", "logic"), ("global", "input", "logic"), ("expect", "output", "logic")]
    assert r["instances"] == ["fifo"]
    assert r["source"] == "\n".join(GAPS.split("\n")[2:22])  # the original text, not the rewrite
    [raw] = sv.parse(GAPS, "gap_zoo.sv", preprocess=False)
    assert raw["parse_ok"] is False  # what the grammar does with the text as written


def test_inline_include_in_a_parameter_list(sv: VerilogParser) -> None:
    files = {"pll.vh": "parameter int DIV = 2,\n  parameter int MUL = 5\n"}
    text = '// PLL wrapper.\nmodule pll_top #(`include "pll.vh") (input clk_i, output clk_o);\n  assign clk_o = clk_i;\nendmodule\n'
    [r] = sv.parse(text, "pll_top.sv", resolve=files.get)
    assert params(r) == [("DIV", "2", "parameter"), ("MUL", "5", "parameter")]
    assert (r["parse_ok"], r["start_line"], r["end_line"]) == (True, 2, 4)


def test_c_preprocessor_lines_in_a_verilog_file(sv: VerilogParser) -> None:
    text = (
        "module part_o (input clk, output [1:0] y);\n"
        "#ifdef WITH_DMA\n"
        "  dma u_dma (.clk(clk));\n"
        "#else\n"
        "  assign y = 2'b00;\n"
        "#endif\n"
        "endmodule\n"
    )
    [r] = sv.parse(text, "part_o.v")
    assert (r["parse_ok"], r["instances"], r["end_line"]) == (True, [], 7)
    [on] = sv.parse(text, "part_o.v", defines={"WITH_DMA": ""})
    assert on["instances"] == ["dma"]


def test_instances_in_bind_directives_and_deep_generate_nesting(sv: VerilogParser) -> None:
    depth = 12  # nested generate blocks put the instance far below the unit
    opens = "".join(f"  if (P > {i}) begin : g{i}\n" for i in range(depth))
    closes = "  end\n" * depth
    text = (
        "module binder;\n  bind target_mod checker_mod u_chk (.*);\nendmodule\n"
        f"module deep #(parameter P = 20) ();\n{opens}  leaf u_leaf ();\n{closes}  top_leaf u_top ();\nendmodule\n"
    )
    r = by_name(sv.parse(text, "b.sv"))
    assert r["binder"]["instances"] == ["checker_mod"]
    assert r["deep"]["instances"] == ["leaf", "top_leaf"]
    assert r["deep"]["parse_ok"] is True


def test_parse_time_limit_bounds_a_large_file() -> None:
    import time

    unit = "module m{i} (input a, output y); assign y = a & ~a | (a ^ a); endmodule\n"
    text = "".join(unit.format(i=i) for i in range(400_000))  # ~31 MB: several seconds of tree-sitter alone
    table = files_table([{"repo": "r", "path": "huge.v", "text": text},
                         {"repo": "r", "path": "ok.v", "text": "module ok; endmodule\n"}])
    stage = ParseStage(parse_timeout_s=0.3)
    t = time.process_time()  # CPU time: robust to other load on the machine
    out = stage(table)
    cpu = time.process_time() - t
    assert out.column("name").to_pylist() == ["ok"]
    assert stage.last_stats["failed_by_reason"] == {"timeout": 1}
    assert cpu < 3.0, cpu  # the limit, not the file's size, bounds the time (unbounded: ~10 s of CPU)


def test_techmap_cell_named_with_a_dollar(sv: VerilogParser) -> None:
    text = "// Map a latch cell.\nmodule $_LATCH_N_ (input E, input D, output Q);\n  LAT_X1 _map_ (.G(E), .D(D), .Q(Q));\nendmodule\n"
    [r] = sv.parse(text, "techmap.v")
    assert (r["name"], r["start_line"], r["end_line"], r["parse_ok"]) == ("$_LATCH_N_", 2, 4, True)
    assert r["instances"] == ["LAT_X1"] and [p["name"] for p in r["ports"]] == ["E", "D", "Q"]
