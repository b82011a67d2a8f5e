"""The triage router behind the ``chipforge`` model: which specialist answers the last user message.

Two deciders, chosen by ``router.mode`` (``auto``: the triage specialist when one is
registered, else the classifier):

- ``classifier``: ``corpus.phases.PhaseClassifier`` (a saved JSON artifact, or trained on the
  shipped labelled set at start-up, about a second). Confidence = its probability.
- ``triage``: the registered triage specialist scores every candidate answer
  ``{"phase": "<phase>"}`` (the format it was trained on) after the question; confidence = the
  softmax of those log-likelihoods over the candidates.

Candidates are the phases with a registered specialist (triage excluded). When the best
candidate's confidence is under ``router.threshold`` (or the classifier's overall best is a
phase nobody serves, such as ``triage``), the fallback answers: the triage specialist where
one is registered (``fallback: auto|triage``), else the base model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from serving.catalog import TRIAGE, Catalog, Target

Scorer = Callable[[str, list[str]], Awaitable[dict[str, float]]]


@dataclass(frozen=True)
class Decision:
    target: Target
    phase: str | None  # the specialist's phase that answers (None: base)
    predicted: str | None  # the decider's best candidate
    confidence: float
    by: str  # classifier | triage
    fallback: bool
    scores: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {"specialist": self.phase or "base", "model": self.target.name, "predicted": self.predicted,
                "confidence": round(self.confidence, 4), "routed_by": self.by, "fallback": self.fallback,
                "scores": {k: round(v, 4) for k, v in sorted(self.scores.items(), key=lambda kv: -kv[1])[:3]}}


def triage_answer(phase: str) -> str:
    """What the triage specialist was trained to answer (``corpus.dataset``: ``json.dumps({"phase": p})``)."""
    return json.dumps({"phase": phase})


class Router:
    def __init__(self, catalog: Catalog, *, mode: str = "auto", threshold: float = 0.35, fallback: str = "auto",
                 classifier: str | None = None, scorer: Scorer | None = None) -> None:
        self.catalog = catalog
        has_triage = TRIAGE in catalog.specialists
        self.mode = ("triage" if has_triage else "classifier") if mode == "auto" else mode
        if self.mode == "triage" and not has_triage:
            raise ValueError("router.mode is 'triage' but the registry has no triage specialist")
        if self.mode == "triage" and scorer is None:
            raise ValueError("router.mode 'triage' needs a scorer")
        self.threshold = threshold
        use_triage = has_triage and fallback in ("auto", "triage")
        self.fallback_target = catalog.target_of_phase(TRIAGE) if use_triage else catalog.base_target()
        self.scorer = scorer
        self.classifier = None
        if self.mode == "classifier":
            from corpus.phases import PhaseClassifier

            self.classifier = PhaseClassifier.load(classifier)

    @property
    def candidates(self) -> list[str]:
        return self.catalog.routable_phases

    async def route(self, text: str) -> Decision:
        cands = self.candidates
        if not cands or not text.strip():
            return self._fallback(None, 0.0, {})
        if self.mode == "classifier":
            scores = self.classify(text)
            overall = max(scores, key=scores.__getitem__)
            best = max(cands, key=lambda p: scores.get(p, 0.0))
            conf = scores.get(best, 0.0)
            if overall not in cands and scores[overall] > conf:
                # The classifier's answer is a phase nobody serves (e.g. a general triage question).
                return self._fallback(best, conf, scores)
        else:
            assert self.scorer is not None
            logp = await self.scorer(text, cands)
            top = max(logp.values())
            z = sum(math.exp(v - top) for v in logp.values())
            scores = {p: math.exp(v - top) / z for p, v in logp.items()}
            best = max(scores, key=scores.__getitem__)
            conf = scores[best]
        if conf < self.threshold:
            return self._fallback(best, conf, scores)
        return Decision(self.catalog.target_of_phase(best), best, best, conf, self.mode, False, scores)

    def classify(self, text: str) -> dict[str, float]:
        assert self.classifier is not None
        probs = self.classifier.predict_proba([text])[0]
        return {c: float(p) for c, p in zip(self.classifier.classes, probs)}

    def _fallback(self, predicted: str | None, conf: float, scores: dict[str, float]) -> Decision:
        t = self.fallback_target
        return Decision(t, t.phase, predicted, conf, self.mode, True, scores)
