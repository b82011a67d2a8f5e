"""Generation engines: the same prompt rows in, the same generation rows out.

- ``vllm`` (cluster default): ``ray.data.llm`` ``vLLMEngineProcessorConfig``. vllm itself is
  imported only inside Ray's engine actors; building the processor works without it.
  Executing a vLLM pipeline on a cluster without GPUs waits forever for resources, so
  ``check_vllm_runnable`` must pass first: it fails fast, naming what is missing.
- ``openai``: ``ray.data.llm`` ``HttpRequestProcessorConfig`` against any OpenAI-compatible
  ``/v1/chat/completions`` endpoint; key read from the environment variable the config
  names; retries (429/408/502/503/504, connection errors) and qps pacing are Ray's; other
  HTTP errors come back as JSON bodies and become ``engine_error`` rows in postprocess.
- ``hf``: ``HFGenerator``, a callable class for ``map_batches`` (model loaded once per actor),
  for CPUs and small GPUs.

Input rows follow ``seeds.PROMPT_SCHEMA``; every engine's output is ``GENERATION_SCHEMA``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import time
from collections.abc import Mapping
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from chipforge.config import Config

META_COLUMNS = ("prompt_id", "round", "phase", "task", "template_id", "seed_json")
GENERATION_SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("round", pa.int32()),
        pa.field("phase", pa.string(), nullable=False),
        pa.field("task", pa.string()),
        pa.field("template_id", pa.string()),
        pa.field("seed_json", pa.string()),
        pa.field("generated_text", pa.string()),
        pa.field("engine_error", pa.string()),  # empty/null when generation succeeded
        pa.field("prompt_tokens", pa.int32()),
        pa.field("completion_tokens", pa.int32()),
    ]
)


class EngineUnavailable(RuntimeError):
    """The chosen engine cannot run where the job was started (raised before executing)."""


class SamplingConfig(Config):
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(1536, gt=0)
    seed: int | None = None


class VLLMConfig(Config):
    model_source: str = "Qwen/Qwen2.5-72B-Instruct"
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    concurrency: int | tuple[int, int] = 1  # engine replicas (each tp*pp GPUs)
    batch_size: int = Field(32, ge=1)
    accelerator_type: str | None = None  # e.g. H100, A100, L4
    max_model_len: int = Field(8192, gt=0)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)  # extra vLLM engine args
    max_concurrent_batches: int = Field(8, ge=1)
    should_continue_on_error: bool = True  # a failed row becomes engine_error, not a failed job
    runtime_env: dict[str, Any] | None = None
    wait_for_gpus_s: float = Field(0.0, ge=0.0)  # >0: ask the autoscaler for GPUs and wait this long


class OpenAIConfig(Config):
    url: str = "http://127.0.0.1:8000/v1"  # base URL (…/v1) or the full …/chat/completions URL
    model: str = "default"
    api_key_env: str | None = "OPENAI_API_KEY"  # env var holding the key; None: send no key
    max_retries: int = Field(3, ge=0)
    base_retry_wait_s: float = Field(1.0, gt=0.0)
    qps: int | None = Field(None, gt=0)  # per actor and batch (Ray's pacing is not global)
    concurrency: int | tuple[int, int] = 1
    batch_size: int = Field(16, ge=1)


class HFConfig(Config):
    model_path: str = "out/tiny-model"  # local dir or hub id loadable by AutoModelForCausalLM
    concurrency: int | tuple[int, int] = 1
    batch_size: int = Field(4, ge=1)
    num_cpus: float = Field(1.0, gt=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class EngineConfig(Config):
    name: Literal["vllm", "openai", "hf"] = "vllm"
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)
    hf: HFConfig = Field(default_factory=HFConfig)

    @property
    def model(self) -> str:
        return {"vllm": self.vllm.model_source, "openai": self.openai.model, "hf": self.hf.model_path}[self.name]

    def generator(self, template_id: str) -> str:
        """``provenance.generator`` of a row: engine/model/template version."""
        return f"{self.name}/{self.model}/{template_id}"


# ------------------------------------------------------------------------------ common

def _messages(row: Mapping[str, Any]) -> list[dict[str, str]]:
    return json.loads(row["messages_json"])


def _meta(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in META_COLUMNS}


def to_generation_rows(batch: pa.Table) -> pa.Table:
    """Any engine's output batch → exactly ``GENERATION_SCHEMA``.

    Rows that failed inside Ray's vLLM stage skip our postprocess and arrive with
    ``__inference_error__`` and without ``generated_text``; they become ``engine_error`` rows.
    """
    rows = []
    for r in batch.to_pylist():
        err = r.get("engine_error") or r.get("__inference_error__") or ""
        rows.append({**_meta(r), "generated_text": r.get("generated_text"), "engine_error": str(err) if err else None,
                     "prompt_tokens": r.get("prompt_tokens"), "completion_tokens": r.get("completion_tokens")})
    return pa.Table.from_pylist(rows, schema=GENERATION_SCHEMA)


# ------------------------------------------------------------------------------ vLLM

def vllm_preflight(resources: Mapping[str, float], vllm_found: bool, *, tensor_parallel_size: int = 1,
                   pipeline_parallel_size: int = 1, accelerator_type: str | None = None) -> None:
    """Raise ``EngineUnavailable`` unless a vLLM replica can be scheduled and imported."""
    need = tensor_parallel_size * pipeline_parallel_size
    gpus = float(resources.get("GPU", 0))
    problems = []
    if gpus < need:
        problems.append(f"the Ray cluster has {gpus:g} GPU(s) and one vLLM replica needs "
                        f"tensor_parallel_size*pipeline_parallel_size = {need}")
    if accelerator_type and f"accelerator_type:{accelerator_type}" not in resources:
        have = sorted(k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:"))
        problems.append(f"no node has accelerator_type {accelerator_type!r} (cluster has {have or 'none'})")
    if not vllm_found:
        problems.append("the vllm package is not importable (install chipforge[gpu] on the GPU nodes, "
                        "or use a Ray LLM image)")
    if problems:
        raise EngineUnavailable(
            "engine 'vllm' cannot run on this cluster: " + "; ".join(problems) + ". Not starting it: a vLLM "
            "pipeline without GPUs would wait for resources forever. Use --engine hf (CPU, transformers) or "
            "--engine openai (an OpenAI-compatible server), or submit to a cluster with GPU nodes "
            "(set engine.vllm.wait_for_gpus_s for autoscaling GPU groups)."
        )


def _vllm_on_gpu_node(runtime_env: dict[str, Any] | None, timeout_s: float = 120.0) -> bool:
    """Is vllm importable on a GPU node? (A zero-CPU task pinned to one; never waits for GPUs.)"""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0]
    if not nodes:
        return False

    @ray.remote(num_cpus=0)
    def probe() -> bool:
        return importlib.util.find_spec("vllm") is not None

    ref = probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[0]["NodeID"], soft=False),
                        runtime_env=runtime_env).remote()
    try:
        return bool(ray.get(ref, timeout=timeout_s))
    except Exception:  # noqa: BLE001 — an unreachable node means "not usable"
        ray.cancel(ref, force=True)
        return False


def check_vllm_runnable(cfg: VLLMConfig) -> dict[str, Any]:
    """Fail fast (``EngineUnavailable``) when the vLLM engine cannot run on this Ray cluster.

    Checks ``ray.cluster_resources()`` for GPUs (and the accelerator type) and
    ``importlib.util.find_spec("vllm")`` on the driver, else on a GPU node. With
    ``wait_for_gpus_s`` it first asks the autoscaler for the GPUs and waits that long.
    """
    import ray

    need = cfg.tensor_parallel_size * cfg.pipeline_parallel_size
    resources = ray.cluster_resources()
    if cfg.wait_for_gpus_s > 0 and resources.get("GPU", 0) < need:
        from ray.autoscaler.sdk import request_resources

        bundle = {"GPU": 1} | ({f"accelerator_type:{cfg.accelerator_type}": 0.001} if cfg.accelerator_type else {})
        request_resources(bundles=[bundle] * need)
        deadline = time.monotonic() + cfg.wait_for_gpus_s
        while time.monotonic() < deadline and resources.get("GPU", 0) < need:
            time.sleep(5)
            resources = ray.cluster_resources()
    found_on = "driver" if importlib.util.find_spec("vllm") is not None else None
    if found_on is None and resources.get("GPU", 0) >= need and _vllm_on_gpu_node(cfg.runtime_env):
        found_on = "gpu_node"
    vllm_preflight(resources, found_on is not None, tensor_parallel_size=cfg.tensor_parallel_size,
                   pipeline_parallel_size=cfg.pipeline_parallel_size, accelerator_type=cfg.accelerator_type)
    return {"gpus": resources.get("GPU", 0), "vllm_found_on": found_on}


def _vllm_pre(row: dict[str, Any], sampling: dict[str, Any]) -> dict[str, Any]:
    return {"messages": _messages(row), "sampling_params": dict(sampling)}


def _vllm_post(row: dict[str, Any]) -> dict[str, Any]:
    return {**_meta(row), "generated_text": row.get("generated_text"), "engine_error": None,
            "prompt_tokens": row.get("num_input_tokens"), "completion_tokens": row.get("num_generated_tokens")}


def vllm_processor_config(cfg: VLLMConfig):
    from ray.data.llm import vLLMEngineProcessorConfig

    engine_kwargs = {"max_model_len": cfg.max_model_len, "tensor_parallel_size": cfg.tensor_parallel_size,
                     "pipeline_parallel_size": cfg.pipeline_parallel_size, **cfg.engine_kwargs}
    return vLLMEngineProcessorConfig(
        model_source=cfg.model_source, engine_kwargs=engine_kwargs, concurrency=cfg.concurrency,
        batch_size=cfg.batch_size, accelerator_type=cfg.accelerator_type, runtime_env=cfg.runtime_env,
        max_concurrent_batches=cfg.max_concurrent_batches, should_continue_on_error=cfg.should_continue_on_error,
        chat_template_stage=True, tokenize_stage=True, detokenize_stage=True,
    )


def build_vllm_processor(cfg: VLLMConfig, sampling: SamplingConfig):
    """The ``ray.data.llm`` processor (chat template → tokenize → vLLM → detokenize).

    Building needs neither vllm nor GPUs; running it needs both (``check_vllm_runnable``).
    """
    from ray.data.llm import build_processor

    params = {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}
    if sampling.seed is not None:
        params["seed"] = sampling.seed
    return build_processor(vllm_processor_config(cfg), preprocess=functools.partial(_vllm_pre, sampling=params),
                           postprocess=_vllm_post)


# ------------------------------------------------------------------------------ OpenAI

def chat_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def openai_headers(cfg: OpenAIConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Request headers; the key comes from ``cfg.api_key_env`` (a missing variable is an error)."""
    environ = os.environ if environ is None else environ
    if not cfg.api_key_env:
        return {}
    key = environ.get(cfg.api_key_env)
    if not key:
        raise EngineUnavailable(f"engine 'openai' reads its API key from ${cfg.api_key_env}, which is not set "
                                "(set it, or set engine.openai.api_key_env=null for a server without keys)")
    return {"Authorization": f"Bearer {key}"}


