"""Hostile and careless HTTP clients against the real server: each gets a clear OpenAI error, nobody
else's request suffers, and the replica keeps answering (one Serve per test session)."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.serving.fixtures import KEY

pytestmark = pytest.mark.integration

HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}


def post(server: str, path: str, body: Any = None, *, raw: bytes | None = None) -> requests.Response:
    data = raw if raw is not None else json.dumps(body).encode()
    return requests.post(f"{server}{path}", data=data, headers=HEADERS, timeout=120)


def still_answers(server: str) -> None:
    r = post(server, "/v1/completions", {"model": "chipforge-base", "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def error_of(r: requests.Response, status: int, param: str | None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err["param"] == param and err["message"], err
    return err


def test_one_bad_request_does_not_fail_the_batch_it_joins(server):
    # A vanishing temperature (row / 1e-300 = inf, softmax NaN) raised in the engine's sampling and
    # ended every row of the batch with a 500; and NaN/huge logit biases did the same.
    good = {"model": "chipforge-base", "prompt": "module counter(input clk", "max_tokens": 60, "ignore_eos": True,
            "temperature": 0}

    def good_one(_: int) -> requests.Response:
        return post(server, "/v1/completions", good)

    def bad_one(body: dict[str, Any]) -> requests.Response:
        time.sleep(0.3)  # while the good rows decode: the bad one joins their batch
        return post(server, "/v1/completions", body)

    bad = [{"model": "chipforge-base", "prompt": "x", "max_tokens": 4, "temperature": 1e-300},
           {"model": "chipforge-base", "prompt": "x", "max_tokens": 4, "temperature": 1.0, "logit_bias": {"5": 1e308}}]
    with ThreadPoolExecutor(4) as pool:
        goods = [pool.submit(good_one, i) for i in range(2)]
        bads = [pool.submit(bad_one, b) for b in bad]
        for f in goods:
            r = f.result()
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 60, r.text[:300]
        tiny_t, huge_bias = (f.result() for f in bads)
    assert tiny_t.status_code == 200  # a temperature this small is greedy decoding
    error_of(huge_bias, 400, "logit_bias")
    still_answers(server)


def test_malformed_inputs_are_400s_naming_the_field(server):
    chat = {"model": "chipforge-base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    r = post(server, "/v1/chat/completions", raw=json.dumps(chat)[:-1].encode() + b', "seed": ' + b"9" * 5000 + b"}")
    assert error_of(r, 400, None)["code"] == "invalid_json"
    r = post(server, "/v1/completions", raw=b'{"model": "chipforge-base", "max_tokens": 2, "prompt": "\\ud800"}')
    error_of(r, 400, "prompt")
    r = post(server, "/v1/chat/completions",
             raw=b'{"model": "chipforge", "max_tokens": 2, "messages": [{"role": "user", "content": "\\ud800"}]}')
    error_of(r, 400, "messages[0].content")
    for prompt in ("", [[]], [""]):
        error_of(post(server, "/v1/completions", {"model": "chipforge-base", "prompt": prompt, "max_tokens": 2}),
                 400, "prompt")
    for bias in ({"\u00b2": 1}, {"9" * 5000: 1}, {"400": 1}, {str(i): 1 for i in range(301)}):
        error_of(post(server, "/v1/chat/completions", {**chat, "logit_bias": bias}), 400, "logit_bias")
    # More rows than the server could ever take at once: a 400, not a 429 the client retries forever.
    r = post(server, "/v1/completions", {"model": "chipforge-base", "prompt": ["a"] * 9, "max_tokens": 2})
    error_of(r, 400, "prompt")
    still_answers(server)


def test_unknown_routes_and_methods_get_openai_error_bodies(server):
    r = requests.post(f"{server}/v1/embeddings", json={}, headers=HEADERS, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["message"]
    r = requests.get(f"{server}/v1/chat/completions", headers=HEADERS, timeout=30)
    assert r.status_code == 405 and r.json()["error"]["message"]


def test_a_slow_body_is_cut_off_and_frees_its_slot(server):
    # A client that sends headers and then trickles (or never sends) the body held an ingress slot
    # forever: 256 such connections hung every other request, /health included.
    host, port = server.split("//")[1].split(":")
    body = json.dumps({"model": "chipforge-base", "prompt": "hi", "max_tokens": 2}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((host, int(port))) as s:
        s.sendall(head + body[:5])
        s.settimeout(60)
        t0 = time.monotonic()
        reply = b""
        while b"\r\n\r\n" not in reply:
            part = s.recv(4096)
            if not part:
                break
            reply += part
        waited = time.monotonic() - t0
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert waited < 30, waited  # limits.body_timeout_s is 5 in the test app
    still_answers(server)
