"""Hostile or mismatched registries and adapters are caught when the server is built, before any replica.

Each case is checked through ``serving.app.build_app`` (what ``serve run`` and the serve job call): it
used to bind the application whatever the registry held, so a bad adapter failed later in every
replica (PEFT tracebacks, restarted by Serve), or loaded and served something else. No Ray is
started here; ``tests/serving/test_server_registry.py`` deploys one skipping registry for real.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from serving.adapters import check_catalog, load_checked
from serving.app import build_app
from serving.catalog import CatalogError, load_catalog, localize
from serving.config import ServeConfig
from tests.serving import fixtures

GOOD, BAD = "rtl_design", "timing_analysis"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return fixtures.tiny_registry(tmp_path_factory)


def registry_with(tmp_path: Path, tiny: dict[str, Any], specialists: dict[str, dict[str, Any]]) -> str:
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"version": 1, "specialists": specialists}))
    return str(path)


def entry(tiny: dict[str, Any], phase: str = GOOD, **over: Any) -> dict[str, Any]:
    e = json.loads(Path(tiny["registry"]).read_text())["specialists"][phase]
    return {**e, **over}


def copy_adapter(tiny: dict[str, Any], dest: Path) -> Path:
    shutil.copytree(tiny["adapters"][BAD], dest)
    return dest


def edit_config(d: Path, **over: Any) -> None:
    cfg = json.loads((d / "adapter_config.json").read_text())
    (d / "adapter_config.json").write_text(json.dumps({**cfg, **over}))


def edit_weights(d: Path, fn: Any) -> None:
    from safetensors.torch import load_file, save_file

    path = d / "adapter_model.safetensors"
    save_file(fn(load_file(str(path))), str(path))


def _truncate(d: Path) -> None:
    p = d / "adapter_model.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _nan(d: Path) -> None:
    edit_weights(d, lambda sd: {k: v * float("nan") if "q_proj.lora_B" in k else v for k, v in sd.items()})


# case -> (how the copied adapter is broken, what the error says). "before" is what the old server did.
CASES = {
    "missing": (lambda d: shutil.rmtree(d), "does not exist"),  # before: PEFT looked it up on the Hub
    "empty_dir": (lambda d: [p.unlink() for p in d.iterdir()], "has no adapter_config.json"),
    "no_weights": (lambda d: (d / "adapter_model.safetensors").unlink(), "has no adapter_model.safetensors"),
    "corrupt_config": (lambda d: (d / "adapter_config.json").write_text("{not json"), "is not valid JSON"),
    "not_lora": (lambda d: edit_config(d, peft_type="PREFIX_TUNING"), "is not a LoRA adapter config"),
    "truncated": (_truncate, "truncated or corrupt"),
    # before: these three loaded and answered as the base model (PEFT leaves missing LoRA weights at zero) ...
    "no_lora_weights": (lambda d: edit_weights(d, lambda sd: {}), "holds no LoRA weights"),
    "partial": (lambda d: edit_weights(d, lambda sd: {k: v for k, v in sd.items() if "q_proj" in k}),
                "PEFT would leave them at zero"),
    "half_pair": (lambda d: edit_weights(d, lambda sd: {k: v for k, v in sd.items() if "v_proj.lora_B" not in k}),
                  "without its pair"),
    "other_base": (lambda d: edit_weights(d, lambda sd: {k.replace("model.layers.", "transformer.h."): v
                                                         for k, v in sd.items()}),
                   "the base has no module 'transformer.h."),
    "other_rank": (lambda d: edit_config(d, r=4), "rank or base model do not match"),
    "nan": (_nan, "NaN or infinite"),  # ... and this one answered with empty text
    # before: loaded, then every request to it failed (DoRA), or every request to the *other* specialists
    # failed with KeyError (modules_to_save: PEFT's mixed-adapter batches look every adapter up in lm_head)
    "dora": (lambda d: edit_config(d, use_dora=True), "DoRA"),
    "modules_to_save": (lambda d: edit_config(d, modules_to_save=["lm_head"]), "modules_to_save"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_adapter_fails_the_build_naming_it(tiny, tmp_path, case):
    breaker, says = CASES[case]
    bad = copy_adapter(tiny, tmp_path / "bad-adapter")
    breaker(bad)
    reg = registry_with(tmp_path, tiny, {GOOD: entry(tiny), BAD: entry(tiny, BAD, adapter_path=str(bad))})
    with pytest.raises(ValueError) as err:
        build_app(fixtures.app_args(reg))
    text = str(err.value)
    assert "1 of 2 specialists cannot be served" in text and f"chipforge-{BAD}: adapter {bad}" in text, text
    assert says in text and f"chipforge-{GOOD}" not in text and "on_bad_specialist=skip" in text, text


def test_skip_serves_the_rest_and_reports_the_skipped(tiny, tmp_path):
    bad = copy_adapter(tiny, tmp_path / "bad-adapter")
    _truncate(bad)
    reg = registry_with(tmp_path, tiny, {GOOD: entry(tiny), BAD: entry(tiny, BAD, adapter_path=str(bad)),
                                         "synthesis": entry(tiny, adapter_path=str(tmp_path / "nowhere"))})
    warned: list[str] = []
    cat = load_checked(ServeConfig(registry=reg, on_bad_specialist="skip"), warn=warned.append)
    assert list(cat.specialists) == [GOOD] and cat.model_names() == ["chipforge", f"chipforge-{GOOD}", "chipforge-base"]
    assert set(cat.skipped) == {f"chipforge-{BAD}", "chipforge-synthesis"}
    assert "truncated or corrupt" in cat.skipped[f"chipforge-{BAD}"] and "does not exist" in cat.skipped[
        "chipforge-synthesis"]
    assert len(warned) == 2 and all(w.startswith("not serving chipforge-") for w in warned)
    assert type(cat).from_dict(cat.to_dict()).skipped == cat.skipped  # what the replicas receive
    build_app(fixtures.app_args(reg, on_bad_specialist="skip"))  # binds
    everything_bad = registry_with(tmp_path, tiny, {BAD: entry(tiny, BAD, adapter_path=str(bad))})
    with pytest.raises(CatalogError, match="none of its 1 specialists can be served"):
        load_checked(ServeConfig(registry=everything_bad, on_bad_specialist="skip"))


def test_skipping_a_whole_base_renumbers_the_groups(tiny, tmp_path):
    """The first base is gone (its directory missing): the other base's group takes the base's name."""
    other = tmp_path / "other-base"
    shutil.copytree(tiny["base"], other)
    reg = registry_with(tmp_path, tiny, {GOOD: entry(tiny, base_model=str(tmp_path / "gone")),
                                         BAD: entry(tiny, BAD, base_model=str(other))})
    with pytest.raises(CatalogError, match=r"base_model .*gone does not exist"):
        load_checked(ServeConfig(registry=reg))
    cat = load_checked(ServeConfig(registry=reg, on_bad_specialist="skip"))
    assert [(g.index, g.name, g.base_model, g.phases) for g in cat.groups] == [(0, "chipforge-base", str(other),
                                                                                 (BAD,))]
    assert cat.specialists[BAD].group == 0


@pytest.mark.parametrize("key", ["../../escaped", "x\nFROM /etc/passwd", "not_a_phase", "RTL_DESIGN", "y" * 100_000])
def test_registry_keys_that_are_not_phases_are_errors(tiny, tmp_path, key):
    """Before: served as model ``chipforge-<key>`` (a line break went into response headers and logs; a
    100,000-character key became a model name)."""
    reg = registry_with(tmp_path, tiny, {GOOD: entry(tiny), key: entry(tiny)})
    with pytest.raises(ValueError, match="is not a phase") as err:
        build_app(fixtures.app_args(reg))
    assert f"specialists[{key!r}]" in str(err.value) if len(key) < 50 else len(str(err.value)) < 1000


def test_entries_without_paths_or_with_line_breaks_are_all_reported(tiny, tmp_path):
    reg = registry_with(tmp_path, tiny, {GOOD: entry(tiny, base_model=entry(tiny)["base_model"] + "\nx"),
                                         BAD: {**entry(tiny, BAD), "adapter_path": None},
                                         "synthesis": {**entry(tiny), "metrics": "not a dict"}})
    with pytest.raises(ValueError) as err:
        build_app(fixtures.app_args(reg))
    text = str(err.value)
    assert "2 of 3 specialists" in text and "line break" in text and f"specialist {BAD!r} has no adapter_path" in text


def test_bad_names_in_the_config_are_refused():
    from pydantic import ValidationError

    for bad in ("my model", "x\ny", "a/b", "-x"):
        with pytest.raises(ValidationError, match="is not a model name"):
            ServeConfig(names={"prefix": bad})


def test_relative_paths_are_relative_to_the_registry_and_ambiguity_is_an_error(tiny, tmp_path, monkeypatch):
    """Before: a relative path was looked up in the working directory first, so the same registry served
    another adapter when started from another directory."""
    home = tmp_path / "reg"
    copy_adapter(tiny, home / "adapters" / "a")
    reg = registry_with(home, tiny, {GOOD: entry(tiny, adapter_path="adapters/a")})
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_catalog(reg).specialists[GOOD].adapter_path == str(home / "adapters" / "a")
    copy_adapter(tiny, elsewhere / "adapters" / "a")  # the same relative path, another adapter
    with pytest.raises(CatalogError, match="'adapters/a' is ambiguous"):
        load_catalog(reg)
    with pytest.raises(ValueError, match=f"chipforge-{GOOD}: .*'adapters/a' is ambiguous"):
        build_app(fixtures.app_args(reg))


def test_symlinked_adapters_are_followed_and_checked(tiny, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tiny["adapters"][GOOD])
    outside = tmp_path / "etc-link"
    outside.symlink_to("/etc")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nothing")
    reg = registry_with(tmp_path, tiny, {GOOD: entry(tiny, adapter_path=str(link)),
                                         BAD: entry(tiny, BAD, adapter_path=str(outside)),
                                         "synthesis": entry(tiny, adapter_path=str(dangling))})
    cat = load_checked(ServeConfig(registry=reg, on_bad_specialist="skip"))
    assert list(cat.specialists) == [GOOD]
    assert "has no adapter_config.json" in cat.skipped[f"chipforge-{BAD}"]
    assert "does not exist" in cat.skipped["chipforge-synthesis"]


def test_different_ranks_in_one_group_are_served(tiny, tmp_path):
    """No false alarm: adapters of different ranks on one base pass the checks, and PEFT's mixed-adapter
    batches serve them side by side."""
    import threading

    from serving.engine import HFEngine, SamplingParams
    from training.tiny import quiet_hf

    low = copy_adapter(tiny, tmp_path / "r4")
    edit_weights(low, lambda sd: {k: (v[:4] if "lora_A" in k else v[:, :4]).contiguous() for k, v in sd.items()})
    edit_config(low, r=4, lora_alpha=8)
    reg = registry_with(tmp_path, tiny, {GOOD: entry(tiny), BAD: entry(tiny, BAD, adapter_path=str(low))})
    assert list(load_checked(ServeConfig(registry=reg)).specialists) == [GOOD, BAD]
    with quiet_hf():
        engine = HFEngine(tiny["base"], {GOOD: tiny["adapters"][GOOD], BAD: str(low)}, torch_threads=1,
                          batch_wait_s=0.2)
    try:
        done = {a: threading.Event() for a in (GOOD, BAD)}
        ends: dict[str, dict[str, Any]] = {}

        def sink_of(a: str) -> Any:
            def sink(ev: dict[str, Any]) -> None:
                if ev.get("done") or "error" in ev:
                    ends[a] = ev
                    done[a].set()
            return sink

        for a in (GOOD, BAD):  # one batch (batch_wait_s)
            engine.submit(engine.prompt_ids("hello"), a, SamplingParams(max_tokens=4, temperature=0), sink_of(a))
        assert all(e.wait(60) for e in done.values())
        assert all(ev.get("done") and ev["completion_tokens"] == 4 for ev in ends.values()), ends
        assert engine.stats["max_batch"] == 2
    finally:
        engine.shutdown()


def test_vllm_ranks_above_max_lora_rank_fail_the_start_naming_the_adapter(tiny, tmp_path):
    """Before: only ``r`` was compared (a ``rank_pattern`` of 64 passed under max_lora_rank 16), and an
    unreadable adapter_config.json was staged without a check; vLLM refused them at the first request."""
    from serving.vllm import adapter_rank, stage_adapters

    big = copy_adapter(tiny, tmp_path / "big")
    edit_config(big, rank_pattern={"q_proj": 64})
    assert adapter_rank(str(big)) == 64
    reg = registry_with(tmp_path, tiny, {GOOD: entry(tiny), BAD: entry(tiny, BAD, adapter_path=str(big))})
    cfg = ServeConfig(registry=reg, backend="vllm", vllm={"lora_root": "s3://b/loras", "max_lora_rank": 8})
    cat = load_catalog(reg)
    with pytest.raises(ValueError, match=f"chipforge-{BAD}: LoRA rank 64 > vllm.max_lora_rank 8"):
        stage_adapters(cfg, cat)
    # the shapes say rank 8 for q_proj while rank_pattern says 64 (PEFT would fail to load it): named too
    with pytest.raises(CatalogError, match="q_proj.lora_A.weight: shape \\[8, 64\\].* with r=64"):
        check_catalog(cfg, cat)
    rank16 = copy_adapter(tiny, tmp_path / "r16")
    edit_weights(rank16, lambda sd: {k: (v.repeat(2, 1) if "lora_A" in k else v.repeat(1, 2)) for k, v in sd.items()})
    edit_config(rank16, r=16)
    reg16 = registry_with(tmp_path, tiny, {GOOD: entry(tiny), BAD: entry(tiny, BAD, adapter_path=str(rank16))})
    with pytest.raises(CatalogError, match=f"chipforge-{BAD}: adapter .*: LoRA rank 16 > vllm.max_lora_rank 8 "
                                           r"\(set vllm.max_lora_rank to 16\)"):
        check_catalog(cfg, load_catalog(reg16))
    assert check_catalog(cfg.model_copy(update={"vllm": cfg.vllm.model_copy(update={"max_lora_rank": 16})}),
                         load_catalog(reg16))
    (big / "adapter_config.json").write_text("{")
    with pytest.raises(ValueError, match="no readable adapter_config.json"):
        stage_adapters(cfg, cat)
    with pytest.raises(Exception, match="max_lora_rank"):
        ServeConfig(backend="vllm", vllm={"max_lora_rank": 20})  # vLLM accepts 1, 8, 16, 32, ... only


def test_object_store_adapters_are_checked_and_not_served_stale(tiny, tmp_path, s3_env):
    import boto3

    from tests.conftest import make_bucket

    bucket = make_bucket(s3_env, "chipforge-adapters-check")
    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])

    def put(uri: str, data: bytes) -> None:  # one PutObject (pyarrow's multipart upload trips moto here)
        b, _, key = uri[len("s3://"):].partition("/")
        client.put_object(Bucket=b, Key=key, Body=data)

    def upload(src: str, dest: str) -> None:
        for name in os.listdir(src):
            put(f"{dest}/{name}", Path(src, name).read_bytes())

    remote = f"{bucket}/rtl/adapter"
    upload(tiny["adapters"][GOOD], remote)
    cache = str(tmp_path / "cache")
    first = localize(remote, cache)
    assert (Path(first) / "adapter_model.safetensors").read_bytes() == \
        Path(tiny["adapters"][GOOD], "adapter_model.safetensors").read_bytes()
    time.sleep(1.1)  # S3 keeps modification times in whole seconds
    upload(tiny["adapters"][BAD], remote)  # trained again into the same URI: before, the old copy was served
    again = localize(remote, cache)
    assert (Path(again) / "adapter_model.safetensors").read_bytes() == \
        Path(tiny["adapters"][BAD], "adapter_model.safetensors").read_bytes()
    with pytest.raises(FileNotFoundError, match="no files there"):  # before: an empty copy, cached as complete
        localize(f"{bucket}/nothing/here", cache)
    put(f"{bucket}/trunc/adapter/adapter_config.json", Path(tiny["adapters"][GOOD], "adapter_config.json").read_bytes())
    data = Path(tiny["adapters"][GOOD], "adapter_model.safetensors").read_bytes()
    put(f"{bucket}/trunc/adapter/adapter_model.safetensors", data[: len(data) // 2])
    put(f"{bucket}/evil/adapter/../../outside.txt", b"x")  # an object key is any string
    with pytest.raises(ValueError, match="outside the cache"):
        localize(f"{bucket}/evil/adapter", cache)
    assert not (tmp_path / "outside.txt").exists() and not (Path(cache).parent / "outside.txt").exists()
    reg = registry_with(tmp_path, tiny, {GOOD: entry(tiny, adapter_path=remote),
                                         BAD: entry(tiny, BAD, adapter_path=f"{bucket}/trunc/adapter"),
                                         "synthesis": entry(tiny, adapter_path=f"{bucket}/missing")})
    cfg = ServeConfig(registry=reg, on_bad_specialist="skip", hf={"cache_dir": cache})
    cat = load_checked(cfg)
    assert list(cat.specialists) == [GOOD]
    assert "truncated or corrupt" in cat.skipped[f"chipforge-{BAD}"]
    assert "has no adapter_config.json there" in cat.skipped["chipforge-synthesis"]
