"""Resuming from checkpoints a killed or damaged run left behind: incomplete ones are never taken for finished."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from training.loop import LocalSession, State, free_port, latest_local_checkpoint, load_checkpoint

OPTIM = "ds/ckpt/zero_pp_rank_{}_mp_rank_00_optim_states.pt"


def fake_checkpoint(d: Path, step: int, world_size: int = 1, *, drop: str | None = None, bf16: bool = False) -> Path:
    """The files ``save_checkpoint`` writes (non-empty placeholders), without ``drop``."""
    files = {"meta.json": json.dumps({**asdict(State(step=step)), "world_size": world_size}),
             "adapter/adapter_config.json": "{}", "adapter/adapter_model.safetensors": "x", "ds/latest": "ckpt",
             "ds/ckpt/mp_rank_00_model_states.pt": "x", "tensorboard/events": "x"}
    for r in range(world_size):
        files[("ds/ckpt/bf16_" + OPTIM[8:] if bf16 else OPTIM).format(r)] = "x"
    for rel, text in files.items():
        if rel != drop:
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_text(text)
    return d


def test_resume_skips_incomplete_checkpoints_to_the_latest_complete_one(tmp_path):
    """Killed mid-save or damaged (meta.json, the adapter or a rank's optimizer state missing; an empty
    model file): each is skipped and named, and the newest complete checkpoint is chosen."""
    root = tmp_path / "run"
    fake_checkpoint(root / "step_00000010", 10, world_size=2, bf16=True)
    fake_checkpoint(root / "step_00000020", 20, drop="meta.json")
    fake_checkpoint(root / "step_00000030", 30, drop="adapter/adapter_model.safetensors")
    fake_checkpoint(root / "step_00000040", 40, world_size=2, drop=OPTIM.format(1))
    fake_checkpoint(root / "step_00000050", 50)
    (root / "step_00000050" / "ds/ckpt/mp_rank_00_model_states.pt").write_text("")
    (root / "step_00000060").mkdir()
    (root / "step_00000060" / "meta.json").write_text("{trunc")
    fake_checkpoint(root / "step_00000070.partial", 70)
    assert latest_local_checkpoint(str(root)) == str(root / "step_00000010")
    said: list[str] = []
    assert latest_local_checkpoint(str(root), said.append) == str(root / "step_00000010")
    assert [re.search(r"step_(\d+)", line)[1] for line in said] == ["00000060", "00000050", "00000040",
                                                                   "00000030", "00000020"]
    assert "no meta.json" in said[-1] and "adapter/adapter_model.safetensors" in said[-2]
    assert "optimizer state of rank 1" in said[-3] and "meta.json is not" in said[0]
    shutil.rmtree(root / "step_00000010")
    assert latest_local_checkpoint(str(root)) is None


def test_loading_an_incomplete_checkpoint_is_an_error_naming_it(tmp_path):
    """Ray hands over the checkpoint it registered: a damaged one fails with its path and what it lacks,
    before DeepSpeed reads anything (not a FileNotFoundError traceback after loading the weights)."""
    d = fake_checkpoint(tmp_path / "checkpoint_1", 8, drop="meta.json")
    with pytest.raises(RuntimeError, match=f"checkpoint {re.escape(str(d))} is incomplete: no meta.json"):
        load_checkpoint(object(), str(d), 1)


def test_resuming_with_another_number_of_workers_is_an_error(tmp_path):
    """torchrun's world size is not in the config: a checkpoint of 2 ranks resumed by 4 is named, not misloaded."""
    d = fake_checkpoint(tmp_path / "step_00000010", 10, world_size=2)
    with pytest.raises(RuntimeError, match=f"checkpoint {re.escape(str(d))} was written by 2 worker"):
        load_checkpoint(object(), str(d), 4)


def test_saving_over_a_leftover_incomplete_checkpoint_and_partial_copy(tmp_path):
    """A killed run left ``step_N.partial`` and a damaged ``step_N``; resumed from an older one, the run
    reaches step N again: the new checkpoint replaces both (``os.replace`` onto a non-empty directory
    used to fail) and holds none of the stale files."""
    import torch.distributed as dist

    root = tmp_path / "run"
    fake_checkpoint(root / "step_00000020", 20, drop="meta.json")
    (root / "step_00000020.partial").mkdir()
    (root / "step_00000020.partial" / "stale").write_text("x")
    new = fake_checkpoint(tmp_path / "new", 20)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        LocalSession(None, None, str(root), 0, 1, quiet=True).report({"step": 20}, str(new))
    finally:
        dist.destroy_process_group()
    assert latest_local_checkpoint(str(root)) == str(root / "step_00000020")
    assert not (root / "step_00000020" / "stale").exists() and not (root / "step_00000020.partial").exists()


@pytest.mark.integration
def test_torchrun_resumes_past_a_checkpoint_killed_mid_save_and_registers(tiny_dataset, tmp_path):
    """End to end under torchrun: a step-20 checkpoint without meta.json (killed mid-save) is skipped and
    named, the run resumes from step 10, writes step 20 anew, finishes and registers its adapter."""
    from tests.training.test_loop import tiny_config, torchrun

    out, registry = tmp_path / "out", tmp_path / "registry.json"
    cfg = tiny_config(tmp_path / "ft.yaml", tiny_dataset, out, fail_at_step=13, optim={
        "lr": 0.005, "epochs": 2, "micro_batch_size": 2, "warmup_ratio": 0.05}, registry=str(registry))
    first = torchrun(cfg)
    assert first.returncode != 0 and "injected failure at step 13" in first.stderr + first.stdout
    (step10,) = out.glob("checkpoints/finetune-rtl_design-*/step_00000010")
    damaged = step10.with_name("step_00000020")
    shutil.copytree(step10, damaged)
    (damaged / "meta.json").unlink()

    second = torchrun(cfg)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"skipping incomplete checkpoint {damaged}: no meta.json" in second.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from_step"] == [10] and json.loads((damaged / "meta.json").read_text())["step"] == 20
    entry = json.loads(registry.read_text())["specialists"]["rtl_design"]
    assert entry["adapter_path"] == str(out / "adapter") and report["registry_entry"] == entry
