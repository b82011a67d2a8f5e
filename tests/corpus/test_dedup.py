import numpy as np
import pyarrow as pa
import pytest

from corpus.dedup import (
    DedupConfig,
    NearDupIndex,
    SignatureStage,
    apply_assignment,
    band_keys,
    bucket_edges,
    assign,
    assignment_stats,
    choose_bands,
    choose_keep,
    clusters,
    exact_edges,
    explode_keys,
    jaccard_estimate,
    lsh_bands,
    minhash,
    near_edges,
    norm_sha256,
    shingles,
    signatures,
)
from corpus.schema import MODULES_SCHEMA, PARSED_MODULES_SCHEMA, from_rows
from corpus.verilog import normalize

BASE = "module m(input a, output b);\n" + "".join(f"  assign w{i} = x{i} ^ y{i};\n" for i in range(60)) + "endmodule\n"
NEAR = BASE.replace("w7 ", "w7b ").replace("x30 ", "z30 ")
OTHER = "module other(input clk, input d, output reg q);\n  always @(posedge clk) q <= d;\nendmodule\n"


def test_shingles_ignore_whitespace_and_comments():
    assert shingles("a  =\n b ; // note", 2) == shingles("a = b; /* x */", 2) == {"a =", "= b", "b ;"}
    assert shingles("a b", 5) == {"a b"} and shingles("", 5) == set()


def test_minhash_deterministic_vectorised_and_estimates_jaccard():
    s1, s2 = shingles(BASE), shingles(NEAR)
    true_j = len(s1 & s2) / len(s1 | s2)
    sig = minhash(BASE, num_perm=128, seed=3)
    assert sig.dtype == np.uint32 and sig.shape == (128,)
    assert np.array_equal(sig, minhash(s1, num_perm=128, seed=3))
    batch = minhash([s1, set(), s2], num_perm=128, seed=3)
    assert batch.shape == (3, 128)
    assert np.array_equal(batch[0], sig) and np.all(batch[1] == 0xFFFFFFFF)
    assert not np.array_equal(sig, minhash(BASE, num_perm=128, seed=4))
    assert abs(jaccard_estimate(sig, batch[2]) - true_j) < 0.1
    assert jaccard_estimate(sig, minhash(OTHER, 128, 3)) < 0.2


def test_text_signatures_match_shingle_sets_and_differ_by_one_window():
    texts = [BASE, "", "a b", OTHER, NEAR]
    sigs = signatures([normalize(t) for t in texts], k=5, num_perm=64, seed=2)
    sets = minhash([shingles(t) for t in texts], num_perm=64, seed=2)
    assert np.array_equal(sigs, sets)  # a shingle's hash depends only on its tokens
    assert np.all(sigs[1] == 0xFFFFFFFF) and not np.all(sigs[2] == 0xFFFFFFFF)
    # windows never span two texts: "a b" next to BASE gives the same as "a b" alone
    assert np.array_equal(signatures([normalize("a b")], 5, 64, 2)[0], sigs[2])
    keys = band_keys(sigs, 8, 8)
    assert keys.shape == (5, 8) and keys.dtype == np.uint64
    assert np.array_equal(keys[0], band_keys(sigs[:1], 8, 8)[0]) and len(set(keys[0].tolist())) == 8
    assert (keys[0] == keys[4]).sum() < 8 and not (keys[0] == keys[3]).any()


def test_one_permutation_bins_are_densified_and_estimate_jaccard():
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(3000)]
    a = [rng.choice(words) for _ in range(1500)]
    b = a[:1200] + [rng.choice(words) for _ in range(300)]  # shares the first 1200 tokens
    sa, sb = shingles(" ".join(a)), shingles(" ".join(b))
    sig = minhash([sa, sb, {"x y"}, {"x y"}, {"x z"}], num_perm=128, seed=5)
    assert not (sig == 0xFFFFFFFF).any()  # every bin filled, even for one-shingle sets
    true_j = len(sa & sb) / len(sa | sb)
    assert abs(jaccard_estimate(sig[0], sig[1]) - true_j) < 0.12
    assert np.array_equal(sig[2], sig[3]) and jaccard_estimate(sig[2], sig[4]) < 0.1


def test_bands_for_threshold_and_config():
    b, r = choose_bands(0.8, 128)
    assert b * r <= 128 and abs((1 / b) ** (1 / r) - 0.8) < 0.05
    keys = lsh_bands(minhash(BASE), b, r)
    assert len(keys) == b and len(set(keys)) == b
    assert DedupConfig().band_rows() == (b, r)
    assert DedupConfig(bands=16).band_rows() == (16, 8)
    with pytest.raises(ValueError):
        DedupConfig(bands=20, rows=10)
    with pytest.raises(ValueError):
        lsh_bands(minhash(BASE), 20, 10)


def test_exact_dup_by_normalised_text():
    reformatted = "// header comment\n" + BASE.replace("\n", "\n\n").replace(" = ", "=")
    assert norm_sha256(reformatted) == norm_sha256(BASE) != norm_sha256(NEAR)


def test_union_find_clusters():
    roots = clusters([("c", "d"), ("b", "c"), ("x", "y"), ("d", "b")])
    assert roots == {"b": "b", "c": "b", "d": "b", "x": "x", "y": "x"}
    assert clusters([]) == {}


