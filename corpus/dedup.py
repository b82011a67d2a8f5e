"""Exact and near-duplicate detection core: shingles, MinHash, LSH bands, union-find, keep policy.

Plain functions and a callable stage, no Ray (``jobs/dedup.py`` composes them into Ray Data
steps). Deterministic: a signature depends only on (normalised text, shingle_size, num_perm,
seed), so reruns and different workers agree. Also used in memory by the synthesis job
(``NearDupIndex``) to drop near-duplicate synthetic examples.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from chipforge.vocab import sha256_hex
from chipforge.config import Config
from corpus.licenses import is_permissive
from corpus.schema import MODULES_SCHEMA, PARSED_MODULES_SCHEMA, conform
from corpus.verilog import normalize

_MERSENNE = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64(0xFFFFFFFF)
_EMPTY = np.uint32(0xFFFFFFFF)
_CHUNK = 1 << 15  # shingles hashed per numpy step (bounds memory to _CHUNK * num_perm * 8 bytes)



class DedupConfig(Config):
    """Exact (normalised-text hash) and near (MinHash LSH) deduplication of module rows."""

    enabled: bool = True
    threshold: float = Field(0.8, gt=0.0, le=1.0)  # estimated Jaccard over token shingles
    num_perm: int = Field(128, ge=8, le=1024)
    shingle_size: int = Field(5, ge=1, le=32)
    bands: int | None = Field(None, ge=1)  # None: chosen for the threshold (choose_bands)
    rows: int | None = Field(None, ge=1)
    seed: int = 1
    max_bucket: int = Field(200, ge=2)  # larger LSH buckets are compared to a window, not all pairs
    # Resources of the signature stage.
    num_cpus: float = 1
    batch_size: int | None = 256
    concurrency: int | None = None  # None: Ray Data decides (tasks)

    @model_validator(mode="after")
    def _bands_fit(self) -> DedupConfig:
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def band_rows(self) -> tuple[int, int]:
        """(bands, rows) to use: configured, completed from num_perm, or chosen for the threshold."""
        return band_rows(self.num_perm, self.threshold, self.bands, self.rows)


def tokens(text: str) -> list[str]:
    """Tokens of the normalised text (comments and whitespace ignored)."""
    return normalize(text).split()


def shingles(text: str, k: int = 5) -> set[str]:
    """Set of k-token shingles of ``normalize(text)``; texts shorter than k tokens give one shingle."""
    return _shingle_tokens(tokens(text), k)


def _hash32(items: Iterable[str]) -> np.ndarray:
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=4).digest(), "little")
         for s in items),
        dtype=np.uint64,
    )


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (a, b) of the universal hashes h(x) = (a*x + b) mod (2^61 - 1)."""
    rng = np.random.RandomState(seed)
    a = rng.randint(1, 1 << 31, size=num_perm, dtype=np.int64).astype(np.uint64)
    b = rng.randint(0, 1 << 31, size=num_perm, dtype=np.int64).astype(np.uint64)
    return a, b


def minhash(shingle_sets: str | set[str] | Sequence[set[str]], num_perm: int = 128, seed: int = 1,
            k: int = 5) -> np.ndarray:
    """MinHash signatures, uint32.

    A text (shingled with ``k``) or one shingle set gives shape (num_perm,); a sequence of
    shingle sets gives (n, num_perm), computed in one vectorised pass over all shingles. An
    empty set gives all 0xFFFFFFFF.
    """
    if isinstance(shingle_sets, str):
        return minhash([shingles(shingle_sets, k)], num_perm, seed)[0]
    if isinstance(shingle_sets, (set, frozenset)):
        return minhash([shingle_sets], num_perm, seed)[0]
    sets = list(shingle_sets)
    out = np.full((len(sets), num_perm), _EMPTY, dtype=np.uint32)
    owners = np.repeat(np.arange(len(sets)), [len(s) for s in sets])
    if owners.size == 0:
        return out
    h = _hash32(x for s in sets for x in sorted(s))
    a, b = permutations(num_perm, seed)
    for lo in range(0, h.size, _CHUNK):
        hv = h[lo : lo + _CHUNK]
        vals = (((hv[:, None] * a[None, :] + b[None, :]) % _MERSENNE) & _MAX32).astype(np.uint32)
        own = owners[lo : lo + _CHUNK]
        starts = np.flatnonzero(np.r_[True, own[1:] != own[:-1]])
        mins = np.minimum.reduceat(vals, starts, axis=0)
        rows = own[starts]
        out[rows] = np.minimum(out[rows], mins)
    return out


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    """Share of equal MinHash slots: an unbiased estimate of the Jaccard similarity."""
    return float(np.mean(np.asarray(a) == np.asarray(b)))


