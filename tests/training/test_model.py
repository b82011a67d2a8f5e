from __future__ import annotations

import pytest

from chipforge.config import ConfigError, validate
from training.config import DeepSpeedSettings, FinetuneConfig, OptimSettings
from training.model import (CPU_JIT_OPS, SCHEDULE_KEY, build_lora_model, deepspeed_config, lr_factor, no_jit_ops,
                            prepare_base, warmup_steps)


def test_deepspeed_config_cpu_zero2():
    cfg = deepspeed_config(DeepSpeedSettings(), OptimSettings(micro_batch_size=2, grad_accum=3, lr=1e-3),
                           world_size=2, total_steps=100, warmup_steps=5)
    assert cfg["train_batch_size"] == 12 and cfg["gradient_accumulation_steps"] == 3
    assert cfg["zero_optimization"]["stage"] == 2 and "offload_optimizer" not in cfg["zero_optimization"]
    assert cfg["bf16"]["enabled"] is False and cfg["fp16"]["enabled"] is False
    assert cfg["optimizer"]["params"]["torch_adam"] is True and cfg["optimizer"]["params"]["lr"] == 1e-3
    assert "scheduler" not in cfg  # DeepSpeed's WarmupCosineLR ran the first two steps at lr 0
    assert cfg[SCHEDULE_KEY] == {"total_steps": 100, "warmup_steps": 5, "min_ratio": 0.1}


def test_every_step_of_the_schedule_trains():
    """Linear warmup from the first step, the peak at the warmup's end, cosine down to min_ratio at the last."""
    lrs = [lr_factor(s, total_steps=10, warmup_steps=4, min_ratio=0.1) for s in range(10)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:]))  # decays after the peak
    assert lr_factor(0, total_steps=1, warmup_steps=1, min_ratio=0.1) == 1.0  # a one-step run trains at the peak


def test_deepspeed_config_gpu_zero3_offload():
    ds = DeepSpeedSettings(zero_stage=3, bf16=True, offload_optimizer=True, offload_param=True)
    cfg = deepspeed_config(ds, OptimSettings(), world_size=8, total_steps=10, warmup_steps=1)
    z = cfg["zero_optimization"]
    assert z["stage"] == 3 and z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    assert cfg["bf16"]["enabled"] is True
    assert "torch_adam" not in cfg["optimizer"]["params"]  # CPU offload uses DeepSpeedCPUAdam


def test_cpu_runs_never_need_a_jit_compiled_op():
    """CPU: torch AdamW whatever the config says, no CPU offload, and DeepSpeed's JIT ops switched off."""
    cfg = deepspeed_config(DeepSpeedSettings(torch_adam=False), OptimSettings(), world_size=2, total_steps=10,
                           warmup_steps=1, use_gpu=False)
    assert cfg["optimizer"]["params"]["torch_adam"] is True
    with pytest.raises(ConfigError, match="offload_optimizer"):
        validate(FinetuneConfig, {"deepspeed": {"offload_optimizer": True}}, source="x.yaml")
    validate(FinetuneConfig, {"deepspeed": {"offload_optimizer": True}, "scaling": {"use_gpu": True}}, source="x")
    import deepspeed.ops

    no_jit_ops(use_gpu=False)
    assert "deepspeed_shm_comm" in CPU_JIT_OPS
    assert not any(deepspeed.ops.__compatible_ops__[name] for name in CPU_JIT_OPS)


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ConfigError, match="offload_param"):
        validate(FinetuneConfig, {"deepspeed": {"zero_stage": 2, "offload_param": True}}, source="x.yaml")
    with pytest.raises(ConfigError, match="phase"):
        validate(FinetuneConfig, {"phase": "layout"}, source="x.yaml")
    with pytest.raises(ConfigError, match="output_dir"):
        validate(FinetuneConfig, {"base_model": "tiny", "output_dir": "s3://b/x"}, source="x.yaml")


def test_warmup_steps_rounds_up():
    assert warmup_steps(OptimSettings(warmup_ratio=0.05), 30) == 2
    assert warmup_steps(OptimSettings(warmup_ratio=0.0), 30) == 1  # DeepSpeed needs >= 1


