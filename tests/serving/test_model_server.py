"""The hf model server's request handling in-process (no Serve): templating, limits, triage scoring."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serving.catalog import load_catalog
from serving.router import triage_answer


@pytest.fixture(scope="module")
def server(tiny_registry: dict[str, Any]):
    from serving.app import ModelServer

    catalog = load_catalog(tiny_registry["registry"])
    g = catalog.groups[0]
    args = {"registry": tiny_registry["registry"], "hf": {"torch_threads": 1, "max_model_len": 128},
            "limits": {"default_max_tokens": 5}}
    ms = ModelServer({"index": 0, "base_model": g.base_model, "phases": list(g.phases)}, catalog.to_dict(), args)
    yield ms
    ms.engine.shutdown()


def collect(ms, req: dict[str, Any]) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        return [ev async for batch in ms.generate(req) for ev in batch]

    return asyncio.run(run())


def chat(**kw: Any) -> dict[str, Any]:
    return {"kind": "chat", "adapter": "rtl_design", "n": 1, "stream": False, "max_tokens": None,
            "sampling": {"temperature": 0.0}, "messages": [{"role": "user", "content": "hi"}], **kw}


def test_generate_events_and_defaults(server):
    events = collect(server, chat(system_prompt="You design RTL."))
    start, *rest = events
    with_system = server.engine.chat_prompt_ids([{"role": "system", "content": "You design RTL."},
                                                 {"role": "user", "content": "hi"}])
    assert start == {"type": "start", "prompt_tokens": [len(with_system)]}
    done = [e for e in rest if e.get("done")]
    assert len(done) == 1 and done[0]["completion_tokens"] <= 5  # limits.default_max_tokens
    two = collect(server, {"kind": "completion", "adapter": None, "n": 2, "stream": True, "max_tokens": 3,
                           "echo": True, "sampling": {"temperature": 0.0}, "prompts": ["module", [5, 6, 7]]})
    assert two[0]["prompt_tokens"][2:] == [3, 3]
    assert {e["index"] for e in two if e.get("done")} == {0, 1, 2, 3}
    assert [e["text"] for e in two if e.get("index") == 0 and "text" in e][0] == "module"  # echo


def test_request_errors_are_events_not_exceptions(server):
    (err,) = collect(server, chat(max_tokens=125))
    assert err["type"] == "error" and err["status"] == 400 and err["param"] == "max_tokens"
    assert "128 tokens" in err["message"] and "125 in the completion" in err["message"]
    long_messages = [{"role": "user", "content": "word " * 200}]
    (err,) = collect(server, chat(messages=long_messages))
    n = len(server.engine.chat_prompt_ids(long_messages))
    assert err["status"] == 400 and err["param"] == "messages" and n > 128
    assert err["message"] == (f"This model's maximum context length is 128 tokens, but the messages are {n} tokens. "
                              "Shorten the messages.")
    (err,) = collect(server, {"kind": "completion", "adapter": None, "n": 1, "max_tokens": 2,
                              "sampling": {"temperature": 0.0}, "prompts": ["word " * 200]})
    n = len(server.engine.prompt_ids("word " * 200))
    assert err["status"] == 400 and err["param"] == "prompt" and n > 128
    assert err["message"] == (f"This model's maximum context length is 128 tokens, but the prompt is {n} tokens. "
                              "Shorten the prompt.")
    (err,) = collect(server, {"kind": "completion", "adapter": None, "n": 1, "max_tokens": 2,
                              "sampling": {"temperature": 0.0}, "prompts": [[10**7]]})
    assert err["status"] == 400 and "outside the vocabulary" in err["message"]


def test_triage_scores_are_the_answer_likelihoods(server):
    phases = ["rtl_design", "timing_analysis"]
    got = asyncio.run(server.score_phases("Fix my hold violation", phases, "timing_analysis"))
    assert set(got) == set(phases) and all(v < 0 for v in got.values())
    e = server.engine
    from chipforge.vocab import SYSTEM_PROMPTS

    prompt = e.chat_prompt_ids([{"role": "system", "content": SYSTEM_PROMPTS["triage"]},
                                {"role": "user", "content": "Fix my hold violation"}])
    text = e.tokenizer.decode(prompt, skip_special_tokens=False)
    cont = e.tokenizer(text + triage_answer("rtl_design"), add_special_tokens=False)["input_ids"][len(prompt):]
    assert got["rtl_design"] == pytest.approx(e.score(prompt, [cont], "timing_analysis")[0], abs=1e-5)


def test_empty_prompts_and_unknown_bias_tokens_are_400s(server):
    for prompts in ([""], [[]], [[5], []]):  # [[5], []]: the empty row used to be padded into a batch
        (err,) = collect(server, {"kind": "completion", "adapter": None, "n": 1, "max_tokens": 2,
                                  "sampling": {"temperature": 0.0}, "prompts": prompts})
        assert err["type"] == "error" and err["status"] == 400 and err["param"] == "prompt", (prompts, err)
    vocab = len(server.engine.tokenizer)
    (err,) = collect(server, chat(sampling={"temperature": 0.0, "logit_bias": ((vocab, 5.0),)}))
    assert err["status"] == 400 and err["param"] == "logit_bias" and str(vocab) in err["message"]


def test_more_choices_than_the_queue_holds_is_a_400_not_a_429_forever(server):
    held = server.engine.max_waiting
    req = {"kind": "completion", "adapter": None, "max_tokens": 2, "sampling": {"temperature": 0.0}}
    (err,) = collect(server, {**req, "n": 1, "prompts": ["a"] * (held + 1)})
    assert err["status"] == 400 and err["param"] == "prompt" and f"({held}, engine.hf.max_waiting)" in err["message"]
    events = collect(server, {**req, "n": 2, "prompts": ["a", "b"]})
    assert events[0]["type"] == "start" and len(events[0]["prompt_tokens"]) == 4
