"""run_dedup on a small PARSED_MODULES dataset with a local Ray (integration)."""

import pytest

from corpus.dedup import DedupConfig, norm_sha256
from corpus.schema import MODULES_SCHEMA, PARSED_MODULES_SCHEMA, conform, from_rows

pytestmark = pytest.mark.integration

FIFO = "module fifo #(parameter W = 8)(input clk, input [W-1:0] d, output [W-1:0] q);\n" + "".join(
    f"  reg [W-1:0] s{i}; always @(posedge clk) s{i} <= {'d' if i == 0 else f's{i - 1}'};\n" for i in range(40)
) + "  assign q = s39;\nendmodule\n"
ALU = "module alu(input [7:0] a, input [7:0] b, input [2:0] op, output reg [7:0] y);\n  always @* case (op)\n" + "".join(
    f"    3'd{i % 8}: y = a {'+-&|^'[i % 5]} (b >> {i});\n" for i in range(40)
) + "  endcase\nendmodule\n"


def _rows():
    def row(i, repo, idx, path, source, license):
        return {"id": f"id{i}", "repo": repo, "url": f"file:///{repo}", "commit": "0" * 40, "path": path,
                "license": license, "kind": "module", "name": path, "start_line": 1, "source": source,
                "manifest_index": idx}

    near_alu = ALU.replace("y = a + (b >> 0)", "y = a + b").replace("(b >> 5)", "(b >> 3'd5)")
    return [
        row(0, "gplcores", 0, "fifo.v", FIFO, "GPL-3.0"),  # exact dup of 1, earlier in the manifest
        row(1, "mitcores", 1, "rtl/fifo.v", "// same fifo, reformatted\n" + FIFO.replace("\n", "\n\n"), "MIT"),
        row(2, "mitcores", 1, "rtl/alu.v", ALU, "MIT"),
        row(3, "other", 2, "alu2.v", near_alu, "MIT"),  # near dup of 2
        row(4, "other", 2, "u1.v", "module u1(input a, output y); assign y = ~a; endmodule\n", "MIT"),
        row(5, "other", 2, "u2.v", "module u2(input [3:0] a, output [3:0] y);\n  assign y = a + 4'd3;\nendmodule\n", None),
    ]


def test_run_dedup_clusters_and_keep(ray_session):
    import ray

    from pipelines.dedup import run_dedup

    table = from_rows(_rows(), PARSED_MODULES_SCHEMA, stage="test")
    ds = ray.data.from_arrow([table.slice(0, 3), table.slice(3)])  # pairs span blocks
    out, stats = run_dedup(ds, DedupConfig(batch_size=2))
    got = {r["id"]: r for r in conform(_collect(out),
                                         MODULES_SCHEMA, stage="t").to_pylist()}
    assert len(got) == 6
    assert all(r["norm_sha256"] == norm_sha256(r["source"]) for r in got.values())  # filled once, in dedup
    assert (got["id0"]["dup_cluster"], got["id0"]["dup_kind"], got["id0"]["keep"]) == ("id1", "exact", False)
    assert (got["id1"]["dup_cluster"], got["id1"]["keep"]) == ("id1", True)  # permissive beats manifest order
    assert (got["id3"]["dup_cluster"], got["id3"]["dup_kind"], got["id3"]["keep"]) == ("id2", "near", False)
    assert (got["id2"]["dup_cluster"], got["id2"]["keep"]) == ("id2", True)
    for i in ("id4", "id5"):
        assert (got[i]["dup_cluster"], got[i]["dup_kind"], got[i]["keep"]) == (i, "unique", True)
    per_cluster = {}
    for r in got.values():
        per_cluster.setdefault(r["dup_cluster"], []).append(r["keep"])
    assert all(sum(k) == 1 for k in per_cluster.values())
    assert {k: stats[k] for k in ("rows", "unique", "exact_dups_removed", "near_dups_removed", "clusters")} == {
        "rows": 6, "unique": 2, "exact_dups_removed": 1, "near_dups_removed": 1, "clusters": 2}


def test_run_dedup_disabled_keeps_everything(ray_session):
    import ray

    from pipelines.dedup import run_dedup

    ds = ray.data.from_arrow(from_rows(_rows(), PARSED_MODULES_SCHEMA, stage="test"))
    out, stats = run_dedup(ds, DedupConfig(enabled=False))
    rows = _collect(out).to_pylist()
    assert [r["keep"] for r in rows] == [True] * 6 and {r["dup_kind"] for r in rows} == {"unique"}
    assert stats["rows"] == 6 and stats["exact_dups_removed"] == 0


def _collect(ds):
    import pyarrow as pa

    return pa.concat_tables(list(ds.iter_batches(batch_format="pyarrow", batch_size=None)))
