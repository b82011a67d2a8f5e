"""Benchmark decontamination: does a text or a module copy a public Verilog benchmark problem?

Two checks, each counted on its own (``Match.methods``; the corpus job reports per method):

- ``text_13gram`` (``BenchmarkIndex``): a text is contaminated when it shares one n-gram
  (default 13, the NeMo Curator practice) of normalised tokens with a benchmark problem's prompt
  or reference solution. Tokens are identifiers and numbers, lower-cased; whitespace and
  punctuation are ignored, so reformatting or re-casing does not hide a copy. Punctuation is
  deliberately not a token: Verilog is so punctuation-dense that 13 tokens of ``) ; always @ (
  posedge clk ) begin if ( clear )`` would be a 13-gram, and every register with a clear would
  match every benchmark reference that has one (measured on this project's own assets);
  word-only n-grams follow NeMo Curator and datatrove. Verilog comments are handled both ways:
  each problem text and each queried text is tokenised once as is and once with ``//`` and
  ``/* */`` comments removed, so a copy whose comments were stripped or rewritten is still
  caught, and a prompt that *is* a comment block (VerilogEval code-complete) is still indexed.
  Renaming defeats it: a reference with every identifier renamed shares no word 13-gram.
- ``canonical`` (``CanonicalIndex``, second half of this file): Verilog token streams with
  comments and whitespace dropped, keywords, operators and literals kept, and identifiers
  canonicalised within each n-gram window, so a copy survives any one-to-one renaming; a module
  is flagged when it holds most of a reference solution's canonical n-grams.

``Decontaminator`` runs both; ``ContaminationStage`` is the corpus job's stage (it sets the
modules' ``contaminated_by``). ``bench/decontam.py`` measures both on the real VerilogEval v2 and
RTLLM and the false-positive rate on real repositories (``bench/results/decontam.json``).

Layouts detected under each given path (a suite root, a parent of several suites, or a single
``.jsonl`` file; local paths or any pyarrow filesystem URI such as ``s3://``):

- VerilogEval v2: ``dataset_*/ProbNNN_name_{prompt.txt,ref.sv,test.sv}`` (both
  ``dataset_spec-to-rtl`` and ``dataset_code-complete-iccad2023``); problem id
  ``verilogeval-v2/<dataset dir>/ProbNNN_name``. Prompt and reference are indexed; the testbench
  is not (it is not an answer, and its boilerplate would flag harmless testbenches).
- VerilogEval v1: ``*.jsonl`` rows with ``task_id`` and any of ``prompt``,
  ``detail_description``, ``description``, ``canonical_solution``; id ``verilogeval-v1/<task_id>``;
  the reference module is ``prompt + canonical_solution``.
- RTLLM: directories holding ``design_description.txt`` and ``verified_*.v``; id
  ``rtllm/<design dir>``.

The first component of an id is the benchmark name (``BenchmarkIndex.suite``) used to count
drops per benchmark.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from pydantic import Field

from chipforge import fs
from chipforge.config import Config
from chipforge.stage import StageResources, check_columns

_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*|\d+")
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_V2_PROMPT = re.compile(r"(?:^|/)(dataset_[^/]+)/(Prob\d+_[^/]+)_prompt\.txt$")
_RTLLM_DESC = re.compile(r"(?:^|/)([^/]+)/design_description\.txt$")
_RTLLM_REF = re.compile(r"/verified_[^/]+\.s?v$")
_V1_FIELDS = ("prompt", "detail_description", "description", "canonical_solution")


def normalise_tokens(text: str) -> list[str]:
    """Lower-cased identifier and number tokens; whitespace and punctuation dropped (comments kept)."""
    return [t.lower() for t in _TOKEN.findall(text)]


def strip_comments(text: str) -> str:
    """``text`` with Verilog ``//`` and ``/* */`` comments replaced by a space."""
    return _COMMENT.sub(" ", text)


