"""The ``openai`` engine against a hostile OpenAI-compatible endpoint on 127.0.0.1.

Whatever the server sends for one prompt (not JSON, an HTML error page, ``{}``, a 429 storm, no
``choices``, ``content`` null, tool calls, a reply cut at ``max_tokens``, a body that never ends,
a body of hundreds of MB, the API key echoed back) is that prompt's ``engine_error`` naming the
problem; the other prompts of the batch are answered, the time is bounded, and the key never
comes back. ``test_openai_engine_on_ray_*`` runs the job's engine (an actor pool on Ray): before,
``ray.data.llm``'s HTTP processor raised out of the batch on a non-JSON body or exhausted retries,
and the whole synthesis job was aborted by one bad reply.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

from synthesis import engines
from synthesis.engines import GENERATION_SCHEMA, OpenAIConfig, SamplingConfig
from synthesis.seeds import PROMPT_SCHEMA
from tests.chat_server import ChatServer
from tests.synthesis.test_engines import prompt_rows

KEY = "sk-hostile-test-key-0123456789"
GOOD = json.dumps({"instruction": "How do I synthesise cf_top with Yosys and print statistics?",
                   "answer": "```yosys\nread_verilog cf_counter.v cf_alu.v cf_top.v\nsynth -top cf_top\nstat\n```"})
TAGS = ("NONJSON", "HTML500", "STORM429", "EMPTYOBJ", "EMPTYLIST", "NOCHOICES", "NULLCONTENT", "TOOLCALLS", "LENGTH",
        "SLOWLORIS", "HUGEBODY", "ECHOKEY401", "ECHOKEY200")
# what each row's engine_error must say
EXPECT = {
    "NONJSON": "not a JSON reply (text/html)", "HTML500": "HTTP 500: not a JSON reply", "STORM429": "429",
    "EMPTYOBJ": "not a chat completion", "EMPTYLIST": "not a chat completion", "NOCHOICES": "chat.completion",
    "NULLCONTENT": "no message content", "TOOLCALLS": "tool calls", "LENGTH": "finish_reason 'length'",
    "SLOWLORIS": "no complete reply within engine.openai.timeout_s", "HUGEBODY": "max_reply_mb",
    "ECHOKEY401": "[redacted]",
}


class HostileServer(ChatServer):
    """``/v1/chat/completions`` whose misbehaviour is picked by a tag in the user prompt."""

    client_max_size = 1 << 24

    def __init__(self, huge_mb: int = 40, slow_s: int = 30) -> None:
        super().__init__()
        self.hits: dict[str, int] = {}
        self.huge_mb, self.slow_s = huge_mb, slow_s

    @staticmethod
    def completion(content: Any, finish: str = "stop", **message: Any) -> dict[str, Any]:
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content, **message},
                             "finish_reason": finish}], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        payload = await request.json()
        user = next(m["content"] for m in payload["messages"] if m["role"] == "user")
        tag = next((t for t in TAGS if t in user), "GOOD")
        self.hits[tag] = self.hits.get(tag, 0) + 1
        auth = request.headers.get("Authorization", "")
        simple = {
            "NONJSON": lambda: web.Response(text="<html>bad gateway</html>", content_type="text/html"),
            "HTML500": lambda: web.Response(text="<html>500</html>", status=500, content_type="text/html"),
            "STORM429": lambda: web.json_response({"error": "slow down"}, status=429),
            "EMPTYOBJ": lambda: web.json_response({}),
            "EMPTYLIST": lambda: web.json_response([]),
            "NOCHOICES": lambda: web.json_response({"id": "x", "object": "chat.completion"}),
            "NULLCONTENT": lambda: web.json_response(self.completion(None)),
            "TOOLCALLS": lambda: web.json_response(self.completion(None, "tool_calls", tool_calls=[
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}])),
            "LENGTH": lambda: web.json_response(self.completion(GOOD[:-30], "length")),
            "ECHOKEY401": lambda: web.json_response({"error": f"invalid key in header {auth!r}"}, status=401),
            "ECHOKEY200": lambda: web.json_response(self.completion(GOOD[:-2] + f' {auth}"}}')),
            "GOOD": lambda: web.json_response(self.completion(GOOD)),
        }
        if tag in simple:
            return simple[tag]()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        try:
            if tag == "SLOWLORIS":  # one byte a second: never idle long enough for a per-read timeout
                await resp.write(b'{"choices": [')
                for _ in range(self.slow_s):
                    await asyncio.sleep(1)
                    await resp.write(b" ")
                await resp.write(b"]}")
            else:  # HUGEBODY: a valid reply of huge_mb MB
                await resp.write(b'{"choices": [{"message": {"content": "')
                for _ in range(self.huge_mb):
                    await resp.write(b"a" * (1 << 20))
                await resp.write(b'"}}]}')
        except (ConnectionError, RuntimeError):  # the client hung up: what it should do
            pass
        return resp


@pytest.fixture()
def hostile() -> Iterator[HostileServer]:
    server = HostileServer().start()
    yield server
    server.stop()


def hostile_rows() -> list[dict]:
    return prompt_rows(["plain flattening"] + [f"{t} please" for t in TAGS])


def check_rows(out: list[dict], rows: list[dict]) -> None:
    assert [r["prompt_id"] for r in out] == [r["prompt_id"] for r in rows]  # one row per prompt, in order
    by_tag = {next((t for t in TAGS if t in r["messages_json"]), "GOOD"): o for r, o in zip(rows, out)}
    assert by_tag["GOOD"]["engine_error"] is None and by_tag["GOOD"]["generated_text"] == GOOD
    for tag, want in EXPECT.items():
        row = by_tag[tag]
        assert row["generated_text"] is None and row["engine_error"], tag
        assert want in row["engine_error"], (tag, row["engine_error"])
    echoed = by_tag["ECHOKEY200"]  # a server echoing the key into an answer: the key never comes back
    assert echoed["engine_error"] is None and "[redacted]" in echoed["generated_text"]
    assert KEY not in json.dumps(out)


def test_plain_client_turns_every_hostile_reply_into_one_engine_error(hostile: HostileServer) -> None:
    cfg = OpenAIConfig(url=hostile.url, api_key_env="CF_HOSTILE_KEY", max_retries=1, base_retry_wait_s=0.05,
                       timeout_s=3, max_reply_mb=4)
    client = engines.OpenAIChat(cfg, SamplingConfig(max_tokens=64), environ={"CF_HOSTILE_KEY": KEY})
    rows = hostile_rows()
    t0 = time.perf_counter()
    out = client(pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA))
    wall = time.perf_counter() - t0
    assert out.schema == GENERATION_SCHEMA
    check_rows(out.to_pylist(), rows)
    # requests are in flight together: the batch takes about the slowest row (two 3 s attempts), and
    # a reply that never ends is cut (the server would trickle for 30 s)
    assert wall < 15, wall
    assert hostile.hits["STORM429"] == 2 and hostile.hits["SLOWLORIS"] == 2  # retried max_retries times
    assert hostile.hits["HTML500"] == 1  # a 500 is not retried


@pytest.mark.integration
def test_openai_engine_on_ray_keeps_the_batch_when_one_reply_is_hostile(ray_session, hostile: HostileServer,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from pipelines import synthesis as pipe

    monkeypatch.setenv("CF_HOSTILE_KEY", KEY)
    cfg = engines.EngineConfig(name="openai", sampling={"max_tokens": 64}, openai={
        "url": hostile.url, "api_key_env": "CF_HOSTILE_KEY", "max_retries": 1, "base_retry_wait_s": 0.05,
        "timeout_s": 3, "max_reply_mb": 4, "batch_size": 32})
    engine, info = pipe.make_engine(cfg)
    rows = hostile_rows()
    out = sorted(engine(ray.data.from_items(rows, override_num_blocks=1)).take_all(),
                 key=lambda r: [p["prompt_id"] for p in rows].index(r["prompt_id"]))
    check_rows(out, rows)
    assert KEY not in json.dumps(info)
