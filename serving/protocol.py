"""OpenAI-compatible request parsing and response shapes (no Ray, no torch: unit-testable).

Requests are validated strictly (a string where a number belongs is an error, not coerced);
unknown fields are ignored, as vLLM does. Every problem becomes an :class:`APIError` whose
message names the field (``messages[0].content``, ``temperature``) and which renders as
OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class APIError(Exception):
    """An HTTP error with OpenAI's error body."""

    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message, type, param, code, headers)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _DEFAULT_TYPES.get(status, "invalid_request_error")
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


_DEFAULT_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
                  413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
                  503: "server_error"}


# --------------------------------------------------------------------------- request models

class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ContentPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Common(_Strict):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    ignore_eos: bool = False  # vLLM's extension: generate exactly max_tokens tokens


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None


# What a field should hold, for messages about unions (pydantic reports one error per member).
EXPECTED = {
    "stop": "a string, a list of strings or null",
    "prompt": "a string, a list of strings, a list of token ids or a list of lists of token ids",
    "content": "a string or a list of {\"type\": \"text\", \"text\": ...} parts",
}
_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|function-.*|[A-Z]\w*)$")


def field_name(loc: tuple[Any, ...]) -> str:
    """``('messages', 0, 'content', 'str')`` → ``messages[0].content`` (union member tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _TAG.match(str(part)):
            out += ("." if out else "") + str(part)
    return out or "body"


def validation_error(exc: ValidationError) -> APIError:
    errors = exc.errors()
    first = errors[0]
    name = field_name(first["loc"])
    leaf = name.rsplit(".", 1)[-1].split("[", 1)[0]
    union = any(isinstance(p, str) and _TAG.match(p) for p in first["loc"])
    if first["type"] == "missing":
        message = f"'{name}' is required"
    elif union and leaf in EXPECTED:
        message = f"Invalid value for '{name}': expected {EXPECTED[leaf]}"
    else:
        got = first.get("input")
        shown = json.dumps(got)[:80] if isinstance(got, (str, int, float, bool, type(None))) else type(got).__name__
        message = f"Invalid value for '{name}': {first['msg']} (got {shown})"
    return APIError(400, message, param=name, code="invalid_value")


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, bad UTF-8, an int over 4300 digits
        raise APIError(400, f"Request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"Request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    return data


_TOKEN_ID = re.compile(r"[0-9]{1,9}")  # ASCII digits only ("²".isdigit() but int("²") raises)


def _bad_text(s: str) -> bool:
    """Whether ``s`` cannot be encoded as UTF-8 (a lone surrogate such as ``\\ud800`` from a JSON escape)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _not_unicode(name: str) -> APIError:
    return APIError(400, f"Invalid value for '{name}': not valid Unicode text (a lone surrogate escape such as "
                         f"\\ud800)", param=name, code="invalid_value")


