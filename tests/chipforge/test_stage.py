"""chipforge.stage: the stage contract's helpers and the one Ray Data adapter."""

from __future__ import annotations

import pyarrow as pa
import pytest

from chipforge.stage import StageResources, check_columns, fit_to_cluster, map_stage


def test_missing_input_column_is_named() -> None:
    with pytest.raises(ValueError, match=r"stage dataset\.modules: input lacks column\(s\) \['keep'\]"):
        check_columns("dataset.modules", pa.table({"id": ["a"]}), ["id", "keep"])
    check_columns("x", pa.table({"id": ["a"], "keep": [True]}), ["id", "keep"])


def test_fit_to_cluster_leaves_cpus_for_read_tasks() -> None:
    """Three 1-CPU actor pools on a 2-CPU machine would starve the read tasks (a hang): they are scaled."""
    stages = {n: StageResources(num_cpus=1.0, concurrency=1) for n in ("modules", "docs", "decontam")}
    said: list[str] = []
    fitted = fit_to_cluster(stages, total_cpus=2.0, say=said.append)
    assert sum(r.num_cpus * (r.concurrency or 1) for r in fitted.values()) <= 2.0 - 1.0 + 1e-9
    assert all(r.num_cpus > 0 and r.concurrency == 1 for r in fitted.values())
    assert said and "scaled to fit" in said[0]
    # enough room: unchanged
    assert fit_to_cluster(stages, total_cpus=16.0) == stages


class AddOne:
    """A stage class: built once per actor, maps pyarrow batches."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, batch: pa.Table) -> pa.Table:
        assert isinstance(batch, pa.Table)
        return batch.append_column("y", pa.array([x + self.k for x in batch.column("x").to_pylist()]))


def double(batch: pa.Table, factor: int) -> pa.Table:
    return pa.table({"x": batch.column("x"), "z": pa.array([x * factor for x in batch.column("x").to_pylist()])})


@pytest.mark.integration
def test_map_stage_runs_classes_on_actors_and_functions_as_tasks(ray_session) -> None:
    import ray

    ds = ray.data.from_items([{"x": i} for i in range(10)])
    out = map_stage(ds, AddOne, StageResources(num_cpus=0.5, concurrency=1, batch_size=4), kwargs={"k": 1})
    assert sorted(r["y"] for r in out.take_all()) == list(range(1, 11))
    out = map_stage(ds, double, StageResources(num_cpus=0.5), kwargs={"factor": 3})
    assert sorted(r["z"] for r in out.take_all()) == [3 * i for i in range(10)]
