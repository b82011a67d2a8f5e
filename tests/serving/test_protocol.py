"""Request validation and response shapes (no model, no Ray)."""

from __future__ import annotations

import json

import pytest

from serving import protocol as P


def chat(**kw):
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}


def error(kind, data, **kw) -> P.APIError:
    with pytest.raises(P.APIError) as e:
        P.parse_request(kind, data, **kw)
    return e.value


def test_valid_requests_parse():
    r = P.parse_request("chat", chat(temperature=0, stop="x", seed=3, max_tokens=5, n=2,
                                     stream_options={"include_usage": True}, unknown_field=1))
    assert isinstance(r, P.ChatRequest) and r.temperature == 0.0 and r.n == 2 and r.stream_options.include_usage
    assert P.sampling_of(r)["stop"] == ("x",) and P.max_tokens_of(r) == 5
    parts = P.parse_request("chat", chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                                  {"type": "text", "text": "b"}]}]))
    assert P.last_user_text(parts.messages) == "ab"
    c = P.parse_request("completion", {"model": "m", "prompt": [1, 2, 3]})
    assert P.prompts_of(c) == [[1, 2, 3]] and c.max_tokens == 16
    assert P.prompts_of(P.parse_request("completion", {"model": "m", "prompt": ["a", "b"]})) == ["a", "b"]


@pytest.mark.parametrize("data,field,words", [
    (chat(temperature="hot"), "temperature", "valid number"),
    (chat(temperature=3), "temperature", "less than or equal"),
    (chat(max_tokens="5"), "max_tokens", "valid integer"),
    (chat(stream="yes"), "stream", "valid boolean"),
    (chat(stop=5), "stop", "a string, a list of strings"),
    (chat(messages=[{"role": "user", "content": 5}]), "messages[0].content", "a string or a list"),
    (chat(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role", "'system'"),
    (chat(messages=[]), "messages", "at least 1"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model", "required"),
    (chat(n=9), "n", "at most 4"),
    (chat(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
    (chat(logit_bias={"x": 1}), "logit_bias", "token ids"),
    (chat(tools=[{"type": "function"}]), "tools", "not supported"),
    (chat(messages=[{"role": "system", "content": "x"}]), "messages", "user message"),
])
def test_errors_name_the_field(data, field, words):
    e = error("chat", data)
    assert e.status == 400 and e.param == field and field in e.message and words in e.message
    assert e.body()["error"]["param"] == field and e.body()["error"]["type"] == "invalid_request_error"


def test_completion_errors():
    assert error("completion", {"model": "m", "prompt": {"a": 1}}).param == "prompt"
    assert "not supported" in error("completion", {"model": "m", "prompt": "x", "suffix": "y"}).message
    assert error("completion", {"model": "m", "prompt": []}).param == "prompt"


def test_body_must_be_a_json_object():
    with pytest.raises(P.APIError, match="not valid JSON"):
        P.parse_body(b"{nope")
    with pytest.raises(P.APIError, match="JSON object"):
        P.parse_body(b"[1, 2]")
    assert P.parse_body(b'{"a": 1}') == {"a": 1}


def test_response_shapes():
    body = P.response_body("chat", "id", 1, "m", ["x"], ["stop"], P.usage(3, 1), {"chipforge": {"a": 1}})
    assert body["object"] == "chat.completion" and body["choices"][0]["message"] == {"role": "assistant", "content": "x"}
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    c = P.chunk("chat", "id", 1, "m", 0, role=True)
    assert c["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert P.chunk("completion", "id", 1, "m", 1, text="t")["choices"][0] == {
        "index": 1, "text": "t", "logprobs": None, "finish_reason": None}
    assert P.sse("[DONE]") == b"data: [DONE]\n\n"
    assert json.loads(P.sse({"a": "é"})[6:]) == {"a": "é"}
