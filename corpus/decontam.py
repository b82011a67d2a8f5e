"""Benchmark decontamination: n-gram overlap against public Verilog benchmark problems.

An example is contaminated when it shares one n-gram (default 13, the NeMo Curator practice)
of normalised tokens with a benchmark problem's prompt or reference solution. Tokens are
identifiers and numbers, lower-cased; whitespace and punctuation are ignored, so reformatting or
re-casing does not hide a copy. Punctuation is deliberately not a token: Verilog is so
punctuation-dense that 13 tokens of ``) ; always @ ( posedge clk ) begin if ( clear )`` would be
a 13-gram, and every register with a clear would match every benchmark reference that has one
(measured on this project's own assets); word-only n-grams follow NeMo Curator and datatrove. Verilog comments are handled both ways: each
problem text and each queried text is tokenised once as is and once with ``//`` and ``/* */``
comments removed, so a copy whose comments were stripped or rewritten is still caught, and a
prompt that *is* a comment block (VerilogEval code-complete) is still indexed.

Layouts detected under each given path (a suite root, a parent of several suites, or a single
``.jsonl`` file; local paths or any pyarrow filesystem URI such as ``s3://``):

- VerilogEval v2: ``dataset_*/ProbNNN_name_{prompt.txt,ref.sv,test.sv}``; problem id
  ``verilogeval-v2/<dataset dir>/ProbNNN_name``. Prompt and reference are indexed; the testbench
  is not (it is not an answer, and its boilerplate would flag harmless testbenches).
- VerilogEval v1: ``*.jsonl`` rows with ``task_id`` and any of ``prompt``,
  ``detail_description``, ``description``, ``canonical_solution``; id ``verilogeval-v1/<task_id>``.
- RTLLM: directories holding ``design_description.txt`` and ``verified_*.v``; id
  ``rtllm/<design dir>``.

The first component of an id is the benchmark name (``BenchmarkIndex.suite``) used to count
drops per benchmark.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import pyarrow.fs as pafs

from chipforge import fs

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


def _v1_rows(path: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for _, row in fs.read_jsonl(path, errors="replace"):
        if not isinstance(row, dict) or "task_id" not in row:
            continue
        pid = f"verilogeval-v1/{row['task_id']}"
        out.extend((pid, row[k]) for k in _V1_FIELDS if isinstance(row.get(k), str) and row[k].strip())
    return out


def load_problems(path: str) -> list[tuple[str, str]]:
    """(problem id, text) pairs found under ``path``; an error names a missing or unrecognised path."""
    if not fs.exists(path):
        raise FileNotFoundError(f"benchmark path does not exist: {path}")
    filesystem, inner = fs.resolve(path)
    if filesystem.get_file_info(inner).type == pafs.FileType.File:
        files = [inner]
    else:
        files = fs.listdir(path, recursive=True)
    prefix = path.split("://", 1)[0] + "://" if fs.is_uri(path) else ""
    full = {f: prefix + f if prefix and not f.startswith(prefix) else f for f in files}
    names = set(files)
    found: list[tuple[str, str]] = []
    for f in files:
        m = _V2_PROMPT.search(f)
        if m:
            pid = f"verilogeval-v2/{m.group(1)}/{m.group(2)}"
            found.append((pid, _read(full[f])))
            ref = f[: -len("_prompt.txt")] + "_ref.sv"
            if ref in names:
                found.append((pid, _read(full[ref])))
            continue
        m = _RTLLM_DESC.search(f)
        if m:
            pid = f"rtllm/{m.group(1)}"
            found.append((pid, _read(full[f])))
            folder = f.rsplit("/", 1)[0]
            for ref in files:
                if ref.rsplit("/", 1)[0] == folder and _RTLLM_REF.search(ref):
                    found.append((pid, _read(full[ref])))
            continue
        if f.endswith(".jsonl"):
            found.extend(_v1_rows(full[f]))
    if not found:
        raise ValueError(
            f"benchmark path {path}: no VerilogEval v2 (dataset_*/ProbNNN_name_prompt.txt), "
            "VerilogEval v1 (*.jsonl rows with task_id) or RTLLM (<design>/design_description.txt) problems found"
        )
    return found


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
