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

_EMPTY = np.uint32(0xFFFFFFFF)
_M1 = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multipliers (golden ratio, splitmix64)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


MODULES_PER_PARTITION = 50_000


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
    # Hash partitions of the one shuffle (bucket keys → edges); None: the cluster's CPUs, and at
    # least one per MODULES_PER_PARTITION modules, so that one bucket task's memory does not grow
    # with the corpus (~12 key rows of ~700 bytes per module: ~0.4 GB per 50k modules).
    partitions: int | None = Field(None, ge=1)
    # Resources of the signature stage (when it is not fused into the parse stage) and the bucket stage.
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


def _token_hash(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=4).digest(), "little")


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (wrapping uint64 arithmetic), low 32 bits kept as uint64."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * _M2
        h = (h ^ (h >> np.uint64(27))) * _M3
        return (h ^ (h >> np.uint64(31))) & np.uint64(0xFFFFFFFF)


def shingle_hashes(token_lists: Sequence[Sequence[str]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(32-bit hashes as uint64, owner row) of every k-token window of every token list.

    Each distinct token is hashed once (blake2b); a window's hash folds its tokens' hashes
    (h = h*M1 + t + 1, wrapping) and mixes the result, so a shingle's hash depends only on its
    tokens. Lists of 1..k-1 tokens give one shingle of all their tokens (as ``shingles``);
    empty lists give none. Duplicate windows of a row are kept (MinHash ignores them).
    """
    vocab: dict[str, int] = {}
    ids = [vocab.setdefault(t, len(vocab)) for toks in token_lists for t in toks]
    table = np.fromiter((_token_hash(t) for t in vocab), dtype=np.uint64, count=len(vocab))
    lens = np.fromiter((len(x) for x in token_lists), dtype=np.int64, count=len(token_lists))
    return _window_hashes(table[np.asarray(ids, dtype=np.int64)], lens, k)


def _text_token_hashes(norms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hash of every token, tokens per text) of whitespace-separated texts, split and
    dictionary-encoded in Arrow; only the distinct tokens are hashed in Python."""
    lists = pc.utf8_split_whitespace(pa.array(norms, pa.large_string()))
    flat = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists)
    real = pc.not_equal(flat, "")  # an empty text splits into one empty token
    flat, parents = flat.filter(real), parents.filter(real).to_numpy()
    lens = np.bincount(parents, minlength=len(norms)).astype(np.int64)
    if len(flat) == 0:
        return np.zeros(0, np.uint64), lens
    enc = pc.dictionary_encode(flat)
    table = np.fromiter((_token_hash(t) for t in enc.dictionary.to_pylist()), dtype=np.uint64,
                        count=len(enc.dictionary))
    return table[enc.indices.to_numpy()], lens


def _window_hashes(flat: np.ndarray, lens: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k-token window hashes over the concatenated token hashes of rows of ``lens`` tokens (see shingle_hashes)."""
    ends = np.cumsum(lens)
    starts = ends - lens
    hashes, owners = [], []
    with np.errstate(over="ignore"):
        n_win = flat.size - k + 1
        if n_win > 0:
            h = np.zeros(n_win, dtype=np.uint64)
            for j in range(k):
                h = h * _M1 + flat[j:j + n_win] + np.uint64(1)
            row_of = np.repeat(np.arange(len(lens)), lens)[:n_win]
            valid = np.arange(n_win) + k <= ends[row_of]
            hashes.append(_mix(h[valid]))
            owners.append(row_of[valid])
        for r in np.flatnonzero((lens > 0) & (lens < k)):  # short rows: one shingle of all their tokens
            h1 = np.zeros(1, dtype=np.uint64)
            for j in range(int(starts[r]), int(ends[r])):
                h1 = h1 * _M1 + flat[j:j + 1] + np.uint64(1)
            hashes.append(_mix(h1))
            owners.append(np.array([r]))
    if not hashes:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate(hashes), np.concatenate(owners).astype(np.int64)


def _seeded(h: np.ndarray, seed: int) -> np.ndarray:
    """A full 64-bit hash of each 32-bit shingle hash for ``seed`` (splitmix64 of h + seed*M1 + 1)."""
    with np.errstate(over="ignore"):
        x = h.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + 1) & 0xFFFFFFFFFFFFFFFF)
        x = (x ^ (x >> np.uint64(30))) * _M2
        x = (x ^ (x >> np.uint64(27))) * _M3
        return x ^ (x >> np.uint64(31))


def minhash_hashed(hashes: np.ndarray, owners: np.ndarray, n_rows: int, num_perm: int = 128,
                   seed: int = 1) -> np.ndarray:
    """(n_rows, num_perm) uint32 signatures of 32-bit shingle hashes owned by rows (any order).

    Densified one-permutation hashing (Shrivastava & Li 2014, rotation): one 64-bit hash per
    shingle picks a bin (high bits) and a value (low 31 bits); each row keeps the minimum per
    bin (one ``np.minimum.at``), and an empty bin takes the value of the next non-empty bin to
    its right, mixed with the distance. Equal slots estimate the Jaccard similarity as classic
    MinHash does, at O(shingles) instead of O(shingles x num_perm). Rows without shingles stay
    all 0xFFFFFFFF.
    """
    out = np.full((n_rows, num_perm), _EMPTY, dtype=np.uint32)
    if hashes.size == 0:
        return out
    h = _seeded(hashes, seed)
    bins = ((h >> np.uint64(40)) % np.uint64(num_perm)).astype(np.int64)
    vals = ((h & np.uint64(0xFFFFFFFF)) >> np.uint64(1)).astype(np.uint32)
    np.minimum.at(out.reshape(-1), owners.astype(np.int64) * num_perm + bins, vals)
    empty = out == _EMPTY
    todo = np.flatnonzero(empty.any(axis=1) & ~empty.all(axis=1))
    if todo.size:
        orig = out[todo]
        filled = orig.copy()
        left = filled == _EMPTY
        with np.errstate(over="ignore"):
            for d in range(1, num_perm):
                cand = np.roll(orig, -d, axis=1)
                take = left & (cand != _EMPTY)
                if take.any():
                    mixed = (cand[take].astype(np.uint64) + np.uint64(d) * _M1) * _M2
                    filled[take] = ((mixed >> np.uint64(33)) & np.uint64(0x7FFFFFFF)).astype(np.uint32)
                    left &= ~take
                if not left.any():
                    break
        out[todo] = filled
    return out


def minhash(shingle_sets: str | set[str] | Sequence[set[str]], num_perm: int = 128, seed: int = 1,
            k: int = 5) -> np.ndarray:
    """MinHash signatures, uint32.

    A text (shingled with ``k``) or one shingle set gives shape (num_perm,); a sequence of
    shingle sets gives (n, num_perm), computed in one vectorised pass over all shingles. An
    empty set gives all 0xFFFFFFFF. A shingle's hash depends only on its tokens, so a text and
    its shingle set (``shingles(text, k)``) give the same signature as ``signatures`` does.
    """
    if isinstance(shingle_sets, str):
        return signatures([normalize(shingle_sets)], k, num_perm, seed)[0]
    if isinstance(shingle_sets, (set, frozenset)):
        return minhash([shingle_sets], num_perm, seed)[0]
    sets = [sorted(s) for s in shingle_sets]
    toks = [sh.split(" ") for s in sets for sh in s]
    hashes, owner_of_shingle = shingle_hashes(toks, max(1, max((len(t) for t in toks), default=1)))
    owners = np.repeat(np.arange(len(sets)), [len(s) for s in sets])[owner_of_shingle]
    return minhash_hashed(hashes, owners, len(sets), num_perm, seed)


def signatures(norms: Sequence[str], k: int = 5, num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """(n, num_perm) MinHash signatures of normalised texts over their k-token shingles: tokens
    split and encoded in Arrow, windows and signatures in numpy, no per-shingle Python."""
    flat, lens = _text_token_hashes(norms)
    hashes, owners = _window_hashes(flat, lens, k)
    return minhash_hashed(hashes, owners, len(norms), num_perm, seed)


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


def band_keys(sigs: np.ndarray, bands: int, rows: int | None = None) -> np.ndarray:
    """(n, bands) uint64 LSH bucket keys of (n, num_perm) signatures: each band's slots folded and
    mixed with the band's index, so equal keys mean equal slots in the same band (up to 2^-64)."""
    sigs = np.atleast_2d(np.asarray(sigs, dtype=np.uint32))
    rows = rows or sigs.shape[1] // bands
    if bands * rows > sigs.shape[1]:
        raise ValueError(f"bands*rows = {bands * rows} exceeds the signature length {sigs.shape[1]}")
    s = sigs[:, :bands * rows].reshape(sigs.shape[0], bands, rows).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = np.broadcast_to((np.arange(bands, dtype=np.uint64) + np.uint64(1)) * _M3, s.shape[:2]).copy()
        for j in range(rows):
            h = (h ^ s[:, :, j]) * _M1
            h ^= h >> np.uint64(29)
    return h


def lsh_bands(sig: np.ndarray, bands: int, rows: int | None = None) -> list[str]:
    """One bucket key per band, ``'<band>:<16 hex digits of band_keys>'``."""
    return [f"{i}:{int(key):016x}" for i, key in enumerate(band_keys(sig, bands, rows)[0])]


def norm_sha256(source: str) -> str:
    """Exact-dedup key: sha256 of the normalised text."""
    return sha256_hex(normalize(source))


SIGNATURES_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("norm_sha256", pa.string()),
        pa.field("signature", pa.list_(pa.uint32())),
        pa.field("bands", pa.list_(pa.uint64())),
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
    def from_config(cls, cfg: DedupConfig, with_rows: bool = False) -> SignatureStage:
        bands, rows = cfg.band_rows()
        return cls(cfg.num_perm, cfg.shingle_size, cfg.seed, bands, rows, with_rows=with_rows)

    def __call__(self, batch: pa.Table | Mapping[str, Any]) -> pa.Table:
        if not isinstance(batch, pa.Table):
            batch = pa.table(dict(batch))
        col = batch.column_names
        norms = [normalize(x or "") for x in batch.column("source").to_pylist()]
        if "norm_sha256" in col:
            hashes = [h or sha256_hex(n) for h, n in zip(batch.column("norm_sha256").to_pylist(), norms)]
        else:
            hashes = [sha256_hex(n) for n in norms]
        sigs = signatures(norms, self.k, self.num_perm, self.seed)
        n = batch.num_rows
        sig_col = _list_column(sigs, pa.uint32())
        band_col = _list_column(band_keys(sigs, self.bands, self.rows), pa.uint64())

        def get(name: str) -> list[Any]:
            return batch.column(name).to_pylist() if name in col else [None] * n

        if self.with_rows:
            t = conform(batch, PARSED_MODULES_SCHEMA, stage="dedup.signatures")
            t = t.set_column(t.schema.get_field_index("norm_sha256"), "norm_sha256", pa.array(hashes, pa.string()))
            t = t.append_column("signature", sig_col)
            return t.append_column("bands", band_col)
        return pa.table(
            {
                "id": batch.column("id"),
                "norm_sha256": pa.array(hashes, pa.string()),
                "signature": sig_col,
                "bands": band_col,
                "license": pa.array(get("license"), pa.string()),
                "manifest_index": pa.array(get("manifest_index"), pa.int32()),
                "path": pa.array(get("path"), pa.string()),
                "start_line": pa.array(get("start_line"), pa.int32()),
            },
            schema=SIGNATURES_SCHEMA,
        )


def _list_column(matrix: np.ndarray, type_: pa.DataType) -> pa.Array:
    """An (n, w) numpy matrix as a list<type_> arrow column without Python objects."""
    n, w = matrix.shape
    offsets = pa.array(np.arange(0, (n + 1) * w, w, dtype=np.int32), pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1), type_))


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
_KEEP_COLUMNS = [pa.field("license", pa.string()), pa.field("manifest_index", pa.int32()),
                 pa.field("path", pa.string()), pa.field("start_line", pa.int32())]
