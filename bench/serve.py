"""Serving load test on 127.0.0.1: the chipforge server vs a plain in-process PEFT generate loop.

    python bench/serve.py                                  # tiny registry built here, 4 clients for 20 s
    python bench/serve.py --registry out/quickstart/registry.json --clients 8 --duration 60

Starts a local Ray and the ``hf`` application (the same ``serving.app.build_app`` as
``python -m jobs.serve``), then N client threads send requests for T seconds: models
round-robin over every specialist and the base (mixed adapters), every other request streamed
(TTFT measured on those), the same few prompts, ``temperature: 0``, ``max_tokens`` fixed with
``ignore_eos`` so every request generates the same number of tokens. Reports requests/s,
generated tokens/s, latency p50/p99, TTFT p50/p99 and failures (the run fails if any).

The baseline is what one would write without a server: one process, the same base model and
adapters loaded with PEFT, ``set_adapter`` + ``generate`` (greedy, same prompts, same token
counts) one request after another (--baseline-max requests in all),
with the same torch thread count as a server replica, run before and after the server (the
machine's load drifts; the mean is used). ratio = server tokens/s / baseline tokens/s.
Results: bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = REPO / "bench" / "results" / "serve.json"
PROMPTS = ["The worst negative slack is on", "module counter(input clk, input rst", "How do I close timing on",
           "Run yosys and report the cell count of"]


def write_result(path: Path, key: str, value: dict[str, Any]) -> None:
    """One entry per configuration (key) in the results file, replaced when rerun."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * len(s)))], 4)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_request(session: Any, url: str, model: str, prompt: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    try:
        r = session.post(f"{url}/v1/completions", json=body, stream=stream, timeout=300)
        if r.status_code != 200:
            return {"ok": False, "status": r.status_code, "latency": time.perf_counter() - t0, "error": r.text[:200]}
        if not stream:
            tokens = r.json()["usage"]["completion_tokens"]
        else:
            for line in r.iter_lines():
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("choices") and chunk["choices"][0].get("text") and ttft is None:
                    ttft = time.perf_counter() - t0
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        return {"ok": True, "status": 200, "latency": time.perf_counter() - t0, "ttft": ttft, "tokens": tokens,
                "stream": stream, "model": model}
    except Exception as exc:  # noqa: BLE001 - counted as a failure
        return {"ok": False, "status": None, "latency": time.perf_counter() - t0, "error": repr(exc)[:200]}


def load_test(url: str, models: list[str], clients: int, duration: float, max_tokens: int) -> dict[str, Any]:
    import requests

    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    t_end = time.perf_counter() + duration

    def client(k: int) -> None:
        session = requests.Session()
        i = k
        while time.perf_counter() < t_end:
            res = one_request(session, url, models[i % len(models)], PROMPTS[i % len(PROMPTS)], max_tokens,
                              stream=i % 2 == 1)
            with lock:
                results.append(res)
            i += clients

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]
    lat = [r["latency"] for r in ok]
    ttft = [r["ttft"] for r in ok if r.get("ttft") is not None]
    tokens = sum(r["tokens"] for r in ok)
    return {"requests": len(results), "ok": len(ok), "failed": len(results) - len(ok),
            "failures": [r for r in results if not r["ok"]][:5], "wall_s": round(wall, 2),
            "requests_per_s": round(len(ok) / wall, 3), "tokens_per_s": round(tokens / wall, 1),
            "completion_tokens": tokens, "latency_p50_s": pct(lat, 0.5), "latency_p99_s": pct(lat, 0.99),
            "ttft_p50_s": pct(ttft, 0.5), "ttft_p99_s": pct(ttft, 0.99),
            "streamed": sum(1 for r in ok if r.get("stream")),
            "by_model": {m: sum(1 for r in ok if r.get("model") == m) for m in models}}