def _openai_pre(row: dict[str, Any], model: str, sampling: dict[str, Any]) -> dict[str, Any]:
    return {"payload": {"model": model, "messages": _messages(row), **sampling}}


def _openai_post(row: dict[str, Any]) -> dict[str, Any]:
    """The answer text, or an ``engine_error`` for an error body / a reply without choices."""
    resp = row.get("http_response")
    if isinstance(resp, str):
        try:
            resp = json.loads(resp)
        except json.JSONDecodeError:
            resp = {"error": resp}
    text, error, usage = None, None, {}
    if not isinstance(resp, Mapping) or resp.get("error") or not resp.get("choices"):
        error = "http_error: " + json.dumps(resp, default=str)[:500]
    else:
        choice = resp["choices"][0] or {}
        text = (choice.get("message") or {}).get("content")
        usage = resp.get("usage") or {}
        if text is None:
            error = "http_error: reply without message content"
    return {**_meta(row), "generated_text": text, "engine_error": error,
            "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens")}


def build_openai_processor(cfg: OpenAIConfig, sampling: SamplingConfig, environ: Mapping[str, str] | None = None):
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    params = {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}
    if sampling.seed is not None:
        params["seed"] = sampling.seed
    config = HttpRequestProcessorConfig(
        url=chat_url(cfg.url), headers=openai_headers(cfg, environ), qps=cfg.qps, max_retries=cfg.max_retries,
        base_retry_wait_time_in_s=cfg.base_retry_wait_s, concurrency=cfg.concurrency, batch_size=cfg.batch_size,
    )
    return build_processor(config, preprocess=functools.partial(_openai_pre, model=cfg.model, sampling=params),
                           postprocess=_openai_post)


