"""Strict parsing of a model's structured answer.

The model must reply with exactly one JSON object — bare, or as the only content of one
```` ```json ```` fence — with string fields ``instruction`` and ``answer`` and, for tasks
that carry one, ``testbench``. Code inside ``answer`` sits in fenced blocks tagged with a
language (```` ```verilog ````, ```` ```yosys ````, ```` ```tcl ````, ```` ```sdc ````).
Anything else (prose around the JSON, unknown keys, empty fields, an unterminated or
untagged fence, code a Markdown renderer shows that these fences do not hold: ```` ```` ````,
``~~~`` or indented blocks, control characters: line breaks other than LF/CR and bidirectional
overrides) is malformed: ``ParseError.reason`` names why, and the job counts it.

Model output is hostile input: the reply's size and its JSON nesting depth are bounded
before ``json.loads`` runs (a reply nested 1,000 deep would otherwise raise
``RecursionError``), so one bad reply is one ``ParseError``, never an exception that ends
the run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

REQUIRED_KEYS = ("instruction", "answer")
OPTIONAL_KEYS = ("testbench",)
MAX_FIELD_CHARS = 20_000
MAX_REPLY_CHARS = 4 * MAX_FIELD_CHARS  # the whole reply, before any parsing
MAX_JSON_DEPTH = 16  # a valid reply is depth 1: one object of strings
FENCE_OPEN = re.compile(r"^\s*```\s*([A-Za-z0-9_+.-]*)\s*$")
FENCE_CLOSE = re.compile(r"^\s*```\s*$")
JSON_FENCE = re.compile(r"^```(?:json)?[ \t]*\n(?P<body>.*)\n```$", re.DOTALL)

# Control characters other than tab/LF/CR: line breaks Python splits on (U+000B, U+000C, U+001C-1E,
# U+0085, U+2028/9) would make the code the tools check differ from the text a training example
# holds, and bidirectional overrides (U+202A-E, U+2066-9) make code read otherwise than it runs
# ("Trojan Source").
CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x85\u2028\u2029\u202a-\u202e\u2066-\u2069]")

LANG_ALIASES = {
    "verilog": "verilog", "systemverilog": "verilog", "sv": "verilog", "v": "verilog",
    "yosys": "yosys", "ys": "yosys",
    "tcl": "tcl", "sdc": "sdc",
}


class ParseError(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class CodeBlock:
    lang: str  # as tagged, lower case ('' when untagged)
    kind: str  # verilog | yosys | tcl | sdc | other
    code: str


@dataclass(frozen=True)
class Answer:
    instruction: str
    answer: str
    testbench: str | None = None
    blocks: list[CodeBlock] = field(default_factory=list)

    def blocks_of(self, kind: str) -> list[CodeBlock]:
        return [b for b in self.blocks if b.kind == kind]


def code_blocks(text: str) -> list[CodeBlock]:
    """Fenced blocks of ``text`` in order; an unterminated fence is a ``ParseError``."""
    blocks: list[CodeBlock] = []
    lang: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        if lang is None:
            m = FENCE_OPEN.match(line)
            if m:
                lang, body = m.group(1).lower(), []
        elif FENCE_CLOSE.match(line):
            blocks.append(CodeBlock(lang=lang, kind=LANG_ALIASES.get(lang, "other"), code="\n".join(body) + "\n"))
            lang = None
        else:
            body.append(line)
    if lang is not None:
        raise ParseError("unterminated_fence", f"a ```{lang} block is never closed")
    return blocks


def _normalised(code: str) -> str:
    return "\n".join(line.strip() for line in code.strip().splitlines())


def hidden_code(text: str, blocks: list[CodeBlock]) -> str | None:
    """Why a Markdown renderer would show code in ``text`` that ``blocks`` (what the tools check) do
    not hold, or None. CommonMark (markdown-it-py) also opens fences with four backticks or ``~~~``,
    and indents code by four spaces: such a block would be kept in the answer without ever being
    validated."""
    from markdown_it import MarkdownIt

    shown = [t for t in MarkdownIt("commonmark").parse(text) if t.type in ("fence", "code_block")]
    if [_normalised(t.content) for t in shown] == [_normalised(b.code) for b in blocks]:
        return None
    extra = [t for t in shown if _normalised(t.content) not in {_normalised(b.code) for b in blocks}]
    what = extra[0] if extra else None
    kind = (f"a {what.markup or 'indented'} {what.info.strip() or 'untagged'} block" if what else "its blocks")
    return (f"Markdown shows {len(shown)} code block(s), the validator reads {len(blocks)} (fenced with ``` "
            f"and a language tag): {kind} would be kept unchecked")[:300]


def _unwrap_testbench(text: str) -> str:
    blocks = code_blocks(text)
    if not blocks:
        return text.strip() + "\n"
    if len(blocks) != 1 or blocks[0].kind != "verilog":
        raise ParseError("bad_testbench", "testbench must be Verilog, bare or in one ```verilog fence")
    return blocks[0].code


def json_depth(text: str, limit: int = MAX_JSON_DEPTH) -> int:
    """Deepest ``[``/``{`` nesting of ``text`` outside JSON strings, counted without recursion.

    Stops counting once ``limit`` is exceeded (returns ``limit + 1``).
    """
    depth = deepest = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':  # skip the string, honouring backslash escapes
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif c in "]}":
            depth -= 1
        i += 1
    return deepest


def parse_answer(text: str | None, *, require_testbench: bool = False) -> Answer:
    """Parse a model reply; raise ``ParseError`` (with a ``reason``) when it is malformed."""
    if text is None:
        raise ParseError("empty")
    if not isinstance(text, str):
        raise ParseError("not_text", type(text).__name__)
    if not text.strip():
        raise ParseError("empty")
    if len(text) > MAX_REPLY_CHARS:
        raise ParseError("too_long", f"reply has {len(text)} chars (limit {MAX_REPLY_CHARS})")
    raw = text.strip()
    m = JSON_FENCE.match(raw)
    if m:
        raw = m.group("body").strip()
    if not raw.startswith("{"):
        raise ParseError("not_json", "reply must be one JSON object")
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise ParseError("too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ParseError("not_json", str(exc)[:200]) from exc
    except RecursionError as exc:  # backstop: the depth scan above should make this unreachable
        raise ParseError("too_deep", "JSON nesting exhausted the parser") from exc
    if not isinstance(obj, dict):
        raise ParseError("not_object")
    extra = sorted(set(obj) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if extra:
        raise ParseError("extra_keys", ", ".join(extra))
    for key in REQUIRED_KEYS:
        if key not in obj:
            raise ParseError("missing_key", key)
    for key, value in obj.items():
        if value is None and key in OPTIONAL_KEYS:
            continue
        if not isinstance(value, str):
            raise ParseError("not_string", key)
        if not value.strip():
            raise ParseError("empty_field", key)
        if len(value) > MAX_FIELD_CHARS:
            raise ParseError("too_long", f"{key} has {len(value)} chars")
        odd = CONTROL_CHARS.search(value)
        if odd:
            raise ParseError("control_char", f"{key} holds U+{ord(odd.group()):04X} at {odd.start()}")
    testbench = obj.get("testbench")
    if require_testbench and not testbench:
        raise ParseError("missing_testbench")
    blocks = code_blocks(obj["answer"])
    if any(b.lang == "" for b in blocks):
        raise ParseError("untagged_fence", "every code block needs a language tag")
    hidden = hidden_code(obj["answer"], blocks)
    if hidden:
        raise ParseError("hidden_code", hidden)
    code_blocks(obj["instruction"])  # fences in the question must at least be closed
    return Answer(
        instruction=obj["instruction"].strip(),
        answer=obj["answer"].strip(),
        testbench=_unwrap_testbench(testbench) if testbench else None,
        blocks=blocks,
    )