def parse_request(kind: Literal["chat", "completion"], data: dict[str, Any], *, max_n: int = 4,
                  max_stop: int = 4, max_logit_bias: int = 300,
                  max_choices: int = 64) -> ChatRequest | CompletionRequest:
    cls = ChatRequest if kind == "chat" else CompletionRequest
    try:
        req = cls.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
    if req.n > max_n:
        raise APIError(400, f"Invalid value for 'n': at most {max_n} choices per request (got {req.n})", param="n")
    stops = stop_list(req.stop)
    if len(stops) > max_stop:
        raise APIError(400, f"Invalid value for 'stop': at most {max_stop} stop sequences (got {len(stops)})",
                       param="stop")
    if any(s == "" for s in stops):
        raise APIError(400, "Invalid value for 'stop': stop sequences must not be empty", param="stop")
    bias = req.logit_bias or {}
    if len(bias) > max_logit_bias:
        raise APIError(400, f"Invalid value for 'logit_bias': at most {max_logit_bias} entries (got {len(bias)})",
                       param="logit_bias")
    for key, value in bias.items():
        if not _TOKEN_ID.fullmatch(key):
            raise APIError(400, f"Invalid value for 'logit_bias': keys are token ids, got {key[:20]!r}",
                           param="logit_bias")
        if not -100.0 <= value <= 100.0:  # also NaN and the infinities
            raise APIError(400, f"Invalid value for 'logit_bias': biases are from -100 to 100, got {value} "
                                f"for token {key}", param="logit_bias")
    if isinstance(req, ChatRequest):
        if req.logprobs:
            raise APIError(400, "'logprobs' is not supported by this server", param="logprobs")
        if req.tools:
            raise APIError(400, "'tools' (function calling) is not supported by this server", param="tools")
        if req.response_format and req.response_format.get("type", "text") != "text":
            raise APIError(400, "only response_format {\"type\": \"text\"} is supported", param="response_format")
        if not any(m.role == "user" for m in req.messages):
            raise APIError(400, "'messages' must contain at least one user message", param="messages")
        for i, m in enumerate(req.messages):
            if _bad_text(m.text()):
                raise _not_unicode(f"messages[{i}].content")
    else:
        if req.suffix:
            raise APIError(400, "'suffix' is not supported by this server", param="suffix")
        if req.logprobs:
            raise APIError(400, "'logprobs' is not supported by this server", param="logprobs")
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, "'best_of' other than n is not supported by this server", param="best_of")
        if isinstance(req.prompt, list) and not req.prompt:
            raise APIError(400, "Invalid value for 'prompt': must not be empty", param="prompt")
        prompts = prompts_of(req)
        if len(prompts) * req.n > max_choices:
            raise APIError(400, f"Invalid value for 'prompt': at most {max_choices} choices per request (got "
                                f"{len(prompts)} prompts x n={req.n})", param="prompt")
        for i, p in enumerate(prompts):
            if isinstance(p, str) and _bad_text(p):
                raise _not_unicode("prompt" if isinstance(req.prompt, str) else f"prompt[{i}]")
    return req


def stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def prompts_of(req: CompletionRequest) -> list[str | list[int]]:
    """The completion's prompts: one string, several strings, one token list or several."""
    p = req.prompt
    if isinstance(p, str):
        return [p]
    if all(isinstance(x, int) for x in p):
        return [list(p)]  # type: ignore[arg-type]
    return list(p)  # type: ignore[arg-type]


def max_tokens_of(req: ChatRequest | CompletionRequest) -> int | None:
    if isinstance(req, ChatRequest) and req.max_completion_tokens is not None:
        return req.max_completion_tokens
    return req.max_tokens


def sampling_of(req: ChatRequest | CompletionRequest) -> dict[str, Any]:
    """The engine's SamplingParams fields (max_tokens is settled by the model server)."""
    return {
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "seed": req.seed,
        "stop": tuple(stop_list(req.stop)),
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "logit_bias": tuple((int(k), float(v)) for k, v in (req.logit_bias or {}).items()),
        "ignore_eos": req.ignore_eos,
    }


def last_user_text(messages: list[Message]) -> str:
    for m in reversed(messages):
        if m.role == "user":
            return m.text()
    return ""


# --------------------------------------------------------------------------- responses

def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def response_body(kind: str, rid: str, created: int, model: str, texts: list[str], reasons: list[str | None],
                  use: dict[str, int], extra: dict[str, Any]) -> dict[str, Any]:
    if kind == "chat":
        choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                    "finish_reason": r} for i, (t, r) in enumerate(zip(texts, reasons))]
        obj = "chat.completion"
    else:
        choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
                   for i, (t, r) in enumerate(zip(texts, reasons))]
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": choices, "usage": use, **extra}


def chunk(kind: str, rid: str, created: int, model: str, index: int, *, text: str | None = None,
          role: bool = False, finish_reason: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    if kind == "chat":
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
            delta["content"] = ""
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice], **(extra or {})}


def usage_chunk(kind: str, rid: str, created: int, model: str, use: dict[str, int],
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": use,
            **(extra or {})}


def sse(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


def now() -> int:
    return int(time.time())
