"""The ``vllm`` backend: Ray Serve LLM (``ray.serve.llm``) with multi-LoRA, for GPU clusters.

One ``LLMConfig`` per base model: ``engine_kwargs`` with ``enable_lora``, ``max_loras`` and
``max_lora_rank`` from the config, and a ``lora_config`` whose ``dynamic_lora_loading_path`` is
``<vllm.lora_root>/<base name>``; each specialist's adapter is staged (copied) to
``<that path>/<specialist name>/`` by :func:`stage_adapters` (Ray Serve LLM loads adapters only
from s3://, gs:// or Azure, and names them ``<base id>:<adapter dir>``). The application is
``ray.serve.llm.build_openai_app`` with a chipforge ingress class (``ingress_cls_config``) that
serves the chipforge model names, routes ``chipforge`` and checks the API key.

Nothing here imports vLLM at module level: :func:`llm_configs` and :func:`serve_args` build
plain dicts (validated by ``LLMConfig`` on the cluster, and in the tests through Ray's
internal config class, which imports without vLLM). Only :func:`build_vllm_app` imports
``ray.serve.llm`` (which needs vLLM).
"""

from __future__ import annotations

import json
import os
from typing import Any

from chipforge import fs
from serving.catalog import Catalog, Group
from serving.config import ServeConfig


def lora_dir(cfg: ServeConfig, group: Group) -> str:
    if not cfg.vllm.lora_root:
        raise ValueError("backend vllm needs vllm.lora_root (an s3:// or gs:// directory for the adapters)")
    return fs.join(cfg.vllm.lora_root, group.name)


def vllm_model_id(cfg: ServeConfig, catalog: Catalog, phase: str | None, group: int) -> str:
    """The id Ray Serve LLM knows a model by: the base's ``model_id``, or ``<base>:<adapter dir>``."""
    g = catalog.groups[group]
    return g.name if phase is None else f"{g.name}:{catalog.specialists[phase].name}"


def llm_configs(cfg: ServeConfig, catalog: Catalog) -> list[dict[str, Any]]:
    """One ``LLMConfig`` (as a dict) per base model."""
    v = cfg.vllm
    out = []
    for g in catalog.groups:
        engine = {"enable_lora": True, "max_loras": v.max_loras, "max_lora_rank": v.max_lora_rank,
                  "tensor_parallel_size": v.tensor_parallel_size, "gpu_memory_utilization": v.gpu_memory_utilization,
                  **({"max_model_len": v.max_model_len} if v.max_model_len else {}), **v.engine_kwargs}
        source: Any = {"bucket_uri": g.base_model} if fs.is_uri(g.base_model) else g.base_model
        d: dict[str, Any] = {
            "model_loading_config": {"model_id": g.name, "model_source": source},
            "engine_kwargs": engine,
            "lora_config": {"dynamic_lora_loading_path": lora_dir(cfg, g), "max_num_adapters_per_replica": v.max_loras},
            "deployment_config": {"autoscaling_config": {"min_replicas": v.min_replicas, "max_replicas": v.max_replicas},
                                  "max_queued_requests": v.max_queued_requests},
        }
        if v.accelerator_type:
            d["accelerator_type"] = v.accelerator_type
        env = {**cfg.runtime_env, **v.runtime_env}
        if env:
            d["runtime_env"] = env
        out.append(d)
    return out


def serve_args(cfg: ServeConfig, catalog: Catalog) -> dict[str, Any]:
    """``LLMServingArgs`` for ``build_openai_app``, as plain data."""
    return {
        "llm_configs": llm_configs(cfg, catalog),
        "ingress_cls_config": {"ingress_cls": "serving.vllm:ChipforgeIngress",
                               "ingress_extra_kwargs": {"chipforge": {"catalog": catalog.to_dict(),
                                                                      "args": cfg.app_args()}}},
        "ingress_deployment_config": {"num_replicas": cfg.ingress.num_replicas,
                                      "ray_actor_options": {"num_cpus": cfg.ingress.num_cpus},
                                      "max_ongoing_requests": cfg.ingress.max_ongoing_requests},
    }


