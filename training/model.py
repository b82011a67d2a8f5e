"""Base model + PEFT LoRA, the DeepSpeed config, and the DeepSpeed engine: plain functions.

Nothing here imports Ray: the same functions run inside Ray Train workers and under
``torchrun`` (``torchrun -m jobs.train_torchrun``). ``deepspeed`` is imported inside the
functions (importing it on the Ray controller has broken before, ray#50406).

On CPU nothing is JIT-compiled: the optimizer is torch's AdamW (``torch_adam``, never
DeepSpeedCPUAdam or FusedAdam) and DeepSpeed's shared-memory all-reduce op, which it would
otherwise build with ninja the first time a process group starts on a machine (about 85 s),
is switched off (:func:`no_jit_ops`): gloo reduces the small LoRA gradients just as well.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from typing import Any

from chipforge import fs
from training.config import TINY, DeepSpeedSettings, FinetuneConfig, LoraSettings, OptimSettings


def deepspeed_config(
    ds: DeepSpeedSettings, optim: OptimSettings, *, world_size: int, total_steps: int, warmup_steps: int,
    use_gpu: bool = True,
) -> dict[str, Any]:
    """A DeepSpeed config dict: ZeRO stage, bf16, offload, AdamW (torch AdamW on CPU). The learning-rate
    schedule is not DeepSpeed's (``lr_schedule``, passed to ``build_engine``); ``total_steps`` and
    ``warmup_steps`` are kept in ``CHIPFORGE_SCHEDULE``, a key DeepSpeed does not read."""
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage in (2, 3):
        zero.update(overlap_comm=True, contiguous_gradients=True, reduce_bucket_size=5e7)
    if ds.offload_optimizer and ds.zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if ds.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=False)
    adam: dict[str, Any] = {
        "lr": optim.lr,
        "betas": list(optim.betas),
        "eps": 1e-8,
        "weight_decay": optim.weight_decay,
    }
    if (ds.torch_adam or not use_gpu) and not ds.offload_optimizer:
        adam["torch_adam"] = True
    return {
        "train_micro_batch_size_per_gpu": optim.micro_batch_size,
        "gradient_accumulation_steps": optim.grad_accum,
        "train_batch_size": optim.micro_batch_size * optim.grad_accum * world_size,
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.bf16},
        "fp16": {"enabled": False},
        "optimizer": {"type": "AdamW", "params": adam},
        "steps_per_print": 10**9,
        SCHEDULE_KEY: {"total_steps": max(total_steps, 1), "warmup_steps": warmup_steps,
                       "min_ratio": optim.min_lr_ratio},
        "wall_clock_breakdown": False,
    }


SCHEDULE_KEY = "chipforge_schedule"


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """The peak learning rate's multiplier for optimizer step ``step`` (0-based): linear warmup from
    1/warmup at the first step to 1 at step warmup-1, then cosine decay to ``min_ratio`` at the last
    step. Every step trains: DeepSpeed's ``WarmupCosineLR`` ran the first two steps at 0 (a run of
    one or two steps learned nothing, and two learning rates gave the same model)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps + 1) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_scheduler(ds_config: dict[str, Any]) -> Callable[[Any], Any]:
    """What ``deepspeed.initialize`` calls with its optimizer: a ``LambdaLR`` over ``lr_factor``."""
    import functools

    from torch.optim.lr_scheduler import LambdaLR

    factor = functools.partial(lr_factor, **ds_config[SCHEDULE_KEY])
    return lambda optimizer: LambdaLR(optimizer, factor)


def set_schedule_step(scheduler: Any, step: int) -> None:
    """Put the schedule at optimizer step ``step`` (after a resume: the learning rate of that step)."""
    scheduler.last_epoch = step - 1
    scheduler.step()


def warmup_steps(optim: OptimSettings, total_steps: int) -> int:
    """Warmup length in optimizer steps (at least 1: with one, the first step trains at the peak rate)."""
    return max(1, int(math.ceil(optim.warmup_ratio * total_steps)))


def lora_config(lora: LoraSettings) -> Any:
    from peft import LoraConfig, TaskType

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type=TaskType.CAUSAL_LM,
    )


