"""Pure metric functions (no Ray, no models): pass@k, text overlap, perplexity, routing.

- ``pass_at_k(n, c, k)``: the unbiased estimator of Chen et al. (2021), ``1 - C(n-c, k) / C(n, k)``,
  computed as a product so large ``n`` never overflows; ``mean_pass_at_k`` averages it over
  problems (the benchmark's pass@k).
- ``rouge_l`` (F-measure, ``rouge-score``) and ``chrf`` (``sacrebleu``, 0-100): the maintained
  implementations, nothing re-implemented.
- ``perplexity``: ``exp(sum of token NLL / assistant tokens)`` over a whole split (token-weighted,
  as the fine-tuning job's ``eval_perplexity``).
- ``routing_metrics``: accuracy, macro-F1 and a confusion matrix of a router's predictions;
  ``corpus.phases.evaluate`` does the scoring, an answer naming no phase is counted as ``unparsed``
  (its own column in the matrix, never silently mapped to a phase).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

UNPARSED = "unparsed"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of ``k`` samples drawn from ``n`` (``c`` correct) is correct."""
    if n < 1 or k < 1 or k > n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n and 0 <= c <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float | None:
    """Mean of ``pass_at_k`` over problems given as ``(n, c)``; None when no problem has ``n >= k``."""
    vals = [pass_at_k(n, c, k) for n, c in counts if n >= k]
    return sum(vals) / len(vals) if vals else None


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (rouge-score, no stemming), 0-1."""
    return float(_rouge().score(reference or "", prediction or "")["rougeL"].fmeasure)


def chrf(prediction: str, reference: str) -> float:
    """chrF (sacrebleu defaults: character 6-grams, beta 2), 0-100."""
    import sacrebleu

    return float(sacrebleu.sentence_chrf(prediction or "", [reference or ""]).score)


_SCORER: Any = None


def _rouge() -> Any:
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return _SCORER


def perplexity(nll_sum: float, n_tokens: int) -> tuple[float | None, float | None]:
    """(mean loss per token, perplexity) of a split; (None, None) without tokens. A NaN loss (a
    model that overflowed) stays NaN, never an infinite perplexity; past ``exp``'s range the
    perplexity is infinite (``evaluation.report.json_safe`` writes both as null)."""
    if n_tokens <= 0:
        return None, None
    loss = nll_sum / n_tokens
    if math.isnan(loss):
        return loss, math.nan
    return loss, (math.exp(loss) if loss < 700 else math.inf)


def routing_metrics(y_true: Sequence[str], y_pred: Sequence[str], phases: Sequence[str]) -> dict[str, Any]:
    """``corpus.phases.evaluate`` over ``phases`` plus a confusion matrix whose last column counts
    answers that named no phase (``unparsed``); rows are true phases, columns predictions."""
    from corpus.phases import evaluate

    out = evaluate(y_true, y_pred, phases)
    cols = [*phases, UNPARSED]
    index = {p: i for i, p in enumerate(cols)}
    matrix = [[0] * len(cols) for _ in phases]
    rows = {p: i for i, p in enumerate(phases)}
    for t, p in zip(y_true, y_pred, strict=True):
        matrix[rows[t]][index.get(p, index[UNPARSED])] += 1
    out["confusion"] = {"rows": "true", "columns": "predicted", "labels": list(phases), "columns_labels": cols,
                        "matrix": matrix}
    out["unparsed"] = sum(1 for p in y_pred if p not in rows)
    out["n"] = len(y_true)
    return out


def mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def failure_counts(classes: Iterable[str | None], known: Sequence[str]) -> dict[str, int]:
    """Counts of each failure class (every ``known`` class present, zeros included)."""
    out = {k: 0 for k in known}
    for c in classes:
        if c:
            out[c] = out.get(c, 0) + 1
    return out


def share(flags: Iterable[bool]) -> float | None:
    flags = list(flags)
    return sum(1 for f in flags if f) / len(flags) if flags else None


def counts_by(rows: Iterable[Mapping[str, Any]], *keys: str) -> dict[tuple, list[Mapping[str, Any]]]:
    """Rows grouped by the values of ``keys`` (order kept)."""
    out: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out
