"""Write evaluation results into the specialist registry (``training.registry``'s file format).

Each evaluated specialist's entry gets an ``evaluation`` block (metrics side by side with its
base and the report's path); nothing else in the entry changes. The update goes through
``training.registry.update``, the read-modify-write every registry writer uses: under
``<registry>.lock`` on local paths, and on object stores (no locks) with a re-read before the
write and a read-back after it, so an evaluation and a registration (or two evaluations) that
land together both survive. ``training.registry`` is only called here (it is owned by training).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from training.registry import update


def record_evaluations(path: str, evaluations: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Set ``entry["evaluation"]`` of each phase in ``evaluations``; returns the phases updated.

    A phase no longer in the registry (removed while the evaluation ran) is skipped.
    """

    def add_evaluations(specialists: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {phase: {**specialists[phase], "evaluation": dict(block)}
                for phase, block in evaluations.items() if phase in specialists}

    return list(update(path, add_evaluations))
