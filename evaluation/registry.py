"""Write evaluation results into the specialist registry (``training.registry``'s file format).

Each evaluated specialist's entry gets an ``evaluation`` block (metrics side by side with its
base and the report's path); nothing else in the entry changes. The update is a
read-modify-write under the same lock file ``training.registry.register`` takes
(``<registry>.lock``, local paths; object stores: last writer wins) and lands with an atomic
rename (``chipforge.fs.write_json``), so a concurrent registration is never lost and a reader
never sees half a file. ``training.registry`` is only read here (it is owned by training).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chipforge import fs
from training.registry import lock


registry_lock = lock  # the lock training.registry.register holds while it writes


def record_evaluations(path: str, evaluations: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Set ``entry["evaluation"]`` of each phase in ``evaluations``; returns the phases updated.

    A phase no longer in the registry (removed while the evaluation ran) is skipped.
    """
    from training.registry import load

    with registry_lock(path):
        data = load(path)
        updated = []
        for phase, block in evaluations.items():
            entry = data["specialists"].get(phase)
            if entry is None:
                continue
            entry["evaluation"] = dict(block)
            updated.append(phase)
        if updated:
            fs.write_json(path, data)
    return updated