def ngrams(tokens: Sequence[str], n: int) -> Iterable[tuple[str, ...]]:
    """All contiguous n-grams; a text shorter than n yields nothing."""
    for i in range(len(tokens) - n + 1):
        yield tuple(tokens[i : i + n])


def text_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """n-grams of the text as written and with comments removed (see module docstring)."""
    grams = set(ngrams(normalise_tokens(text), n))
    stripped = strip_comments(text)
    if stripped != text:
        grams.update(ngrams(normalise_tokens(stripped), n))
    return grams


def _read(path: str) -> str:
    return fs.read_bytes(path).decode("utf-8", errors="replace")


PROMPT, REFERENCE = "prompt", "reference"


def _v1_rows(path: str) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for _, row in fs.read_jsonl(path, errors="replace"):
        if not isinstance(row, dict) or "task_id" not in row:
            continue
        pid = f"verilogeval-v1/{row['task_id']}"
        texts = {k: row[k] for k in _V1_FIELDS if isinstance(row.get(k), str) and row[k].strip()}
        out.extend((pid, PROMPT, t) for t in texts.values())
        if "canonical_solution" in texts:  # the reference module is the header prompt + the body
            out.append((pid, REFERENCE, texts.get("prompt", "") + texts["canonical_solution"]))
    return out


def check_benchmark_paths(paths: list[str], field: str) -> None:
    """Preflight of a job's benchmark paths: a missing one, or one with no recognised benchmark,
    is a ``ConfigError`` naming ``field`` (exit 2, before Ray starts)."""
    from chipforge.config import ConfigError

    for p in paths:
        try:
            load_texts(p)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"{field}: {exc}") from exc


def load_texts(path: str) -> list[tuple[str, str, str]]:
    """(problem id, kind, text) triples under ``path``; kind is ``prompt`` (text the n-gram check
    indexes) or ``reference`` (a reference solution module, for the canonical token check)."""
    if not fs.exists(path):
        raise FileNotFoundError(f"benchmark path does not exist: {path}")
    filesystem, inner = fs.resolve(path)
    if filesystem.get_file_info(inner).type == pafs.FileType.File:
        files = [path if fs.is_uri(path) else inner]
    else:
        files = fs.listdir(path, recursive=True)
    names = set(files)
    found: list[tuple[str, str, str]] = []
    for f in files:
        m = _V2_PROMPT.search(f)
        if m:
            pid = f"verilogeval-v2/{m.group(1)}/{m.group(2)}"
            found.append((pid, PROMPT, _read(f)))
            ref = f[: -len("_prompt.txt")] + "_ref.sv"
            if ref in names:
                found.append((pid, REFERENCE, _read(ref)))
            continue
        m = _RTLLM_DESC.search(f)
        if m:
            pid = f"rtllm/{m.group(1)}"
            found.append((pid, PROMPT, _read(f)))
            folder = f.rsplit("/", 1)[0]
            for ref in files:
                if ref.rsplit("/", 1)[0] == folder and _RTLLM_REF.search(ref):
                    found.append((pid, REFERENCE, _read(ref)))
            continue
        if f.endswith(".jsonl"):
            found.extend(_v1_rows(f))
    if not found:
        raise ValueError(
            f"benchmark path {path}: no VerilogEval v2 (dataset_*/ProbNNN_name_prompt.txt), "
            "VerilogEval v1 (*.jsonl rows with task_id) or RTLLM (<design>/design_description.txt) problems found"
        )
    return found


def load_problems(path: str) -> list[tuple[str, str]]:
    """(problem id, text) pairs found under ``path`` (prompts and references, for the n-gram text
    check); an error names a missing or unrecognised path."""
    seen: set[tuple[str, str]] = set()
    out: list[tuple[str, str]] = []
    for pid, _, text in load_texts(path):
        if (pid, text) not in seen:  # v1: the prompt+solution reference adds no new n-gram
            seen.add((pid, text))
            out.append((pid, text))
    return out


