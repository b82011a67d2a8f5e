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


# ----------------------------------------------------------------------------- hostile clients

def test_body_with_an_integer_beyond_pythons_digit_limit_is_a_400():
    # json.loads raises a plain ValueError (not JSONDecodeError) for integers over 4300 digits.
    with pytest.raises(P.APIError, match="not valid JSON") as e:
        P.parse_body(b'{"model": "m", "seed": ' + b"9" * 5000 + b"}")
    assert e.value.status == 400


@pytest.mark.parametrize("bias", [
    {"\u00b2": 1},  # str.isdigit() but not int(): was a 500
    {"9" * 5000: 1},  # int() over the digit limit: was a 500
    {"\u0663": 1},  # an Arabic-Indic digit is not a token id
    {"-1": 1},  # no token has a negative id
    {"5": float("nan")}, {"5": float("inf")}, {"5": 1e308}, {"5": -101.0},  # finite, in [-100, 100]
])
def test_logit_bias_keys_and_values_are_checked(bias):
    e = error("chat", chat(logit_bias=bias))
    assert e.status == 400 and e.param == "logit_bias", e.message


def test_logit_bias_size_is_bounded():
    # Each entry costs a Python-level update per generated token on the shared engine thread.
    e = error("chat", chat(logit_bias={str(i): 1.0 for i in range(301)}))
    assert e.status == 400 and e.param == "logit_bias" and "300" in e.message
    ok = P.parse_request("chat", chat(logit_bias={str(i): 100.0 for i in range(300)}))
    assert len(P.sampling_of(ok)["logit_bias"]) == 300


def test_lone_surrogates_are_named_400s():
    e = error("completion", {"model": "m", "prompt": "a\ud800"})
    assert e.status == 400 and e.param == "prompt"
    e = error("completion", {"model": "m", "prompt": ["ok", "\udfff"]})
    assert e.status == 400 and e.param == "prompt[1]"
    e = error("chat", chat(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": [
        {"type": "text", "text": "\ud800"}]}]))
    assert e.status == 400 and e.param == "messages[1].content"


def test_prompts_times_n_is_bounded_by_max_choices():
    # Each prompt of a list is n more rows (the model server also refuses more than its queue holds,
    # which would be a 429 forever: test_model_server)
    e = error("completion", {"model": "m", "prompt": ["a"] * 65})
    assert e.status == 400 and e.param == "prompt" and "at most 64" in e.message
    e = error("completion", {"model": "m", "prompt": [[1], [2]], "n": 3}, max_choices=5)
    assert e.status == 400 and e.param == "prompt" and "2 prompts x n=3" in e.message
    assert len(P.prompts_of(P.parse_request("completion", {"model": "m", "prompt": ["a", "b"], "n": 2}))) == 2
