"""The real server on 127.0.0.1 with the official ``openai`` client (one Serve per test session)."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from chipforge.vocab import SYSTEM_PROMPTS
from tests.serving import fixtures
from tests.serving.fixtures import KEY

pytestmark = pytest.mark.integration

MODELS = {"chipforge-base": None, "chipforge-timing_analysis": "timing_analysis", "chipforge-rtl_design": "rtl_design"}
PROMPTS = ["The worst negative slack", "module counter(input clk"]


@pytest.fixture(scope="module")
def client(server: str):
    import openai

    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


def post(server: str, path: str, body: Any = None, *, raw: bytes | None = None, key: str | None = KEY,
         stream: bool = False) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else json.dumps(body).encode()
    return requests.post(f"{server}{path}", data=data, headers=headers, timeout=120, stream=stream)


def engine_prompt(info: dict[str, Any], prompt: str) -> list[int]:
    _, tok = fixtures.peft_reference(info)
    return list(tok(prompt)["input_ids"])


def chat_prompt(info: dict[str, Any], messages: list[dict[str, str]]) -> list[int]:
    _, tok = fixtures.peft_reference(info)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tok(text, add_special_tokens=False)["input_ids"])


def test_models_are_listed(client):
    models = client.models.list().data
    ids = [m.id for m in models]
    assert ids == ["chipforge", "chipforge-rtl_design", "chipforge-timing_analysis", "chipforge-base"]
    cards = {m.id: m.model_extra for m in models}
    assert cards["chipforge"]["chipforge"]["kind"] == "router"
    assert cards["chipforge-rtl_design"]["parent"] == "chipforge-base"
    assert cards["chipforge-base"]["max_model_len"] == 2048
    assert client.models.retrieve("chipforge-timing_analysis").id == "chipforge-timing_analysis"


def test_chat_streaming_and_usage(client):
    messages = [{"role": "user", "content": "How do I fix a hold violation?"}]
    raw = client.chat.completions.with_raw_response.create(model="chipforge-timing_analysis", messages=messages,
                                                           max_tokens=10, temperature=0)
    assert raw.headers["x-chipforge-specialist"] == "timing_analysis"
    r = raw.parse()
    assert r.object == "chat.completion" and r.model == "chipforge-timing_analysis"
    assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 5 and 1 <= u.completion_tokens <= 10 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert r.model_extra["chipforge"] == {"specialist": "timing_analysis", "model": "chipforge-timing_analysis"}
    chunks = list(client.chat.completions.create(model="chipforge-timing_analysis", messages=messages, max_tokens=10,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content  # greedy: streamed == not streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == u.completion_tokens
    assert chunks[-1].usage.prompt_tokens == u.prompt_tokens
    two = client.chat.completions.create(model="chipforge-base", messages=messages, max_tokens=6, temperature=1.0,
                                         seed=11, n=2)
    assert [c.index for c in two.choices] == [0, 1] and two.usage.completion_tokens <= 12
    again = client.chat.completions.create(model="chipforge-base", messages=messages, max_tokens=6, temperature=1.0,
                                           seed=11, n=2)
    assert [c.message.content for c in again.choices] == [c.message.content for c in two.choices]


def test_completions_match_peft_and_differ_by_adapter(client, tiny_registry):
    for prompt in PROMPTS:
        texts = {}
        for model, adapter in MODELS.items():
            r = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0)
            texts[model] = r.choices[0].text
            assert r.usage.prompt_tokens == len(engine_prompt(tiny_registry, prompt))
            assert texts[model] == fixtures.peft_greedy(tiny_registry, engine_prompt(tiny_registry, prompt), adapter, 12)
        assert len(set(texts.values())) == 3, texts
    stream = client.completions.create(model="chipforge-rtl_design", prompt=PROMPTS[1], max_tokens=12, temperature=0,
                                       stream=True)
    assert "".join(c.choices[0].text for c in stream) == \
        fixtures.peft_greedy(tiny_registry, engine_prompt(tiny_registry, PROMPTS[1]), "rtl_design", 12)


def test_chat_gets_the_phase_system_prompt(client, tiny_registry):
    q = "Explain the critical path."
    r = client.chat.completions.create(model="chipforge-rtl_design", messages=[{"role": "user", "content": q}],
                                       max_tokens=12, temperature=0)
    ids = chat_prompt(tiny_registry, [{"role": "system", "content": SYSTEM_PROMPTS["rtl_design"]},
                                      {"role": "user", "content": q}])
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.content == fixtures.peft_greedy(tiny_registry, ids, "rtl_design", 12)


def test_interleaved_requests_for_different_adapters(server, client, tiny_registry):
    jobs = [(p, m, i % 2 == 1) for i, (p, m) in enumerate((p, m) for p in PROMPTS for m in MODELS)]

    patient = client.with_options(max_retries=8)  # a loaded CI machine may answer 429 with Retry-After

    def one(job):
        prompt, model, stream = job
        if stream:
            return "".join(c.choices[0].text for c in patient.completions.create(
                model=model, prompt=prompt, max_tokens=12, temperature=0, stream=True))
        return patient.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0).choices[0].text

    with ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(one, jobs))
    for (prompt, model, _), text in zip(jobs, got):
        assert text == fixtures.peft_greedy(tiny_registry, engine_prompt(tiny_registry, prompt), MODELS[model], 12)
    stats = requests.get(f"{server}/stats", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    assert stats["model_servers"]["chipforge-base"]["max_batch"] > 1  # requests shared batches


QUESTIONS = {
    "How do I fix setup slack violations reported by OpenSTA report_checks?": "timing_analysis",
    "Write a Verilog module for an 8-bit counter with synchronous reset": "rtl_design",
    "How do I reduce congestion in global routing?": "base",  # routing has no specialist here: fallback
}


def test_router_picks_the_specialist_and_says_so(server, client):
    for q, want in QUESTIONS.items():
        raw = client.chat.completions.with_raw_response.create(
            model="chipforge", messages=[{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
                                         {"role": "user", "content": q}], max_tokens=4, temperature=0)
        r = raw.parse()
        info = r.model_extra["chipforge"]
        assert raw.headers["x-chipforge-specialist"] == want == info["specialist"], q
        assert r.model == ("chipforge-base" if want == "base" else f"chipforge-{want}")
        assert info["routed_by"] == "classifier" and info["fallback"] == (want == "base")
    stream = client.chat.completions.create(model="chipforge", messages=[{"role": "user", "content": next(iter(QUESTIONS))}],
                                            max_tokens=4, temperature=0, stream=True)
    assert {c.model_extra["chipforge"]["specialist"] for c in stream} == {"timing_analysis"}
    stats = requests.get(f"{server}/stats", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    assert stats["routing"]["timing_analysis"] >= 2 and stats["routing"]["base"] >= 1
    assert stats["recent_routing"][-1]["specialist"] == "timing_analysis"


def test_errors_and_the_server_survives(server, client):
    import openai

    chat = {"model": "chipforge-base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=chat["messages"])
    assert "gpt-4" in str(e.value) and "chipforge-rtl_design" in str(e.value) and "chipforge-base" in str(e.value)
    r = post(server, "/v1/chat/completions", raw=b'{"model": "chipforge-base", "messages": [')
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = post(server, "/v1/chat/completions", {**chat, "temperature": "hot"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = post(server, "/v1/chat/completions", {**chat, "messages": [{"role": "user", "content": {"x": 1}}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content"
    r = post(server, "/v1/completions", {"model": "chipforge-base", "prompt": list(range(5, 300)) * 8})
    err = r.json()["error"]
    assert r.status_code == 400 and "2048" in err["message"] and "2360" in err["message"], err
    r = post(server, "/v1/completions", {"model": "chipforge-base", "prompt": "hi", "max_tokens": 4000})
    assert r.status_code == 400 and "2048" in r.json()["error"]["message"] and "4000" in r.json()["error"]["message"]
    r = post(server, "/v1/completions", {"model": "chipforge-base", "prompt": "x" * 70000})
    assert r.status_code == 413 and "65536" in r.json()["error"]["message"]
    r = post(server, "/v1/chat/completions", chat, key=None)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert post(server, "/v1/chat/completions", chat, key="wrong").status_code == 401
    assert requests.get(f"{server}/v1/models", timeout=30).status_code == 401
    import openai as oa

    with pytest.raises(oa.AuthenticationError):
        oa.OpenAI(base_url=f"{server}/v1", api_key="nope", max_retries=0).models.list()
    # A burst beyond max_ongoing_requests (6) + max_queued_requests (2): the rest get 429 + Retry-After.
    burst = {"model": "chipforge-base", "prompt": "busy", "max_tokens": 200, "ignore_eos": True, "temperature": 0}
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda _: post(server, "/v1/completions", burst), range(16)))
    codes = sorted(r.status_code for r in replies)
    assert set(codes) == {200, 429} and codes.count(200) >= 6, codes
    busy = next(r for r in replies if r.status_code == 429)
    assert busy.headers["retry-after"] == "2" and busy.json()["error"]["type"] == "rate_limit_error"
    ok = next(r for r in replies if r.status_code == 200).json()
    assert ok["usage"]["completion_tokens"] == 200
    # Still answering, and healthy.
    assert client.chat.completions.create(**chat).choices[0].message.content is not None
    assert requests.get(f"{server}/health", timeout=30).json()["status"] == "ok"


def test_health_stats_and_prometheus_metrics(server, client):
    import ray

    h = requests.get(f"{server}/health", timeout=30)
    assert h.status_code == 200 and h.json()["model_servers"] == {"chipforge-base": True}
    stats = requests.get(f"{server}/stats", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    t = stats["specialists"]["timing_analysis"]
    assert t["requests"] >= 1 and t["latency_p50_s"] > 0 and t["completion_tokens"] > 0
    assert stats["status"]["200"] >= 1 and stats["status"].get("404", 0) >= 1
    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    # chipforge_* series are checked when this app is the session's only Serve app: after another app
    # was deployed and deleted in the same Ray session (tests/jobs/test_serve.py), Ray's metrics agent
    # has been seen to drop them (known gap, see the closing note); /stats above checks the same counts.
    other_app_before = os.environ.get("CHIPFORGE_TEST_SERVE_APP_DELETED") == "1"
    deadline, text = time.monotonic() + 150, ""
    while time.monotonic() < deadline:
        text = requests.get(url, timeout=10).text
        if "ray_serve_" in text and ("chipforge_requests" in text or other_app_before):
            break
        client.models.list()
        time.sleep(3)
    assert "ray_serve_" in text, "Ray Serve's own metrics are not exported"
    if not other_app_before:
        assert 'chipforge_requests' in text and 'specialist="timing_analysis"' in text
        assert "chipforge_request_latency_s" in text
