from __future__ import annotations

import pytest

from chipforge.config import ConfigError, validate
from training.config import DeepSpeedSettings, FinetuneConfig, OptimSettings
from training.model import CPU_JIT_OPS, build_lora_model, deepspeed_config, no_jit_ops, prepare_base, warmup_steps


def test_deepspeed_config_cpu_zero2():
    cfg = deepspeed_config(DeepSpeedSettings(), OptimSettings(micro_batch_size=2, grad_accum=3, lr=1e-3),
                           world_size=2, total_steps=100, warmup_steps=5)
    assert cfg["train_batch_size"] == 12 and cfg["gradient_accumulation_steps"] == 3
    assert cfg["zero_optimization"]["stage"] == 2 and "offload_optimizer" not in cfg["zero_optimization"]
    assert cfg["bf16"]["enabled"] is False and cfg["fp16"]["enabled"] is False
    assert cfg["optimizer"]["params"]["torch_adam"] is True and cfg["optimizer"]["params"]["lr"] == 1e-3
    sched = cfg["scheduler"]
    assert sched["type"] == "WarmupCosineLR" and sched["params"]["total_num_steps"] == 100
    assert sched["params"]["warmup_num_steps"] == 5


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
