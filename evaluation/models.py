"""Which models are evaluated, and the engines that answer for them (reused from ``synthesis``).

**Models.** The specialist registry (``training.registry`` format) gives each phase's adapter and
base model. Every specialist is evaluated, and so is each distinct base model alone, on the
same prompt rows with the same sampling settings: a prompt row is built once and copied per
model, only its ``model`` column differs. A single base is named ``base``; several bases are
``base:<short name>`` and each specialist is compared with its own. Without a registry only the
base model (``base_model``, else the engine's model) is evaluated.

**Engines** (``engine.name``), all reading the same prompt rows and writing the same output rows:

- ``hf``: :class:`ModelWorker`, an actor holding one base model (``synthesis.engines.HFGenerator``:
  transformers ``generate``, the in-process ``tiny`` model included) with every adapter of that
  base loaded by PEFT under its own name; each row runs under its model's adapter (the base with
  adapters disabled). The same actor computes teacher-forced losses (``kind == "loss"`` rows).
- ``vllm``: one ``ray.data.llm`` vLLM engine per base model with ``enable_lora`` and every
  adapter as a LoRA request (the row's ``model`` column is the adapter's path, or its name under
  ``dynamic_lora_loading_path`` for adapters on object storage). Built here, checked by
  ``pipelines.synthesis.check_vllm_runnable`` before anything runs (never executed on CPU).
- ``openai``: any OpenAI-compatible endpoint (``OpenAIClientWorker``, an aiohttp client per actor); the base
  is ``engine.openai.model`` and each specialist the served name ``openai_adapter_name`` (e.g.
  ``{phase}`` for ``vllm serve --lora-modules rtl_design=...``, ``{base}:{phase}`` for Ray Serve LLM).

Losses need the weights: with ``vllm`` and ``openai`` they are computed by :class:`ModelWorker`
actors (``loss.resources``) when the base model loads locally, else reported as skipped.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from chipforge import fs

IGNORE = -100

PROMPT_FIELDS = [
    pa.field("row_id", pa.string(), nullable=False),
    pa.field("prompt_id", pa.string(), nullable=False),  # the same for every model given this prompt
    pa.field("kind", pa.string(), nullable=False),  # loss | generation | benchmark | smoke | routing
    pa.field("suite", pa.string(), nullable=False),  # phase, benchmark, "smoke", "phase_eval"
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("sample", pa.int32(), nullable=False),  # -1 greedy, 0..n-1 sampled
    pa.field("messages_json", pa.string(), nullable=False),  # the chat (loss rows: with the reference reply)
    pa.field("temperature", pa.float64()),
    pa.field("top_p", pa.float64()),
    pa.field("max_tokens", pa.int32()),
    pa.field("seed", pa.int64()),
    pa.field("target_json", pa.string()),  # what the checker needs: reference answer, expected phase, problem key
]
PROMPT_SCHEMA = pa.schema(PROMPT_FIELDS)
ENGINE_FIELDS = [
    pa.field("completion", pa.string()),
    pa.field("engine_error", pa.string()),
    pa.field("prompt_tokens", pa.int32()),
    pa.field("completion_tokens", pa.int32()),
    pa.field("prompt_sha", pa.string()),  # sha256 of the prompt exactly as the engine rendered it
    pa.field("nll_sum", pa.float64()),  # loss rows: summed NLL of the assistant tokens
    pa.field("n_tokens", pa.int64()),  # loss rows: assistant tokens scored
]
OUTPUT_SCHEMA = pa.schema([*PROMPT_FIELDS, *ENGINE_FIELDS])


@dataclass(frozen=True)
class ModelSpec:
    """One evaluated model. ``base`` names the base entry a specialist is compared with."""

    name: str
    kind: str  # base | specialist | reference
    base_model: str  # path, hub id or "tiny"
    base: str  # the base model entry's name (itself for a base)
    phase: str | None = None
    adapter_path: str | None = None
    served_name: str | None = None  # openai engine: the model name sent

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _short(path: str) -> str:
    parts = [p for p in path.rstrip("/").split("/") if p]
    return parts[-1] if parts else path


def resolve_models(registry: Mapping[str, Any] | None, *, phases: Sequence[str] | None, default_base: str,
                   base_override: str | None, engine: str, openai_model: str = "default",
                   openai_adapter_name: str = "{phase}") -> list[ModelSpec]:
    """The base model(s) and every registered specialist (of ``phases`` when given), bases first."""
    entries = dict((registry or {}).get("specialists", {}))
    if phases is not None:
        entries = {p: e for p, e in entries.items() if p in phases}
    bases: list[str] = []
    for phase in sorted(entries):
        b = base_override or entries[phase]["base_model"]
        if b not in bases:
            bases.append(b)
    if not bases:
        bases = [base_override or default_base]
    names: dict[str, str] = {}
    for b in bases:
        name = "base" if len(bases) == 1 else f"base:{_short(b)}"
        while name in names.values():
            name += "'"
        names[b] = name
    specs = [ModelSpec(name=names[b], kind="base", base_model=b, base=names[b],
                       served_name=openai_model if engine == "openai" else None) for b in bases]
    for phase in sorted(entries):
        e = entries[phase]
        b = base_override or e["base_model"]
        specs.append(ModelSpec(name=phase, kind="specialist", base_model=b, base=names[b], phase=phase,
                               adapter_path=e["adapter_path"],
                               served_name=openai_adapter_name.format(phase=phase, base=openai_model)
                               if engine == "openai" else None))
    return specs


def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def local_dir(path: str) -> str:
    """A local directory with the contents of ``path`` (downloaded once per process from object storage)."""
    if not fs.is_uri(path):
        return os.path.abspath(os.path.expanduser(path.removeprefix("file://")))
    return _download(path)


@functools.lru_cache(maxsize=32)
def _download(uri: str) -> str:
    dest = tempfile.mkdtemp(prefix="cf-eval-adapter-")
    for p in fs.listdir(uri, recursive=True, files_only=True):
        data = fs.read_bytes(p)
        target = os.path.join(dest, fs.relative(p, uri))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)
    return dest


def row_sampling(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's sampling parameters (OpenAI / vLLM names; ``seed`` only when set)."""
    out = {"temperature": float(row["temperature"]), "top_p": float(row["top_p"]), "max_tokens": int(row["max_tokens"])}
    if row.get("seed") is not None:
        out["seed"] = int(row["seed"])
    return out


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` as Arrow can store it: each lone surrogate (JSON's ``"\\ud800"`` from a server)
    becomes U+FFFD; Arrow refused the whole batch over one, failing the job."""
    return _SURROGATE.sub("\ufffd", text)


def engine_row(row: Mapping[str, Any], **values: Any) -> dict[str, Any]:
    """An output row: the prompt row's fields plus the engine's (missing ones null; text made valid
    UTF-8, ``valid_text``)."""
    out = {f.name: row.get(f.name) for f in PROMPT_FIELDS}
    out.update({f.name: None for f in ENGINE_FIELDS})
    out.update({k: valid_text(v) if isinstance(v, str) else v for k, v in values.items()})
    return out


def to_output(batch: pa.Table) -> pa.Table:
    """Any engine's output batch → exactly ``OUTPUT_SCHEMA`` (rows failed inside Ray's vLLM stage
    arrive with ``__inference_error__``: they become ``engine_error`` rows)."""
    rows = []
    for r in batch.to_pylist():
        err = r.get("engine_error") or r.get("__inference_error__")
        if r.get("eval_model"):  # a vLLM row that failed before our postprocess: its model column is the LoRA
            r["model"] = r["eval_model"]
        rows.append({**engine_row(r, **{f.name: r.get(f.name) for f in ENGINE_FIELDS}),
                     "engine_error": valid_text(str(err)[:2000]) if err else None})
    return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)


# ============================================================================ transformers

class ModelWorker:
    """Actor: one base model with its adapters; generation rows and loss rows of those models.

    ``adapters`` maps a specialist's name to its adapter path; ``base_names`` are the model
    names that mean "this base alone". The model is loaded once (``synthesis.engines.HFGenerator``).
    """

    def __init__(self, base_model: str, adapters: Mapping[str, str], base_names: Sequence[str],
                 dtype: str = "float32", tiny: Mapping[str, Any] | None = None, allow_download: bool = False,
                 max_length: int = 2048, loss_batch_size: int = 4) -> None:
        from synthesis.engines import HFGenerator
        from training.tiny import quiet_hf

        with quiet_hf():
            self.gen = HFGenerator(base_model, sampling={}, dtype=dtype, tiny=dict(tiny or {}),
                                   allow_download=allow_download)
            self.adapters = dict(adapters)
            if self.adapters:
                from peft import PeftModel

                first, *rest = self.adapters.items()
                model = PeftModel.from_pretrained(self.gen.model, local_dir(first[1]), adapter_name=first[0])
                for name, path in rest:
                    model.load_adapter(local_dir(path), adapter_name=name)
                self.gen.model = model.to(self.gen.device).eval()
        self.base_names = set(base_names)
        self.max_length = max_length
        self.loss_batch_size = loss_batch_size
        self.torch = self.gen.torch

    @contextlib.contextmanager
    def use(self, model: str) -> Iterator[None]:
        """Run under ``model``: its adapter active, or every adapter disabled for the base."""
        if model in self.adapters:
            self.gen.model.set_adapter(model)
            yield
        elif model in self.base_names:
            if self.adapters:
                with self.gen.model.disable_adapter():
                    yield
            else:
                yield
        else:
            raise KeyError(f"model {model!r} is not served by this worker ({sorted(self.adapters)}, "
                           f"{sorted(self.base_names)})")

    # -- generation
    def _generate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        model = rows[0]["model"]
        self.gen.sampling = row_sampling(rows[0])
        with self.use(model):
            out = self.gen.generate(rows)
        return [engine_row(r, completion=o["generated_text"], prompt_tokens=o["prompt_tokens"],
                           completion_tokens=o["completion_tokens"],
                           prompt_sha=prompt_hash(self.gen.prompt_text(json.loads(r["messages_json"]))))
                for r, o in zip(rows, out, strict=True)]

    def generate_group(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            return self._generate(rows)
        except Exception:  # noqa: BLE001 - find the row(s) that fail; the others still generate
            out = []
            for r in rows:
                try:
                    out += self._generate([r])
                except Exception as exc:  # noqa: BLE001 - one bad row is one engine error
                    out.append(engine_row(r, engine_error=f"{type(exc).__name__}: {exc}"[:2000]))
            return out

    # -- teacher-forced loss
    def token_labels(self, messages: list[dict[str, str]]) -> tuple[list[int], list[int]] | None:
        """(input_ids, labels): labels are the token ids inside assistant replies, -100 elsewhere.

        Spans come from rendering the conversation prefix by prefix with the tokenizer's own chat
        template; tokens map to spans through character offsets. A conversation longer than
        ``max_length`` keeps its reply (the prompt is cut from the left), as in fine-tuning.
        """
        tok = self.gen.tokenizer
        from synthesis.engines import FALLBACK_CHAT

        template = getattr(tok, "chat_template", None) or FALLBACK_CHAT
        render = functools.partial(tok.apply_chat_template, chat_template=template, tokenize=False)
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        text = render(msgs)
        spans = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            prefix = render(msgs[:i], add_generation_prompt=True) if i else ""
            upto = render(msgs[: i + 1])
            if text.startswith(upto) and upto.startswith(prefix):
                spans.append((len(prefix), len(upto)))
            else:
                start = text.find(m["content"])
                if start >= 0:
                    spans.append((start, start + len(m["content"])))
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = [ids[k] if b > a and any(s <= a < e for s, e in spans) else IGNORE
                  for k, (a, b) in enumerate(enc["offset_mapping"])]
        first = next((k for k in range(1, len(labels)) if labels[k] != IGNORE), None)
        if first is None:
            return None
        limit = min(self.max_length, self.gen.max_context)
        start = 0
        if first >= limit:
            start = min(first - limit // 2, len(ids) - limit)
        return ids[start : start + limit], labels[start : start + limit]

    def _losses(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        torch = self.torch
        encoded = [self.token_labels(json.loads(r["messages_json"])) for r in rows]
        out: list[dict[str, Any]] = []
        todo = [(r, e) for r, e in zip(rows, encoded) if e is not None]
        for r, e in zip(rows, encoded):
            if e is None:
                out.append(engine_row(r, nll_sum=0.0, n_tokens=0))
        pad = self.gen.tokenizer.pad_token_id or 0
        with self.use(rows[0]["model"]), torch.no_grad():
            for i in range(0, len(todo), self.loss_batch_size):
                chunk = todo[i : i + self.loss_batch_size]
                width = max(len(e[0]) for _, e in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for j, (_, (x, y)) in enumerate(chunk):
                    ids[j, : len(x)] = torch.tensor(x)
                    labels[j, : len(y)] = torch.tensor(y)
                    mask[j, : len(x)] = 1
                dev = self.gen.device
                logits = self.gen.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float()
                shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:].to(dev)
                nll = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                                        shift_labels.reshape(-1), ignore_index=IGNORE,
                                                        reduction="none").view(shift_labels.shape)
                valid = shift_labels != IGNORE
                for j, (r, _) in enumerate(chunk):
                    out.append(engine_row(r, nll_sum=float(nll[j][valid[j]].sum()), n_tokens=int(valid[j].sum())))
        order = {r["row_id"]: k for k, r in enumerate(rows)}
        return sorted(out, key=lambda o: order[o["row_id"]])

    def loss_group(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            return self._losses(rows)
        except Exception as exc:  # noqa: BLE001 - a failed batch is counted, never a failed job
            return [engine_row(r, engine_error=f"loss: {type(exc).__name__}: {exc}"[:2000]) for r in rows]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for r in rows:
            key = (r["kind"] == "loss", r["model"]) + (() if r["kind"] == "loss" else tuple(row_sampling(r).items()))
            groups.setdefault(key, []).append(r)
        done: dict[str, dict[str, Any]] = {}
        for key, group in groups.items():
            for o in (self.loss_group(group) if key[0] else self.generate_group(group)):
                done[o["row_id"]] = o
        return pa.Table.from_pylist([done[r["row_id"]] for r in rows], schema=OUTPUT_SCHEMA)


# ============================================================================ vLLM

def lora_names(specs: Sequence[ModelSpec]) -> tuple[dict[str, str], str | None]:
    """(model name → the vLLM row's ``model`` value, ``dynamic_lora_loading_path``) for one base.

    Local adapters are named by their absolute path (vLLM loads them from there). Adapters on
    object storage must share a parent: it becomes ``dynamic_lora_loading_path`` and each row
    names its adapter relative to it.
    """
    out: dict[str, str] = {}
    adapters = {s.name: s.adapter_path for s in specs if s.adapter_path}
    remote = {n: p for n, p in adapters.items() if fs.is_uri(p)}
    if remote and len(remote) != len(adapters):
        raise ValueError("engine vllm: adapters of one base must all be local paths or all on object storage, got "
                         + ", ".join(f"{n}={p}" for n, p in adapters.items()))
    root = None
    if remote:
        root = os.path.commonpath([p.split("://", 1)[1] for p in remote.values()])
        scheme = next(iter(remote.values())).split("://", 1)[0]
        for n, p in remote.items():
            out[n] = p.split("://", 1)[1][len(root):].strip("/")
        root = f"{scheme}://{root}"
    else:
        out = {n: local_dir(p) for n, p in adapters.items()}
    for s in specs:
        if s.kind == "base":
            out[s.name] = s.base_model
    return out, root


def adapter_rank(path: str, default: int = 16) -> int:
    try:
        cfg = json.loads(fs.read_text(fs.join(path, "adapter_config.json")))
        return int(cfg.get("r") or default)
    except (OSError, ValueError, FileNotFoundError):
        return default


def vllm_request(row: dict[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """Prompt row → the vLLM processor's input: chat, the row's own sampling, and its LoRA (``model``)."""
    return {"messages": json.loads(row["messages_json"]), "sampling_params": row_sampling(row),
            "model": names[row["model"]], "eval_model": row["model"]}


def vllm_reply(row: dict[str, Any]) -> dict[str, Any]:
    """vLLM processor output → output row (the evaluated model's name restored from ``eval_model``)."""
    prompt = row.get("prompt") if isinstance(row.get("prompt"), str) else row.get("messages_json") or ""
    return engine_row({**row, "model": row.get("eval_model", row.get("model"))},
                      completion=row.get("generated_text"), prompt_tokens=row.get("num_input_tokens"),
                      completion_tokens=row.get("num_generated_tokens"), prompt_sha=prompt_hash(prompt))


def build_vllm_processor(cfg: Any, specs: Sequence[ModelSpec]) -> tuple[Any, dict[str, Any]]:
    """One vLLM engine for a base and all its adapters (LoRA requests). Building runs nothing."""
    from ray.data.llm import build_processor

    from pipelines.synthesis import vllm_processor_config

    base = next(s for s in specs if s.kind == "base")
    names, root = lora_names(specs)
    adapters = [s for s in specs if s.adapter_path]
    engine_kwargs = dict(cfg.engine_kwargs)
    if adapters:
        engine_kwargs.setdefault("enable_lora", True)
        engine_kwargs.setdefault("max_loras", len(adapters))
        engine_kwargs.setdefault("max_lora_rank", max(adapter_rank(s.adapter_path) for s in adapters))
    vcfg = cfg.model_copy(update={"model_source": base.base_model, "engine_kwargs": engine_kwargs})
    config = vllm_processor_config(vcfg)
    if root:
        config.dynamic_lora_loading_path = root
    processor = build_processor(config, preprocess=functools.partial(vllm_request, names=names),
                                postprocess=vllm_reply)
    return processor, {"model_source": base.base_model, "loras": {n: v for n, v in names.items() if n != base.name},
                       "dynamic_lora_loading_path": root, "engine_kwargs": engine_kwargs}


# ============================================================================ OpenAI-compatible

def openai_request(row: dict[str, Any], served: Mapping[str, str]) -> dict[str, Any]:
    return {"payload": {"model": served[row["model"]], "messages": json.loads(row["messages_json"]),
                        **row_sampling(row)}}


class OpenAIClientWorker:
    """Actor: the generation rows of every model, sent to one OpenAI-compatible endpoint under each
    model's served name (``served``: model entry name -> name sent) with the row's sampling.

    ``synthesis.engines.OpenAIChat`` does the HTTP: whatever the server sends for one row (a
    non-JSON body, an error storm, a reply that never ends or is too large) is that row's
    ``engine_error``, never a failed batch (``ray.data.llm``'s HTTP processor raised out of the
    batch and aborted the job), and the key is redacted from what is read back.
    """

    def __init__(self, cfg: Mapping[str, Any], served: Mapping[str, str], api_key: str = "") -> None:
        from synthesis.engines import OpenAIChat

        self.client = OpenAIChat(cfg, {}, api_key=api_key)
        self.served = dict(served)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        bodies: list[dict[str, Any] | None] = []
        errors: dict[int, str] = {}
        for i, row in enumerate(rows):
            try:
                bodies.append(openai_request(row, self.served)["payload"])
            except Exception as exc:  # noqa: BLE001 - one bad row is one engine error
                bodies.append(None)
                errors[i] = f"{type(exc).__name__}: {exc}"
        replies = self.client.send(bodies)
        out = []
        for i, (row, body, reply) in enumerate(zip(rows, bodies, replies)):
            if body is None:
                out.append(engine_row(row, engine_error=errors[i]))
                continue
            out.append(engine_row(row, completion=reply.get("generated_text"), engine_error=reply.get("engine_error"),
                                  prompt_tokens=reply.get("prompt_tokens"),
                                  completion_tokens=reply.get("completion_tokens"),
                                  prompt_sha=prompt_hash(json.dumps(body["messages"], sort_keys=True))))
        return pa.Table.from_pylist(out, schema=OUTPUT_SCHEMA)
