"""The ``hf`` backend's engine: one base model, every specialist a PEFT LoRA adapter, batched decoding.

One :class:`HFEngine` per Serve replica. The base model is loaded once; each adapter is loaded
once with ``PeftModel.load_adapter`` and chosen *per row* with PEFT's mixed-adapter batches
(``adapter_names=[...]``, ``"__base__"`` for the base model), so requests for different
specialists share one batch and nothing is switched globally.

All model calls run on one engine thread (PEFT's per-forward adapter hooks are not
thread-safe). Requests wait in a bounded queue; the thread takes up to ``max_batch_size`` of
them (waiting ``batch_wait_s`` for more after the first), prefills them together (left padding,
position ids from the attention mask) and decodes the batch step by step with a KV cache.
Rows that finish (stop token, stop string, ``max_tokens``, cancelled) leave the batch at once,
and requests that arrive meanwhile join it between two steps (continuous batching: their
prefill is merged into the running cache, left-padded, when every layer is a plain dynamic
KV cache; otherwise they wait for the next batch).
Each row samples with its own settings (greedy at temperature 0, else temperature + top-p with
a per-row ``torch.Generator`` seeded from ``seed``, presence/frequency penalties, logit bias),
so a row's output does not depend on what else is in its batch. Text is streamed to a per-row
``sink`` callback as it becomes final (held back while it could still be the start of a stop
string or an incomplete UTF-8 character).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("chipforge.serving")

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


# Temperatures below this decode greedily (as vLLM does): logits / 1e-300 overflow and softmax gives NaNs.
GREEDY_BELOW = 1e-5


class EngineBusy(RuntimeError):
    """The waiting queue is full (the server answers 429)."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    ignore_eos: bool = False


Sink = Callable[[dict[str, Any]], None]


@dataclass(eq=False)
class _Row:
    prompt_ids: list[int]
    adapter: str
    params: SamplingParams
    sink: Sink
    index: int = 0
    out_ids: list[int] = field(default_factory=list)
    text_ids: list[int] = field(default_factory=list)  # out_ids without the final stop token
    sent: int = 0
    done: bool = False
    cancelled: bool = False
    generator: Any = None
    t_submit: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(eq=False)
class _ScoreJob:
    prompt_ids: list[int]
    continuations: list[list[int]]
    adapter: str
    result: Any = None
    error: BaseException | None = None
    event: threading.Event = field(default_factory=threading.Event)


def stop_tokens(tokenizer: Any, generation_config: Any = None) -> tuple[list[int], list[str]]:
    """Token ids (and their strings) that end an assistant turn: eos ids and the special token(s)
    the chat template writes right after an assistant message (``<|end|>``, ``<|im_end|>``, ...)."""
    ids: list[int] = []
    eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    for e in ([eos] if isinstance(eos, int) else list(eos or [])) + [tokenizer.eos_token_id]:
        if e is not None and e not in ids:
            ids.append(int(e))
    if getattr(tokenizer, "chat_template", None):
        marker = "ZZQXJ"
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False)
        except Exception:  # noqa: BLE001 - a template that cannot render this: eos only
            text = ""
        tail = text[text.rfind(marker) + len(marker):] if marker in text else ""
        specials = sorted(set(tokenizer.all_special_tokens), key=len, reverse=True)
        while tail:
            tok = next((s for s in specials if tail.startswith(s)), None)
            if tok is None:
                if tail[0].isspace():
                    tail = tail[1:]
                    continue
                break
            tid = tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid not in ids and tid != tokenizer.pad_token_id:
                ids.append(tid)
            tail = tail[len(tok):]
    return ids, [tokenizer.convert_ids_to_tokens(i) for i in ids]


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _mergeable(cache: Any) -> bool:
    """Whether rows can join a running batch: every layer a plain (non-sliding) dynamic KV cache."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return False
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers)


def _pad_left(t: Any, width: int) -> Any:
    """Zero-pad the sequence dimension (-2 of a KV tensor (B, H, T, D); -1 of a mask (B, T)) on the left."""
    import torch.nn.functional as F

    if t.dim() == 2:
        return F.pad(t, (width - t.shape[-1], 0)) if t.shape[-1] < width else t
    return F.pad(t, (0, 0, width - t.shape[-2], 0)) if t.shape[-2] < width else t


def _merge_caches(cache: Any, other: Any, width: int) -> None:
    """Append ``other``'s rows to ``cache`` (both left-padded to ``width`` positions; the masks hide the padding)."""
    import torch

    for a, b in zip(cache.layers, other.layers):
        a.keys = torch.cat([_pad_left(a.keys, width), _pad_left(b.keys, width)], dim=0)
        a.values = torch.cat([_pad_left(a.values, width), _pad_left(b.values, width)], dim=0)


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