def baseline(info: dict[str, Any], models: dict[str, str | None], n: int, max_tokens: int, threads: int) -> dict:
    """Sequential PEFT generate over the same mixed requests (greedy, exactly max_tokens tokens each)."""
    import torch

    from serving.engine import load_peft_model
    from training.tiny import quiet_hf

    torch.set_num_threads(threads)
    with quiet_hf():
        model, tok = load_peft_model(info["base"], info["adapters"])
    names = list(models)
    lat, tokens = [], 0
    t0 = time.perf_counter()
    for i in range(n):
        adapter = models[names[i % len(names)]]
        ids = torch.tensor([tok(PROMPTS[i % len(PROMPTS)])["input_ids"]])
        kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                  min_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        t = time.perf_counter()
        with torch.inference_mode():
            if adapter is None:
                with model.disable_adapter():
                    out = model.generate(**kw)
            else:
                model.set_adapter(adapter)
                out = model.generate(**kw)
        lat.append(time.perf_counter() - t)
        tokens += out.shape[1] - ids.shape[1]
    wall = time.perf_counter() - t0
    return {"requests": n, "wall_s": round(wall, 2), "requests_per_s": round(n / wall, 3),
            "tokens_per_s": round(tokens / wall, 1), "latency_p50_s": pct(lat, 0.5), "latency_p99_s": pct(lat, 0.99),
            "torch_threads": threads}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", help="a specialist registry (default: a tiny one built in a temp dir)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--cpus-per-replica", type=float, default=1.0)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--baseline-max", type=int, default=64, help="baseline requests in all (half before the server, half after)")
    ap.add_argument("--hidden", type=int, default=64, help="hidden size of the tiny model the bench builds")
    ap.add_argument("--layers", type=int, default=2, help="layers of the tiny model the bench builds")
    ap.add_argument("--output", default=str(RESULTS))
    args = ap.parse_args(argv)

    import ray
    from ray import serve

    from serving.app import build_app
    from serving.catalog import load_catalog

    tmp = tempfile.mkdtemp(prefix="chipforge-bench-serve-")
    if args.registry:
        registry = args.registry
    else:
        from serving.tiny import build_tiny_registry

        print("building a tiny registry (base + 2 adapters) ...", flush=True)
        registry = build_tiny_registry(tmp, hidden_size=args.hidden, num_layers=args.layers, steps=4)["registry"]
    catalog = load_catalog(registry)
    models = {s.name: s.phase for s in catalog.specialists.values()}
    models[catalog.groups[0].name] = None
    group0 = [s for s in catalog.specialists.values() if s.group == 0]
    info = {"base": catalog.groups[0].base_model, "adapters": {s.phase: s.adapter_path for s in group0}}
    models = {m: p for m, p in models.items() if p is None or p in info["adapters"]}
    threads = max(1, int(args.cpus_per_replica))
    n_base = max(len(models), args.baseline_max // 2)
    print(f"baseline (before): plain PEFT generate, {n_base} sequential requests ...", flush=True)
    before = baseline(info, models, n_base, args.max_tokens, threads)

    port = free_port()
    ray.init(num_cpus=max(2, int(args.replicas * args.cpus_per_replica) + 1), include_dashboard=False,
             log_to_driver=False, runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
    t0 = time.perf_counter()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app_args = {"registry": registry, "api_key_env": None,
                "hf": {"num_replicas": args.replicas, "num_cpus": args.cpus_per_replica, "torch_threads": threads,
                       "max_batch_size": args.max_batch_size, "max_ongoing_requests": 4 * args.max_batch_size,
                       "max_queued_requests": -1},
                "ingress": {"num_cpus": 0}}
    serve.run(build_app(app_args), name="chipforge-bench", route_prefix="/")
    startup = time.perf_counter() - t0
    url = f"http://127.0.0.1:{port}"
    print(f"server up in {startup:.1f} s at {url}; warm-up ...", flush=True)
    load_test(url, list(models), 1, 0.1, 4)  # warm-up: one request per model is enough
    print(f"load: {args.clients} clients x {args.duration:.0f} s, models {list(models)}", flush=True)
    server = load_test(url, list(models), args.clients, args.duration, args.max_tokens)
    engine = None
    try:
        engine = serve.get_app_handle("chipforge-bench").snapshot.remote().result(timeout_s=30)["model_servers"]
    except Exception:  # noqa: BLE001
        pass
    serve.shutdown()
    ray.shutdown()
    print(f"baseline (after): plain PEFT generate, {n_base} sequential requests ...", flush=True)
    after = baseline(info, models, n_base, args.max_tokens, threads)
    # The machine's load can drift while the server runs: the baseline runs before and after it.
    base = {k: round((before[k] + after[k]) / 2, 3) for k in ("requests_per_s", "tokens_per_s", "latency_p50_s")}
    base.update(requests=before["requests"] + after["requests"], torch_threads=threads, before=before, after=after)
    ratio = round(server["tokens_per_s"] / base["tokens_per_s"], 3) if base["tokens_per_s"] else None
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                              "load_avg_1m": round(os.getloadavg()[0], 2)},
        "config": {"registry": registry if args.registry else
                   f"tiny (built by the bench: hidden {args.hidden}, {args.layers} layers)", "clients": args.clients,
                   "duration_s": args.duration, "max_tokens": args.max_tokens, "replicas": args.replicas,
                   "cpus_per_replica": args.cpus_per_replica, "max_batch_size": args.max_batch_size,
                   "models": list(models)},
        "startup_s": round(startup, 1), "server": server, "engine": engine, "baseline_peft_loop": base,
        "ratio_tokens_per_s_server_to_baseline": ratio,
    }
    out = Path(args.output)
    key = (f"registry {registry}" if args.registry else f"tiny h{args.hidden} l{args.layers}") + \
        f", {args.clients} clients, {args.max_tokens} tokens"
    write_result(out, key, result)
    s = server
    print(f"server:   {s['ok']}/{s['requests']} ok ({s['failed']} failed), {s['requests_per_s']} req/s, "
          f"{s['tokens_per_s']} tokens/s, latency p50 {s['latency_p50_s']} s p99 {s['latency_p99_s']} s, "
          f"TTFT p50 {s['ttft_p50_s']} s p99 {s['ttft_p99_s']} s", flush=True)
    print(f"baseline: {base['requests_per_s']} req/s, {base['tokens_per_s']} tokens/s, p50 {base['latency_p50_s']} s; "
          f"ratio server/baseline tokens/s = {ratio}  → {out} [{key}]", flush=True)
    return 0 if s["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
