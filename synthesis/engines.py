"""Generation engines and their configs: the same prompt rows in, the same generation rows out.

Nothing here imports Ray: the configs, the row adapters and two plain in-process engines that
evaluation and serving can share. ``pipelines/synthesis.py`` composes them with Ray (cluster
checks, ``ray.data.llm`` processors, map stages).

- ``vllm``: ``VLLMConfig`` describes a ``ray.data.llm`` vLLM processor (built by the pipeline);
  ``vllm_preflight`` says, from the cluster's resources, whether it can run at all. vllm itself
  (the ``gpu`` extra) is only ever imported inside Ray's engine actors.
- ``openai``: any OpenAI-compatible ``/v1/chat/completions`` endpoint. ``OpenAIChat`` is a
  client (aiohttp, retries on 408/429/502/503/504 and connection errors, each attempt bounded as a
  whole, reply bodies capped); the pipeline runs it as an actor pool, so whatever the server
  sends for one row is that row's ``engine_error``, never a failed batch (``ray.data.llm``'s HTTP
  processor raises out of the batch on a non-JSON body or exhausted retries, which aborted the
  job); ``send`` takes request bodies, so the evaluation job's client (``evaluation.models``) uses
  it too. The key is read from the variable the config names.
- ``hf``: ``HFGenerator``, transformers ``generate`` (model loaded once per instance).
  ``model_path: tiny`` builds a tiny random Llama and tokenizer in-process
  (``training.tiny``): nothing is downloaded, and its replies are noise, so it keeps ~0
  examples; it is for exercising the pipeline on a laptop. Other paths load with
  ``local_files_only`` unless ``allow_download`` is set.

Input rows follow ``seeds.PROMPT_SCHEMA``; every engine's output is ``GENERATION_SCHEMA``.
A failure is an ``engine_error`` on the rows it affects, never an exception out of a batch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from chipforge.config import Config

TINY = "tiny"  # engine.hf.model_path: a random tiny Llama built in-process (training.tiny)
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

    def params(self) -> dict[str, Any]:
        """OpenAI / vLLM sampling parameters (``seed`` only when set)."""
        out: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}
        if self.seed is not None:
            out["seed"] = self.seed
        return out


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
    # One attempt as a whole (connect, headers, body): a reply that never ends is cut here. A row
    # takes at most (max_retries + 1) * timeout_s plus the backoff waits.
    timeout_s: float = Field(120.0, gt=0.0)
    max_reply_mb: float = Field(8.0, gt=0.0)  # a larger reply body is an engine error (not read further)
    qps: int | None = Field(None, gt=0)  # request starts per second, per actor (the pacing is not global)
    concurrency: int | tuple[int, int] = 1  # client actors
    batch_size: int = Field(16, ge=1)  # rows per batch; a batch's requests are in flight together


class TinyModelConfig(Config):
    """Shape of the in-process random model of ``model_path: tiny`` (built identically everywhere)."""

    vocab_size: int = Field(300, ge=1)  # at least 265 (bytes + special tokens)
    hidden_size: int = Field(32, ge=8)
    num_layers: int = Field(1, ge=1)
    num_heads: int = Field(2, ge=1)
    max_position_embeddings: int = Field(2048, ge=256)
    seed: int = 0


class HFConfig(Config):
    model_path: str = TINY  # "tiny", a local directory, or a hub id (see allow_download)
    allow_download: bool = False  # False: local directories and the local HF cache only, never the hub
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    concurrency: int | None = Field(1, ge=1)  # generator actors (None: autoscale from one)
    batch_size: int = Field(4, ge=1)
    num_cpus: float = Field(1.0, gt=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class EngineConfig(Config):
    name: Literal["vllm", "openai", "hf"] = "hf"
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)
    hf: HFConfig = Field(default_factory=HFConfig)

    @property
    def model(self) -> str:
        return {"vllm": self.vllm.model_source, "openai": self.openai.model, "hf": self.hf.model_path}[self.name]

    @property
    def random_weights(self) -> bool:
        """True for the built-in tiny model: its output is noise, ~0 examples survive validation."""
        return self.name == "hf" and self.hf.model_path == TINY

    def generator(self, template_id: str) -> str:
        """``provenance.generator`` of a row: engine/model/template version."""
        return f"{self.name}/{self.model}/{template_id}"


# ------------------------------------------------------------------------------ common

def _messages(row: Mapping[str, Any]) -> list[dict[str, str]]:
    return json.loads(row["messages_json"])


def _meta(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in META_COLUMNS}


def error_row(row: Mapping[str, Any], error: str) -> dict[str, Any]:
    """A generation row that failed: counted downstream as ``engine/error``."""
    return {**_meta(row), "generated_text": None, "engine_error": error[:500], "prompt_tokens": None,
            "completion_tokens": None}


def _int_or_none(x: Any) -> int | None:
    try:
        return None if x is None else int(x)
    except (TypeError, ValueError):
        return None


def to_generation_rows(batch: pa.Table) -> pa.Table:
    """Any engine's output batch → exactly ``GENERATION_SCHEMA``, row by row.

    Rows that failed inside Ray's vLLM stage skip our postprocess and arrive with
    ``__inference_error__`` and without ``generated_text``; they become ``engine_error`` rows,
    as does a row whose fields do not fit the schema (the other rows of the batch are kept).
    """
    rows = []
    for r in batch.to_pylist():
        try:
            err = r.get("engine_error") or r.get("__inference_error__") or ""
            text = r.get("generated_text")
            if text is not None and not isinstance(text, str):
                raise TypeError(f"generated_text is {type(text).__name__}, not text")
            rows.append({**_meta(r), "generated_text": text, "engine_error": str(err)[:2000] if err else None,
                         "prompt_tokens": _int_or_none(r.get("prompt_tokens")),
                         "completion_tokens": _int_or_none(r.get("completion_tokens"))})
        except Exception as exc:  # noqa: BLE001 - one bad row is one engine error
            rows.append(error_row(r, f"bad_engine_row: {type(exc).__name__}: {exc}"))
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


def vllm_request(row: dict[str, Any], sampling: dict[str, Any]) -> dict[str, Any]:
    """Prompt row → the vLLM processor's input (chat messages + sampling parameters)."""
    return {"messages": _messages(row), "sampling_params": dict(sampling)}


