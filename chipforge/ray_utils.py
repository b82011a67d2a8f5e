"""Ray start-up shared by every job entry point."""

from __future__ import annotations

import os
from typing import Any


def init_ray(**kwargs: Any) -> None:
    """Attach to the cluster a job was submitted to, or start a local Ray.

    No address is passed: under ``ray job submit`` (``RAY_ADDRESS`` is set) this attaches to
    the cluster; on a laptop it starts a local one. A Ray already initialised in this process
    (tests, notebooks) is reused as it is.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(**kwargs)
    from ray.data import DataContext

    ctx = DataContext.get_current()
    if os.environ.get("CHIPFORGE_PROGRESS", "1") == "0":
        ctx.enable_progress_bars = False