# Raised by PEFT itself: ``PeftModel.__init__`` (peft <= 0.21) reads the base model's
# ``is_gradient_checkpointing``, an alias that transformers 5 deprecates in favour of
# ``is_activation_checkpointing``. Nothing in this project uses the alias; the warning only tells
# PEFT's maintainers to move, so it is dropped, and only it, where a PeftModel is built.
_PEFT_DEPRECATION = r"`is_gradient_checkpointing` is deprecated"


@contextlib.contextmanager
def peft_quiet() -> Iterator[None]:
    """Without transformers' FutureWarning about ``is_gradient_checkpointing`` that PEFT triggers
    when it wraps a model (``PeftModel.from_pretrained``); every other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PEFT_DEPRECATION, category=FutureWarning)
        yield


def load_peft_model(base_path: str, adapters: dict[str, str], *, device: str = "cpu", dtype: str = "auto",
                    trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer): the base once, each adapter loaded once under its name (eval mode)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=resolve_dtype(dtype, device),
                                                 trust_remote_code=trust_remote_code)
    if adapters:
        from peft import PeftModel

        names = list(adapters)
        with peft_quiet():
            model = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0], is_trainable=False)
        for name in names[1:]:
            model.load_adapter(adapters[name], adapter_name=name, is_trainable=False)
    model.to(device)
    model.eval()
    return model, tokenizer


class HFEngine:
    """Batched generation over a base model and its LoRA adapters (see the module docstring)."""

    def __init__(
        self,
        base_path: str,
        adapters: dict[str, str],
        *,
        device: str = "cpu",
        dtype: str = "auto",
        max_batch_size: int = 8,
        batch_wait_s: float = 0.005,
        max_waiting: int = 64,
        max_model_len: int | None = None,
        torch_threads: int | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = device
        self.model, self.tokenizer = load_peft_model(base_path, adapters, device=device, dtype=dtype,
                                                     trust_remote_code=trust_remote_code)
        self.adapters = tuple(adapters)
        self.is_peft = bool(adapters)
        import inspect

        base = self.model.get_base_model() if self.is_peft else self.model
        # transformers 5 renamed ``past_key_values`` to ``cache`` (the old name still works, with a warning)
        self._cache_kw = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        cfg = self.model.config
        model_len = getattr(cfg, "max_position_embeddings", None) or 2048
        self.max_model_len = min(max_model_len or model_len, model_len)
        self.stop_token_ids, self.stop_token_strings = stop_tokens(self.tokenizer, self.model.generation_config)
        self.pad_id = self.tokenizer.pad_token_id
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.max_waiting = max_waiting
        self._queue: queue.Queue[Any] = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._stopped = False
        self.stats = {"batches": 0, "rows": 0, "max_batch": 0, "tokens": 0}
        self._active: list[_Row] = []
        self._thread = threading.Thread(target=self._loop, name="chipforge-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ prompts

    def chat_prompt_ids(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """The chat template with the generation prompt, tokenised without extra special tokens."""
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])

    # ------------------------------------------------------------------ requests

    def healthy(self) -> bool:
        return self._thread.is_alive() and not self._stopped

    def submit(self, prompt_ids: Sequence[int], adapter: str | None, params: SamplingParams, sink: Sink,
               index: int = 0) -> _Row:
        """Queue one sequence; ``sink`` gets ``{"index", "text"}`` deltas, then ``{"index", "done": True,
        "finish_reason", "completion_tokens"}`` (or ``{"index", "error"}``). Raises EngineBusy when full."""
        import torch

        adapter = adapter or BASE_ADAPTER
        if adapter != BASE_ADAPTER and adapter not in self.adapters:
            raise KeyError(f"unknown adapter {adapter!r}")
        if not prompt_ids:
            raise ValueError("empty prompt: at least one token is needed")
        row = _Row(list(prompt_ids), adapter, params, sink, index=index)
        if params.temperature >= GREEDY_BELOW:
            row.generator = torch.Generator()
            if params.seed is not None:
                row.generator.manual_seed(int(params.seed) & 0xFFFF_FFFF_FFFF_FFFF)
            else:
                row.generator.seed()
        with self._lock:
            if self._waiting >= self.max_waiting:
                raise EngineBusy(f"{self._waiting} requests waiting (max_waiting {self.max_waiting})")
            self._waiting += 1
        self._queue.put(row)
        return row

    def score(self, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]], adapter: str | None,
              timeout: float = 60.0) -> list[float]:
        """Sum of log-probabilities of each continuation after the prompt (blocking, on the engine thread)."""
        job = _ScoreJob(list(prompt_ids), [list(c) for c in continuations], adapter or BASE_ADAPTER)
        self._queue.put(job)
        if not job.event.wait(timeout):
            raise TimeoutError("scoring timed out")
        if job.error is not None:
            raise job.error
        return job.result

    def shutdown(self) -> None:
        self._stopped = True
        self._queue.put(None)

    # ------------------------------------------------------------------ engine thread

    def _loop(self) -> None:
        while not self._stopped:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, _ScoreJob):
                self._run_score(item)
                continue
            batch = [item]
            deadline = time.perf_counter() + self.batch_wait_s
            while len(batch) < self.max_batch_size:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._stopped = True
                    break
                if isinstance(nxt, _ScoreJob):
                    self._run_score(nxt)
                else:
                    batch.append(nxt)
            with self._lock:
                self._waiting -= len(batch)
            live = [r for r in batch if not r.cancelled]
            for r in batch:
                if r.cancelled:
                    self._finish(r, "cancelled")
            if not live:
                continue
            try:
                self._run_batch(live)
            except Exception as exc:  # noqa: BLE001 - one bad batch must not stop the engine
                logger.exception("generation batch failed")
                for r in {id(r): r for r in [*live, *self._active]}.values():
                    if not r.done:
                        r.done = True
                        r.sink({"index": r.index, "error": f"generation failed: {type(exc).__name__}: {exc}"})

    def _forward(self, rows: list[_Row], **kwargs: Any) -> Any:
        import torch

        if self.is_peft:
            kwargs["adapter_names"] = [r.adapter for r in rows]
        with torch.inference_mode():
            return self.model(use_cache=True, **kwargs)

    def _prefill(self, rows: list[_Row]) -> tuple[Any, Any, Any, Any]:
        """(cache, next-token logits, attention mask, last positions) of ``rows``' prompts (left padded)."""
        import torch

        lens = [len(r.prompt_ids) for r in rows]
        width = max(lens)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - lens[i]:] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, width - lens[i]:] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        dev = self.device
        out = self._forward(rows, input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev))
        self.stats["rows"] += len(rows)
        return _cache_of(out), out.logits[:, -1, :], mask.to(dev), pos[:, -1:].to(dev)

    def _take_waiting(self, n: int) -> list[_Row]:
        """Up to ``n`` queued rows, without waiting (scoring jobs found on the way run now)."""
        out: list[_Row] = []
        while len(out) < n:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._stopped = True
                break
            if isinstance(item, _ScoreJob):
                self._run_score(item)
                continue
            with self._lock:
                self._waiting -= 1
            if item.cancelled:
                self._finish(item, "cancelled")
            else:
                out.append(item)
        return out

    def _run_batch(self, rows: list[_Row]) -> None:
        """Decode ``rows`` to the end. Rows leave as they finish; with a plain dynamic KV cache, queued
        rows join between steps (their prefill is merged into the running cache: continuous batching)."""
        import torch

        dev = self.device
        self._active = rows = list(rows)
        self.stats["batches"] += 1
        cache, logits, mask, pos = self._prefill(rows)
        joinable = _mergeable(cache)
        counts = None
        while True:
            self.stats["max_batch"] = max(self.stats["max_batch"], len(rows))
            if counts is None and any(r.params.presence_penalty or r.params.frequency_penalty for r in rows):
                counts = torch.zeros((len(rows), logits.shape[-1]), dtype=torch.float32)
            tokens = self._sample(logits, rows, counts)
            keep = []
            for i, (r, tok) in enumerate(zip(rows, tokens)):
                if r.done:  # its sampling failed (already reported to its sink): it leaves the batch
                    continue
                if counts is not None:
                    counts[i, tok] += 1
                self._advance(r, tok)
                if not r.done:
                    keep.append(i)
            self.stats["tokens"] += len(rows)
            if not keep:
                return
            if len(keep) < len(rows):
                idx = torch.tensor(keep, dtype=torch.long, device=dev)
                cache.batch_select_indices(idx)
                mask, pos = mask[idx], pos[idx]
                rows = [rows[i] for i in keep]
                tokens = [tokens[i] for i in keep]
                if counts is not None:
                    counts = counts[idx.cpu()]
            self._active = rows
            step = torch.tensor(tokens, dtype=torch.long, device=dev).unsqueeze(-1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
            pos = pos + 1
            out = self._forward(rows, input_ids=step, attention_mask=mask, position_ids=pos,
                                **{self._cache_kw: cache})
            cache, logits = _cache_of(out), out.logits[:, -1, :]
            joining = self._take_waiting(self.max_batch_size - len(rows)) if joinable and not self._stopped else []
            if joining:
                self._active = rows + joining
                c2, l2, m2, p2 = self._prefill(joining)
                width = max(mask.shape[-1], m2.shape[-1])
                _merge_caches(cache, c2, width)
                mask = torch.cat([_pad_left(mask, width), _pad_left(m2, width)], dim=0)
                pos = torch.cat([pos, p2], dim=0)
                logits = torch.cat([logits, l2], dim=0)
                if counts is not None:
                    counts = torch.cat([counts, torch.zeros((len(joining), counts.shape[-1]))], dim=0)
                rows = rows + joining
                self._active = rows

    def _sample(self, logits: Any, rows: list[_Row], counts: Any) -> list[int]:
        import torch

        if all(r.params.temperature < GREEDY_BELOW and not r.params.logit_bias and not r.params.ignore_eos
               and not (counts is not None and (r.params.presence_penalty or r.params.frequency_penalty))
               for r in rows):
            return [int(t) for t in torch.argmax(logits, dim=-1).tolist()]  # all greedy: no copy of the logits
        logits = logits.float().cpu()
        out = []
        for i, r in enumerate(rows):
            try:
                out.append(self._sample_row(logits[i], r, None if counts is None else counts[i]))
            except Exception as exc:  # noqa: BLE001 - this row's settings fail; its batch goes on without it
                logger.warning("sampling failed for one row: %s", exc)
                r.done = True
                r.sink({"index": r.index, "error": f"generation failed: {type(exc).__name__}: {exc}"})
                out.append(self.pad_id)
        return out

    def _sample_row(self, row: Any, r: _Row, counts: Any) -> int:
        """One row's next token (``row``: its logits; ``counts``: its token counts, for the penalties)."""
        import torch

        p = r.params
        if p.logit_bias:
            row = row.clone()
            for tok, bias in p.logit_bias:
                if 0 <= tok < row.shape[-1]:
                    row[tok] += bias
        if counts is not None and (p.presence_penalty or p.frequency_penalty):
            row = row - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).float()
        if p.ignore_eos and self.stop_token_ids:
            row = row.clone()
            row[self.stop_token_ids] = float("-inf")
        if p.temperature < GREEDY_BELOW:
            return int(torch.argmax(row))
        probs = torch.softmax(row / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            cum = torch.cumsum(sorted_p, dim=-1)
            drop = cum - sorted_p > p.top_p  # keep the smallest prefix reaching top_p (at least one)
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        return int(torch.multinomial(probs, 1, generator=r.generator))

    def _advance(self, r: _Row, tok: int) -> None:
        """Append ``tok`` to the row, detect its end, send what became final."""
        if r.cancelled:
            self._finish(r, "cancelled")
            return
        r.out_ids.append(tok)
        p = r.params
        reason = None
        if tok in self.stop_token_ids and not p.ignore_eos:
            reason = "stop"
        else:
            r.text_ids.append(tok)
        text = self.tokenizer.decode(r.text_ids, skip_special_tokens=True)
        if reason is None and p.stop:
            hits = [k for k in (text.find(s) for s in p.stop) if k >= 0]
            if hits:
                text, reason = text[:min(hits)], "stop"
        if reason is None and (len(r.out_ids) >= p.max_tokens
                               or len(r.prompt_ids) + len(r.out_ids) >= self.max_model_len):
            reason = "length"
        end = len(text)
        if reason is None:
            hold = max((len(s) for s in p.stop), default=1) - 1
            end = max(r.sent, len(text) - hold)
            while end > r.sent and text[end - 1] == "\ufffd":  # an incomplete UTF-8 character
                end -= 1
        if end > r.sent:
            r.sink({"index": r.index, "text": text[r.sent:end]})
            r.sent = end
        if reason is not None:
            self._finish(r, reason)

    def _finish(self, r: _Row, reason: str) -> None:
        if r.done:
            return
        r.done = True
        r.sink({"index": r.index, "done": True, "finish_reason": reason, "completion_tokens": len(r.out_ids),
                "prompt_tokens": len(r.prompt_ids)})

    def _run_score(self, job: _ScoreJob) -> None:
        import torch

        try:
            seqs = [job.prompt_ids + c for c in job.continuations]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(seqs):
                ids[i, :len(s)] = torch.tensor(s)
                mask[i, :len(s)] = 1
            rows = [_Row([], job.adapter, SamplingParams(1), lambda e: None) for _ in seqs]
            out = self._forward(rows, input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
            logp = torch.log_softmax(out.logits.float().cpu(), dim=-1)
            n = len(job.prompt_ids)
            result = []
            for i, c in enumerate(job.continuations):
                positions = torch.arange(n - 1, n - 1 + len(c))
                result.append(float(logp[i, positions, torch.tensor(c)].sum()))
            job.result = result
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            job.error = exc
        finally:
            job.event.set()