def load_references(path: str) -> list[tuple[str, str]]:
    """(problem id, reference solution source) pairs under ``path`` (for the canonical token check)."""
    return [(pid, text) for pid, kind, text in load_texts(path) if kind == REFERENCE]


class BenchmarkIndex:
    """n-gram → problem ids, built once and queried per example (plain dicts: picklable for Ray)."""

    def __init__(self, problems: Sequence[tuple[str, str]], n: int = 13) -> None:
        if n < 1:
            raise ValueError(f"n-gram size must be >= 1, got {n}")
        self.n = n
        self.problem_ids: list[str] = sorted({pid for pid, _ in problems})
        self._index: dict[tuple[str, ...], set[str]] = {}
        for pid, text in problems:
            for g in text_ngrams(text, n):
                self._index.setdefault(g, set()).add(pid)

    @classmethod
    def from_paths(cls, paths: Sequence[str], n: int = 13) -> "BenchmarkIndex":
        """Index every problem under ``paths`` (layouts auto-detected per path; see module doc)."""
        problems: list[tuple[str, str]] = []
        for p in paths:
            problems.extend(load_problems(str(p)))
        return cls(problems, n=n)

    def __len__(self) -> int:
        return len(self.problem_ids)

    @property
    def suites(self) -> list[str]:
        """Benchmark names present (``verilogeval-v2``, ``verilogeval-v1``, ``rtllm``)."""
        return sorted({self.suite(p) for p in self.problem_ids})

    def problems_per_suite(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.problem_ids:
            out[self.suite(p)] = out.get(self.suite(p), 0) + 1
        return out

    def hits(self, text: str) -> list[str]:
        """Sorted problem ids sharing at least one n-gram with ``text``."""
        found: set[str] = set()
        for g in text_ngrams(text, self.n):
            ids = self._index.get(g)
            if ids:
                found |= ids
        return sorted(found)

    def contaminated(self, text: str) -> bool:
        return any(g in self._index for g in text_ngrams(text, self.n))

    @staticmethod
    def suite(problem_id: str) -> str:
        """Benchmark name of a problem id (its first path component), for per-benchmark counts."""
        return problem_id.split("/", 1)[0]


# ---------------------------------------------------------------------------------------------
# Canonical token n-grams: decontamination that survives renaming.
#
# A reference solution copied with every identifier renamed and its comments dropped shares no
# 13-gram of words with the original (every word is a name), so the text check above misses it.
# This check lexes Verilog/SystemVerilog, drops comments and whitespace, keeps keywords,
# operators, punctuation, literals, system tasks and compiler directives, and replaces each
# identifier by its *position class within the n-gram window*: the distance back to the
# previous occurrence of the same name inside the window, or "first" (Baker's parameterised
# strings). Two windows are then equal exactly when one is the other under a one-to-one
# renaming, so a consistently renamed copy has the same n-grams as the reference, however the
# names were chosen, and the index stays exact (no "all names equal" blur that would match
# every counter with every other).
#
# Matching is containment of a reference in a module: the share of the reference's canonical
# n-grams that the module also has (default: 12-grams, 60%). References with fewer than
# ``min_grams`` distinct n-grams (default 10: under about 21 tokens, such as a bare
# ``assign one = 1'b1;`` module) are not indexed, being too small to tell a copy from a
# coincidence. Optionally (``max_df``) n-grams found in more than k distinct references are
# treated as boilerplate and skipped; off by default: it hides near-identical families
# (VerilogEval's fsm1/fsm1s, ...) and did not lower false positives. The defaults come from
# ``bench/decontam.py --sweep`` (bench/results/decontam.json): every renamed reference of 40+
# tokens caught, no module of five ordinary repositories flagged, and still at most 0.42% at a
# threshold of 0.5 (the margin).
# ---------------------------------------------------------------------------------------------

# IEEE 1800-2017 reserved keywords (Annex B; a superset of Verilog-2005's).
SV_KEYWORDS: frozenset[str] = frozenset("""
accept_on alias always always_comb always_ff always_latch and assert assign assume automatic before begin bind
bins binsof bit break buf bufif0 bufif1 byte case casex casez cell chandle checker class clocking cmos config
const constraint context continue cover covergroup coverpoint cross deassign default defparam design disable dist
do edge else end endcase endchecker endclass endclocking endconfig endfunction endgenerate endgroup endinterface
endmodule endpackage endprimitive endprogram endproperty endspecify endsequence endtable endtask enum event
eventually expect export extends extern final first_match for force foreach forever fork forkjoin function
generate genvar global highz0 highz1 if iff ifnone ignore_bins illegal_bins implements implies import incdir
include initial inout input inside instance int integer interconnect interface intersect join join_any join_none
large let liblist library local localparam logic longint macromodule matches medium modport module nand negedge
nettype new nexttime nmos nor noshowcancelled not notif0 notif1 null or output package packed parameter pmos
posedge primitive priority program property protected pull0 pull1 pulldown pullup pulsestyle_ondetect
pulsestyle_onevent pure rand randc randcase randsequence rcmos real realtime ref reg reject_on release repeat
restrict return rnmos rpmos rtran rtranif0 rtranif1 s_always s_eventually s_nexttime s_until s_until_with
scalared sequence shortint shortreal showcancelled signed small soft solve specify specparam static string strong
strong0 strong1 struct super supply0 supply1 sync_accept_on sync_reject_on table tagged task this throughout time
timeprecision timeunit tran tranif0 tranif1 tri tri0 tri1 triand trior trireg type typedef union unique unique0
unsigned until until_with untyped use uwire var vectored virtual void wait wait_order wand weak weak0 weak1 while
wildcard wire with within wor xnor xor
""".split())

# Compiler directives kept as themselves; any other `NAME is a macro use (an identifier).
SV_DIRECTIVES: frozenset[str] = frozenset("""
`define `undef `undefineall `ifdef `ifndef `elsif `else `endif `include `timescale `default_nettype `resetall
`celldefine `endcelldefine `line `pragma `begin_keywords `end_keywords `unconnected_drive `nounconnected_drive
`__FILE__ `__LINE__
""".split())

_OPERATORS = sorted("""
<<<= >>>= <-> === !== ==? !=? <<< >>> <<= >>= ->> |-> |=> ### ** <= >= == != && || ~& ~| ~^ ^~ << >> -> :: +: -:
+= -= *= /= %= &= |= ^= ++ -- .* #- #= @@ '{ '(
""".split(), key=len, reverse=True)
_SV_LEX = re.compile(
    r"(?P<ws>\s+)"
    r"|(?P<comment>//[^\n]*|/\*.*?(?:\*/|\Z))"
    r'|(?P<string>"(?:\\.|[^"\\\n])*")'
    r"|(?P<number>(?:\d[\d_]*\s*)?'[sS]?[bBoOdDhH]\s*[0-9a-fA-FxXzZ?_]+"  # sized / based literal
    r"|'[01xXzZ](?![\w'])"  # unbased unsized literal
    r"|\d[\d_]*(?:\.\d[\d_]*)?(?:[eE][+-]?\d+)?(?:fs|ps|ns|us|ms|s)?(?![\w$]))"  # decimal, real, time
    r"|(?P<system>\$[A-Za-z_][\w$]*)"
    r"|(?P<directive>`[A-Za-z_]\w*)"
    r"|(?P<escaped>\\\S+)"
    r"|(?P<word>[A-Za-z_][\w$]*)"
    r"|(?P<op>" + "|".join(re.escape(o) for o in _OPERATORS) + r")"
    r"|(?P<other>.)",
    re.S,
)
IDENT = "<id>"  # stands for an identifier in a canonical token stream


def sv_tokens(source: str) -> list[str]:
    """Canonical token stream of Verilog/SystemVerilog ``source``: comments and whitespace dropped,
    keywords, operators, punctuation, literals (lower-cased, ``_`` and spaces removed), strings,
    system tasks and directives kept as text; each identifier (macro uses and escaped names
    included) becomes ``<id>:NAME`` so :func:`canonical_codes` can tell names apart."""
    out: list[str] = []
    for m in _SV_LEX.finditer(source):
        kind, text = m.lastgroup, m.group()
        if kind in ("ws", "comment"):
            continue
        if kind == "word":
            out.append(text if text in SV_KEYWORDS else f"{IDENT}:{text}")
        elif kind == "escaped":
            out.append(f"{IDENT}:{text[1:]}")
        elif kind == "directive":
            out.append(text if text in SV_DIRECTIVES else f"{IDENT}:{text[1:]}")
        elif kind == "number":
            out.append("".join(text.split()).replace("_", "").lower())
        else:
            out.append(text)
    return out


def count_tokens(source: str) -> int:
    """Number of tokens of ``source`` without comments (the "40 tokens or more" of the aim)."""
    return len(sv_tokens(source))


_HASH_CACHE: dict[str, int] = {}


def _token_hash(tok: str) -> int:
    """Stable 64-bit hash of a non-identifier token (the same in every process and run)."""
    h = _HASH_CACHE.get(tok)
    if h is None:
        h = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=8).digest(), "little") | (1 << 63)
        if len(_HASH_CACHE) < 1_000_000:
            _HASH_CACHE[tok] = h
    return h


