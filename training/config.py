"""Typed settings of a fine-tuning run (``jobs.finetune``, ``jobs.train_torchrun``).

One ``FinetuneConfig`` drives both the Ray Train job and the torchrun path
(``torchrun -m jobs.train_torchrun``); the sweep config (``pipelines.tune``) embeds one as its
base and overrides the searched fields per trial.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator

from chipforge import fs
from chipforge.config import Config
from chipforge.stage import StageResources

Phase = Literal["triage", "rtl_design", "synthesis", "placement", "routing", "timing_analysis", "power_analysis"]
PHASES: tuple[str, ...] = Phase.__args__  # type: ignore[attr-defined]

TINY = "tiny"  # base_model value: build a tiny random Llama + tokenizer trained on the dataset


class TinyModelSettings(Config):
    """Shape of the in-process tiny model used when ``base_model: tiny`` (CPU quickstart, tests)."""

    vocab_size: int = 512
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    seed: int = 0


class LoraSettings(Config):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class OptimSettings(Config):
    """AdamW + linear warmup + cosine decay (``training.model.lr_factor``); steps are optimizer steps."""

    lr: float = Field(2e-4, gt=0)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)  # cosine floor as a share of lr
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)  # cap on optimizer steps (after epochs)
    micro_batch_size: int = Field(4, ge=1)  # sequences per worker per forward
    # Token-budget micro batches: examples packed into rows of this many tokens, one row per
    # micro batch (needs packing and micro_batch_size 1), so a step holds as many short
    # examples as fit instead of a fixed number of rows. None: rows of max_length tokens.
    micro_batch_tokens: int | None = Field(None, ge=16)
    grad_accum: int = Field(1, ge=1)
    grad_clip: float = 1.0


class DeepSpeedSettings(Config):
    zero_stage: Literal[0, 1, 2, 3] = 2
    bf16: bool = False  # GPU: true. CPU: fp32 or bf16 (fp16 is not supported on CPU)
    offload_optimizer: bool = False  # GPU only: ZeRO-2/3 optimizer state in CPU memory (JIT-builds cpu_adam)
    offload_param: bool = False  # ZeRO-3 only
    # torch AdamW instead of DeepSpeed's JIT-built fused Adam (always torch AdamW on CPU: no JIT)
    torch_adam: bool = True


class ScalingSettings(Config):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # default 1 when use_gpu
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    accelerator_type: str | None = None  # e.g. "H100"
    # How long training waits, in all, for the cluster (or its autoscaler) to provide num_workers workers'
    # resources (GPUs when use_gpu); then the job fails naming these fields and what the cluster has,
    # instead of waiting forever. Ray Train's own start timeout (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S),
    # split over the 1 + max_failures start attempts.
    resource_wait_s: float = Field(600.0, gt=0)


class TrackingSettings(Config):
    tensorboard: bool = True  # rank 0 writes events, copied to OUTPUT/tensorboard at the end
    mlflow_tracking_uri: str | None = None  # set to log params/metrics to MLflow (pip install mlflow)
    mlflow_experiment: str = "chipforge-finetune"


class FinetuneConfig(Config):
    dataset_dir: str = "sample/dataset"  # DIR/{examples,synthetic}/phase=<phase>/split=<split>/*.parquet
    # More directories read the same way and merged, e.g. the synthesis job's output (DIR/synthetic/).
    extra_dataset_dirs: list[str] = Field(default_factory=list)
    phase: Phase = "rtl_design"
    output_dir: str = "out/finetune"  # a finished run is skipped (OUTPUT/_chipforge/finetune.json); --force redoes it

    base_model: str = TINY  # Hugging Face id, local path, or "tiny"
    tiny: TinyModelSettings = Field(default_factory=TinyModelSettings)
    trust_remote_code: bool = False

    max_length: int = Field(512, ge=16)  # tokens per packed sequence / per example
    # True: whole examples packed into rows ≤ max_length whose position ids keep the examples
    # apart (micro batches flattened into one unpadded sequence for the variable-length kernels,
    # one row per packed row otherwise: training.data.batch_layout); False: one example per row,
    # length bucketing, padded micro batches with an attention mask
    packing: bool = True
    # Attention kernel (Transformers ``attn_implementation``): "sdpa" (default; packed examples
    # get a block-diagonal mask per row), "flash_attention_2" (variable-length kernel, needs
    # flash-attn on GPU), "torch_varlen" (PyTorch's own variable-length flash attention,
    # torch>=2.10 on CUDA, packing only: training/attention.py) or "eager"
    attn_implementation: Literal["sdpa", "flash_attention_2", "torch_varlen", "eager"] = "sdpa"
    # Activation checkpointing: false (off), true (every decoder layer) or k (every k-th layer:
    # recompute a share 1/k of the layers' activations in the backward pass)
    gradient_checkpointing: bool | int = False
    # Liger Kernel (pip install "chipforge[liger]", GPU only): fused linear + cross-entropy (no
    # full-vocabulary logits), RMSNorm, SwiGLU and RoPE kernels patched into the base model.
    # auto: on when training on GPUs with liger-kernel installed; on: required; off: never.
    # Under ZeRO-3 the fused cross-entropy is left out (it reads lm_head's sharded weight directly).
    liger_kernel: Literal["auto", "on", "off"] = "auto"
    # LoRA layers as one autograd function whose matrix products also do PEFT's scaling and sums
    # (training/fused_lora.py; the same loss and gradients). auto: on except under ZeRO-3 (whose
    # weights are gathered only inside their own modules); on: required; off: PEFT's own forward.
    fused_lora: Literal["auto", "on", "off"] = "auto"
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # held out of train when no validation split
    max_train_examples: int | None = Field(None, ge=1)
    # Ray Data read/validate and tokenise stages (tasks): CPUs each, parallel tasks, examples per batch
    tokenize: StageResources = Field(default_factory=lambda: StageResources(num_cpus=1, batch_size=256))

    lora: LoraSettings = Field(default_factory=LoraSettings)
    optim: OptimSettings = Field(default_factory=OptimSettings)
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)

    eval_every_steps: int = Field(20, ge=1)  # evaluation + checkpoint + Ray report interval
    eval_max_batches: int | None = None
    log_every_steps: int = Field(5, ge=1)
    seed: int = 0

    # Checkpoints go to storage_path/<run_name>-<fingerprint of config and dataset>: rerunning an
    # unfinished run resumes from its latest checkpoint; a changed config or dataset starts afresh.
    run_name: str | None = None  # default finetune-<phase>
    storage_path: str | None = None  # local dir or s3://; default OUTPUT/checkpoints
    max_failures: int = Field(2, ge=0)
    num_to_keep: int = Field(2, ge=1)

    registry: str | None = None  # when set, the finished run is registered for its phase
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)

    fail_at_step: int | None = None  # test hook: rank 0 raises once at this optimizer step
    fail_marker: str | None = None  # local file marking that the failure was injected already

    @model_validator(mode="after")
    def _check(self) -> "FinetuneConfig":
        if self.deepspeed.offload_param and self.deepspeed.zero_stage != 3:
            raise ValueError("deepspeed.offload_param needs deepspeed.zero_stage: 3")
        if self.base_model == TINY and fs.is_uri(self.output_dir):
            raise ValueError("base_model: tiny builds its base model into output_dir, which must be a local path "
                             f"(not {self.output_dir}); on object storage, train a Hugging Face id or local "
                             "base_model")
        budget = self.optim.micro_batch_tokens
        if budget is not None:
            if not self.packing:
                raise ValueError("optim.micro_batch_tokens packs examples into token-budget rows: "
                                 "it needs packing: true")
            if budget < self.max_length:
                raise ValueError(f"optim.micro_batch_tokens ({budget}) must hold the longest example "
                                 f"(max_length {self.max_length})")
            if self.optim.micro_batch_size != 1:
                raise ValueError("with optim.micro_batch_tokens a micro batch is one row of that many tokens: "
                                 f"set optim.micro_batch_size: 1 (not {self.optim.micro_batch_size})")
        if self.attn_implementation == "torch_varlen" and not self.packing:
            raise ValueError("attn_implementation: torch_varlen reads example boundaries from packed rows' "
                             "position ids; it needs packing: true")
        if self.liger_kernel == "on" and not self.scaling.use_gpu:
            raise ValueError("liger_kernel: on needs GPU training (scaling.use_gpu: true): its kernels are Triton "
                             "GPU kernels; use auto or off on CPU")
        if self.fused_lora == "on" and self.deepspeed.zero_stage == 3:
            raise ValueError("fused_lora: on reads the base layers' weights directly, which ZeRO-3 partitions; "
                             "use auto (off under ZeRO-3) or off")
        gc = self.gradient_checkpointing
        if not isinstance(gc, bool) and gc < 1:
            raise ValueError(f"gradient_checkpointing must be true, false or a layer interval k >= 1, not {gc}")
        if not self.scaling.use_gpu and self.deepspeed.offload_optimizer:
            raise ValueError("deepspeed.offload_optimizer is for GPU training (it JIT-compiles DeepSpeedCPUAdam); "
                             "on CPU the optimizer already runs on CPU: set it to false")
        return self

    def row_tokens(self) -> int:
        """Tokens per packed row: the micro batch's token budget when set, else ``max_length``."""
        return self.optim.micro_batch_tokens or self.max_length

    def dataset_dirs(self) -> list[str]:
        """Every directory the phase's examples are read from: ``dataset_dir`` first."""
        return [self.dataset_dir, *self.extra_dataset_dirs]

    def resolved_run_name(self) -> str:
        return self.run_name or f"finetune-{self.phase}"

    def resolved_storage_path(self) -> str:
        """Absolute local path or URI (Ray needs absolute local storage paths)."""
        path = self.storage_path or fs.join(self.output_dir, "checkpoints")
        return path if fs.is_uri(path) else os.path.abspath(os.path.expanduser(path))
