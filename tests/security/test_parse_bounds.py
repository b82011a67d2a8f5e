"""Issue 8 (parser side): a hostile Verilog file must cost bounded time and memory.

Each case hung or took minutes before the fix: a 10-level macro expansion bomb (about 500
bytes), a self-including header, thousands of unclosed macro calls, a file of unterminated
module headers (quadratic recovery), and a file tree-sitter itself parses slowly (the per-file
time limit). In ``ParseStage`` each is a failed file counted by reason, not a hang.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import pytest

from corpus.preprocess import ExpansionLimit, Macro, ParseTimeout, preprocess
from corpus.schema import FILES_SCHEMA
from corpus.verilog import ParseStage, VerilogParser, failure_reason, merge_parse_stats

pytestmark = pytest.mark.timeout(120)  # the old code hangs: fail instead of blocking the run


def macro_bomb(levels: int = 10, copies: int = 8) -> str:
    lines = ["`define M0 x"]
    lines += [f"`define M{k} " + " ".join([f"`M{k - 1}"] * copies) for k in range(1, levels + 1)]
    lines.append(f"module top; wire w = `M{levels}; endmodule")
    return "\n".join(lines) + "\n"


GOOD = "// a counter\nmodule good(input clk, output reg [3:0] q);\n  always @(posedge clk) q <= q + 1;\nendmodule\n"
# tree-sitter's error recovery is superlinear on a long run of juxtaposed macro uses (20,000: ~16 s)
SLOW = "module slow; wire a = " + "`x " * 20000 + ";\nendmodule\n"


def elapsed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - returned for the assertions
        out = exc
    return out, time.perf_counter() - t0


def test_macro_bomb_is_an_expansion_limit_not_a_hang() -> None:
    text = macro_bomb()
    assert len(text) < 600
    exc, seconds = elapsed(lambda: preprocess(text))
    assert isinstance(exc, ExpansionLimit) and exc.reason == "expansion_limit", exc
    assert seconds < 10
    exc, _ = elapsed(lambda: VerilogParser().parse(text, "bomb.v"))
    assert isinstance(exc, ExpansionLimit)


def test_recursive_define_stops_at_the_nesting_limit() -> None:
    with pytest.raises(ExpansionLimit, match="deeper than 64"):
        preprocess("`define A (`A + 1)\nmodule t; wire w = `A; endmodule\n")
    with pytest.raises(ExpansionLimit, match="deeper than 3"):
        preprocess("`define A `B\n`define B `C\n`define C `D\n`define D `E\n`define E 1\nwire w = `A;\n", max_depth=3)


def test_self_including_header_is_bounded() -> None:
    header = "`define H 1\n" + '`include "h.vh"\n' * 10  # 10 ** 16 passes before the fix
    exc, seconds = elapsed(lambda: preprocess('`include "h.vh"\nmodule t; endmodule\n',
                                              resolve=lambda name: header))
    assert isinstance(exc, ExpansionLimit) and seconds < 10


def test_unclosed_macro_calls_are_bounded() -> None:
    text = "module t;\n" + "`f(" * 30000 + "\nendmodule\n"  # each call scanned to the end of the file
    exc, seconds = elapsed(lambda: preprocess(text))
    assert isinstance(exc, ExpansionLimit) and seconds < 10


def test_expansion_budget_allows_ordinary_files_and_is_configurable() -> None:
    body = "a" * 100
    text = f"`define W {body}\n" + "wire x = `W;\n" * 1000
    out = preprocess(text)
    assert out.text.count(body) == 1000 and out.text.count("\n") == text.count("\n")
    with pytest.raises(ExpansionLimit):
        preprocess(text, max_chars=10_000)
    with pytest.raises(ParseTimeout):
        preprocess(text, defines={"Z": Macro("Z", "1")}, deadline=time.monotonic() - 1)


def test_unterminated_module_headers_parse_in_linear_time() -> None:
    text = "".join(f"module m{i}(\n" for i in range(3000))  # 194 s before the fix
    recs, seconds = elapsed(lambda: VerilogParser(timeout_s=None).parse(text, "headers.v"))
    assert seconds < 20, seconds
    assert [r["name"] for r in recs] == [f"m{i}" for i in range(3000)]
    # each lost header is recovered up to the next header line (it used to run to the end of the file)
    assert all(r["start_line"] == r["end_line"] == i + 1 and not r["parse_ok"] for i, r in enumerate(recs[:-1]))
    assert (recs[-1]["start_line"], recs[-1]["end_line"]) == (3000, 3001)


def test_timeout_cancels_tree_sitter_and_leaves_the_parser_usable() -> None:
    parser = VerilogParser(timeout_s=0.3)
    exc, seconds = elapsed(lambda: parser.parse(SLOW, "slow.v"))
    assert isinstance(exc, ParseTimeout) and failure_reason(exc) == "timeout", exc
    assert seconds < 5
    [rec] = parser.parse(GOOD, "good.v")
    assert (rec["name"], rec["parse_ok"], rec["ports"][0]["name"]) == ("good", True, "clk")
    assert parser.parse(GOOD, "good.v", timeout_s=60) == [rec]


def test_parse_stage_counts_failed_files_by_reason() -> None:
    rows = [{"repo": "r", "path": p, "text": t} for p, t in
            (("bomb.v", macro_bomb()), ("good.v", GOOD), ("slow.v", SLOW), ("empty.v", ""))]
    base = {"url": "file:///r", "commit": "c", "license": "MIT", "encoding": "utf-8", "manifest_index": 0}
    table = pa.Table.from_pylist([{**base, **r, "n_bytes": len(r["text"])} for r in rows], schema=FILES_SCHEMA)
    stage = ParseStage(parse_timeout_s=0.5)
    out, seconds = elapsed(lambda: stage(table))
    assert seconds < 15
    assert out.column("name").to_pylist() == ["good"]
    st = stage.last_stats
    assert (st["files_parsed"], st["files_failed"]) == (1, 2)
    assert st["failed_by_reason"] == {"expansion_limit": 1, "timeout": 1}
    assert [(f["repo"], f["path"], f["reason"]) for f in st["failures"]] == [
        ("r", "bomb.v", "expansion_limit"), ("r", "slow.v", "timeout")]
    assert stage.n_failed == 2 and stage.failed_by_reason == {"expansion_limit": 1, "timeout": 1}
    merged = merge_parse_stats([st, st, {}])
    assert (merged["files_parsed"], merged["files_failed"]) == (2, 4)
    assert merged["failed_by_reason"] == {"expansion_limit": 2, "timeout": 2} and len(merged["failures"]) == 4
