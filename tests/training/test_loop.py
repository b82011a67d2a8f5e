"""The training loop without Ray: ``torchrun -m jobs.train_torchrun`` on 1 CPU process (gloo)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training.config import FinetuneConfig
from training.loop import Plan, free_port

REPO = Path(__file__).resolve().parents[2]


def test_plan_counts_optimizer_steps():
    cfg = FinetuneConfig(optim={"micro_batch_size": 2, "grad_accum": 2, "epochs": 3, "warmup_ratio": 0.1})
    plan = Plan.make(cfg, train_rows=37, world_size=2, pad_id=0, base_path="b")
    assert (plan.steps_per_epoch, plan.total_steps, plan.warmup_steps) == (4, 12, 2)
    capped = Plan.make(cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"max_steps": 5})}), 37, 2, 0, "b")
    assert capped.total_steps == 5
    with pytest.raises(ValueError, match="fewer than one optimizer step"):
        Plan.make(cfg, train_rows=7, world_size=2, pad_id=0, base_path="b")


def tiny_config(path: Path, dataset: Path, output: Path, **extra) -> Path:
    cfg = {
        "dataset_dir": str(dataset), "phase": "rtl_design", "output_dir": str(output), "base_model": "tiny",
        "tiny": {"vocab_size": 400, "hidden_size": 64, "num_layers": 2, "num_heads": 4},
        "max_length": 128, "packing": True,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0,
                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
        "optim": {"lr": 0.005, "epochs": 6, "micro_batch_size": 2, "warmup_ratio": 0.05},
        "deepspeed": {"zero_stage": 2, "bf16": False, "torch_adam": True},
        "scaling": {"num_workers": 1, "use_gpu": False},
        "eval_every_steps": 10, "log_every_steps": 5, **extra,
    }
    path.write_text("# launch: python -m jobs.finetune --config x.yaml\n" + yaml.safe_dump(cfg))
    return path


def torchrun(config: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(free_port()),
         "-m", "jobs.train_torchrun", "--config", str(config)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.integration
def test_torchrun_overfits_resumes_after_failure_and_saves_a_peft_adapter(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    cfg = tiny_config(tmp_path / "ft.yaml", tiny_dataset, out, fail_at_step=13)
    first = torchrun(cfg)
    assert first.returncode != 0 and "injected failure at step 13" in first.stderr + first.stdout
    assert len(list(out.glob("checkpoints/finetune-rtl_design-*/step_00000010/meta.json"))) == 1
    assert not (out / "report.json").exists()
    # rank 0 logs one line per logging step (steps 1, 5, 10) and one per evaluation
    lines = first.stdout.splitlines()
    assert [ln.split()[1].split("/")[0] for ln in lines if ln.startswith("step ") and "eval" not in ln] == \
        ["1", "5", "10"], first.stdout
    assert sum("eval loss" in ln for ln in lines) == 1
    kernels = re.search(r"; sdpa attention, fused LoRA in (\d+) of (\d+) layers", first.stdout)
    assert kernels and kernels[1] == kernels[2] != "0", first.stdout  # every LoRA layer takes the fused path
    for jit in ("Building extension", "built successfully", "ninja"):  # nothing is JIT-compiled on CPU
        assert jit not in first.stdout + first.stderr

    second = torchrun(cfg)  # same command again: resumes from step 10
    assert second.returncode == 0, second.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from_step"] == [10] and "resuming after step 10" in second.stdout
    # same step count as an uninterrupted run: (rows // micro_batch_size) * epochs
    assert report["optimizer_steps"] == (report["train_rows"] // 2) * 6 and report["optimizer_steps"] > 13
    assert [h["step"] for h in report["history"]][-1] == report["optimizer_steps"]
    assert second.stdout.rstrip().splitlines()[-1].startswith("adapter: ")  # the summary comes last
    # the tiny model overfits the small dataset: loss falls clearly
    assert report["train_loss_last"] < 0.6 * report["train_loss_first"], report
    assert report["eval_loss"] < 0.7 * report["train_loss_first"]
    assert report["eval_perplexity"] == pytest.approx(2.718281828 ** report["eval_loss"], rel=1e-6)

    # PEFT-format adapter (vLLM layout) that loads against the saved base and generates
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (out / "adapter").iterdir()}
    assert (out / "config.yaml").exists() and list((out / "tensorboard").iterdir())
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(out / "base_model")
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base_model"), out / "adapter")
    enc = tok.apply_chat_template([{"role": "user", "content": "Write a 3-bit register named reg_1."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = model.generate(**enc, max_new_tokens=12, do_sample=False)
    text = tok.decode(gen[0, enc["input_ids"].shape[1]:])
    assert gen.shape[1] > enc["input_ids"].shape[1] and "module" in text


@pytest.mark.integration
def test_torchrun_trains_with_token_budget_batches_checkpointing_and_eager_attention(tiny_dataset, tmp_path):
    """micro_batch_tokens (one packed 384-token row per micro batch), activation checkpointing on every
    layer and the eager attention kernel: the run finishes, counts its tokens and learns."""
    out = tmp_path / "out"
    cfg = tiny_config(tmp_path / "ft.yaml", tiny_dataset, out, gradient_checkpointing=True,
                      attn_implementation="eager")
    raw = yaml.safe_load(cfg.read_text())
    raw["optim"].update(micro_batch_tokens=384, micro_batch_size=1, epochs=8)
    cfg.write_text("# launch: python -m jobs.finetune --config x.yaml\n" + yaml.safe_dump(raw))
    run = torchrun(cfg)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["optimizer_steps"] == report["train_rows"] * 8
    assert report["train_loss_last"] < 0.7 * report["train_loss_first"], report


def fake_report(out: Path) -> dict:
    """What ``run_local`` returns on rank 0 (the fields the registration and the summary read)."""
    return {"phase": "rtl_design", "base_model": str(out / "base_model"), "adapter_path": str(out / "adapter"),
            "train_loss_first": 2.0, "train_loss_last": 1.0, "eval_loss": 1.1, "eval_perplexity": 3.0,
            "optimizer_steps": 4, "epochs_done": 1, "tokens": 100, "train_time_s": 1.0, "tokens_per_s": 100.0,
            "resumed_from_step": [], "history": [], "train_rows": 8,
            "examples": {"read": 10, "train": 8, "validation": 2, "validation_from": "split=validation"}}


def test_torchrun_registers_the_adapter_when_a_registry_is_given(tmp_path, monkeypatch, capsys):
    """``registry=PATH`` under torchrun makes the adapter its phase's specialist, as ``jobs.finetune`` does
    (it used to be accepted and ignored)."""
    import training.loop
    from jobs import train_torchrun

    out, registry = tmp_path / "out", tmp_path / "registry.json"
    written = []

    def trained(cfg, run_id=None, finish=None):  # run_local's contract: rank 0 completes the report with finish
        written.append(finish(fake_report(out)))
        return written[-1]

    monkeypatch.setattr(training.loop, "run_local", trained)
    rc = train_torchrun.main(["--dataset", str(REPO / "sample" / "dataset"), "--phase", "rtl_design",
                              "--output", str(out), f"registry={registry}"])
    assert rc == 0, capsys.readouterr().err
    entry = json.loads(registry.read_text())["specialists"]["rtl_design"]
    assert entry["adapter_path"] == str(out / "adapter") and entry["metrics"]["steps"] == 4
    assert entry["run"].startswith("finetune-rtl_design-")
    assert written[0]["registry_entry"] == entry and written[0]["config"]["registry"] == str(registry)
    assert capsys.readouterr().out.rstrip().endswith(f"registered as the rtl_design specialist in {registry}")


def test_torchrun_checks_phase_and_registry_before_training(tiny_dataset, tmp_path, monkeypatch, capsys):
    """The same bad inputs as ``jobs.finetune`` fail the same way under torchrun: exit 2 naming them,
    before any training (a broken registry used to surface only after training, if at all)."""
    import training.loop
    from jobs import train_torchrun

    def no_training(*args, **kwargs):
        raise AssertionError("training must not start")

    monkeypatch.setattr(training.loop, "run_local", no_training)
    registry = tmp_path / "registry.json"
    registry.write_text("[]")
    base = ["--dataset", str(tiny_dataset), "--output", str(tmp_path / "o")]
    assert train_torchrun.main([*base, "--phase", "rtl_design", f"registry={registry}"]) == 2
    assert f"registry {registry}: expected a JSON object" in capsys.readouterr().err
    assert train_torchrun.main([*base, "--phase", "placement"]) == 2  # the dataset has rtl_design only
    assert "'placement'" in capsys.readouterr().err
