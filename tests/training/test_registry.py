from __future__ import annotations

import json
import threading

import pytest

from tests.training._data import rows, write_dataset
from training.registry import dataset_version, get, load, register


def entry(i: int) -> dict:
    return dict(base_model="base", adapter_path=f"/a/{i}", dataset_version="sha256:x", metrics={"eval_loss": i},
                config={"k": i})


def test_dataset_version_is_stable_and_tracks_content(tmp_path):
    root = write_dataset(tmp_path / "ds", rows(n_train=4, n_val=2))
    v1 = dataset_version(str(root), "rtl_design")
    assert v1.startswith("sha256:") and v1 == dataset_version(str(root), "rtl_design")
    write_dataset(tmp_path / "ds2", rows(n_train=4, n_val=2))
    assert dataset_version(str(tmp_path / "ds2"), "rtl_design") == v1  # same content elsewhere
    write_dataset(root, rows(n_train=5, n_val=2))
    assert dataset_version(str(root), "rtl_design") != v1
    with pytest.raises(FileNotFoundError, match="routing"):
        dataset_version(str(root), "routing")
    write_dataset(tmp_path / "synth", rows(n_train=2, n_val=0), subdir="synthetic")
    v2 = dataset_version(str(root), "rtl_design")
    assert dataset_version([str(root), str(tmp_path / "synth")], "rtl_design") not in (v2, v1)


def test_register_replaces_phase_and_keeps_others(tmp_path):
    path = str(tmp_path / "reg" / "registry.json")
    assert load(path) == {"version": 1, "specialists": {}}
    register(path, "rtl_design", **entry(1))
    register(path, "routing", **entry(2))
    register(path, "rtl_design", **entry(3), run="r3")
    data = json.loads((tmp_path / "reg" / "registry.json").read_text())
    assert set(data["specialists"]) == {"rtl_design", "routing"}
    assert get(path, "rtl_design")["adapter_path"] == "/a/3" and get(path, "rtl_design")["run"] == "r3"
    assert get(path, "routing")["metrics"] == {"eval_loss": 2}
    assert not [p for p in (tmp_path / "reg").iterdir() if ".tmp-" in p.name]


def test_concurrent_registrations_lose_nothing(tmp_path):
    path = str(tmp_path / "registry.json")
    threads = [threading.Thread(target=register, args=(path, f"p{i}"), kwargs=entry(i)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(load(path)["specialists"]) == {f"p{i}" for i in range(8)}


def test_unknown_registry_format_is_an_error(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"version": 9, "specialists": {}}))
    with pytest.raises(ValueError, match="unsupported"):
        load(str(tmp_path / "r.json"))