def test_keep_policy_permissive_then_manifest_order_then_path_then_line():
    rows = [
        {"id": "gpl", "license": "GPL-3.0", "manifest_index": 0, "path": "a.v", "start_line": 1},
        {"id": "mit_late", "license": "MIT", "manifest_index": 2, "path": "a.v", "start_line": 1},
        {"id": "mit_b", "license": "MIT", "manifest_index": 1, "path": "b.v", "start_line": 1},
        {"id": "apache_a", "license": "Apache-2.0", "manifest_index": 1, "path": "a.v", "start_line": 9},
        {"id": "apache_a1", "license": "Apache-2.0", "manifest_index": 1, "path": "a.v", "start_line": 3},
    ]
    assert choose_keep(rows) == "apache_a1"
    assert choose_keep(rows[:3]) == "mit_b"
    assert choose_keep(rows[:1]) == "gpl"
    assert choose_keep([rows[0], {"id": "none", "license": None, "manifest_index": 0, "path": "a.v"}]) == "gpl"


def test_assign_kinds_and_one_keep_per_cluster():
    members = {"r": [
        {"id": "a", "norm_sha256": "h1", "license": "GPL-3.0", "manifest_index": 0, "path": "x.v", "start_line": 1},
        {"id": "b", "norm_sha256": "h1", "license": "MIT", "manifest_index": 1, "path": "x.v", "start_line": 1},
        {"id": "c", "norm_sha256": "h2", "license": "MIT", "manifest_index": 2, "path": "x.v", "start_line": 1},
    ]}
    got = assign(members)
    assert got == {"b": ("b", "near", True), "a": ("b", "exact", False), "c": ("b", "near", False)}
    assert assignment_stats(10, got) == {"rows": 10, "unique": 7, "exact_dups_removed": 1,
                                         "near_dups_removed": 1, "clusters": 1, "kept": 8}


def _parsed(rows):
    base = {"repo": "r", "url": "u", "commit": "c", "license": "MIT", "start_line": 1, "manifest_index": 0}
    return from_rows([{**base, **r} for r in rows], PARSED_MODULES_SCHEMA, stage="test")


def test_batch_stages_without_ray():
    t = _parsed([
        {"id": "1", "path": "a.v", "source": BASE},
        {"id": "2", "path": "b.v", "source": "// copy\n" + BASE},
        {"id": "3", "path": "c.v", "source": NEAR},
        {"id": "4", "path": "d.v", "source": OTHER},
    ])
    stage = SignatureStage(num_perm=128, shingle_size=5, seed=1)
    sigs = stage(t)
    assert sigs.column_names[:4] == ["id", "norm_sha256", "signature", "bands"]
    assert sigs.num_rows == 4 and len(sigs.column("bands")[0].as_py()) == stage.bands
    h = sigs.column("norm_sha256").to_pylist()
    assert h[0] == h[1] != h[2]
    assert exact_edges(sigs.select(["id", "norm_sha256"]).slice(0, 2)).to_pylist() == [{"a": "1", "b": "2"}]
    full = SignatureStage(num_perm=128, shingle_size=5, seed=1, with_rows=True)(t)
    assert full.column_names == [*PARSED_MODULES_SCHEMA.names, "signature", "bands"]
    assert full.column("norm_sha256").to_pylist() == h and full.column("source").to_pylist() == t.column("source").to_pylist()
    assert apply_assignment(full, {}).schema == MODULES_SCHEMA  # signature and bands dropped
    exploded = explode_keys(sigs)
    assert exploded.num_rows == 4 * stage.bands + 4  # band keys plus one exact key per module
    assert exploded.filter(exploded.column("exact")).column("signature").null_count == 4
    # Every band bucket that holds 1 (or 2) and 3 yields the verified edge 1-3; 4 never joins.
    bands_only = exploded.filter(pa.compute.invert(exploded.column("exact")))
    edges = set()
    for key in set(bands_only.column("key").to_pylist()):
        bucket = bands_only.filter(pa.compute.equal(bands_only.column("key"), pa.scalar(key, pa.uint64())))
        edges |= {(e["a"], e["b"]) for e in near_edges(bucket, 0.8).to_pylist()}
    assert edges == {("1", "3")}
    assert near_edges(bands_only.slice(0, 1)).num_rows == 0
    # All keys of a block at once: the exact edge 1-2, the near edge 1-3, and each linked module's keep fields.
    links = bucket_edges(exploded.take(list(range(exploded.num_rows))[::-1]), 0.8).to_pylist()
    assert {(r["a"], r["b"]) for r in links if r["b"]} == {("1", "2"), ("1", "3")}
    nodes = {r["a"]: r for r in links if r["b"] is None}
    assert sorted(nodes) == ["1", "2", "3"] and nodes["3"]["path"] == "c.v" and nodes["2"]["norm_sha256"] == h[0]
    assert bucket_edges(exploded.slice(0, 1)).num_rows == 0

    out = apply_assignment(t, {"1": ("1", "near", True), "2": ("1", "exact", False), "3": ("1", "near", False)})
    assert out.schema == MODULES_SCHEMA
    assert out.column("keep").to_pylist() == [True, False, False, True]
    assert out.column("dup_kind").to_pylist() == ["near", "exact", "near", "unique"]
    assert out.column("dup_cluster").to_pylist() == ["1", "1", "1", "4"]


def test_near_dup_index():
    idx = NearDupIndex(threshold=0.8)
    idx.add("base", BASE)
    idx.add("other", OTHER)
    assert len(idx) == 2
    assert idx.query(BASE.replace("w7 ", "w7b ")) == ["base"]
    assert idx.query(OTHER) == ["other"]
    assert idx.query("module third(input [7:0] a, output [7:0] y); assign y = ~a + 8'd1; endmodule") == []