def choose_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows), bands*rows <= num_perm, whose S-curve midpoint (1/b)^(1/r) is nearest threshold.

    Ties go to the lower midpoint (fewer missed pairs; false candidates are verified anyway).
    """
    best, err = (1, num_perm), float("inf")
    for r in range(1, num_perm + 1):
        b = num_perm // r
        e = abs((1.0 / b) ** (1.0 / r) - threshold)
        if e < err:
            best, err = (b, r), e
    return best


def band_rows(num_perm: int, threshold: float, bands: int | None = None, rows: int | None = None) -> tuple[int, int]:
    """(bands, rows): as given, the missing one completed from num_perm, or both chosen for the threshold."""
    if bands and rows:
        return bands, rows
    if bands:
        return bands, num_perm // bands
    if rows:
        return num_perm // rows, rows
    return choose_bands(threshold, num_perm)


def lsh_bands(sig: np.ndarray, bands: int, rows: int | None = None) -> list[str]:
    """One bucket key per band, ``'<band>:<hex digest of that band's slots>'``."""
    rows = rows or len(sig) // bands
    if bands * rows > len(sig):
        raise ValueError(f"bands*rows = {bands * rows} exceeds the signature length {len(sig)}")
    sig = np.ascontiguousarray(sig, dtype=np.uint32)
    return [
        f"{i}:{hashlib.blake2b(sig[i * rows:(i + 1) * rows].tobytes(), digest_size=8).hexdigest()}"
        for i in range(bands)
    ]


def norm_sha256(source: str) -> str:
    """Exact-dedup key: sha256 of the normalised text."""
    return sha256_hex(normalize(source))


SIGNATURES_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("norm_sha256", pa.string()),
        pa.field("signature", pa.list_(pa.uint32())),
        pa.field("bands", pa.list_(pa.string())),
        # Keep-policy inputs (small), so the driver never needs module rows.
        pa.field("license", pa.string()),
        pa.field("manifest_index", pa.int32()),
        pa.field("path", pa.string()),
        pa.field("start_line", pa.int32()),
    ]
)


class SignatureStage:
    """PARSED_MODULES batch → SIGNATURES_SCHEMA batch (id, norm_sha256, MinHash, LSH band keys, keep inputs).

    With ``with_rows`` it returns the PARSED_MODULES batch itself, ``norm_sha256`` filled, plus
    ``signature`` and ``bands`` (the corpus job's dedup carries whole rows, so each module's text
    is normalised once, here; ``apply_assignment`` drops the two extra columns).
    """

    def __init__(self, num_perm: int = 128, shingle_size: int = 5, seed: int = 1, bands: int | None = None,
                 rows: int | None = None, threshold: float = 0.8, with_rows: bool = False) -> None:
        self.num_perm, self.k, self.seed = num_perm, shingle_size, seed
        self.with_rows = with_rows
        self.bands, self.rows = band_rows(num_perm, threshold, bands, rows)

    @classmethod
    def from_config(cls, cfg: DedupConfig) -> SignatureStage:
        bands, rows = cfg.band_rows()
        return cls(cfg.num_perm, cfg.shingle_size, cfg.seed, bands, rows)

    def __call__(self, batch: pa.Table | Mapping[str, Any]) -> pa.Table:
        if not isinstance(batch, pa.Table):
            batch = pa.table(dict(batch))
        col = batch.column_names
        sources = [s or "" for s in batch.column("source").to_pylist()]
        norms = [normalize(s) for s in sources]
        if "norm_sha256" in col:
            hashes = [h or sha256_hex(n)
                      for h, n in zip(batch.column("norm_sha256").to_pylist(), norms)]
        else:
            hashes = [sha256_hex(n) for n in norms]
        sets = [_shingle_tokens(n.split(), self.k) for n in norms]
        sigs = minhash(sets, self.num_perm, self.seed)
        bands = [lsh_bands(s, self.bands, self.rows) for s in sigs]
        n = batch.num_rows

        def get(name: str) -> list[Any]:
            return batch.column(name).to_pylist() if name in col else [None] * n

        if self.with_rows:
            t = conform(batch, PARSED_MODULES_SCHEMA, stage="dedup.signatures")
            t = t.set_column(t.schema.get_field_index("norm_sha256"), "norm_sha256", pa.array(hashes, pa.string()))
            t = t.append_column("signature", pa.array(list(sigs), pa.list_(pa.uint32())))
            return t.append_column("bands", pa.array(bands, pa.list_(pa.string())))
        return pa.table(
            {
                "id": batch.column("id"),
                "norm_sha256": pa.array(hashes, pa.string()),
                "signature": pa.array(list(sigs), pa.list_(pa.uint32())),
                "bands": pa.array(bands, pa.list_(pa.string())),
                "license": pa.array(get("license"), pa.string()),
                "manifest_index": pa.array(get("manifest_index"), pa.int32()),
                "path": pa.array(get("path"), pa.string()),
                "start_line": pa.array(get("start_line"), pa.int32()),
            },
            schema=SIGNATURES_SCHEMA,
        )