def load_base_model(path: str, *, bf16: bool, trust_remote_code: bool = False,
                    attn_implementation: str | None = None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from training.tiny import quiet_hf

    dtype = torch.bfloat16 if bf16 else torch.float32
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with quiet_hf():
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code, **extra)


def checkpointed_layers(model: Any, every: bool | int) -> int:
    """Activation checkpointing of the decoder layers: off, every layer (``True``) or every k-th.

    Transformers' own switch, non-reentrant, inputs made to require grad so a frozen base with
    LoRA still backpropagates: ``activation_checkpointing_enable(every_n_layers=k)`` (5.2x), the
    same argument of ``gradient_checkpointing_enable`` (5.17), or, before that, every layer then
    every k-th kept. Returns how many decoder layers recompute their activations in the
    backward pass. Call on the base model, before PEFT wraps it.
    """
    if every is False:
        return 0
    import inspect

    from transformers.modeling_layers import GradientCheckpointingLayer

    k = 1 if every is True else int(every)
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, every_n_layers=k)
    elif "every_n_layers" in inspect.signature(model.gradient_checkpointing_enable).parameters:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs, every_n_layers=k)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
        for i, layer in enumerate(layers):
            layer.gradient_checkpointing = i % k == 0
    model.enable_input_require_grads()
    return sum(1 for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing)


def liger_wanted(setting: str, use_gpu: bool) -> bool:
    """Whether to patch Liger Kernel in: ``on`` (error when it is not installed), ``auto`` (GPU and
    installed), ``off``."""
    import importlib.util

    if setting == "off" or (setting == "auto" and not use_gpu):
        return False
    installed = importlib.util.find_spec("liger_kernel") is not None
    if setting == "on" and not installed:
        raise RuntimeError('liger_kernel: on, but liger-kernel is not installed (pip install "chipforge[liger]")')
    return installed


def apply_liger(model: Any, *, fused_linear_cross_entropy: bool = True) -> bool:
    """Liger's kernels for this model's architecture, in place (fused linear cross-entropy instead of
    materialising the logits; RMSNorm, SwiGLU, RoPE). False when Liger has none for it.

    The fused cross-entropy reads ``lm_head.weight`` directly instead of calling ``lm_head``, so
    under ZeRO-3, whose parameters are gathered only when their module runs, it would see an
    empty shard: pass ``fused_linear_cross_entropy=False`` there (the other kernels run inside
    their modules and are safe).
    """
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    if getattr(model.config, "model_type", None) not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return False
    _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=fused_linear_cross_entropy,
                                    cross_entropy=False,
                                    rms_norm=True, swiglu=True, rope=True)
    return True


def fused_lora_wanted(cfg: FinetuneConfig) -> bool:
    """Whether LoRA layers take the fused path (training/fused_lora.py): not ``off``, not under ZeRO-3
    (where ``on`` is a config error)."""
    return cfg.fused_lora != "off" and cfg.deepspeed.zero_stage != 3


def build_lora_model(base_path: str, cfg: FinetuneConfig, ds_config: dict[str, Any] | None = None) -> Any:
    """Base model from ``base_path`` with a fresh LoRA adapter; only adapter weights train.

    Under ZeRO-3 the base is loaded through ``HfDeepSpeedConfig`` so its weights are partitioned
    while loading (a 7-8B base never sits whole on one GPU).
    """
    keep = None
    if ds_config is not None and cfg.deepspeed.zero_stage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        keep = HfDeepSpeedConfig(ds_config)  # noqa: F841  (must stay alive while loading)
    from peft import get_peft_model

    from training import attention

    if cfg.attn_implementation == attention.NAME:
        attention.register()
    model = load_base_model(base_path, bf16=cfg.deepspeed.bf16, trust_remote_code=cfg.trust_remote_code,
                            attn_implementation=cfg.attn_implementation)
    model.config.use_cache = False
    if liger_wanted(cfg.liger_kernel, cfg.scaling.use_gpu):
        apply_liger(model, fused_linear_cross_entropy=cfg.deepspeed.zero_stage != 3)
    checkpointed_layers(model, cfg.gradient_checkpointing)
    model = get_peft_model(model, lora_config(cfg.lora))
    if fused_lora_wanted(cfg):
        from training.fused_lora import fuse_lora

        fuse_lora(model)
    del keep
    return model


