"""The Ray Serve application: an OpenAI-compatible ingress and, per base model, a model server.

``build_app(args)`` is the application builder (``import_path: serving.app:build_app`` in a
Serve config; ``args`` are a :class:`serving.config.ServeConfig`). With ``backend: hf`` it
binds:

- ``ModelServer`` (one deployment per base model, ``hf.num_replicas`` replicas): an
  :class:`serving.engine.HFEngine` holding the base once and every specialist's adapter;
  requests stream back as lists of events. Serve's ``max_ongoing_requests`` /
  ``max_queued_requests`` and the engine's own queue bound the load (full → 429).
- ``Ingress`` (FastAPI): authentication, body limits, strict request validation, model
  resolution and routing (``serving.router``), OpenAI response bodies and server-sent events,
  per-specialist metrics (``ray.serve.metrics``: exported with Serve's own on Ray's Prometheus
  endpoint) and ``GET /stats``.

Routes: ``GET /health``, ``GET /v1/models``, ``GET /v1/models/{model}``,
``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /stats``.
With ``backend: vllm`` the builder is ``serving.vllm.build_vllm_app`` (Ray Serve LLM).
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures' annotations
# (``request: Request``) through Serve's class-based ingress, which needs real classes.
import asyncio
import dataclasses
import hmac
import json
import logging
import os
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import TaskCancelledError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from chipforge import fs
from serving import protocol as P
from serving.catalog import Catalog, CatalogError, Target, localize
from serving.config import ServeConfig

logger = logging.getLogger("ray.serve")

SPECIALIST_HEADER = "X-Chipforge-Specialist"
MODEL_HEADER = "X-Chipforge-Model"


def _error_event(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"type": "error", "status": status, "message": message, "param": param, "code": code}


# =========================================================================== model server

class ModelServer:
    """One base model and its adapters in a replica (the ``hf`` backend)."""

    def __init__(self, group: dict[str, Any], catalog: dict[str, Any], args: dict[str, Any]) -> None:
        import torch

        from serving.engine import HFEngine

        cfg = ServeConfig.model_validate(args)
        self.cfg = cfg
        self.catalog = Catalog.from_dict(catalog)
        hf = cfg.hf
        device = hf.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        adapters = {p: localize(self.catalog.specialists[p].adapter_path, hf.cache_dir) for p in group["phases"]}
        base = localize(group["base_model"], hf.cache_dir)
        from training.tiny import quiet_hf

        with quiet_hf():
            self.engine = HFEngine(
                base, adapters, device=device, dtype=hf.dtype, max_batch_size=hf.max_batch_size,
                batch_wait_s=hf.batch_wait_ms / 1000.0, max_waiting=hf.max_waiting, max_model_len=hf.max_model_len,
                torch_threads=hf.torch_threads or max(1, int(hf.num_cpus)), trust_remote_code=hf.trust_remote_code)
        self.group = group

    async def info(self) -> dict[str, Any]:
        e = self.engine
        return {"max_model_len": e.max_model_len, "adapters": list(e.adapters), "stop_tokens": e.stop_token_strings,
                "device": e.device, "stats": dict(e.stats)}

    async def health(self) -> bool:
        return self.engine.healthy()

    def check_health(self) -> None:  # Serve's periodic health check: a dead engine thread restarts the replica
        if not self.engine.healthy():
            raise RuntimeError("engine thread is not running")

    async def score_phases(self, text: str, phases: list[str], adapter: str) -> dict[str, float]:
        """Log-likelihood of the triage specialist answering ``{"phase": p}`` for each candidate."""
        from chipforge.vocab import SYSTEM_PROMPTS
        from serving.router import triage_answer

        e = self.engine
        messages = [{"role": "system", "content": SYSTEM_PROMPTS["triage"]}, {"role": "user", "content": text}]
        prompt = e.chat_prompt_ids(messages)
        prompt = prompt[-(e.max_model_len - 32):]
        text_prompt = e.tokenizer.decode(prompt, skip_special_tokens=False)
        conts = []
        for p in phases:
            full = e.tokenizer(text_prompt + triage_answer(p), add_special_tokens=False)["input_ids"]
            conts.append(full[len(prompt):] if full[:len(prompt)] == prompt else
                         e.tokenizer(triage_answer(p), add_special_tokens=False)["input_ids"])
        scores = await asyncio.get_running_loop().run_in_executor(None, e.score, prompt, conts, adapter)
        return dict(zip(phases, scores))

    def _prompts(self, req: dict[str, Any]) -> list[tuple[list[int], str]]:
        """(token ids, text for echo) of each prompt; raises P.APIError for what cannot be templated."""
        e = self.engine
        if req["kind"] == "chat":
            messages = [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
                        for m in req["messages"]]
            if req.get("system_prompt") and not any(m["role"] == "system" for m in messages):
                messages.insert(0, {"role": "system", "content": req["system_prompt"]})
            try:
                return [(e.chat_prompt_ids(messages), "")]
            except Exception as exc:  # noqa: BLE001 - a template that rejects these messages
                raise P.APIError(400, f"the model's chat template cannot render these messages: {exc}",
                                 param="messages") from None
        out = []
        vocab = len(e.tokenizer)
        for i, p in enumerate(req["prompts"]):
            if isinstance(p, str):
                out.append((e.prompt_ids(p), p))
            else:
                bad = [t for t in p if not 0 <= t < vocab]
                if bad:
                    raise P.APIError(400, f"Invalid value for 'prompt': token id {bad[0]} is outside the "
                                          f"vocabulary (0..{vocab - 1})", param="prompt")
                out.append((list(p), e.tokenizer.decode(p)))
            if not out[-1][0]:
                raise P.APIError(400, "Invalid value for 'prompt': a prompt is empty (no tokens)", param="prompt")
        return out

    def _check_logit_bias(self, req: dict[str, Any]) -> None:
        vocab = len(self.engine.tokenizer)
        bad = [t for t, _ in req["sampling"].get("logit_bias") or () if not 0 <= int(t) < vocab]
        if bad:
            raise P.APIError(400, f"Invalid value for 'logit_bias': token id {bad[0]} is outside the vocabulary "
                                  f"(0..{vocab - 1})", param="logit_bias")

    def _max_tokens(self, req: dict[str, Any], n_prompt: int) -> int:
        ctx = self.engine.max_model_len
        where = "messages" if req["kind"] == "chat" else "prompt"
        if n_prompt >= ctx:
            are = "the messages are" if where == "messages" else "the prompt is"
            raise P.APIError(400, f"This model's maximum context length is {ctx} tokens, but {are} "
                                  f"{n_prompt} tokens. Shorten the {where}.", param=where,
                             code="context_length_exceeded")
        wanted = req.get("max_tokens")
        if wanted is not None and n_prompt + wanted > ctx:
            raise P.APIError(400, f"This model's maximum context length is {ctx} tokens. However, you requested "
                                  f"{n_prompt + wanted} tokens ({n_prompt} in the {where}, {wanted} in the "
                                  f"completion). Reduce the {where} or max_tokens.", param="max_tokens",
                             code="context_length_exceeded")
        if wanted is None:
            wanted = self.cfg.limits.default_max_tokens or ctx - n_prompt
        return min(wanted, ctx - n_prompt)

    async def generate(self, req: dict[str, Any]) -> AsyncIterator[list[dict[str, Any]]]:
        """Stream of event lists: ``{"type": "start"}`` (or ``error``) first, then text/done events."""
        from serving.engine import EngineBusy, SamplingParams

        try:
            self._check_logit_bias(req)
            prompts = self._prompts(req)
            limits = [self._max_tokens(req, len(ids)) for ids, _ in prompts]
            slots, held = len(prompts) * int(req.get("n", 1)), getattr(self.engine, "max_waiting", None)
            if held is not None and slots > held:  # it would be a 429 forever: no retry can succeed
                raise P.APIError(400, f"Invalid value for 'prompt': {slots} choices (prompts x n) are more than this "
                                      f"server queues at once ({held}, engine.hf.max_waiting)", param="prompt")
        except P.APIError as exc:
            yield [_error_event(exc.status, exc.message, exc.param, exc.code)]
            return
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def sink(ev: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(q.put_nowait, ev)

        n = int(req.get("n", 1))
        base = dict(req["sampling"])
        rows = []
        try:
            for pi, ((ids, text), max_tokens) in enumerate(zip(prompts, limits)):
                for j in range(n):
                    sp = dict(base, max_tokens=max_tokens)
                    if sp.get("seed") is not None:
                        sp["seed"] = sp["seed"] + j
                    sp["stop"] = tuple(sp.get("stop") or ())
                    sp["logit_bias"] = tuple(tuple(x) for x in sp.get("logit_bias") or ())
                    rows.append(self.engine.submit(ids, req.get("adapter"), SamplingParams(**sp), sink,
                                                   index=pi * n + j))
        except EngineBusy as exc:
            for r in rows:
                r.cancel()
            yield [_error_event(429, f"The server is at capacity ({exc}); retry later.", code="server_busy")]
            return
        start = {"type": "start", "prompt_tokens": [len(ids) for ids, _ in prompts for _ in range(n)]}
        if req.get("echo"):
            first = [dict(start)] + [{"index": pi * n + j, "text": text} for pi, (_, text) in enumerate(prompts)
                                     for j in range(n) if text]
        else:
            first = [start]
        yield first
        remaining = len(rows)
        stream = bool(req.get("stream", True))
        held: list[dict[str, Any]] = []
        try:
            while remaining:
                events = [await q.get()]
                while not q.empty():
                    events.append(q.get_nowait())
                remaining -= sum(1 for ev in events if ev.get("done") or "error" in ev)
                if stream:
                    yield events
                else:  # one message at the end: fewer Ray round trips for a non-streaming request
                    held += events
            if held:
                yield held
        finally:
            for r in rows:
                r.cancel()


# =========================================================================== ingress

app = FastAPI(title="chipforge", docs_url=None, redoc_url=None)


@app.exception_handler(P.APIError)
async def _api_error(_request: Request, exc: P.APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


@app.exception_handler(HTTPException)
async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    """FastAPI's own errors (unknown route, wrong method) in OpenAI's error body, not ``{"detail": ...}``."""
    e = P.APIError(exc.status_code, str(exc.detail))
    return JSONResponse(e.body(), status_code=exc.status_code, headers=dict(exc.headers or {}))


class Stats:
    """Per-specialist counts and latencies of this ingress replica (``GET /stats``), and the same as
    Prometheus metrics through ``ray.serve.metrics``."""

    def __init__(self, recent: int) -> None:
        from ray.serve import metrics

        self.t0 = time.time()
        self.models: dict[str, dict[str, Any]] = defaultdict(
            lambda: {"requests": 0, "errors": 0, "completion_tokens": 0, "latency_s": deque(maxlen=4096),
                     "ttft_s": deque(maxlen=4096)})
        self.status: Counter[int] = Counter()
        self.routes: Counter[str] = Counter()
        self.recent: deque[dict[str, Any]] = deque(maxlen=max(recent, 1))
        buckets = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
        self.m_requests = metrics.Counter("chipforge_requests", "requests by model, specialist and HTTP status",
                                          tag_keys=("model", "specialist", "status"))
        self.m_latency = metrics.Histogram("chipforge_request_latency_s", "request latency by specialist",
                                           boundaries=buckets, tag_keys=("specialist",))
        self.m_ttft = metrics.Histogram("chipforge_time_to_first_token_s", "time to first token by specialist",
                                        boundaries=buckets, tag_keys=("specialist",))
        self.m_tokens = metrics.Counter("chipforge_completion_tokens", "generated tokens by specialist",
                                        tag_keys=("specialist",))
        self.m_routes = metrics.Counter("chipforge_routing_decisions", "router decisions by specialist",
                                        tag_keys=("specialist", "fallback"))

    def request(self, model: str, specialist: str, status: int, latency: float | None = None,
                ttft: float | None = None, tokens: int = 0) -> None:
        s = self.models[specialist]
        s["requests"] += 1
        self.status[status] += 1
        self.m_requests.inc(1, tags={"model": model, "specialist": specialist, "status": str(status)})
        if status >= 400:
            s["errors"] += 1
            return
        s["completion_tokens"] += tokens
        if tokens:
            self.m_tokens.inc(tokens, tags={"specialist": specialist})
        if latency is not None:
            s["latency_s"].append(latency)
            self.m_latency.observe(latency, tags={"specialist": specialist})
        if ttft is not None:
            s["ttft_s"].append(ttft)
            self.m_ttft.observe(ttft, tags={"specialist": specialist})

    def error(self, status: int) -> None:
        self.status[status] += 1
        self.m_requests.inc(1, tags={"model": "", "specialist": "", "status": str(status)})

    def route(self, decision: dict[str, Any]) -> None:
        self.routes[decision["specialist"]] += 1
        self.recent.append({"t": round(time.time(), 3), **decision})
        self.m_routes.inc(1, tags={"specialist": decision["specialist"], "fallback": str(decision["fallback"])})

    def snapshot(self) -> dict[str, Any]:
        def pct(xs: deque[float], q: float) -> float | None:
            if not xs:
                return None
            s = sorted(xs)
            return round(s[min(len(s) - 1, int(q * len(s)))], 4)

        return {
            "uptime_s": round(time.time() - self.t0, 1),
            "status": {str(k): v for k, v in sorted(self.status.items())},
            "specialists": {k: {"requests": v["requests"], "errors": v["errors"],
                                "completion_tokens": v["completion_tokens"],
                                "latency_p50_s": pct(v["latency_s"], 0.5), "latency_p99_s": pct(v["latency_s"], 0.99),
                                "ttft_p50_s": pct(v["ttft_s"], 0.5), "ttft_p99_s": pct(v["ttft_s"], 0.99)}
                            for k, v in sorted(self.models.items())},
            "routing": dict(self.routes),
            "recent_routing": list(self.recent)[-20:],
        }


def _is_backpressure(exc: BaseException) -> bool:
    from ray.serve.exceptions import BackPressureError

    return isinstance(exc, BackPressureError) or "BackPressureError" in type(exc).__name__


def _reason(r: str) -> str:
    return "stop" if r in ("stop", "cancelled") else r


def _apply(ev: dict[str, Any], texts: list[str], reasons: list[str | None], completion: int,
           failure: str | None) -> tuple[list[str], int, str | None]:
    if "error" in ev:
        return texts, completion, ev["error"]
    if "text" in ev:
        texts[ev["index"]] += ev["text"]
    if ev.get("done"):
        reasons[ev["index"]] = _reason(ev["finish_reason"])
        completion += ev["completion_tokens"]
    return texts, completion, failure


# Everything the ingress uses is defined above it: ``serve.ingress`` copies the methods with the
# module globals of that moment.
@serve.ingress(app)
class Ingress:
    def __init__(self, servers: list[Any], catalog: dict[str, Any], args: dict[str, Any]) -> None:
        from serving.router import Router

        self.cfg = cfg = ServeConfig.model_validate(args)
        self.catalog = Catalog.from_dict(catalog)
        self.servers = servers
        self.stream_handles = [h.options(stream=True) for h in servers]
        self.created = P.now()
        self.api_key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        self.stats = Stats(cfg.router.recent_decisions)
        triage = self.catalog.specialists.get("triage")
        self._triage_handle = servers[triage.group] if triage is not None else None
        r = cfg.router
        self.router = Router(self.catalog, mode=r.mode, threshold=r.threshold, fallback=r.fallback,
                             classifier=r.classifier, scorer=self._triage_scores if triage is not None else None)
        self._info: dict[int, dict[str, Any]] = {}
        logger.info("chipforge ingress: models %s, router %s (threshold %.2f), api key %s",
                    self.catalog.model_names(), self.router.mode, r.threshold, "on" if self.api_key else "off")
        for name, why in self.catalog.skipped.items():
            logger.warning("chipforge ingress: not serving %s: %s", name, why)

    # ------------------------------------------------------------------ helpers

    async def _triage_scores(self, text: str, phases: list[str]) -> dict[str, float]:
        """The triage specialist's log-likelihood of answering each phase (on its model server)."""
        return await self._triage_handle.score_phases.remote(text, phases, "triage")

    def _auth(self, request: Request) -> None:
        if not self.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise P.APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key",
                             headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise P.APIError(401, "Incorrect API key provided.", code="invalid_api_key",
                             headers={"WWW-Authenticate": "Bearer"})

    async def _body(self, request: Request) -> dict[str, Any]:
        limit = self.cfg.limits.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise P.APIError(413, f"Request body is {int(declared)} bytes; the limit is {limit} bytes.",
                             code="request_too_large")
        chunks, size = [], 0
        deadline = self.cfg.limits.body_timeout_s
        try:  # a deadline for the whole body: a client trickling it (or never sending it) must not hold a slot
            async with asyncio.timeout(deadline):
                async for part in request.stream():
                    size += len(part)
                    if size > limit:
                        raise P.APIError(413, f"Request body exceeds the limit of {limit} bytes.",
                                         code="request_too_large")
                    chunks.append(part)
        except TimeoutError:
            raise P.APIError(408, f"The request body did not arrive within {deadline:g} s.",
                             code="request_timeout", headers={"Connection": "close"}) from None
        except (ClientDisconnect, TaskCancelledError):  # the client went away mid-body (Serve's proxy: cancelled)
            raise P.APIError(499, "The client closed the connection while sending the body.",
                             code="client_closed_request") from None
        return P.parse_body(b"".join(chunks))

    def _not_found(self, model: str) -> P.APIError:
        served = ", ".join(self.catalog.model_names())
        if model in self.catalog.skipped:
            return P.APIError(404, f"The model '{model}' is not served: it failed this server's startup checks "
                                   f"(GET /stats says why). Served models: {served}.", param="model",
                              code="model_not_found")
        return P.APIError(404, f"The model '{model}' does not exist. Served models: {served}.", param="model",
                          code="model_not_found")

    async def _max_model_len(self, group: int) -> int | None:
        if group not in self._info:
            try:
                self._info[group] = await self.servers[group].info.remote()
            except Exception:  # noqa: BLE001 - the card goes without it
                return None
        return self._info[group].get("max_model_len")

    async def _card(self, name: str) -> dict[str, Any]:
        t = self.catalog.resolve(name)
        assert t is not None
        card: dict[str, Any] = {"id": name, "object": "model", "created": self.created, "owned_by": "chipforge"}
        if t.kind == "router":
            card.update(root=None, parent=None, chipforge={"kind": "router", "routed_by": self.router.mode,
                                                            "phases": self.router.candidates,
                                                            "threshold": self.cfg.router.threshold,
                                                            "fallback": self.router.fallback_target.name})
            return card
        assert t.group is not None
        group = self.catalog.groups[t.group]
        card.update(root=group.base_model, max_model_len=await self._max_model_len(t.group))
        if t.kind == "base":
            card.update(parent=None, chipforge={"kind": "base", "phases": list(group.phases)})
        else:
            assert t.phase is not None
            s = self.catalog.specialists[t.phase]
            card.update(parent=group.name, chipforge={"kind": "specialist", "phase": s.phase,
                                                      "adapter_path": s.adapter_path, "metrics": s.metrics,
                                                      "registered_at": s.registered_at})
        return card

    # ------------------------------------------------------------------ routes

    @app.get("/health")
    async def health(self) -> Response:
        checks = {}
        for g, h in zip(self.catalog.groups, self.servers):
            try:
                checks[g.name] = bool(await asyncio.wait_for(h.health.remote(), timeout=10))
            except Exception:  # noqa: BLE001
                checks[g.name] = False
        ok = all(checks.values())
        body: dict[str, Any] = {"status": "ok" if ok else "unhealthy", "model_servers": checks}
        if self.catalog.skipped:  # names only: /health needs no key (the reasons are in /stats and the log)
            body.update(status="degraded" if ok else "unhealthy", skipped_specialists=sorted(self.catalog.skipped))
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models(self, request: Request) -> Response:
        self._auth(request)
        return JSONResponse({"object": "list", "data": [await self._card(n) for n in self.catalog.model_names()]})

    @app.get("/v1/models/{model:path}")
    async def model(self, model: str, request: Request) -> Response:
        self._auth(request)
        if self.catalog.resolve(model) is None:
            raise self._not_found(model)
        return JSONResponse(await self._card(model))

    @app.get("/stats")
    async def stats_route(self, request: Request) -> Response:
        self._auth(request)
        return JSONResponse(await self.snapshot())

    async def snapshot(self) -> dict[str, Any]:
        """The same as ``GET /stats``, through a deployment handle (the serve job's report)."""
        snap = self.stats.snapshot()
        servers = {}
        for g, h in zip(self.catalog.groups, self.servers):
            try:  # one replica's engine counters (batches, rows, largest batch, tokens)
                servers[g.name] = (await asyncio.wait_for(h.info.remote(), timeout=5))["stats"]
            except Exception:  # noqa: BLE001
                servers[g.name] = None
        return {**snap, "model_servers": servers, "skipped_specialists": dict(self.catalog.skipped)}

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        return await self._handle("chat", request)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._handle("completion", request)

    # ------------------------------------------------------------------ the request path

    async def _handle(self, kind: str, request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            self._auth(request)
            data = await self._body(request)
            limits = self.cfg.limits
            req = P.parse_request(kind, data, max_n=limits.max_n, max_stop=limits.max_stop,  # type: ignore[arg-type]
                                  max_logit_bias=limits.max_logit_bias, max_choices=limits.max_choices)
            target = self.catalog.resolve(req.model)
            if target is None:
                raise self._not_found(req.model)
            decision = None
            if target.kind == "router":
                text = P.last_user_text(req.messages) if isinstance(req, P.ChatRequest) else \
                    "\n".join(p for p in P.prompts_of(req) if isinstance(p, str))
                d = await self.router.route(text)
                decision = d.as_dict()
                target = d.target
                self.stats.route(decision)
                if self.cfg.router.log_decisions:
                    logger.info("chipforge route: %s", json.dumps({"request_id": request.headers.get("x-request-id"),
                                                                    "text": text[:200], **decision}))
            return await self._generate(kind, req, target, decision, t0)
        except P.APIError as exc:
            self.stats.error(exc.status)
            raise
        except Exception as exc:  # noqa: BLE001 - a bad request must never take the replica down
            if _is_backpressure(exc):
                self.stats.error(429)
                raise self._busy() from None
            logger.exception("chipforge: request failed")
            self.stats.error(500)
            raise P.APIError(500, f"Internal server error: {type(exc).__name__}", code="internal_error") from None

    def _busy(self, message: str | None = None) -> P.APIError:
        retry = str(self.cfg.limits.retry_after_s)
        return P.APIError(429, message or "The server is at capacity; retry later.", code="server_busy",
                          headers={"Retry-After": retry})

    async def _generate(self, kind: str, req: Any, target: Target, decision: dict[str, Any] | None,
                        t0: float) -> Response:
        assert target.group is not None
        specialist = target.phase or "base"
        system_prompt = None
        if kind == "chat" and self.cfg.inject_system_prompt and target.kind == "specialist":
            system_prompt = self.catalog.system_prompt(target.phase)
        payload: dict[str, Any] = {"kind": kind, "adapter": target.adapter, "n": req.n, "stream": req.stream,
                                   "max_tokens": P.max_tokens_of(req), "sampling": P.sampling_of(req),
                                   "system_prompt": system_prompt}
        if kind == "chat":
            payload["messages"] = [{"role": m.role, "content": m.text()} for m in req.messages]
        else:
            payload["prompts"] = P.prompts_of(req)
            payload["echo"] = req.echo
        gen = self.stream_handles[target.group].generate.remote(payload)
        try:
            first = await asyncio.wait_for(gen.__anext__(), timeout=self.cfg.limits.request_timeout_s)
        except StopAsyncIteration:
            raise P.APIError(500, "the model server ended the stream early", code="internal_error") from None
        except asyncio.TimeoutError:
            gen.cancel()
            raise P.APIError(503, "the model server did not start this request in time; retry later",
                             headers={"Retry-After": str(self.cfg.limits.retry_after_s)}) from None
        head = first[0]
        if head.get("type") == "error":
            if head["status"] == 429:
                raise self._busy(head["message"])
            raise P.APIError(head["status"], head["message"], param=head.get("param"), code=head.get("code"))
        prompt_tokens = sum(head["prompt_tokens"][:: max(1, req.n)])
        n_choices = len(head["prompt_tokens"])
        info = {"specialist": specialist, "model": target.name}
        if decision is not None:
            info = decision
        extra = {"chipforge": info}
        headers = {SPECIALIST_HEADER: specialist, MODEL_HEADER: target.name}
        rid, created = P.new_id(kind), P.now()
        rest = first[1:]
        if not req.stream:
            texts = [""] * n_choices
            reasons: list[str | None] = [None] * n_choices
            completion = 0
            failure = None
            for ev in rest:
                texts, completion, failure = _apply(ev, texts, reasons, completion, failure)
            async for events in gen:
                for ev in events:
                    texts, completion, failure = _apply(ev, texts, reasons, completion, failure)
            if failure:
                self.stats.request(target.name, specialist, 500)
                raise P.APIError(500, failure, code="generation_failed")
            latency = time.perf_counter() - t0
            self.stats.request(target.name, specialist, 200, latency, None, completion)
            body = P.response_body(kind, rid, created, target.name, texts, reasons,
                                   P.usage(prompt_tokens, completion), extra)
            return JSONResponse(body, headers=headers)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        stream = self._sse(kind, gen, rest, rid, created, target, specialist, extra, n_choices, prompt_tokens,
                           include_usage, t0)
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})

    async def _sse(self, kind: str, gen: Any, rest: list[dict[str, Any]], rid: str, created: int, target: Target,
                   specialist: str, extra: dict[str, Any], n_choices: int, prompt_tokens: int, include_usage: bool,
                   t0: float) -> AsyncIterator[bytes]:
        completion, ttft, status = 0, None, 200
        try:
            if kind == "chat":
                for i in range(n_choices):
                    yield P.sse(P.chunk(kind, rid, created, target.name, i, role=True, extra=extra))

            async def events() -> AsyncIterator[dict[str, Any]]:
                for ev in rest:
                    yield ev
                async for batch in gen:
                    for ev in batch:
                        yield ev

            async for ev in events():
                if "error" in ev:
                    status = 500
                    yield P.sse({"error": {"message": ev["error"], "type": "server_error", "param": None,
                                           "code": "generation_failed"}})
                    continue
                if "text" in ev:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    yield P.sse(P.chunk(kind, rid, created, target.name, ev["index"], text=ev["text"], extra=extra))
                if ev.get("done"):
                    completion += ev["completion_tokens"]
                    yield P.sse(P.chunk(kind, rid, created, target.name, ev["index"],
                                        finish_reason=_reason(ev["finish_reason"]), extra=extra))
            if include_usage:
                yield P.sse(P.usage_chunk(kind, rid, created, target.name, P.usage(prompt_tokens, completion), extra))
            yield P.sse("[DONE]")
        except asyncio.CancelledError:
            status = 499  # the client went away
            gen.cancel()
            raise
        finally:
            self.stats.request(target.name, specialist, status, time.perf_counter() - t0, ttft, completion)