# ------------------------------------------------------------------------------ transformers

FALLBACK_CHAT = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}<|assistant|>\n"


class HFGenerator:
    """``map_batches`` callable: prompt rows → generation rows with a transformers model.

    The model and tokenizer load once in ``__init__``. Tokenizers without a chat template get
    a plain role-tagged one. Prompts are cut from the left to fit the model's context.
    """

    def __init__(self, model_path: str, sampling: Mapping[str, Any], dtype: str = "float32",
                 device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(self.device)
        self.model.eval()
        self.sampling = dict(sampling)
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        template = getattr(self.tokenizer, "chat_template", None) or FALLBACK_CHAT
        return self.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                  add_generation_prompt=True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        max_new = min(int(self.sampling.get("max_tokens", 256)), self.max_context // 2)
        out = []
        try:
            texts = [self.prompt_text(_messages(r)) for r in rows]
            self.tokenizer.truncation_side = "left"
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_context - max_new, add_special_tokens=False).to(self.device)
            temperature = float(self.sampling.get("temperature", 0.0))
            if self.sampling.get("seed") is not None:
                self.torch.manual_seed(int(self.sampling["seed"]))
            kwargs: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": self.tokenizer.pad_token_id}
            if temperature > 0:
                kwargs.update(do_sample=True, temperature=temperature, top_p=float(self.sampling.get("top_p", 1.0)))
            else:
                kwargs.update(do_sample=False)
            with self.torch.no_grad():
                generated = self.model.generate(**enc, **kwargs)
            new = generated[:, enc["input_ids"].shape[1]:]
            for r, ids, mask in zip(rows, new, enc["attention_mask"]):
                n_new = int((ids != self.tokenizer.pad_token_id).sum())
                out.append({**_meta(r), "generated_text": self.tokenizer.decode(ids, skip_special_tokens=True),
                            "engine_error": None, "prompt_tokens": int(mask.sum()), "completion_tokens": n_new})
        except Exception as exc:  # noqa: BLE001 — a failed batch is counted, not fatal
            out = [{**_meta(r), "generated_text": None, "engine_error": f"{type(exc).__name__}: {exc}"[:500],
                    "prompt_tokens": None, "completion_tokens": None} for r in rows]
        return pa.Table.from_pylist(out, schema=GENERATION_SCHEMA)


def actor_pool(concurrency: int | tuple[int, int]):
    """``ActorPoolStrategy`` for a config's ``concurrency`` (n: fixed pool; (m, n): autoscaling)."""
    from ray.data import ActorPoolStrategy

    if isinstance(concurrency, int):
        return ActorPoolStrategy(size=concurrency)
    return ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])


