"""The ``chipforge`` model routed by a registered triage specialist, on a live server (openai client).

A second application on the session's Serve: a tiny registry whose triage adapter was trained to
answer ``{"phase": "timing_analysis"}``. The phase classifier sends a Verilog request to rtl_design;
with the triage specialist registered, the router asks it instead, so the same request goes to
timing_analysis. The confidence the server reports must be the softmax of the triage adapter's
log-likelihoods computed here directly with PEFT.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

from chipforge.vocab import SYSTEM_PROMPTS
from tests.serving import fixtures
from tests.serving.fixtures import KEY

pytestmark = pytest.mark.integration

APP = "chipforge-triage-test"
PREFIX = "/triage"
VERILOG_Q = "Write a Verilog module for an 8-bit counter with synchronous reset"


@pytest.fixture(scope="module")
def triage_registry(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from serving.tiny import PHASE_TEXTS, build_tiny_registry

    root = tmp_path_factory.mktemp("triage-registry")
    return build_tiny_registry(str(root), {p: PHASE_TEXTS[p] for p in ("timing_analysis", "rtl_design", "triage")})


@pytest.fixture(scope="module")
def triage_url(ray_session: None, triage_registry: dict[str, Any]) -> Iterator[str]:
    from ray import serve

    from serving.app import build_app

    port = fixtures.serve_port()
    serve.run(build_app(fixtures.app_args(triage_registry["registry"])), name=APP, route_prefix=PREFIX)
    try:
        yield f"http://127.0.0.1:{port}{PREFIX}"
    finally:
        serve.delete(APP)


def peft_triage_confidences(info: dict[str, Any], question: str, phases: list[str]) -> dict[str, float]:
    """Softmax over ``phases`` of the triage adapter's log-likelihood of answering ``{"phase": p}``."""
    import torch

    from serving.engine import load_peft_model
    from serving.router import triage_answer
    from training.tiny import quiet_hf

    with quiet_hf():
        model, tok = load_peft_model(info["base"], dict(info["adapters"]))
    model.set_adapter("triage")
    messages = [{"role": "system", "content": SYSTEM_PROMPTS["triage"]}, {"role": "user", "content": question}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    logp = {}
    for p in phases:
        full = tok(text + triage_answer(p), add_special_tokens=False)["input_ids"]
        assert full[:len(prompt)] == prompt  # the answer's tokens start where the prompt ends
        ids = torch.tensor([full])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits.float().log_softmax(-1)[0]
        logp[p] = sum(logits[i - 1, full[i]].item() for i in range(len(prompt), len(full)))
    top = max(logp.values())
    z = sum(math.exp(v - top) for v in logp.values())
    return {p: math.exp(v - top) / z for p, v in logp.items()}


def test_triage_specialist_routes_on_the_live_server(triage_url, triage_registry):
    import openai

    client = openai.OpenAI(base_url=f"{triage_url}/v1", api_key=KEY, max_retries=0, timeout=120)
    assert {m.id for m in client.models.list()} >= {"chipforge", "chipforge-triage", "chipforge-rtl_design"}
    want = peft_triage_confidences(triage_registry, VERILOG_Q, ["rtl_design", "timing_analysis"])
    assert max(want, key=want.__getitem__) == "timing_analysis"  # what the adapter was trained to answer

    raw = client.chat.completions.with_raw_response.create(
        model="chipforge", messages=[{"role": "user", "content": VERILOG_Q}], max_tokens=6, temperature=0)
    r = raw.parse()
    info = r.model_extra["chipforge"]
    assert info["routed_by"] == "triage" and not info["fallback"]
    assert raw.headers["x-chipforge-specialist"] == info["specialist"] == "timing_analysis"
    assert r.model == "chipforge-timing_analysis"
    assert info["confidence"] == pytest.approx(want["timing_analysis"], abs=2e-3)
    assert set(info["scores"]) == {"rtl_design", "timing_analysis"}  # triage itself is never a candidate
    for p, v in info["scores"].items():
        assert v == pytest.approx(want[p], abs=2e-3)