KEYS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.uint64()),
        pa.field("exact", pa.bool_()),  # an exact key (norm_sha256) rather than an LSH band key
        pa.field("id", pa.string()),
        pa.field("norm_sha256", pa.string()),
        pa.field("signature", pa.list_(pa.uint32())),  # null on exact rows (never compared)
        *_KEEP_COLUMNS,
    ]
)
# Output of ``bucket_edges``: edges (a, b) and, with b null, one row per linked module carrying
# its keep-policy fields, so the driver never scans the module rows for cluster members.
LINKS_SCHEMA = pa.schema([pa.field("a", pa.string()), pa.field("b", pa.string()),
                          pa.field("norm_sha256", pa.string()), *_KEEP_COLUMNS])


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


def explode_keys(batch: pa.Table | Mapping[str, Any]) -> pa.Table:
    """SIGNATURES batch (or rows with signature/bands) → KEYS rows: one per (LSH band key, module)
    plus one exact key (the first 64 bits of norm_sha256) per module; all go through one shuffle."""
    t = _table(batch)
    bands = t.column("bands").combine_chunks()
    parents = pc.list_parent_indices(bands)
    n = t.num_rows
    exact = np.fromiter((int(h[:16], 16) if h else 0 for h in t.column("norm_sha256").to_pylist()),
                        dtype=np.uint64, count=n)
    take = pa.concat_arrays([parents.cast(pa.int64()), pa.array(np.arange(n, dtype=np.int64))])
    sig = t.column("signature").combine_chunks()
    cols = {
        "key": pa.concat_arrays([pc.list_flatten(bands).cast(pa.uint64()), pa.array(exact, pa.uint64())]),
        "exact": pa.array(np.r_[np.zeros(len(parents), bool), np.ones(n, bool)]),
        "id": t.column("id").take(take),
        "norm_sha256": t.column("norm_sha256").take(take),
        "signature": pa.concat_arrays([sig.take(parents), pa.nulls(n, sig.type)]),
    }
    for f in _KEEP_COLUMNS:
        col = t.column(f.name) if f.name in t.column_names else pa.nulls(n, f.type)
        cols[f.name] = col.cast(f.type).take(take)
    return pa.table(cols, schema=KEYS_SCHEMA)


