from __future__ import annotations

import json
import re
import threading

import pytest

from chipforge import fs
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


@pytest.mark.parametrize("text, why", [
    ("{not json", "not valid JSON"), ("", "not valid JSON"), ("[]", "found list"), ('"x"', "found str"),
    ('{"version": 1, "specialists": []}', "must be an object mapping phase"),
    ('{"version": 1, "specialists": {"routing": 3}}', "specialist 'routing' must be an object"),
    ('{"specialists": {}}', "unsupported format"),
])
def test_a_file_that_is_not_a_registry_is_an_error_naming_it_and_is_left_alone(tmp_path, text, why):
    """A hand-edited registry: reading or registering raises a ValueError naming the file and what is
    wrong (not a JSONDecodeError/AttributeError without a path), and registering does not rewrite it."""
    path = tmp_path / "registry.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"registry {re.escape(str(path))}: .*{re.escape(why)}"):
        load(str(path))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        register(str(path), "rtl_design", **entry(1))
    assert path.read_text() == text


def test_a_registry_that_is_not_utf8_is_an_error_naming_it(tmp_path):
    path = tmp_path / "registry.json"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match=f"registry {re.escape(str(path))}: not valid JSON"):
        load(str(path))


def test_plain_and_file_uri_paths_of_one_registry_share_its_lock(tmp_path):
    """``file:///…/registry.json`` and ``/…/registry.json`` are one file: a writer using one form
    waits for a writer holding the lock under the other (else one entry is lost)."""
    from training.registry import lock

    path = str(tmp_path / "registry.json")
    done = threading.Event()
    writer = threading.Thread(target=lambda: (register("file://" + path, "routing", **entry(2)), done.set()))
    with lock(path):
        writer.start()
        assert not done.wait(1.0), "the file:// writer did not wait for the lock"
    writer.join(10)
    assert done.is_set() and set(load(path)["specialists"]) == {"routing"}


def test_object_store_registration_starts_over_when_another_writer_lands_in_between(s3_env, monkeypatch):
    """On s3:// there is no lock: another job's entry written between this job's read and its write
    must not be dropped (read-modify-write race); the registration re-reads and keeps both."""
    from tests.conftest import make_bucket
    from training import registry

    path = make_bucket(s3_env, "cf-registry-race") + "/registry.json"
    register(path, "placement", **entry(0))
    real_load = registry.load
    calls = []

    def racing_load(p):
        data = real_load(p)
        if not calls:  # the other job writes right after our first read
            calls.append(p)
            other = real_load(p)
            other["specialists"]["routing"] = {"phase": "routing", **entry(2)}
            fs.write_json(p, other)
        return data

    monkeypatch.setattr(registry, "load", racing_load)
    monkeypatch.setattr(registry, "S3_SETTLE_S", 0.0, raising=False)
    register(path, "rtl_design", **entry(1))
    assert set(real_load(path)["specialists"]) == {"placement", "routing", "rtl_design"}


def test_object_store_registration_that_keeps_being_overwritten_is_an_error(s3_env, monkeypatch):
    """A stale writer that overwrites every write: the lost update is reported, naming file and phase."""
    from tests.conftest import make_bucket
    from training import registry

    path = make_bucket(s3_env, "cf-registry-lost") + "/registry.json"
    register(path, "placement", **entry(0))
    stale = fs.read_text(path)
    real_write = fs.write_json

    def clobbered_write(p, obj):
        real_write(p, obj)
        fs.write_text(p, stale)  # the other job's update, read before ours, lands after it

    monkeypatch.setattr(fs, "write_json", clobbered_write)
    monkeypatch.setattr(registry, "S3_SETTLE_S", 0.0, raising=False)
    with pytest.raises(ValueError, match=f"registry {re.escape(path)}: the 'rtl_design' entry was overwritten"):
        register(path, "rtl_design", **entry(1))