def hf_map_kwargs(cfg: HFConfig, sampling: SamplingConfig) -> dict[str, Any]:
    """``map_batches`` kwargs for ``HFGenerator`` (the job applies them)."""
    return {
        "fn_constructor_kwargs": {"model_path": cfg.model_path, "sampling": sampling.model_dump(), "dtype": cfg.dtype},
        "compute": actor_pool(cfg.concurrency), "batch_size": cfg.batch_size, "num_cpus": cfg.num_cpus,
        "num_gpus": cfg.num_gpus, "batch_format": "pyarrow",
    }


def engine_summary(cfg: EngineConfig) -> dict[str, Any]:
    block = getattr(cfg, cfg.name).model_dump(mode="json")
    block.pop("runtime_env", None)
    return {"name": cfg.name, "model": cfg.model, "sampling": cfg.sampling.model_dump(mode="json"), cfg.name: block}


def stage_summary(processor: Any) -> list[dict[str, Any]]:
    """Stage names and their ``map_batches`` kwargs (for logs and tests; nothing executes)."""
    out = []
    for name in processor.list_stage_names():
        kw = processor.get_stage_by_name(name).map_batches_kwargs
        out.append({"stage": name, **{k: v for k, v in kw.items() if k in
                                      {"num_gpus", "num_cpus", "concurrency", "accelerator_type", "max_concurrency"}}})
    return out

