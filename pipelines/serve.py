"""Serve every registered specialist behind one OpenAI-compatible endpoint (Ray Serve).

    python -m jobs.serve                                    # out/quickstart/registry.json, 127.0.0.1:8000
    python -m jobs.serve --registry out/quickstart/registry.json --host 0.0.0.0 --port 8000
    python -m jobs.serve --config jobs/configs/serve_vllm.yaml --registry s3://B/registry.json  # GPU cluster
    serve run serving/serve_config.yaml                     # the same application from a Serve config

Models: ``chipforge`` (the triage router picks the specialist for the last user message),
``chipforge-<phase>`` (one per registered specialist: a LoRA adapter on the base) and
``chipforge-base``. Routes: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``
(streaming and not), ``/health``, ``/stats``. With ``$CHIPFORGE_API_KEY`` set, requests need
``Authorization: Bearer <key>``. The job runs until Ctrl-C / SIGTERM (``detach: true`` deploys
and exits, for ``ray job submit`` to a cluster) and writes OUTPUT/serve_config.yaml (this
application as a Serve config, for ``serve deploy``) and OUTPUT/report.json.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import yaml

from chipforge import fs
from chipforge import job as jobs
from chipforge.config import ConfigError
from chipforge.job import JobError, JobSpec, Run
from serving.catalog import Catalog, CatalogError, load_catalog
from serving.config import ServeConfig

__all__ = ["SPEC", "ServeConfig", "run", "summary"]


def catalog_of(cfg: ServeConfig) -> Catalog:
    """The registry's specialists; a local adapter or base model that is not there is a usage error."""
    try:
        catalog = load_catalog(cfg.registry, prefix=cfg.names.prefix, base_name=cfg.names.base, phases=cfg.phases)
    except CatalogError as exc:
        raise ConfigError(f"registry: {exc}") from exc
    missing = [f"{s.name}: adapter_path {s.adapter_path}" for s in catalog.specialists.values()
               if not fs.is_uri(s.adapter_path) and not fs.exists(s.adapter_path)]
    missing += [f"{g.name}: base_model {g.base_model}" for g in catalog.groups
                if os.path.isabs(g.base_model) and not os.path.exists(g.base_model)]
    if missing:
        raise ConfigError(f"registry {cfg.registry}: these do not exist on this machine:\n  " + "\n  ".join(missing))
    return catalog


def endpoint(cfg: ServeConfig) -> str:
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
    return f"http://{host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"


def describe(cfg: ServeConfig, catalog: Catalog) -> list[str]:
    """One line per served model."""
    width = max(len(n) for n in catalog.model_names())
    lines = [f"  {catalog.router_name:<{width}}  triage router over {', '.join(catalog.routable_phases) or '-'}"]
    for s in catalog.specialists.values():
        lines.append(f"  {s.name:<{width}}  LoRA adapter {s.adapter_path} on {catalog.groups[s.group].name}")
    for g in catalog.groups:
        lines.append(f"  {g.name:<{width}}  base model {g.base_model}")
    for name, why in cfg.skipped_specialists.items():  # on_bad_specialist: skip
        lines.append(f"  {name:<{width}}  NOT SERVED (failed the startup checks): {why}")
    return lines


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _metrics_url() -> str | None:
    import ray

    try:
        node = next(n for n in ray.nodes() if n.get("Alive"))
        return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    except (StopIteration, KeyError):
        return None


