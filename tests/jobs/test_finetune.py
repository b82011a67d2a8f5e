"""jobs.finetune on the shared local Ray: 2 CPU workers, DeepSpeed ZeRO-2 over gloo, an injected failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import finetune
from tests.training._data import rows, write_dataset

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "jobs" / "configs" / "finetune_tiny_cpu.yaml")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ft-ds"), rows(n_train=40, n_val=6))


def test_missing_phase_fails_with_a_message_naming_dataset_and_phase(dataset, tmp_path, capsys):
    rc = finetune.main(["--config", CONFIG, "--dataset", str(dataset), "--phase", "placement",
                        "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and str(dataset) in err and "'placement'" in err and "rtl_design" in err


@pytest.mark.integration
@pytest.mark.slow
def test_ray_finetune_recovers_from_a_worker_failure_and_writes_outputs(ray_session, dataset, tmp_path):
    out = tmp_path / "ft"
    argv = ["--config", CONFIG, "--dataset", str(dataset), "--output", str(out),
            "max_length=128", "optim.epochs=4", "eval_every_steps=4", "fail_at_step=6", "max_failures=1",
            f"registry={tmp_path / 'registry.json'}"]
    assert finetune.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    plan = report["plan"]
    # the worker group died at step 6, restarted from the step-4 checkpoint, and finished the plan
    assert (out / ".fail_injected").read_text() == "6"
    assert report["resumed_from_step"] == [4]
    assert plan["steps_per_epoch"] == report["train_rows"] // (2 * 2)  # 2 workers x micro batch 2
    assert report["steps"] == plan["total_steps"] == plan["steps_per_epoch"] * 4
    assert [h["step"] for h in report["history"]][-1] == report["steps"]
    assert report["train_loss_last"] < 0.8 * report["train_loss_first"]
    for key in ("train_loss_first", "train_loss_last", "eval_loss", "eval_perplexity", "steps", "tokens_per_s",
                "wall_s"):
        assert isinstance(report[key], (int, float)) and report[key] > 0, key
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (out / "adapter").iterdir()}
    assert (out / "tokenizer" / "tokenizer.json").exists() and (out / "config.yaml").exists()
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    registry = json.loads((tmp_path / "registry.json").read_text())["specialists"]["rtl_design"]
    assert registry["adapter_path"] == str(out / "adapter") and registry["metrics"]["steps"] == report["steps"]

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base_model"), out / "adapter")
    enc = tok.apply_chat_template([{"role": "user", "content": "Write a 4-bit register named reg_2."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] == enc["input_ids"].shape[1] + 8 or tok.eos_token_id in gen[0].tolist()

    # a finished output directory is skipped (idempotent rerun)
    assert finetune.main(argv) == 0


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "configs").glob("finetune_*.yaml"))
                         + sorted((REPO / "jobs" / "configs").glob("tune_*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate_and_name_their_launch_command(path):
    import importlib

    from chipforge.config import launch_command, read_yaml, validate

    cmd = launch_command(path)
    assert cmd and cmd.endswith(f"--config jobs/configs/{path.name}")
    module = importlib.import_module(cmd.split()[2])
    cfg = validate(module.CONFIG_CLASS, read_yaml(path), source=str(path))
    ft = cfg if path.name.startswith("finetune_") else cfg.finetune
    if "tiny" in path.name:
        assert ft.base_model == "tiny" and not ft.scaling.use_gpu and ft.scaling.num_workers == 2
        assert not ft.deepspeed.bf16 or ft.deepspeed.torch_adam
    else:
        assert ft.scaling.use_gpu and ft.scaling.num_workers == 8 and ft.deepspeed.bf16
        assert ft.deepspeed.zero_stage in (2, 3) and ft.base_model != "tiny"
        if path.name.startswith("finetune_"):
            assert path.name == f"finetune_{ft.phase}.yaml"
