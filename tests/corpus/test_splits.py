"""Group splits never share a repository/source and are deterministic."""

from __future__ import annotations

import pytest

from corpus.splits import assign_groups


def test_every_group_in_exactly_one_split_and_ratios_roughly_met() -> None:
    sizes = {f"repo{i}": 10 + (i * 7) % 13 for i in range(60)}
    a = assign_groups(sizes, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=3)
    assert set(a) == set(sizes) and set(a.values()) == {"train", "validation", "test"}
    rows = {s: sum(n for g, n in sizes.items() if a[g] == s) for s in ("train", "validation", "test")}
    total = sum(sizes.values())
    assert abs(rows["train"] / total - 0.8) < 0.05
    assert abs(rows["test"] / total - 0.1) < 0.05


def test_deterministic_by_seed() -> None:
    sizes = {f"r{i}": 5 for i in range(20)}
    assert assign_groups(sizes, seed=1) == assign_groups(dict(reversed(list(sizes.items()))), seed=1)
    assert assign_groups(sizes, seed=1) != assign_groups(sizes, seed=2)


def test_tiny_inputs() -> None:
    assert set(assign_groups({"only": 9}).values()) == {"train"}
    assert sorted(assign_groups({"a": 1, "b": 1}).values()) == ["train", "validation"]
    assert sorted(assign_groups({"a": 1, "b": 1, "c": 1}).values()) == ["test", "train", "validation"]
    assert assign_groups({}) == {}


def test_one_huge_group_does_not_take_every_split() -> None:
    sizes = {"nvdla": 1000, **{f"small{i}": 10 for i in range(10)}}
    a = assign_groups(sizes, seed=0)
    assert len(set(a.values())) == 3


def test_bad_ratios() -> None:
    with pytest.raises(ValueError, match="positive"):
        assign_groups({"a": 1}, {"train": 0.0})