def near_edges(bucket: pa.Table | Mapping[str, Any], threshold: float = 0.8, max_bucket: int = 200) -> pa.Table:
    """One LSH bucket → verified edges (estimated Jaccard ≥ threshold) between distinct normalised texts.

    Exact copies are collapsed to their smallest id first (exact keys link the others), so a
    bucket of many identical modules costs nothing here.
    """
    t = _table(bucket)
    return _edges(_near_pairs(t.column("id").to_pylist(), t.column("norm_sha256").to_pylist(),
                              t.column("signature").to_pylist(), threshold, max_bucket))


class _Components:
    """Union-find over module ids: which pairs are already joined by the edges kept so far."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        parent = self.parent
        root = parent.setdefault(x, x)
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def join(self, a: str, b: str) -> bool:
        """Join the components of ``a`` and ``b``; False when they were one already."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[rb] = ra
        return True


def _near_pairs(ids: Sequence[str], norms: Sequence[str | None], sigs: Sequence[Any], threshold: float,
                max_bucket: int, joined: _Components | None = None) -> list[tuple[str, str]]:
    """Verified pairs of one bucket; ``sigs[i]`` is row i's signature (a list or a numpy row).

    With ``joined`` (the components of the edges already kept), a candidate pair already in one
    component is neither verified nor returned: clusters are components, so it adds nothing, and
    a family of near-identical modules that shares every band costs one verified pair per
    module, not one per band and window slot.
    """
    rep: dict[str | None, tuple[str, int]] = {}
    for i, (mid, h) in enumerate(zip(ids, norms)):
        if h not in rep or mid < rep[h][0]:
            rep[h] = (mid, i)
    if len(rep) < 2:
        return []
    by_id = {mid: np.asarray(sigs[i], dtype=np.uint32) for mid, i in rep.values()}
    if joined is None:
        return [(a, b) for a, b in bucket_pairs(list(by_id), max_bucket)
                if jaccard_estimate(by_id[a], by_id[b]) >= threshold]
    out = []
    for a, b in bucket_pairs(list(by_id), max_bucket):
        if joined.find(a) != joined.find(b) and jaccard_estimate(by_id[a], by_id[b]) >= threshold:
            joined.join(a, b)
            out.append((a, b))
    return out


