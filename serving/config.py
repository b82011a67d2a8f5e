"""The serving config: one ``ServeConfig`` for ``python -m jobs.serve``, the Serve config YAML and RayService.

``python -m jobs.serve --config jobs/configs/serve_*.yaml`` validates it and starts the
application; ``serve run serving/serve_config.yaml`` passes the same fields as the
application's ``args`` to :func:`serving.app.build_app`, which validates them with this class
(an unknown or wrong field fails the deploy with the field's name).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from chipforge.config import Config

# A served model name: letters, digits, '_', '.', '-' (no '/', whitespace or line break: names go into HTTP
# headers, logs and directory names), starting with a letter or digit.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
# ``--max-lora-rank`` values vLLM accepts (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class NameSettings(Config):
    """Model names clients use: ``<prefix>`` routes, ``<prefix>-<phase>`` is a specialist, ``base`` the base."""

    prefix: str = Field("chipforge", max_length=60)
    base: str = Field("chipforge-base", max_length=60)

    @field_validator("prefix", "base")
    @classmethod
    def _name(cls, v: str) -> str:
        if not MODEL_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a model name (letters, digits, '_', '.', '-', starting with a letter or "
                             "digit)")
        return v


class RouterSettings(Config):
    # auto: the triage specialist when one is registered, else the phase classifier
    mode: Literal["auto", "classifier", "triage"] = "auto"
    classifier: str | None = None  # PhaseClassifier JSON artifact; None: trained on the shipped set at start
    threshold: float = Field(0.35, ge=0.0, le=1.0)  # below: the fallback answers
    fallback: Literal["auto", "triage", "base"] = "auto"  # auto: the triage specialist if registered, else base
    log_decisions: bool = True
    recent_decisions: int = Field(100, ge=0)  # kept in memory for GET /stats


class LimitSettings(Config):
    max_request_bytes: int = Field(1 << 20, ge=1024)  # larger bodies: 413
    max_n: int = Field(4, ge=1)
    max_choices: int = Field(64, ge=1)  # prompts x n of one completions request
    max_stop: int = Field(4, ge=0)
    max_logit_bias: int = Field(300, ge=0)  # logit_bias entries per request (each costs per-token work)
    body_timeout_s: float = Field(30.0, gt=0)  # the whole body must arrive within this; slower: 408
    default_max_tokens: int | None = Field(None, ge=1)  # None: up to the context length
    retry_after_s: int = Field(1, ge=0)  # Retry-After of a 429
    request_timeout_s: float = Field(600.0, gt=0)


class HFSettings(Config):
    """transformers + PEFT: CPU machines and small GPUs."""

    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    device: str = "auto"  # auto: cuda when the replica has a GPU, else cpu
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_batch_size: int = Field(8, ge=1)
    batch_wait_ms: float = Field(5.0, ge=0)
    max_waiting: int = Field(64, ge=1)  # per replica, queued in the engine; more: 429
    max_model_len: int | None = Field(None, ge=16)  # None: the model's max_position_embeddings
    torch_threads: int | None = Field(None, ge=1)  # None: num_cpus (at least 1)
    trust_remote_code: bool = False
    cache_dir: str = "~/.cache/chipforge/serving"  # adapters and models from s3:// / gs:// are copied here
    max_ongoing_requests: int = Field(32, ge=1)  # Serve: in flight per replica
    max_queued_requests: int = Field(64, ge=-1)  # Serve: queued per caller; more: 429 (-1: unbounded)


class VLLMSettings(Config):
    """Ray Serve LLM (vLLM) on GPU nodes: one LLMServer per base model, adapters multiplexed."""

    lora_root: str | None = None  # s3:// or gs:// dir; adapters are staged to <lora_root>/<model name>/
    max_loras: int = Field(8, ge=1)  # adapters resident per replica (== max_num_adapters_per_replica)
    max_lora_rank: int = Field(16, ge=1)  # one of VLLM_LORA_RANKS; an adapter of a higher rank fails the start
    max_model_len: int | None = Field(None, ge=16)
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    accelerator_type: str | None = None  # e.g. "A10G", "H100"
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    max_queued_requests: int = Field(256, ge=-1)  # Serve: queued per caller; more: 429
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)  # more vLLM engine arguments
    runtime_env: dict[str, Any] = Field(default_factory=dict)

    @field_validator("max_lora_rank")
    @classmethod
    def _rank(cls, v: int) -> int:
        if v not in VLLM_LORA_RANKS:
            raise ValueError(f"vLLM accepts max_lora_rank {', '.join(map(str, VLLM_LORA_RANKS))}; got {v}")
        return v


class IngressSettings(Config):
    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.5, ge=0)
    max_ongoing_requests: int = Field(256, ge=1)


class ServeConfig(Config):
    registry: str = "out/quickstart/registry.json"  # training.registry file (local path or URI)
    output_dir: str = "out/serve"  # report.json and the resolved Serve config (serve_config.yaml)
    backend: Literal["hf", "vllm"] = "hf"
    host: str = "127.0.0.1"  # 0.0.0.0 to listen on every interface
    port: int = Field(8000, ge=0, le=65535)
    metrics_port: int | None = Field(None, ge=0, le=65535)  # Ray's Prometheus exporter port when the job starts Ray
    detach: bool = False  # deploy and exit, leaving the application running (ray job submit to a cluster)
    run_for_s: float | None = Field(None, gt=0)  # stop after this long (smoke tests); None: until Ctrl-C/SIGTERM
    app_name: str = "chipforge"
    route_prefix: str = "/"
    phases: list[str] | None = None  # serve only these registered phases (None: all)
    # A specialist that fails the startup checks (adapter missing, corrupt, for another base, ...): "fail" stops
    # the start with an error naming every bad entry; "skip" serves the others and reports the skipped ones
    # (startup log, /health, /stats); a request for a skipped one is a 404 that says it was skipped.
    on_bad_specialist: Literal["fail", "skip"] = "fail"
    # Set by python -m jobs.serve when it skipped specialists (name -> why): reported by the application.
    skipped_specialists: dict[str, str] = Field(default_factory=dict)
    api_key_env: str | None = "CHIPFORGE_API_KEY"  # when this variable is set, requests need the bearer key
    inject_system_prompt: bool = True  # a specialist gets its phase's system prompt when the request has none
    names: NameSettings = Field(default_factory=NameSettings)
    router: RouterSettings = Field(default_factory=RouterSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    hf: HFSettings = Field(default_factory=HFSettings)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)
    ingress: IngressSettings = Field(default_factory=IngressSettings)
    # runtime_env of the deployments (env_vars such as the API key on a cluster, pip, ...)
    runtime_env: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "ServeConfig":
        if not self.route_prefix.startswith("/"):
            raise ValueError("route_prefix must start with '/'")
        if self.names.base == self.names.prefix or self.names.base.startswith(self.names.prefix + "-") and \
                self.names.base[len(self.names.prefix) + 1:] in _PHASE_NAMES:
            raise ValueError(f"names.base {self.names.base!r} collides with the router or a specialist name")
        if self.vllm.lora_root is not None and not self.vllm.lora_root.startswith(("s3://", "gs://", "abfss://",
                                                                                     "azure://")):
            raise ValueError("vllm.lora_root must be an s3://, gs://, abfss:// or azure:// URI "
                             "(Ray Serve LLM loads adapters only from cloud storage)")
        if self.vllm.min_replicas > self.vllm.max_replicas:
            raise ValueError("vllm.min_replicas must be <= vllm.max_replicas")
        return self

    def app_args(self) -> dict[str, Any]:
        """The fields :func:`serving.app.build_app` takes (everything that shapes the application)."""
        return self.model_dump(mode="json", exclude=JOB_ONLY)

    def serve_config(self, *, minimal: bool = True) -> dict[str, Any]:
        """The Serve config (``serve run`` / ``serve deploy`` / RayService ``serveConfigV2``) of this config."""
        if minimal:
            args = self.model_dump(mode="json", exclude=JOB_ONLY | {"app_name", "route_prefix"}, exclude_defaults=True)
            args = {"registry": self.registry, "backend": self.backend, **args}
        else:
            args = self.app_args()
        return {"proxy_location": "EveryNode", "http_options": {"host": self.host, "port": self.port},
                "applications": [{"name": self.app_name, "route_prefix": self.route_prefix,
                                  "import_path": IMPORT_PATH, "args": args}]}


IMPORT_PATH = "serving.app:build_app"
# Fields of the job, not of the application (left out of the Serve config's args).
JOB_ONLY = {"output_dir", "host", "port", "metrics_port", "detach", "run_for_s"}


def _phase_names() -> tuple[str, ...]:
    from chipforge.vocab import PHASES

    return PHASES


_PHASE_NAMES = _phase_names()