def _shingle_tokens(toks: list[str], k: int) -> set[str]:
    if len(toks) <= k:
        return {" ".join(toks)} if toks else set()
    return {" ".join(toks[i : i + k]) for i in range(len(toks) - k + 1)}


def bucket_pairs(ids: Sequence[str], max_bucket: int = 200, window: int = 20) -> Iterable[tuple[str, str]]:
    """Candidate pairs in one LSH bucket: all pairs up to ``max_bucket`` members, else a sliding window.

    Members are sorted so the output is deterministic; the window bounds the quadratic blow-up
    of huge buckets (boilerplate) while still chaining similar members together.
    """
    ids = sorted(set(ids))
    if len(ids) <= max_bucket:
        for i in range(len(ids)):
            for j in range(i + 1, len(ids)):
                yield ids[i], ids[j]
        return
    for i in range(len(ids)):
        for j in range(i + 1, min(len(ids), i + 1 + window)):
            yield ids[i], ids[j]


def clusters(edges: Iterable[tuple[Hashable, Hashable]]) -> dict[Hashable, Hashable]:
    """Union-find over edges: node → root (the smallest node of its component)."""
    parent: dict[Hashable, Hashable] = {}

    def find(x: Hashable) -> Hashable:
        parent.setdefault(x, x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            lo, hi = (ra, rb) if str(ra) <= str(rb) else (rb, ra)
            parent[hi] = lo
    return {x: find(x) for x in list(parent)}


def keep_key(row: Mapping[str, Any]) -> tuple:
    """Sort key of the keep policy: permissive licence, manifest order, path, start line, id."""
    mi = row.get("manifest_index")
    sl = row.get("start_line")
    return (
        not is_permissive(row.get("license")),
        mi if mi is not None else 1 << 31,
        row.get("path") or "",
        sl if sl is not None else 1 << 31,
        row.get("id") or "",
    )


def choose_keep(members: Sequence[Mapping[str, Any]]) -> str:
    """Id of the one row to keep in a cluster (see ``keep_key``)."""
    if not members:
        raise ValueError("choose_keep: empty cluster")
    return str(min(members, key=keep_key)["id"])


def assign(members_by_root: Mapping[Hashable, Sequence[Mapping[str, Any]]]) -> dict[str, tuple[str, str, bool]]:
    """Cluster members (dicts with id, norm_sha256 and keep-policy fields) → id → (dup_cluster, dup_kind, keep).

    ``dup_cluster`` is the kept representative's id. A member whose normalised text equals the
    representative's is ``exact``, any other member ``near``; the representative gets ``exact``
    when every member is an exact copy of it, else ``near``.
    """
    out: dict[str, tuple[str, str, bool]] = {}
    for members in members_by_root.values():
        rep = choose_keep(members)
        rep_row = next(m for m in members if m["id"] == rep)
        kinds = {m["id"]: ("exact" if m.get("norm_sha256") == rep_row.get("norm_sha256") else "near")
                 for m in members if m["id"] != rep}
        out[rep] = (rep, "near" if "near" in kinds.values() else "exact", True)
        for mid, kind in kinds.items():
            out[str(mid)] = (rep, kind, False)
    return out


class NearDupIndex:
    """In-memory MinHash LSH index: ``add(key, text)``; ``query(text)`` → keys with estimated Jaccard ≥ threshold."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle_size: int = 5, seed: int = 1,
                 k: int | None = None) -> None:
        self.threshold, self.num_perm, self.seed = threshold, num_perm, seed
        self.k = k if k is not None else shingle_size
        self.bands, self.rows = choose_bands(threshold, num_perm)
        self._buckets: dict[str, list[Hashable]] = defaultdict(list)
        self._sigs: dict[Hashable, np.ndarray] = {}

    def _sig(self, text: str) -> np.ndarray:
        return minhash(text, self.num_perm, self.seed, self.k)

    def add(self, key: Hashable, text: str) -> None:
        sig = self._sig(text)
        self._sigs[key] = sig
        for band in lsh_bands(sig, self.bands, self.rows):
            self._buckets[band].append(key)

    def query(self, text: str) -> list[Hashable]:
        sig = self._sig(text)
        cands = {k for band in lsh_bands(sig, self.bands, self.rows) for k in self._buckets.get(band, ())}
        return sorted((k for k in cands if jaccard_estimate(sig, self._sigs[k]) >= self.threshold), key=str)

    def __len__(self) -> int:
        return len(self._sigs)


# --- Batch functions composed by jobs/dedup.py (pure, pyarrow in → pyarrow out) ---------------

EDGES_SCHEMA = pa.schema([pa.field("a", pa.string()), pa.field("b", pa.string())])
BAND_ROWS_SCHEMA = pa.schema(
    [
        pa.field("band", pa.string()),
        pa.field("id", pa.string()),
        pa.field("norm_sha256", pa.string()),
        pa.field("signature", pa.list_(pa.uint32())),
    ]
)


def _table(batch: pa.Table | Mapping[str, Any]) -> pa.Table:
    return batch if isinstance(batch, pa.Table) else pa.table(dict(batch))


def _edges(pairs: Iterable[tuple[str, str]]) -> pa.Table:
    pairs = list(pairs)
    return pa.table({"a": pa.array([p[0] for p in pairs], pa.string()),
                     "b": pa.array([p[1] for p in pairs], pa.string())}, schema=EDGES_SCHEMA)


def exact_edges(group: pa.Table | Mapping[str, Any]) -> pa.Table:
    """One norm_sha256 group → edges joining every member to the smallest id (none for singletons)."""
    ids = sorted(set(_table(group).column("id").to_pylist()))
    return _edges((ids[0], other) for other in ids[1:])


def explode_bands(batch: pa.Table | Mapping[str, Any]) -> pa.Table:
    """SIGNATURES batch → one row per (band key, module): the LSH bucket membership."""
    t = _table(batch)
    bands = t.column("bands").combine_chunks()
    parents = pc.list_parent_indices(bands)
    return pa.table(
        {
            "band": pc.list_flatten(bands),
            "id": t.column("id").take(parents),
            "norm_sha256": t.column("norm_sha256").take(parents),
            "signature": t.column("signature").take(parents),
        },
        schema=BAND_ROWS_SCHEMA,
    )


def near_edges(bucket: pa.Table | Mapping[str, Any], threshold: float = 0.8, max_bucket: int = 200) -> pa.Table:
    """One LSH bucket → verified edges (estimated Jaccard ≥ threshold) between distinct normalised texts.

    Exact copies are collapsed to their smallest id first (exact_edges links the others), so a
    bucket of many identical modules costs nothing here.
    """
    t = _table(bucket)
    if t.num_rows < 2:
        return _edges([])
    rep: dict[str, tuple[str, np.ndarray]] = {}
    for mid, h, sig in zip(t.column("id").to_pylist(), t.column("norm_sha256").to_pylist(),
                           t.column("signature").to_pylist()):
        if h not in rep or mid < rep[h][0]:
            rep[h] = (mid, np.asarray(sig, dtype=np.uint32))
    if len(rep) < 2:
        return _edges([])
    sigs = {mid: sig for mid, sig in rep.values()}
    pairs = [(a, b) for a, b in bucket_pairs(list(sigs), max_bucket)
             if jaccard_estimate(sigs[a], sigs[b]) >= threshold]
    return _edges(pairs)


ASSIGNMENT_FIELDS = ("dup_cluster", "dup_kind", "keep")


def apply_assignment(batch: pa.Table | Mapping[str, Any], assignment: Mapping[str, tuple[str, str, bool]]) -> pa.Table:
    """PARSED_MODULES batch → MODULES batch: rows in ``assignment`` get (cluster, kind, keep); others are unique."""
    t = _table(batch)
    for name in (*ASSIGNMENT_FIELDS, "signature", "bands"):
        if name in t.column_names:
            t = t.drop_columns([name])
    ids = t.column("id").to_pylist()
    got = [assignment.get(i) or (i, "unique", True) for i in ids]
    t = t.append_column("dup_cluster", pa.array([g[0] for g in got], pa.string()))
    t = t.append_column("dup_kind", pa.array([g[1] for g in got], pa.string()))
    t = t.append_column("keep", pa.array([g[2] for g in got], pa.bool_()))
    return conform(t, MODULES_SCHEMA, stage="dedup")


def assignment_stats(rows: int, assignment: Mapping[str, tuple[str, str, bool]]) -> dict[str, int]:
    """Report counts: rows, unique (in no cluster), dups removed by kind, clusters, kept."""
    removed = [kind for _, kind, keep in assignment.values() if not keep]
    exact, near = removed.count("exact"), removed.count("near")
    return {
        "rows": rows,
        "unique": rows - len(assignment),
        "exact_dups_removed": exact,
        "near_dups_removed": near,
        "clusters": sum(1 for _, _, keep in assignment.values() if keep),
        "kept": rows - exact - near,
    }