def adapter_rank(path: str) -> int | None:
    """The largest LoRA rank of the adapter at ``path`` as its config states it (``r`` and every ``rank_pattern``
    value: vLLM compares the largest with ``max_lora_rank``); None when the config cannot be read or has none."""
    try:
        cfg = fs.read_json(fs.join(path, "adapter_config.json"))
    except (OSError, ValueError):  # missing, unreadable, not JSON
        return None
    if not isinstance(cfg, dict):
        return None
    ranks = [cfg.get("r"), *((cfg.get("rank_pattern") or {}).values() if isinstance(cfg.get("rank_pattern"), dict)
                             else [])]
    ranks = [r for r in ranks if isinstance(r, int) and not isinstance(r, bool) and r > 0]
    return max(ranks) if ranks else None


def stage_adapters(cfg: ServeConfig, catalog: Catalog) -> dict[str, str]:
    """Copy each specialist's adapter to ``<lora dir>/<name>/`` (skipped when already there). An adapter whose
    rank cannot be read or is above ``vllm.max_lora_rank`` is a ValueError naming it, before anything is copied
    (vLLM would refuse it only when the first request for it arrives)."""
    import pyarrow.fs as pafs

    for s in catalog.specialists.values():
        rank = adapter_rank(s.adapter_path)
        if rank is None:
            raise ValueError(f"specialist {s.name}: adapter {s.adapter_path} has no readable adapter_config.json "
                             "with a LoRA rank r")
        if rank > cfg.vllm.max_lora_rank:
            raise ValueError(f"specialist {s.name}: LoRA rank {rank} > vllm.max_lora_rank {cfg.vllm.max_lora_rank}")
    staged = {}
    for s in catalog.specialists.values():
        dest = fs.join(lora_dir(cfg, catalog.groups[s.group]), s.name)
        staged[s.name] = dest
        if s.adapter_path.rstrip("/") == dest:
            continue
        src_fs, src = fs.resolve(s.adapter_path)
        dst_fs, dst = fs.resolve(dest)
        for info in src_fs.get_file_info(pafs.FileSelector(src, recursive=False)):
            name = os.path.basename(info.path)
            if info.type != pafs.FileType.File or not name.startswith("adapter_"):
                continue
            there = dst_fs.get_file_info(fs.join(dst, name))
            if there.type == pafs.FileType.File and there.size == info.size:
                continue  # staged before
            pafs.copy_files(info.path, fs.join(dst, name), source_filesystem=src_fs, destination_filesystem=dst_fs)
        staged[s.name] = dest
    return staged


def vllm_import_problem() -> str | None:
    """Why this process cannot build the ``vllm`` backend's application, or None. ``build_vllm_app`` imports
    ``ray.serve.llm``, which needs vLLM in the process that runs the serve job (not only on the GPU nodes);
    checked before Ray starts, so a CPU machine gets this line instead of a traceback after Ray's start-up."""
    import importlib

    try:
        importlib.import_module("ray.serve.llm")  # the import is the check
    except ImportError as exc:
        return (f"backend vllm needs vLLM (and GPU nodes) where the serve job runs: importing ray.serve.llm failed "
                f"({exc}). Install it with pip install -e \".[gpu]\" on a GPU machine or cluster, or serve on CPU "
                "with --backend hf (transformers + PEFT; the default config jobs/configs/serve_tiny_cpu.yaml)")
    return None


