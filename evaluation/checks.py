"""The check stage: engine output rows → one verdict per row (a Ray task per batch, via ``map_stage``).

:func:`check_batch` judges every row of its batch by kind, writes the full rows (prompt,
completion, verdict, failure class, a capped excerpt of the tool's log) as one Parquet file into
``samples_dir`` and returns only the small columns (``SMALL_SCHEMA``) to the driver, which
aggregates them: completions never pass through the driver. The file is named by a hash of
the batch's row ids, so a retried task rewrites the same file instead of adding a copy.

- ``benchmark`` / ``smoke`` (Verilog): the answer's Verilog is extracted and simulated against
  the problem's testbench (``evaluation.simulate.run_problem``; each tool run in its own sandbox).
- ``smoke`` (text): passes when every expected term is named; ROUGE-L and chrF are scored.
- ``generation``: a Verilog reference → parse / compile / lint of the answer; a text reference →
  ROUGE-L and chrF against it.
- ``routing``: the phase the answer names (``{"phase": ...}``, else the one phase name it
  mentions), right or wrong; ``unparsed`` when it names none or several.
- ``loss``: passed through (the summed NLL and token count are its scores).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from chipforge import fs
from evaluation import metrics
from evaluation.benchmarks import extract_verilog
from evaluation.simulate import SimSettings, excerpt, run_problem, verilog_checks
from evaluation.smoke import missing_terms

SMALL_SCHEMA = pa.schema([
    pa.field("row_id", pa.string(), nullable=False),
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("suite", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("sample", pa.int32(), nullable=False),
    pa.field("verdict", pa.string()),  # pass | fail | scored (text metrics) | null (loss rows)
    pa.field("failure_class", pa.string()),
    pa.field("scores_json", pa.string()),
    pa.field("engine_error", pa.string()),
    pa.field("prompt_sha", pa.string()),
    pa.field("log", pa.string()),  # only for the self-check's failures (the report explains each)
])
SAMPLES_SCHEMA = pa.schema([
    pa.field("row_id", pa.string(), nullable=False),
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("suite", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("sample", pa.int32(), nullable=False),
    pa.field("temperature", pa.float64()),
    pa.field("top_p", pa.float64()),
    pa.field("max_tokens", pa.int32()),
    pa.field("seed", pa.int64()),
    pa.field("prompt", pa.string()),  # the chat sent, as JSON
    pa.field("prompt_sha", pa.string()),
    pa.field("completion", pa.string()),
    pa.field("verdict", pa.string()),
    pa.field("failure_class", pa.string()),
    pa.field("log_excerpt", pa.string()),
    pa.field("scores_json", pa.string()),
    pa.field("engine_error", pa.string()),
    pa.field("prompt_tokens", pa.int32()),
    pa.field("completion_tokens", pa.int32()),
])
_JSON_OBJ = re.compile(r"\{[^{}]*\}")


def parse_phase(text: str | None, phases: Sequence[str]) -> str:
    """The phase an answer names: a ``{"phase": ...}`` object first, else the single phase name it
    mentions (``rtl_design`` or ``rtl design``); ``unparsed`` otherwise."""
    text = text or ""
    for m in _JSON_OBJ.finditer(text):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and obj.get("phase") in phases:
            return obj["phase"]
    low = text.lower()
    named = [p for p in phases if re.search(rf"\b{re.escape(p)}\b|\b{re.escape(p.replace('_', ' '))}\b", low)]
    return named[0] if len(named) == 1 else metrics.UNPARSED


def check_row(row: Mapping[str, Any], problems: Mapping[str, dict[str, Any]], settings: SimSettings,
              phases: Sequence[str]) -> dict[str, Any]:
    """``{"verdict", "failure_class", "scores", "log"}`` for one engine output row."""
    kind = row["kind"]
    target = json.loads(row.get("target_json") or "{}")
    completion = row.get("completion")
    if kind == "loss":
        cls = "engine_error" if row.get("engine_error") else None
        return {"verdict": None, "failure_class": cls, "log": row.get("engine_error") or "",
                "scores": {"nll_sum": row.get("nll_sum"), "n_tokens": row.get("n_tokens")}}
    if row.get("engine_error") or completion is None:
        scores = {"parse": False, "compile": False, "lint": False} if target.get("answer_kind") == "verilog" else {}
        if kind == "routing":
            scores = {"predicted": metrics.UNPARSED}
        if target.get("answer_kind") == "text":
            scores = {"rouge_l": 0.0, "chrf": 0.0}
        return {"verdict": "fail", "failure_class": "engine_error", "scores": scores,
                "log": excerpt(row.get("engine_error") or "no completion", settings.log_chars)}
    if kind in ("benchmark", "smoke") and target.get("problem"):
        problem = problems[target["problem"]]
        code = completion if target.get("raw") else extract_verilog(completion, problem["top"], problem.get("header"))
        res = run_problem(problem, code, settings)
        return {"verdict": res["verdict"], "failure_class": res["failure_class"], "log": res["log"],
                "scores": {"stage": res.get("stage")}}
    if kind == "smoke":  # text item
        missing = missing_terms(completion, target.get("expect_terms", []))
        ref = target.get("reference") or ""
        return {"verdict": "fail" if missing else "pass", "failure_class": "missing_terms" if missing else None,
                "log": f"missing: {missing}" if missing else "",
                "scores": {"missing": missing, "rouge_l": metrics.rouge_l(completion, ref),
                           "chrf": metrics.chrf(completion, ref)}}
    if kind == "routing":
        predicted = parse_phase(completion, phases)
        ok = predicted == target.get("expected")
        cls = None if ok else ("unparsed" if predicted == metrics.UNPARSED else "wrong_phase")
        return {"verdict": "pass" if ok else "fail", "failure_class": cls, "log": "",
                "scores": {"predicted": predicted}}
    if kind == "generation":
        if target.get("answer_kind") == "verilog":
            res = verilog_checks(extract_verilog(completion), settings)
            ok = res["parse"] and res["compile"] and res["lint"]
            cls = (None if ok else (res["failure_class"] or "compile") if not res["compile"]
                   else "lint" if not res["lint"] else "parse")
            return {"verdict": "pass" if ok else "fail", "failure_class": cls, "log": res["log"],
                    "scores": {k: res[k] for k in ("parse", "compile", "lint")}}
        ref = target.get("reference") or ""
        return {"verdict": "scored", "failure_class": None, "log": "",
                "scores": {"rouge_l": metrics.rouge_l(completion, ref), "chrf": metrics.chrf(completion, ref)}}
    raise ValueError(f"row {row.get('row_id')}: unknown kind {kind!r}")


def check_batch(batch: pa.Table, *, problems: Mapping[str, dict[str, Any]], settings: Mapping[str, Any],
                phases: Sequence[str], samples_dir: str | None = None,
                allow_unsandboxed: bool = False) -> pa.Table:
    """Judge every row (one verdict each, never an exception out of the batch); write the full rows
    to ``samples_dir``; return the small columns."""
    if allow_unsandboxed:
        from synthesis import sandbox

        sandbox.require_isolation(True)
    sim = SimSettings(**settings)
    small, full = [], []
    for row in batch.to_pylist():
        try:
            res = check_row(row, problems, sim, phases)
        except Exception as exc:  # noqa: BLE001 - a checker failure is this row's failure, counted
            res = {"verdict": "fail", "failure_class": "check_error", "scores": {},
                   "log": f"{type(exc).__name__}: {exc}"[:2000]}
        scores = json.dumps(res["scores"], default=str)
        common = {k: row[k] for k in ("row_id", "prompt_id", "kind", "suite", "item_id", "model", "sample")}
        small.append({**common, "verdict": res["verdict"], "failure_class": res["failure_class"],
                      "scores_json": scores, "engine_error": (row.get("engine_error") or None) and
                      row["engine_error"][:300], "prompt_sha": row.get("prompt_sha"),
                      "log": res["log"] if row["model"] == "reference" and res["verdict"] != "pass" else None})
        if row["kind"] != "loss":
            full.append({**common, **{k: row.get(k) for k in ("temperature", "top_p", "max_tokens", "seed",
                                                                "prompt_sha", "completion", "engine_error",
                                                                "prompt_tokens", "completion_tokens")},
                         "prompt": row["messages_json"], "verdict": res["verdict"],
                         "failure_class": res["failure_class"], "log_excerpt": res["log"], "scores_json": scores})
    if samples_dir and full:
        write_samples(samples_dir, full)
    return pa.Table.from_pylist(small, schema=SMALL_SCHEMA)


def write_samples(samples_dir: str, rows: list[dict[str, Any]]) -> str:
    """One Parquet file of ``rows`` (``SAMPLES_SCHEMA``) named by a hash of their row ids."""
    key = hashlib.sha256("\n".join(sorted(r["row_id"] for r in rows)).encode()).hexdigest()[:20]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA), buf)
    path = fs.join(samples_dir, f"part-{key}.parquet")
    fs.write_bytes(path, buf.getvalue())
    return path