def vllm_reply(row: dict[str, Any]) -> dict[str, Any]:
    """vLLM processor output row → generation row. A reply that used all of ``max_tokens`` (the row
    still holds the ``sampling_params`` it was sent with) was cut at the limit: it is an
    ``engine_error`` saying so (Ray's output has no ``finish_reason``), not a ``malformed`` reply."""
    used = _int_or_none(row.get("num_generated_tokens"))
    sampling = row.get("sampling_params")
    limit = _int_or_none(sampling.get("max_tokens")) if isinstance(sampling, Mapping) else None
    text, error = row.get("generated_text"), None
    if used is not None and limit is not None and used >= limit:
        text, error = None, (f"reply cut at the token limit ({used} tokens = max_tokens; raise "
                             "engine.sampling.max_tokens)")
    return {**_meta(row), "generated_text": text, "engine_error": error,
            "prompt_tokens": _int_or_none(row.get("num_input_tokens")), "completion_tokens": used}


# ------------------------------------------------------------------------------ OpenAI

RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
REDACTED = "[redacted]"


def chat_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def openai_api_key(cfg: OpenAIConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The key from ``cfg.api_key_env`` (None when no key is configured; a missing variable is an error)."""
    environ = os.environ if environ is None else environ
    if not cfg.api_key_env:
        return None
    key = environ.get(cfg.api_key_env)
    if not key:
        raise EngineUnavailable(f"engine 'openai' reads its API key from ${cfg.api_key_env}, which is not set "
                                "(set it, or set engine.openai.api_key_env=null for a server without keys)")
    return key


def openai_headers(cfg: OpenAIConfig, environ: Mapping[str, str] | None = None, *,
                   key: str | None = None) -> dict[str, str]:
    """Request headers; the key is ``key`` or read from ``cfg.api_key_env`` (a missing variable is an error)."""
    key = key if key is not None else openai_api_key(cfg, environ)
    return {"Authorization": f"Bearer {key}"} if key else {}


def openai_reply(row: dict[str, Any]) -> dict[str, Any]:
    """``row["http_response"]`` → generation row: the answer text, or an ``engine_error`` for an
    error body, a reply without choices, a reply cut at ``max_tokens`` (``finish_reason``
    ``length``), tool calls instead of text, or a reply of any other shape (never an exception)."""
    try:
        return _openai_reply(row)
    except Exception as exc:  # noqa: BLE001 - runs inside Ray's processor: one odd reply is one error
        return error_row(row, f"http_error: unreadable reply ({type(exc).__name__}: {exc})")


def _openai_reply(row: dict[str, Any]) -> dict[str, Any]:
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
        message = choice.get("message") or {}
        text = message.get("content")
        usage = resp.get("usage") or {}
        if choice.get("finish_reason") == "length":
            text, error = None, ("http_error: reply cut at the token limit (finish_reason 'length'; raise "
                                 "engine.sampling.max_tokens)")
        elif not isinstance(text, str):
            what = "tool calls" if message.get("tool_calls") else "no message content"
            text, error = None, f"http_error: reply with {what} (finish_reason {choice.get('finish_reason')!r})"
    return {**_meta(row), "generated_text": text, "engine_error": error,
            "prompt_tokens": _int_or_none(usage.get("prompt_tokens")),
            "completion_tokens": _int_or_none(usage.get("completion_tokens"))}


class ReplyTooLarge(Exception):
    """The server sent more than ``max_reply_mb``."""


# The start of the engine_error of a row the job's deadline (``budget.max_wall_s``) left unanswered.
DEADLINE_ERROR = "deadline budget.max_wall_s"


class OpenAIChat:
    """OpenAI-compatible client (aiohttp): ``complete(messages)`` for one chat, ``__call__`` for a
    batch of prompt rows (the synthesis job's ``openai`` engine runs it as an actor pool).

    Every reply, whatever the server sends, becomes one generation row: a non-JSON or empty body,
    an HTTP error, a body over ``max_reply_mb``, a reply that never ends (``timeout_s`` bounds each
    attempt as a whole), ``choices`` missing or empty, ``content`` null or a reply cut at the token
    limit is that row's ``engine_error``, never an exception out of the batch. 408/429/5xx and
    connection errors are retried ``max_retries`` times with exponential backoff. The API key is
    replaced by ``[redacted]`` in everything read back, so a server that echoes it cannot put it
    into a report or an example.

    ``deadline`` (epoch seconds, the job's ``budget.max_wall_s``; None: none) bounds the run as a
    whole, like a batch API's completion window: no request starts after it (the row's error says
    ``not sent``) and a request still in flight then, retries included, is cut (``cut in flight``);
    either error begins with :data:`DEADLINE_ERROR`, so the job counts those rows apart.
    """

    def __init__(self, cfg: OpenAIConfig | Mapping[str, Any], sampling: SamplingConfig | Mapping[str, Any],
                 environ: Mapping[str, str] | None = None, api_key: str | None = None,
                 deadline: float | None = None) -> None:
        self.cfg = cfg if isinstance(cfg, OpenAIConfig) else OpenAIConfig(**cfg)
        self.deadline = deadline
        self.url = chat_url(self.cfg.url)
        self.key = api_key if api_key is not None else openai_api_key(self.cfg, environ)
        self.headers = {"Content-Type": "application/json", **openai_headers(self.cfg, key=self.key or "")}
        params = sampling.params() if isinstance(sampling, SamplingConfig) else dict(sampling)
        self.sampling = {k: v for k, v in params.items() if v is not None}
        self.max_bytes = int(self.cfg.max_reply_mb * (1 << 20))

    def redact(self, text: str) -> str:
        return text.replace(self.key, REDACTED) if self.key else text

    async def _read(self, resp: Any) -> bytes:
        if resp.content_length is not None and resp.content_length > self.max_bytes:
            raise ReplyTooLarge(f"Content-Length {resp.content_length}")
        chunks, size = [], 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > self.max_bytes:
                raise ReplyTooLarge(f"more than {self.max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _decode(self, status: int, content_type: str, raw: bytes) -> dict[str, Any]:
        text = self.redact(raw.decode("utf-8", "replace"))
        try:
            body = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            return {"error": f"HTTP {status}: not a JSON reply ({content_type or 'no content type'}): {text[:300]!r}"}
        if status >= 400:
            return {"error": {"status": status, "body": body}}
        if not isinstance(body, dict) or not body:
            return {"error": f"HTTP {status}: reply is not a chat completion: {text[:300]!r}"}
        return body

    async def post(self, session: Any, body: dict[str, Any]) -> dict[str, Any]:
        """The JSON reply, or ``{"error": ...}`` (never raises for what the server does)."""
        import asyncio

        import aiohttp

        data = json.dumps(body)
        for attempt in range(self.cfg.max_retries + 1):
            last = attempt == self.cfg.max_retries
            try:
                async with session.post(self.url, data=data, headers=self.headers) as resp:
                    raw = await self._read(resp)
                    if resp.status not in RETRY_STATUSES or last:
                        return self._decode(resp.status, resp.content_type, raw)
            except ReplyTooLarge as exc:
                return {"error": f"reply over engine.openai.max_reply_mb={self.cfg.max_reply_mb:g} ({exc})"}
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
                if last:
                    kind = "no complete reply within engine.openai.timeout_s" if isinstance(
                        exc, asyncio.TimeoutError) else f"{type(exc).__name__}: {exc}"
                    return {"error": self.redact(f"{kind} (after {attempt + 1} attempt(s))")}
            await asyncio.sleep(self.cfg.base_retry_wait_s * 2**attempt)
        return {"error": "no attempt made"}  # unreachable: max_retries >= 0

    async def _send_all(self, bodies: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
        """One reply row per request body (None: a row that could not be built gets ``{}``), the
        requests in flight together (``qps`` paces their starts)."""
        import asyncio

        import aiohttp

        fields = ("generated_text", "engine_error", "prompt_tokens", "completion_tokens")

        async def one(session: Any, k: int, body: dict[str, Any]) -> dict[str, Any]:
            wait = k / self.cfg.qps if self.cfg.qps else 0.0
            if self.deadline is not None:  # pacing never waits past the deadline
                wait = min(wait, max(0.0, self.deadline - time.time()))
            if wait:
                await asyncio.sleep(wait)
            left = None if self.deadline is None else self.deadline - time.time()
            if left is not None and left <= 0:
                return dict.fromkeys(fields) | {"engine_error": f"{DEADLINE_ERROR} reached: not sent"}
            try:
                response = await asyncio.wait_for(self.post(session, body), left)
            except asyncio.TimeoutError:  # post() itself never raises one: it returns its own timeouts
                return dict.fromkeys(fields) | {"engine_error": f"{DEADLINE_ERROR} reached: cut in flight"}
            reply = openai_reply({"http_response": response})
            return {k: reply[k] for k in fields}

        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=True) as session:
            started = [one(session, k, b) for k, b in enumerate(b for b in bodies if b is not None)]
            done = iter(await asyncio.gather(*started))
        return [next(done) if b is not None else {} for b in bodies]

    def send(self, bodies: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
        """``_send_all`` from synchronous code: chat completions request bodies → reply rows."""
        import asyncio

        return asyncio.run(self._send_all(bodies))

    def body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        return {"model": self.cfg.model, "messages": messages, **self.sampling}

    def complete(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """One chat → ``{"generated_text", "engine_error", "prompt_tokens", "completion_tokens"}``."""
        return self.send([self.body(messages)])[0]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows, chats, errors = batch.to_pylist(), [], {}
        for i, r in enumerate(rows):
            try:
                chats.append(_messages(r))
            except Exception as exc:  # noqa: BLE001 - one bad row is one engine error
                chats.append(None)
                errors[i] = f"{type(exc).__name__}: {exc}"
        try:
            replies = self.send([None if c is None else self.body(c) for c in chats])
        except Exception as exc:  # noqa: BLE001 - the client itself failed: every row says why
            replies = [{}] * len(rows)
            errors = {i: errors.get(i, self.redact(f"{type(exc).__name__}: {exc}")) for i in range(len(rows))}
        out = [error_row(r, errors[i]) if i in errors else {**_meta(r), **replies[i]} for i, r in enumerate(rows)]
        return pa.Table.from_pylist(out, schema=GENERATION_SCHEMA)


# ------------------------------------------------------------------------------ transformers

FALLBACK_CHAT = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}<|assistant|>\n"


def tiny_tokenizer_texts() -> list[str]:
    """Fixed text the tiny model's tokenizer is trained on (the prompts' own wording): the same
    tokenizer on every node, with no data read."""
    from synthesis.templates import SYSTEM, TEMPLATES, TESTBENCH_RULES

    texts = [SYSTEM, TESTBENCH_RULES] + [t.body for t in TEMPLATES.values()]
    texts += ['{"instruction": "Write a Yosys script", "answer": "```yosys\\nread_verilog top.v\\nsynth\\n```"}',
              "module counter(input clk, output reg [3:0] q); always @(posedge clk) q <= q + 1; endmodule",
              "create_clock -name clk -period 10 [get_ports clk] set_input_delay 2 report_checks report_power"]
    return texts * 2


def build_tiny(cfg: TinyModelConfig) -> tuple[Any, Any]:
    """(model, tokenizer): ``training.tiny``'s random Llama and BPE tokenizer, built in-process."""
    from training.tiny import build_tiny_llama, train_tokenizer

    tokenizer = train_tokenizer(tiny_tokenizer_texts(), vocab_size=cfg.vocab_size)
    model = build_tiny_llama(tokenizer, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                             num_heads=cfg.num_heads, seed=cfg.seed,
                             max_position_embeddings=cfg.max_position_embeddings)
    return model, tokenizer


def local_model_problem(model_path: str, allow_download: bool) -> str | None:
    """Why ``model_path`` cannot load without the hub (None when it can, or downloads are allowed)."""
    if model_path == TINY or allow_download or os.path.isdir(os.path.expanduser(model_path)):
        return None
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(model_path, local_files_only=True)
        return None
    except Exception:  # noqa: BLE001 - not in the local cache (or not a valid id)
        return (f"engine.hf.model_path {model_path!r} is neither a local directory nor a model in the local "
                "Hugging Face cache, and downloads are off. Use engine.hf.model_path=tiny (a random tiny model "
                "built in-process), a local directory, or set engine.hf.allow_download=true to fetch it from "
                "the hub")


class HFGenerator:
    """Prompt rows → generation rows with a transformers model (loaded once, in ``__init__``).

    Tokenizers without a chat template get a plain role-tagged one. Prompts are cut from the
    left to fit the model's context. When a batch fails, its rows are retried one by one so
    only the row that fails becomes an ``engine_error``.
    """

    def __init__(self, model_path: str, sampling: Mapping[str, Any], dtype: str = "float32",
                 device: str | None = None, tiny: Mapping[str, Any] | None = None,
                 allow_download: bool = False) -> None:
        import torch

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model_path == TINY:
            self.model, self.tokenizer = build_tiny(TinyModelConfig(**(tiny or {})))
            self.model = self.model.to(getattr(torch, dtype))
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            local = not allow_download
            self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=local)
            self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype),
                                                              local_files_only=local)
        self.model = self.model.to(self.device)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model.eval()
        self.sampling = dict(sampling)
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        template = getattr(self.tokenizer, "chat_template", None) or FALLBACK_CHAT
        return self.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                  add_generation_prompt=True)

    def generate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Generation rows for ``rows`` (raises on any failure; ``__call__`` isolates them)."""
        max_new = min(int(self.sampling.get("max_tokens", 256)), self.max_context // 2)
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
        out = []
        for r, ids, mask in zip(rows, new, enc["attention_mask"]):
            n_new = int((ids != self.tokenizer.pad_token_id).sum())
            out.append({**_meta(r), "generated_text": self.tokenizer.decode(ids, skip_special_tokens=True),
                        "engine_error": None, "prompt_tokens": int(mask.sum()), "completion_tokens": n_new})
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        try:
            out = self.generate(rows)
        except Exception:  # noqa: BLE001 - find the row(s) that fail; the others still generate
            out = []
            for r in rows:
                try:
                    out += self.generate([r])
                except Exception as exc:  # noqa: BLE001 - one bad row is one engine error
                    out.append(error_row(r, f"{type(exc).__name__}: {exc}"))
        return pa.Table.from_pylist(out, schema=GENERATION_SCHEMA)


def engine_summary(cfg: EngineConfig) -> dict[str, Any]:
    block = getattr(cfg, cfg.name).model_dump(mode="json")
    block.pop("runtime_env", None)
    return {"name": cfg.name, "model": cfg.model, "random_weights": cfg.random_weights,
            "sampling": cfg.sampling.model_dump(mode="json"), cfg.name: block}