# DeepSpeed ops that are JIT-compiled on first use and that a CPU run never needs.
CPU_JIT_OPS = ("deepspeed_shm_comm", "deepspeed_ccl_comm", "cpu_adam", "cpu_adagrad", "cpu_lion", "fused_adam")


def no_jit_ops(use_gpu: bool) -> None:
    """On CPU, mark the ops DeepSpeed would JIT-compile as unavailable, before it sets up its comm backend.

    ``deepspeed.comm`` builds its shared-memory all-reduce op (``deepspeed_shm_comm``) whenever
    the accelerator is the CPU; an op marked incompatible is skipped and gloo does the reduction.
    The optimizer ops are torch AdamW on CPU anyway (``deepspeed_config``); marking them too makes
    a config that would need them fail at once instead of compiling for minutes.
    """
    if use_gpu:
        return
    import deepspeed.ops

    ops = deepspeed.ops.__compatible_ops__
    for name in CPU_JIT_OPS:
        ops[name] = False


def build_engine(model: Any, ds_config: dict[str, Any], *, use_gpu: bool = True) -> tuple[Any, Any]:
    """``deepspeed.initialize`` over the trainable (LoRA) parameters, with the ``lr_factor`` schedule (which
    DeepSpeed steps after every optimizer step); reuses an existing process group."""
    import logging

    import deepspeed

    no_jit_ops(use_gpu)
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)  # its info/warnings are not the user's business

    params = [p for p in model.parameters() if p.requires_grad]
    config = {k: v for k, v in ds_config.items() if k != SCHEDULE_KEY}
    engine, _, _, scheduler = deepspeed.initialize(model=model, config=config, model_parameters=params,
                                                   lr_scheduler=lr_scheduler(ds_config))
    return engine, scheduler


def save_adapter(engine: Any, path: str, *, rank: int, zero_stage: int) -> None:
    """Write the LoRA adapter in PEFT format (adapter_config.json + adapter_model.safetensors).

    Collective under ZeRO-3 (every rank must call it: the adapter weights are gathered first).
    """
    model = engine.module
    if zero_stage == 3:
        import deepspeed

        params = [p for p in model.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            if rank == 0:
                model.save_pretrained(path, safe_serialization=True)
        return
    if rank == 0:
        model.save_pretrained(path, safe_serialization=True)


BASE_STAMP = "chipforge_base.json"


def prepare_base(cfg: FinetuneConfig, texts: list[str] | None = None) -> str:
    """Path the workers load the base model (and tokenizer) from.

    ``base_model: tiny`` builds a tiny random Llama and a tokenizer trained on ``texts`` into
    OUTPUT/base_model. It is reused when it was built from the same texts and settings (so a
    resumed run sees the same base) and rebuilt when the dataset or the tiny settings changed.
    """
    if cfg.base_model != TINY:
        return cfg.base_model
    from training.tiny import save_tiny_model

    path = os.path.abspath(fs.join(cfg.output_dir, "base_model"))
    stamp_path = os.path.join(path, BASE_STAMP)
    stamp = None
    if texts:
        texts = sorted(texts)  # the order rows arrive in must not change the tokenizer
        h = hashlib.sha256(json.dumps([cfg.tiny.model_dump(), cfg.max_length]).encode())
        for t in texts:
            h.update(t.encode() + b"\0")
        stamp = h.hexdigest()[:16]
    if os.path.exists(stamp_path):
        with open(stamp_path) as f:
            built = json.load(f).get("stamp")
        if stamp is None or built == stamp:
            return path
    elif stamp is None and os.path.exists(os.path.join(path, "config.json")):
        return path
    if not texts:
        raise ValueError("base_model: tiny needs dataset text to train its tokenizer")
    t = cfg.tiny
    with fs.atomic_dir(path) as tmp:
        save_tiny_model(
            tmp,
            texts,
            vocab_size=t.vocab_size,
            hidden_size=t.hidden_size,
            num_layers=t.num_layers,
            num_heads=t.num_heads,
            seed=t.seed,
            max_position_embeddings=max(2048, cfg.max_length),
        )
        with open(os.path.join(tmp, BASE_STAMP), "w") as f:
            json.dump({"stamp": stamp}, f)
    return path