def build_vllm_app(cfg: ServeConfig, catalog: Catalog) -> Any:
    """Check and stage the adapters, then ``build_openai_app`` with the chipforge ingress (imports vLLM)."""
    import dataclasses

    from serving.adapters import check_catalog

    catalog = check_catalog(cfg, catalog)  # every adapter against its base and max_lora_rank (CatalogError)
    catalog = dataclasses.replace(catalog, skipped={**cfg.skipped_specialists, **catalog.skipped})
    from ray.serve.llm import build_openai_app  # needs vLLM (GPU nodes)

    stage_adapters(cfg, catalog)
    return build_openai_app(serve_args(cfg, catalog))


def __getattr__(name: str) -> Any:
    """``serving.vllm:ChipforgeIngress`` (the ``ingress_cls`` of the Serve config) is built on first use,
    so this module imports without vLLM."""
    if name == "ChipforgeIngress":
        cls = _ingress_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def _ingress_class() -> type:
    import hmac

    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    from ray.serve.llm.ingress import OpenAiIngress
    from serving import protocol as P
    from serving.app import MODEL_HEADER, SPECIALIST_HEADER, _is_backpressure
    from serving.router import Router, triage_answer

    class ChipforgeIngress(OpenAiIngress):  # type: ignore[misc, valid-type]
        """Ray Serve LLM's OpenAI ingress with chipforge's model names, router and API key."""

        def __init__(self, llm_deployments: Any, model_cards: Any, *, lora_paths: Any = None,
                     chipforge: dict[str, Any] | None = None, **kw: Any) -> None:
            super().__init__(llm_deployments, model_cards, lora_paths=lora_paths, **kw)
            assert chipforge is not None
            self.cfg = ServeConfig.model_validate(chipforge["args"])
            self.catalog = Catalog.from_dict(chipforge["catalog"])
            self.api_key = os.environ.get(self.cfg.api_key_env, "") if self.cfg.api_key_env else ""
            r = self.cfg.router
            scorer = self._triage_scores if "triage" in self.catalog.specialists else None
            self.router = Router(self.catalog, mode=r.mode, threshold=r.threshold, fallback=r.fallback,
                                 classifier=r.classifier, scorer=scorer)

        def _check(self, request: Request | None) -> Response | None:
            if request is None:
                return None
            limit = self.cfg.limits.max_request_bytes
            n = request.headers.get("content-length")
            if n and n.isdigit() and int(n) > limit:
                e = P.APIError(413, f"Request body is {n} bytes; the limit is {limit} bytes.")
                return JSONResponse(e.body(), status_code=413)
            if self.api_key:
                scheme, _, token = request.headers.get("authorization", "").partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                    e = P.APIError(401, "Missing or incorrect API key.", code="invalid_api_key")
                    return JSONResponse(e.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return None

        async def _triage_scores(self, text: str, phases: list[str]) -> dict[str, float]:
            from ray.llm._internal.serve.core.configs.openai_api_models import ChatCompletionRequest

            from chipforge.vocab import SYSTEM_PROMPTS

            t = self.catalog.specialists["triage"]
            req = ChatCompletionRequest(model=vllm_model_id(self.cfg, self.catalog, "triage", t.group),
                                        messages=[{"role": "system", "content": SYSTEM_PROMPTS["triage"]},
                                                  {"role": "user", "content": text}],
                                        max_tokens=24, temperature=0.0, stream=False)
            answer = ""
            async for resp in self._get_response(body=req, call_method="chat"):
                first = resp[0] if isinstance(resp, list) else resp
                choices = getattr(first, "choices", None) or []
                answer = choices[0].message.content if choices else ""
                break
            picked = next((p for p in phases if answer.strip().startswith(triage_answer(p)[:-1])), None)
            return {p: (0.0 if p == picked else -1e9) for p in phases} if picked else {p: 0.0 for p in phases}

        def _not_found(self, model: str) -> Response:
            what = "is not served: it failed this server's startup checks" if model in self.catalog.skipped else \
                "does not exist"
            e = P.APIError(404, f"The model '{model}' {what}. Served models: "
                                f"{', '.join(self.catalog.model_names())}.", param="model", code="model_not_found")
            return JSONResponse(e.body(), status_code=404)

        def _card(self, name: str) -> dict[str, Any]:
            t = self.catalog.resolve(name)
            kind = t.kind if t else "unknown"
            parent = self.catalog.groups[t.group].name if t and t.kind == "specialist" and t.group is not None else None
            return {"id": name, "object": "model", "owned_by": "chipforge", "parent": parent,
                    "chipforge": {"kind": kind, "phase": t.phase if t else None}}

        async def models(self, request: Request) -> Response:  # type: ignore[override]
            if (denied := self._check(request)) is not None:
                return denied
            return JSONResponse({"object": "list", "data": [self._card(n) for n in self.catalog.model_names()]})

        async def model_data(self, model: str, request: Request) -> Response:  # type: ignore[override]
            if (denied := self._check(request)) is not None:
                return denied
            if self.catalog.resolve(model) is None:
                return self._not_found(model)
            return JSONResponse(self._card(model))

        async def _serve(self, body: Any, request: Request, call: Any, text: str, is_chat: bool) -> Response:
            if (denied := self._check(request)) is not None:
                return denied
            target = self.catalog.resolve(body.model)
            if target is None:
                return self._not_found(body.model)
            info: dict[str, Any] = {"specialist": target.phase or "base", "model": target.name}
            if target.kind == "router":
                d = await self.router.route(text)
                target, info = d.target, d.as_dict()
            assert target.group is not None
            body.model = vllm_model_id(self.cfg, self.catalog, target.phase, target.group)
            if is_chat and self.cfg.inject_system_prompt and target.kind == "specialist" and \
                    not any(getattr(m, "get", lambda k: None)("role") == "system" for m in body.messages):
                body.messages = [{"role": "system", "content": self.catalog.system_prompt(target.phase)},
                                 *body.messages]
            try:
                resp = await call(body, request)
            except Exception as exc:
                if _is_backpressure(exc):
                    e = P.APIError(429, "The server is at capacity; retry later.")
                    return JSONResponse(e.body(), status_code=429,
                                        headers={"Retry-After": str(self.cfg.limits.retry_after_s)})
                raise
            resp.headers[SPECIALIST_HEADER] = info["specialist"]
            resp.headers[MODEL_HEADER] = target.name
            if isinstance(resp, JSONResponse) and resp.status_code == 200:
                data = json.loads(resp.body)
                data["model"], data["chipforge"] = target.name, info
                return JSONResponse(data, headers={SPECIALIST_HEADER: info["specialist"], MODEL_HEADER: target.name})
            return resp

        async def chat(self, body: Any, request: Request) -> Response:  # type: ignore[override]
            msgs = [m for m in body.messages if (m.get("role") if isinstance(m, dict) else None) == "user"]
            content = msgs[-1].get("content") if msgs else ""
            text = content if isinstance(content, str) else " ".join(
                p.get("text", "") for p in content or [] if isinstance(p, dict))
            return await self._serve(body, request, super().chat, text, True)

        async def completions(self, body: Any, request: Request) -> Response:  # type: ignore[override]
            text = body.prompt if isinstance(body.prompt, str) else ""
            return await self._serve(body, request, super().completions, text, False)

    # FastAPI reads the routes' signatures: the bodies keep Ray's request classes, and every route
    # gets the raw request (for the API key). Annotations here are strings (postponed), so the
    # signatures are set explicitly.
    import inspect

    def with_request(parent: Any) -> inspect.Signature:
        sig = inspect.signature(parent)
        params = [p for p in sig.parameters.values() if p.name != "request"]
        return sig.replace(parameters=[*params, inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                                  annotation=Request)])

    for name in ("models", "model_data", "chat", "completions"):
        getattr(ChipforgeIngress, name).__signature__ = with_request(getattr(OpenAiIngress, name))
    return ChipforgeIngress
