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


def compute(concurrency: int | None, actors: bool) -> Any:
    """Ray Data ``compute=`` for a stage's configured concurrency (``concurrency=`` is deprecated since 2.51).

    Callable classes run on an actor pool (fixed size, or autoscaling from one actor when None);
    functions run as tasks (at most ``concurrency`` at once, unbounded when None).
    """
    import ray.data

    if actors:
        return ray.data.ActorPoolStrategy(size=concurrency) if concurrency else ray.data.ActorPoolStrategy(min_size=1)
    return ray.data.TaskPoolStrategy(size=concurrency)