def test_tiny_base_and_lora_train_only_adapter_weights(tmp_path):
    cfg = FinetuneConfig(output_dir=str(tmp_path), tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2},
                         lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    base = prepare_base(cfg, ["module m (input a); endmodule"] * 10)
    assert base == str(tmp_path / "base_model") and (tmp_path / "base_model" / "config.json").exists()
    assert prepare_base(cfg, None) == base  # reused, not rebuilt
    stamp = (tmp_path / "base_model" / "chipforge_base.json").read_text()
    assert prepare_base(cfg, list(reversed(["module m (input a); endmodule"] * 10))) == base
    assert (tmp_path / "base_model" / "chipforge_base.json").read_text() == stamp  # same texts: reused
    prepare_base(cfg, ["module other (input b); endmodule"] * 10)  # another dataset: rebuilt
    assert (tmp_path / "base_model" / "chipforge_base.json").read_text() != stamp
    model = build_lora_model(base, cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and not any("k_proj" in n for n in trainable)
    assert model.config._attn_implementation == "sdpa"  # the default
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def test_attention_kernel_and_activation_checkpointing_come_from_config(tmp_path):
    from transformers.modeling_layers import GradientCheckpointingLayer

    cfg = FinetuneConfig(output_dir=str(tmp_path), tiny={"hidden_size": 32, "num_layers": 3, "num_heads": 2},
                         attn_implementation="eager", gradient_checkpointing=2)
    model = build_lora_model(prepare_base(cfg, ["module m (input a); endmodule"] * 10), cfg)
    assert model.config._attn_implementation == "eager"
    flags = [m.gradient_checkpointing for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert flags == [True, False, True]
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        validate(FinetuneConfig, {"gradient_checkpointing": 0}, source="x.yaml")
    with pytest.raises(ConfigError, match="attn_implementation"):
        validate(FinetuneConfig, {"attn_implementation": "flash"}, source="x.yaml")
    assert validate(FinetuneConfig, {"gradient_checkpointing": True}, source="x").gradient_checkpointing is True


ENGINE_SCRIPT = """
import sys, torch
from training.config import FinetuneConfig
from training.loop import init_distributed
from training.model import build_engine, build_lora_model, deepspeed_config, prepare_base, set_schedule_step

init_distributed(False)
cfg = FinetuneConfig(output_dir=sys.argv[1], tiny={"hidden_size": 32, "num_layers": 2, "num_heads": 2},
                     scaling={"use_gpu": False}, deepspeed={"bf16": False}, optim={"lr": 0.01})
ds = deepspeed_config(cfg.deepspeed, cfg.optim, world_size=1, total_steps=2, warmup_steps=1, use_gpu=False)
engine, scheduler = build_engine(build_lora_model(prepare_base(cfg, ["module m (input a); endmodule"] * 10), cfg, ds),
                                 ds, use_gpu=False)
lora_b = [p for n, p in engine.module.named_parameters() if "lora_B" in n]
for step in range(2):
    before = [p.detach().clone() for p in lora_b]
    ids = torch.randint(3, 100, (2, 16))
    lr = engine.optimizer.param_groups[0]["lr"]
    engine.backward(engine(input_ids=ids, labels=ids).loss)
    engine.step()
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(lora_b, before))
    print(f"step {step} lr {lr:.4g} moved {moved:.3g}")
set_schedule_step(scheduler, 1)
print(f"resumed at 1: lr {engine.optimizer.param_groups[0]['lr']:.4g}")
"""


def test_the_first_optimizer_step_trains_inside_the_engine(tmp_path):
    """In the DeepSpeed engine the first step runs at the peak rate (warmup 1) and moves the LoRA
    weights; a resume puts the schedule back at its step."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "engine.py"
    script.write_text(ENGINE_SCRIPT)
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=300, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    assert run.returncode == 0, run.stderr[-3000:]
    steps = [(float(lr), float(moved)) for lr, moved in re.findall(r"step \d lr (\S+) moved (\S+)", run.stdout)]
    assert len(steps) == 2, run.stdout
    assert steps[0][0] == pytest.approx(0.01) and steps[0][1] > 0, run.stdout  # DeepSpeed's schedule: lr 0, nothing moved
    assert steps[1][0] == pytest.approx(0.001) and steps[1][1] > 0, run.stdout  # the last step at min_lr_ratio
    assert "resumed at 1: lr 0.001" in run.stdout, run.stdout
