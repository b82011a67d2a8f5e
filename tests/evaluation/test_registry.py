"""evaluation.registry.record_evaluations: evaluation blocks land in the specialist registry and survive
another job's update that lands at the same time, on a local registry and on an object store."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from chipforge import fs
from evaluation.registry import record_evaluations
from training import registry
from training.registry import load, register


def entry(i: int) -> dict[str, Any]:
    return dict(base_model="base", adapter_path=f"/a/{i}", dataset_version="sha256:x", metrics={"eval_loss": i},
                config={"k": i})


def test_record_evaluations_sets_the_block_and_nothing_else(tmp_path):
    path = str(tmp_path / "registry.json")
    register(path, "rtl_design", **entry(1))
    register(path, "routing", **entry(2))
    before = load(path)["specialists"]
    assert record_evaluations(path, {"rtl_design": {"pass_at_1": 0.5}, "removed": {"pass_at_1": 1.0}}) == ["rtl_design"]
    after = load(path)["specialists"]
    assert after == {"rtl_design": {**before["rtl_design"], "evaluation": {"pass_at_1": 0.5}},
                     "routing": before["routing"]}
    assert record_evaluations(path, {"removed": {}}) == []
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.fixture()
def store(s3_env, monkeypatch, request) -> str:
    """A registry on the session's S3 with two specialists; no settling wait between write and read-back."""
    from tests.conftest import make_bucket

    monkeypatch.setattr(registry, "S3_SETTLE_S", 0.0)
    name = "cf-evreg-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[-40:].strip("-")
    path = make_bucket(s3_env, name) + "/registry.json"
    register(path, "rtl_design", **entry(1))
    register(path, "routing", **entry(2))
    return path


def _after_next_read(monkeypatch, other: Callable[[], Any]) -> None:
    """Run ``other`` (another job's whole registry update) right after the next read of the registry:
    the interleaving that loses an update when the first writer then writes what it read."""
    real_load, pending = registry.load, [other]

    def load_then_other(path: str) -> dict[str, Any]:
        data = real_load(path)
        if pending:
            pending.pop()()
        return data

    monkeypatch.setattr(registry, "load", load_then_other)


@pytest.mark.parametrize("other", ["register", "record_evaluations"])
def test_object_store_evaluation_keeps_an_update_landing_between_its_read_and_write(store, monkeypatch, other):
    """No lock on s3://: a registration (or another evaluation) written between this evaluation's read and
    its write was dropped (last writer wins); the evaluation now starts over from the newer file."""
    if other == "register":
        _after_next_read(monkeypatch, lambda: register(store, "placement", **entry(3)))
    else:
        _after_next_read(monkeypatch, lambda: record_evaluations(store, {"routing": {"pass_at_1": 0.2}}))
    assert record_evaluations(store, {"rtl_design": {"pass_at_1": 0.9}}) == ["rtl_design"]
    monkeypatch.undo()
    specialists = load(store)["specialists"]
    assert specialists["rtl_design"]["evaluation"] == {"pass_at_1": 0.9}
    if other == "register":
        assert specialists["placement"]["adapter_path"] == "/a/3"
    else:
        assert specialists["routing"]["evaluation"] == {"pass_at_1": 0.2}


def test_object_store_registration_keeps_an_evaluation_landing_between_its_read_and_write(store, monkeypatch):
    _after_next_read(monkeypatch, lambda: record_evaluations(store, {"routing": {"pass_at_1": 0.2}}))
    register(store, "placement", **entry(3))
    monkeypatch.undo()
    specialists = load(store)["specialists"]
    assert specialists["routing"]["evaluation"] == {"pass_at_1": 0.2} and "placement" in specialists


def _stale_writer_after_our_write(monkeypatch, times: int) -> None:
    """The other job read the registry before our write and its write lands just after ours, ``times`` times."""
    real_write, left = fs.write_json, [times]

    def write_then_stale(path: str, obj: Any) -> None:
        stale = fs.read_text(path)
        real_write(path, obj)
        if left[0]:
            left[0] -= 1
            fs.write_text(path, stale)

    monkeypatch.setattr(fs, "write_json", write_then_stale)


def test_object_store_evaluation_undone_by_a_stale_writer_is_written_again(store, monkeypatch):
    _stale_writer_after_our_write(monkeypatch, times=1)
    assert record_evaluations(store, {"rtl_design": {"pass_at_1": 0.9}}) == ["rtl_design"]
    assert load(store)["specialists"]["rtl_design"]["evaluation"] == {"pass_at_1": 0.9}


def test_object_store_evaluation_that_keeps_being_undone_is_an_error_naming_file_and_phase(store, monkeypatch):
    _stale_writer_after_our_write(monkeypatch, times=registry.S3_ATTEMPTS)
    with pytest.raises(registry.RegistryError, match=f"registry {re.escape(store)}: the 'rtl_design' entry was "
                                                     "overwritten by concurrent writers"):
        record_evaluations(store, {"rtl_design": {"pass_at_1": 0.9}})


def test_object_store_evaluation_replaced_by_a_newer_registration_is_not_moved_onto_it(store, monkeypatch):
    """A registration of the same phase that lands after the evaluation's write wins, as it would under a
    lock: the evaluation (of the previous adapter) is not written onto the new adapter's entry."""
    real_write, pending = fs.write_json, [True]

    def write_then_register(path: str, obj: Any) -> None:
        real_write(path, obj)
        if pending:
            pending.pop()
            register(store, "rtl_design", **entry(7))

    monkeypatch.setattr(fs, "write_json", write_then_register)
    record_evaluations(store, {"rtl_design": {"pass_at_1": 0.9}})
    monkeypatch.undo()
    landed = load(store)["specialists"]["rtl_design"]
    assert landed["adapter_path"] == "/a/7" and "evaluation" not in landed