# =========================================================================== builder

def validate_args(args: dict[str, Any]) -> ServeConfig:
    """``args`` of the Serve config as a ServeConfig; errors name the field."""
    from pydantic import ValidationError

    try:
        return ServeConfig.model_validate(args or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'args'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid chipforge serve args: {problems}") from None


def build_app(args: dict[str, Any]) -> Any:
    """The application builder (``serve run serving.app:build_app registry=...`` or a Serve config)."""
    cfg = validate_args(args)
    if not fs.is_uri(cfg.registry) and not os.path.isabs(cfg.registry) and not os.path.exists(cfg.registry):
        # Serve builds the application in a worker whose directory may not be the checkout's:
        # relative paths in configs are relative to the repository root (as for every job).
        from chipforge.config import REPO_ROOT

        if (REPO_ROOT / cfg.registry).exists():
            cfg = cfg.model_copy(update={"registry": str(REPO_ROOT / cfg.registry)})
    from serving.adapters import load_checked

    try:  # every specialist checked before a replica starts: a bad one is this error, not a crashing replica
        catalog = load_checked(cfg, warn=logger.warning)
    except CatalogError as exc:
        raise ValueError(str(exc)) from None
    if cfg.backend == "vllm":
        from serving.vllm import build_vllm_app

        return build_vllm_app(cfg, catalog)
    return bind_hf(cfg, catalog)


def bind_hf(cfg: ServeConfig, catalog: Catalog) -> Any:
    """The ``hf`` application of ``catalog``, checked first (``serving.adapters.check_catalog``: a CatalogError
    naming each bad specialist, or with ``on_bad_specialist: skip`` the others)."""
    from serving.adapters import check_catalog

    catalog = check_catalog(cfg, catalog, warn=logger.warning)
    catalog = dataclasses.replace(catalog, skipped={**cfg.skipped_specialists, **catalog.skipped})
    args = cfg.app_args()
    cat = catalog.to_dict()
    env = {"runtime_env": cfg.runtime_env} if cfg.runtime_env else {}
    hf = cfg.hf
    servers = []
    for g in catalog.groups:
        opts = {"num_cpus": hf.num_cpus, **({"num_gpus": hf.num_gpus} if hf.num_gpus else {}), **env}
        dep = serve.deployment(ModelServer).options(
            name=f"ModelServer{'' if g.index == 0 else g.index + 1}", num_replicas=hf.num_replicas,
            ray_actor_options=opts, max_ongoing_requests=hf.max_ongoing_requests,
            max_queued_requests=hf.max_queued_requests, health_check_period_s=10, health_check_timeout_s=60)
        servers.append(dep.bind({"index": g.index, "base_model": g.base_model, "phases": list(g.phases)}, cat, args))
    ing = cfg.ingress
    return serve.deployment(Ingress).options(
        name="Ingress", num_replicas=ing.num_replicas, ray_actor_options={"num_cpus": ing.num_cpus, **env},
        max_ongoing_requests=ing.max_ongoing_requests).bind(servers, cat, args)