_MULTIPLIERS = np.random.default_rng(0x5EED).integers(1, 2**63, size=256, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def canonical_codes(tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(code, back) arrays: ``code`` is a token's stable hash (0 for identifiers); ``back`` is the
    distance to the previous occurrence of the same identifier (0: none, or not an identifier)."""
    code = np.zeros(len(tokens), dtype=np.uint64)
    back = np.zeros(len(tokens), dtype=np.int64)
    last: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if tok.startswith(IDENT):
            j = last.get(tok)
            if j is not None:
                back[i] = i - j
            last[tok] = i
        else:
            code[i] = _token_hash(tok)
    return code, back


def canonical_ngrams(source: str, n: int) -> np.ndarray:
    """Sorted unique 64-bit hashes of the canonical n-grams of ``source`` (see the section note).

    In the window starting at token ``i``, the token at offset ``k`` contributes its own hash, or
    for an identifier ``1 + d`` where ``d`` is the distance back to the same name when that lies
    inside the window (``d <= k``) and 0 otherwise: the window's names up to a one-to-one renaming.
    """
    if not 1 <= n <= len(_MULTIPLIERS):
        raise ValueError(f"n-gram size must be in 1..{len(_MULTIPLIERS)}, got {n}")
    code, back = canonical_codes(sv_tokens(source))
    w = len(code) - n + 1
    if w <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(w, dtype=np.uint64)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps (mod 2**64) on purpose
        for k in range(n):
            c, b = code[k : k + w], back[k : k + w]
            ident = np.where(b <= k, b, 0).astype(np.uint64) + np.uint64(1)
            h += np.where(c == 0, ident, c) * _MULTIPLIERS[k]
    return np.unique(h)


class CanonicalIndex:
    """Canonical token n-gram index over benchmark reference solutions, built once per worker.

    ``match(source)`` returns the best-matching problem and the share of that reference's
    informative n-grams found in ``source`` when the share reaches ``threshold``. References
    with identical text (VerilogEval's spec-to-rtl and code-complete share ``ref.sv``) are
    indexed once; ties go to the alphabetically first problem id.
    """

    def __init__(self, references: Sequence[tuple[str, str]], n: int = 12, threshold: float = 0.6,
                 max_df: int | None = None, min_grams: int = 10) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.n, self.threshold, self.max_df, self.min_grams = n, threshold, max_df, min_grams
        by_text: dict[str, list[str]] = {}
        for pid, text in references:
            by_text.setdefault(text, []).append(pid)
        texts = sorted(by_text)
        grams = [canonical_ngrams(t, n) for t in texts]
        df = Counter(int(g) for gs in grams for g in gs)
        self.owners: list[list[str]] = []  # reference number → its problem ids (sorted)
        self.sizes: list[int] = []  # reference number → informative n-grams indexed
        posting: dict[int, list[int]] = {}
        self.skipped: list[str] = []  # problem ids whose reference is too small or all boilerplate
        for text, gs in zip(texts, grams):
            kept = [int(g) for g in gs if max_df is None or df[int(g)] <= max_df]
            if len(kept) < min_grams:
                self.skipped.extend(by_text[text])
                continue
            ref = len(self.owners)
            self.owners.append(sorted(set(by_text[text])))
            self.sizes.append(len(kept))
            for g in kept:
                posting.setdefault(g, []).append(ref)
        self.problem_ids = sorted({pid for pid, _ in references})
        self._keys = np.array(sorted(posting), dtype=np.uint64)
        self._posting = posting

    @classmethod
    def from_paths(cls, paths: Sequence[str], **kwargs: Any) -> "CanonicalIndex":
        """Index every reference solution under ``paths`` (layouts as in :func:`load_texts`)."""
        refs: list[tuple[str, str]] = []
        for p in paths:
            refs.extend(load_references(str(p)))
        return cls(refs, **kwargs)

    def scores(self, source: str) -> dict[int, float]:
        """Reference number → share of its indexed n-grams present in ``source`` (nonzero only)."""
        grams = canonical_ngrams(source, self.n)
        found = grams[np.isin(grams, self._keys, assume_unique=True)] if len(self._keys) else grams[:0]
        hits: Counter[int] = Counter()
        for g in found.tolist():
            hits.update(self._posting[g])
        return {ref: c / self.sizes[ref] for ref, c in hits.items()}

    def matches(self, source: str) -> list[tuple[str, float]]:
        """(problem id, containment) of every problem whose reference reaches the threshold in
        ``source``, best first (ties by id)."""
        found = {(pid, s) for r, s in self.scores(source).items() if s >= self.threshold for pid in self.owners[r]}
        return sorted(found, key=lambda x: (-x[1], x[0]))

    def match(self, source: str) -> tuple[str, float] | None:
        """(problem id, containment) of the best reference contained in ``source``, or None."""
        found = self.matches(source)
        return found[0] if found else None


TEXT_METHOD, CANONICAL_METHOD = "text_13gram", "canonical"


@dataclass(frozen=True)
class Match:
    """A contaminated source: the problem it is attributed to, the methods that caught it and
    every problem any method named."""

    problem_id: str
    methods: tuple[str, ...]
    all_ids: list[str]


class Decontaminator:
    """Both checks over one set of benchmark paths: the n-gram text check (prompts and references)
    and the canonical token check (references). A source is contaminated when either fires; it is
    attributed to the canonical check's best problem, else to the first text hit."""

    def __init__(self, text: BenchmarkIndex, canonical: CanonicalIndex) -> None:
        self.text, self.canonical = text, canonical

    @classmethod
    def from_paths(cls, paths: Sequence[str], ngram: int = 13, canonical_n: int = 12, threshold: float = 0.6,
                   max_df: int | None = None, min_grams: int = 10) -> "Decontaminator":
        problems: list[tuple[str, str]] = []
        references: list[tuple[str, str]] = []
        for p in paths:
            problems.extend(load_problems(str(p)))
            references.extend(load_references(str(p)))
        return cls(BenchmarkIndex(problems, n=ngram),
                   CanonicalIndex(references, n=canonical_n, threshold=threshold, max_df=max_df, min_grams=min_grams))

    def check(self, source: str) -> Match | None:
        """The match for ``source`` (a module's text), or None when neither check fires."""
        text_hits = self.text.hits(source)
        canon = self.canonical.matches(source)
        if not text_hits and not canon:
            return None
        methods = tuple(m for m, hit in ((TEXT_METHOD, text_hits), (CANONICAL_METHOD, canon)) if hit)
        first = canon[0][0] if canon else text_hits[0]
        return Match(first, methods, sorted({*text_hits, *(pid for pid, _ in canon)}))


class DecontamConfig(Config):
    """The corpus job's decontamination settings (``decontam.*``); it runs when the job's
    ``benchmark_paths`` is non-empty. Defaults are the ones ``bench/decontam.py`` measured."""

    ngram: int = Field(13, ge=1)  # word n-gram of the text check (prompts and references)
    canonical_n: int = Field(12, ge=1, le=256)  # canonical token n-gram of the renaming-proof check
    threshold: float = Field(0.6, gt=0.0, le=1.0)  # share of a reference's canonical n-grams a module must hold
    max_df: int | None = Field(None, ge=1)  # None: index every n-gram; k: skip n-grams found in > k references
    min_grams: int = Field(10, ge=1)  # references with fewer canonical n-grams (< 21 tokens) are not indexed
    resources: StageResources = Field(default_factory=lambda: StageResources(num_cpus=1.0, concurrency=2,
                                                                             batch_size=256))

    def index_kwargs(self) -> dict[str, Any]:
        return {"ngram": self.ngram, "canonical_n": self.canonical_n, "threshold": self.threshold,
                "max_df": self.max_df, "min_grams": self.min_grams}


class ContaminationStage:
    """MODULES batch → the same rows with ``contaminated_by`` set to the benchmark problem each
    module's ``source`` matches (null when clean). The index is built once per actor.

    ``last_stats`` holds the batch's counts (modules, flagged, per method, per benchmark) for the
    job's report; a flagged module is counted once, under the set of methods that caught it
    (``text_13gram``, ``canonical`` or ``text_13gram+canonical``). With ``stats_dir`` each batch's
    counts are also written there as one JSON file (the driver sums them: ``merge_stats``)."""

    name = "decontam"
    input_columns = ("source",)

    def __init__(self, benchmark_paths: Sequence[str], stats_dir: str | None = None, **kwargs: Any) -> None:
        self.dec = Decontaminator.from_paths(list(benchmark_paths), **kwargs)
        self.stats_dir = stats_dir
        self.last_stats: dict[str, Any] = {}

    def __call__(self, batch: pa.Table | pa.RecordBatch | dict[str, Any]) -> pa.Table:
        table = batch if isinstance(batch, pa.Table) else (
            pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else pa.table(batch))
        check_columns(self.name, table, self.input_columns)
        by_method: Counter[str] = Counter()
        per_benchmark: Counter[str] = Counter()
        marks: list[str | None] = []
        for src in table.column("source").to_pylist():
            m = self.dec.check(src) if src else None
            marks.append(m.problem_id if m else None)
            if m:
                by_method["+".join(m.methods)] += 1
                per_benchmark[BenchmarkIndex.suite(m.problem_id)] += 1
        self.last_stats = {"modules": table.num_rows, "flagged": sum(1 for x in marks if x),
                           "by_method": dict(by_method), "per_benchmark": dict(per_benchmark)}
        if self.stats_dir:
            fs.write_json(fs.join(self.stats_dir, uuid.uuid4().hex + ".json"), self.last_stats)
        col = pa.array(marks, pa.string())
        if "contaminated_by" in table.column_names:
            return table.set_column(table.schema.get_field_index("contaminated_by"), "contaminated_by", col)
        return table.append_column("contaminated_by", col)


def merge_stats(stats: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum ``ContaminationStage.last_stats`` of many batches (the corpus report's ``decontamination``)."""
    by_method: Counter[str] = Counter()
    per_benchmark: Counter[str] = Counter()
    modules = flagged = 0
    for st in stats:
        modules += st.get("modules", 0)
        flagged += st.get("flagged", 0)
        by_method.update(st.get("by_method") or {})
        per_benchmark.update(st.get("per_benchmark") or {})
    return {"modules_checked": modules, "contaminated": flagged, "by_method": dict(sorted(by_method.items())),
            "per_benchmark": dict(sorted(per_benchmark.items()))}
