"""The stage contract and the one adapter that turns a stage into a Ray Data call.

A stage is either a pure function over a pyarrow table, or a class whose constructor builds
its parser or model once per worker and whose ``__call__(table) -> table`` maps a batch.
It declares, as class attributes where it can:

- ``name``: used in progress lines and reports;
- ``input_columns``: the columns it reads (checked on the first batch: a missing column is an
  error naming the stage and the column, never a table of nulls);
- ``output_schema``: what it returns;
- per-item failures as a ``status`` column (``"ok"`` or a reason) where items can fail.

Resources (CPUs, GPUs, actors, batch size) are config fields of the job that runs the stage
(:class:`StageResources`), checked against the cluster's size by :func:`fit_to_cluster`.
:func:`map_stage` is the only place that calls ``Dataset.map_batches``; stages themselves know
nothing of Ray and are unit-tested on plain tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pyarrow as pa
from pydantic import Field

from chipforge.config import Config


class StageResources(Config):
    """Ray resources of one stage: ``concurrency`` workers of ``num_cpus``/``num_gpus`` each.

    ``concurrency`` None lets Ray size the pool (autoscaling actors from one; unbounded tasks).
    ``batch_size`` None passes whole blocks."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    concurrency: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)


def check_columns(stage: str, table: pa.Table | pa.RecordBatch, columns: Iterable[str]) -> None:
    """Raise a clear error when ``table`` lacks any of ``columns`` (instead of reading nulls)."""
    missing = [c for c in columns if c not in table.schema.names]
    if missing:
        raise ValueError(f"stage {stage}: input lacks column(s) {missing}; it has {table.schema.names}")


def compute(concurrency: int | None, actors: bool) -> Any:
    """Ray Data ``compute=`` for a stage's concurrency: an actor pool for classes, tasks for functions."""
    import ray.data

    if actors:
        return ray.data.ActorPoolStrategy(size=concurrency) if concurrency else ray.data.ActorPoolStrategy(min_size=1)
    return ray.data.TaskPoolStrategy(size=concurrency)


def map_stage(ds: Any, stage: type | Callable[..., Any], resources: StageResources | None = None, *,
              kwargs: Mapping[str, Any] | None = None, **ray_options: Any) -> Any:
    """``ds.map_batches`` for one stage, with pyarrow batches and the stage's resources.

    A class runs on an actor pool (its constructor gets ``kwargs`` once per actor); a function
    runs as tasks (with ``kwargs`` as keyword arguments). Extra ``ray_options`` pass through
    (for example ``zero_copy_batch``).
    """
    res = resources or StageResources()
    actors = isinstance(stage, type)
    options: dict[str, Any] = {
        "batch_format": "pyarrow", "batch_size": res.batch_size, "num_cpus": res.num_cpus,
        "compute": compute(res.concurrency, actors=actors), **ray_options,
    }
    if res.num_gpus:
        options["num_gpus"] = res.num_gpus
    if kwargs:
        options["fn_constructor_kwargs" if actors else "fn_kwargs"] = dict(kwargs)
    return ds.map_batches(stage, **options)


def cluster_cpus() -> float:
    """CPUs of the Ray cluster this process is attached to (0 when Ray is not running)."""
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0)) if ray.is_initialized() else 0.0


def fit_to_cluster(stages: Mapping[str, StageResources], total_cpus: float, *, reserve: float = 1.0,
                   say: Callable[[str], None] | None = None) -> dict[str, StageResources]:
    """Scale actor pools that run at the same time so they leave ``reserve`` CPUs for read/write tasks.

    Fixed-size actor pools whose CPUs add up to the whole cluster starve Ray Data's read tasks
    and the job hangs. This shrinks each pool's ``num_cpus`` (then its size) proportionally so
    the sum fits, and says what it changed.
    """
    if total_cpus <= 0:
        return dict(stages)
    budget = max(total_cpus - reserve, 0.25 * len(stages))
    demand = sum(r.num_cpus * (r.concurrency or 1) for r in stages.values())
    if demand <= budget:
        return dict(stages)
    scale = budget / demand
    out: dict[str, StageResources] = {}
    for name, r in stages.items():
        n = r.concurrency or 1
        cpus = max(0.05, math.floor(r.num_cpus * scale * 100) / 100)
        if r.num_cpus * n * scale < 0.05 * n:
            n = max(1, int(r.num_cpus * n * scale / 0.05))
        out[name] = r.model_copy(update={"num_cpus": cpus, "concurrency": n if r.concurrency else None})
    if say:
        say(f"stages asked for {demand:g} CPUs of {total_cpus:g}; scaled to fit: "
            + ", ".join(f"{k} {v.concurrency or 1}x{v.num_cpus:g}" for k, v in out.items()))
    return out


def read_cpus(stages: Mapping[str, StageResources], total_cpus: float, *, want: float = 1.0) -> float | None:
    """CPUs for each read task beside the (fitted) actor pools ``stages``: ``want`` where it fits.

    Ray Data read tasks ask for 1 CPU by default; on a 1-CPU cluster :func:`fit_to_cluster` can
    only leave a fraction free, and a read that asks for more than is free waits forever. This
    returns what is free (at least 0.05, at most ``want``); None when Ray is not running (keep
    Ray's default).
    """
    if total_cpus <= 0:
        return None
    used = sum(r.num_cpus * (r.concurrency or 1) for r in stages.values())
    return round(max(0.05, min(want, total_cpus - used)), 2)