def run(cfg: ServeConfig, job: Run) -> dict[str, Any]:
    """Deploy the application, print how to reach it, serve until stopped; the report is what was served."""
    from ray import serve

    from serving.app import bind_hf

    catalog = catalog_of(cfg)
    if cfg.backend == "vllm":
        from serving.vllm import vllm_import_problem

        if problem := vllm_import_problem():
            raise ConfigError(problem)  # exit 2 before Ray starts, like the evaluate and synthesize vllm checks
    if len(catalog.groups) > 1:
        job.progress(f"warning: the specialists use {len(catalog.groups)} different base models; each is served "
                     "by its own replicas (more memory). Train them on one base to share it.")
    fs.write_text(fs.join(cfg.output_dir, "serve_config.yaml"),
                  f"# serve deploy {fs.join(cfg.output_dir, 'serve_config.yaml')}   (written by python -m jobs.serve)\n"
                  + yaml.safe_dump(cfg.serve_config(), sort_keys=False))
    started_ray = False
    if not _port_free(cfg.host, cfg.port):
        import ray

        if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
            raise JobError(f"port {cfg.port} on {cfg.host} is already in use (another server?): stop it, or "
                           "choose another with --port")
    with job.step("ray start"):
        import ray

        if not ray.is_initialized():
            started_ray = not os.environ.get("RAY_ADDRESS")
            kw = {"_metrics_export_port": cfg.metrics_port} if cfg.metrics_port and started_ray else {}
            jobs.init_ray(job.verbose, **kw)
    if cfg.backend == "vllm":
        from serving.vllm import build_vllm_app

        with job.step("stage adapters + build (vLLM)"):
            app = build_vllm_app(cfg, catalog)
    else:
        app = bind_hf(cfg, catalog)
    with job.step("deploy"):
        try:
            serve.start(http_options={"host": cfg.host, "port": cfg.port})
            serve.run(app, name=cfg.app_name, route_prefix=cfg.route_prefix)
        except RuntimeError as exc:
            raise JobError(f"deploying the application failed: {exc}") from exc
    url = endpoint(cfg)
    key_env = cfg.api_key_env if cfg.api_key_env and os.environ.get(cfg.api_key_env) else None
    auth = f", API key required (${key_env})" if key_env else ", no API key"
    job.progress(f"serving {len(catalog.model_names())} models at {url}/v1 (backend {cfg.backend}{auth})")
    for line in describe(cfg, catalog):
        print(line, flush=True)
    metrics = _metrics_url()
    print(f"  health {url}/health   stats {url}/stats   Prometheus {metrics or '(Ray metrics port)'}", flush=True)
    header = f" -H \"Authorization: Bearer ${key_env}\"" if key_env else ""
    print(f"  try: curl {url}/v1/chat/completions -H 'Content-Type: application/json'{header} -d "
          "'{\"model\": \"chipforge\", \"messages\": [{\"role\": \"user\", \"content\": "
          "\"How do I fix a hold violation?\"}]}'", flush=True)
    report: dict[str, Any] = {"url": url, "models": catalog.model_names(), "backend": cfg.backend,
                              "registry": cfg.registry, "api_key": bool(key_env), "prometheus": metrics,
                              "skipped_specialists": dict(cfg.skipped_specialists)}
    if cfg.detach:
        where = "until this process's local Ray exits (ray start --head first to keep it)" if started_ray else \
            "on the cluster (serve status; serve delete or serve shutdown to stop)"
        job.progress(f"detached: application {cfg.app_name!r} keeps running {where}")
        return report
    print("  Ctrl-C to stop", flush=True)
    report["stats"] = _wait(cfg)
    with job.step("shutdown"):
        if started_ray:
            ray.shutdown()  # our own local Ray: everything goes with it
        else:
            serve.delete(cfg.app_name)  # a shared cluster: only this application
    return report


def _wait(cfg: ServeConfig) -> dict[str, Any] | None:
    """Block until Ctrl-C, SIGTERM or ``run_for_s``; returns the ingress's last stats."""
    from ray import serve

    stop = threading.Event()
    old = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if threading.current_thread() is threading.main_thread() \
        else None
    t_end = time.monotonic() + cfg.run_for_s if cfg.run_for_s else None
    try:
        while not stop.is_set() and (t_end is None or time.monotonic() < t_end):
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    try:
        return serve.get_app_handle(cfg.app_name).snapshot.remote().result(timeout_s=10)
    except Exception:  # noqa: BLE001 - stats are a nicety at shutdown
        return None


def summary(r: dict[str, Any]) -> str:
    lines = [f"served {len(r['models'])} models at {r['url']}/v1 ({r['backend']}): {', '.join(r['models'])}"]
    lines += [f"  not served (failed the startup checks): {name}: {why}"
              for name, why in (r.get("skipped_specialists") or {}).items()]
    stats = r.get("stats") or {}
    for name, s in (stats.get("specialists") or {}).items():
        lines.append(f"  {name}: {s['requests']} requests ({s['errors']} errors), {s['completion_tokens']} tokens, "
                     f"p50 {s['latency_p50_s']} s, p99 {s['latency_p99_s']} s")
    if stats.get("routing"):
        lines.append(f"  routing: {stats['routing']}")
    return "\n".join(lines)


SPEC = JobSpec(
    name="serve", config=ServeConfig, default_config="jobs/configs/serve_tiny_cpu.yaml", summary=summary,
    flags={"--registry": "registry", "--host": "host", "--port": "port", "--backend": "backend",
           "--output": "output_dir"},
    inputs={"registry": "a specialist registry written by jobs.finetune / jobs.tune (registry=PATH); "
                      "python -m jobs.quickstart writes out/quickstart/registry.json"},
    uses_ray=False, marker=False, description=__doc__,
)