def _signature_matrix(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<uint32> column of equal-length signatures as an (n, num_perm) matrix; null rows are zeros."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    flat = pc.list_flatten(arr).to_numpy()
    width = flat.size // max(1, int(valid.sum()))
    out = np.zeros((len(arr), width), dtype=np.uint32)
    out[valid] = flat.reshape(-1, width) if width else out[valid]
    return out


def bucket_edges(block: pa.Table | Mapping[str, Any], threshold: float = 0.8, max_bucket: int = 200) -> pa.Table:
    """A hash-partitioned block of KEYS rows (every row of a key in this block) → LINKS rows.

    Rows are sorted by (key, exact) once with numpy; only groups of two or more rows reach
    Python: an exact group links every member to its smallest id, an LSH bucket gives its
    verified near edges (``near_edges``). A pair already joined by the block's earlier edges is
    skipped, so edges and verifications grow with the modules, not with modules x bands x
    window (thousands of generated near-identical modules share every band). Each linked module
    is also emitted once as a node row (b null) with its keep-policy fields.
    """
    t = _table(block)
    empty = pa.table({f.name: pa.array([], f.type) for f in LINKS_SCHEMA}, schema=LINKS_SCHEMA)
    if t.num_rows < 2:
        return empty
    keys = t.column("key").to_numpy()
    exact = np.asarray(t.column("exact").to_numpy(zero_copy_only=False), dtype=bool)
    order = np.lexsort((exact, keys))
    k, e = keys[order], exact[order]
    new = np.r_[True, (k[1:] != k[:-1]) | (e[1:] != e[:-1])]
    starts = np.flatnonzero(new)
    sizes = np.diff(np.r_[starts, len(order)])
    multi = np.flatnonzero(sizes >= 2)
    if multi.size == 0:
        return empty
    rows = np.concatenate([order[starts[g]:starts[g] + sizes[g]] for g in multi])
    taken = t.take(pa.array(rows))
    sub = taken.select(["exact", "id", "norm_sha256"]).to_pydict()
    sigs = _signature_matrix(taken.column("signature"))  # numpy, never Python lists of ints
    offsets = np.r_[0, np.cumsum(sizes[multi])].tolist()
    # Exact groups first, then LSH buckets; an edge inside a component already joined is dropped
    # (same clusters, bounded edges and verifications for families of near-identical modules).
    groups = sorted(range(len(multi)), key=lambda i: not sub["exact"][offsets[i]])
    joined = _Components()
    edges: list[tuple[str, str]] = []
    for i in groups:
        lo, hi = offsets[i], offsets[i + 1]
        ids = sub["id"][lo:hi]
        if sub["exact"][lo]:
            uniq = sorted(set(ids))
            edges += [(uniq[0], other) for other in uniq[1:] if joined.join(uniq[0], other)]
        else:
            edges += _near_pairs(ids, sub["norm_sha256"][lo:hi], sigs[lo:hi], threshold, max_bucket, joined)
    if not edges:
        return empty
    linked = sorted({x for pair in edges for x in pair})
    first: dict[str, int] = {}
    for mid, i in zip(sub["id"], rows.tolist()):  # every linked module is in some group of two or more
        first.setdefault(mid, i)
    nodes = t.take(pa.array([first[m] for m in linked], pa.int64()))
    n_e = len(edges)
    return pa.table({
        "a": pa.array([a for a, _ in edges] + linked, pa.string()),
        "b": pa.array([b for _, b in edges] + [None] * len(linked), pa.string()),
        "norm_sha256": pa.concat_arrays([pa.nulls(n_e, pa.string()), nodes.column("norm_sha256").combine_chunks()]),
        **{f.name: pa.concat_arrays([pa.nulls(n_e, f.type), nodes.column(f.name).combine_chunks()])
           for f in _KEEP_COLUMNS},
    }, schema=LINKS_SCHEMA)


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
