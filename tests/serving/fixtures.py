"""Shared by tests/serving and tests/jobs/test_{serve,export}.py: the tiny registry, one Serve instance.

The registry (a tiny random Llama and two LoRA adapters trained on different text) is built once
per test session under pytest's base temp directory, whichever module asks first. Serve is
started once per session on a free loopback port; the test application is deployed once.
"""

from __future__ import annotations

import fcntl
import json
import socket
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
KEY_ENV = "CHIPFORGE_TEST_API_KEY"
KEY = "sk-chipforge-test-key"
APP = "chipforge-test"
PHASES = ("timing_analysis", "rtl_design")

_state: dict[str, Any] = {}


def tiny_registry(tmp_path_factory: Any) -> dict[str, Any]:
    """{root, base, adapters, registry}: built once per session (a lock file guards the build)."""
    from serving.tiny import PHASE_TEXTS, build_tiny_registry

    root = Path(tmp_path_factory.getbasetemp()) / "chipforge-serving-registry"
    root.mkdir(parents=True, exist_ok=True)
    done = root / "built.json"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            info = build_tiny_registry(str(root / "r"), {p: PHASE_TEXTS[p] for p in PHASES})
            _with_dataset(info["registry"])
            done.write_text(json.dumps(info))
    return json.loads(done.read_text())


def _with_dataset(registry_path: str) -> None:
    """Point the entries' training config at the bundled sample dataset (the export's LICENSE reads it)."""
    data = json.loads(Path(registry_path).read_text())
    for e in data["specialists"].values():
        e["config"]["dataset_dir"] = str(REPO / "sample" / "dataset")
    Path(registry_path).write_text(json.dumps(data, indent=2))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_port() -> int:
    """The HTTP port of this session's Serve (started on first use)."""
    if "port" not in _state:
        from ray import serve

        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        _state["port"] = port
    return _state["port"]


def app_args(registry: str, **over: Any) -> dict[str, Any]:
    """The test application's config: small queues (so a burst gets 429s), an API key, one CPU replica."""
    args: dict[str, Any] = {
        "registry": registry,
        "api_key_env": KEY_ENV,
        "runtime_env": {"env_vars": {KEY_ENV: KEY}},
        "limits": {"max_request_bytes": 65536, "default_max_tokens": 24, "retry_after_s": 2,
                   "body_timeout_s": 5},
        "hf": {"num_cpus": 1, "max_batch_size": 4, "batch_wait_ms": 40, "max_ongoing_requests": 6,
               "max_queued_requests": 2, "max_waiting": 8, "torch_threads": 1},
        "ingress": {"num_cpus": 0},
    }
    for k, v in over.items():
        args[k] = v
    return args


def deploy_test_app(registry: str) -> str:
    """Deploy the test application once; returns its base URL."""
    if "url" not in _state:
        from ray import serve

        from serving.app import build_app

        port = serve_port()
        t0 = time.perf_counter()
        serve.run(build_app(app_args(registry)), name=APP, route_prefix="/")
        _state["url"] = f"http://127.0.0.1:{port}"
        _state["startup_s"] = time.perf_counter() - t0
    return _state["url"]


def shutdown() -> None:
    if _state.pop("port", None) is not None:
        from ray import serve

        serve.shutdown()
        _state.clear()


def peft_reference(info: dict[str, Any]) -> tuple[Any, Any]:
    """(PeftModel with both adapters, tokenizer), loaded directly with PEFT (cached per session)."""
    if "peft" not in _state:
        from serving.engine import load_peft_model
        from training.tiny import quiet_hf

        with quiet_hf():
            _state["peft"] = load_peft_model(info["base"], dict(info["adapters"]))
    return _state["peft"]


def peft_greedy(info: dict[str, Any], prompt_ids: list[int], adapter: str | None, max_new_tokens: int) -> str:
    """What PEFT's own ``generate`` gives for ``adapter`` (None: the base), as text."""
    import torch

    from serving.engine import stop_tokens

    model, tok = peft_reference(info)
    ids = torch.tensor([prompt_ids])
    kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
              pad_token_id=tok.pad_token_id)
    stops, _ = stop_tokens(tok, model.generation_config)
    with torch.inference_mode():
        if adapter is None:
            with model.disable_adapter():
                out = model.generate(**kw, eos_token_id=stops)
        else:
            model.set_adapter(adapter)
            out = model.generate(**kw, eos_token_id=stops)
    new = [t for t in out[0, ids.shape[1]:].tolist() if t not in stops and t != tok.pad_token_id]
    return tok.decode(new, skip_special_tokens=True)
