"""Synthesis test fixtures: canned known-good answers, an OpenAI-compatible canned server on
127.0.0.1 (aiohttp, in a thread), and a tiny random model built in-process.

The canned server picks an answer kind from the prompt text and serves that kind's variants in
turn, so consecutive answers differ (the job's near-dup filter sees distinct examples). Magic
topics drive failures: ``SERVER-ERROR-500`` (500 with a JSON error body), ``RATE-LIMIT-429``
(429 on the first attempt, then a good answer), ``GARBAGE-REPLY`` (prose, not JSON),
``BAD-VERILOG`` (a design that does not compile).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chat_server import ChatServer

# ----------------------------------------------------------------------------- answers

TB_TEMPLATE = """module tb;
{decls}
  integer errors = 0;
  initial begin
{body}
    if (errors == 0) $display("TEST PASSED"); else $display("TEST FAILED");
    $finish;
  end
endmodule
"""

VERILOG = [
    (
        "Write a Verilog module `cf_add8` that adds two 8-bit inputs `a` and `b` and drives the 9-bit sum `s`.",
        "module cf_add8(input [7:0] a, input [7:0] b, output [8:0] s);\n  assign s = a + b;\nendmodule\n",
        TB_TEMPLATE.format(
            decls="  reg [7:0] a, b; wire [8:0] s;\n  cf_add8 dut(.a(a), .b(b), .s(s));",
            body="    a = 8'd200; b = 8'd100; #1; if (s !== 9'd300) errors = errors + 1;\n"
                 "    a = 8'd3; b = 8'd4; #1; if (s !== 9'd7) errors = errors + 1;",
        ),
    ),
    (
        "Design `cf_cnt4`, a 4-bit counter with active-high synchronous reset `rst` and enable `en`, clocked on "
        "the rising edge of `clk`, output `q`.",
        "module cf_cnt4(input clk, input rst, input en, output reg [3:0] q);\n"
        "  always @(posedge clk) begin\n    if (rst) q <= 4'd0;\n    else if (en) q <= q + 4'd1;\n  end\n"
        "endmodule\n",
        TB_TEMPLATE.format(
            decls="  reg clk = 0, rst = 1, en = 0; wire [3:0] q;\n  cf_cnt4 dut(.clk(clk), .rst(rst), .en(en), .q(q));\n"
                  "  always #5 clk = ~clk;",
            body="    @(negedge clk); rst = 0; en = 1;\n    repeat (3) @(negedge clk);\n"
                 "    if (q !== 4'd3) errors = errors + 1;",
        ),
    ),
    (
        "Implement `cf_par16`, which outputs in `p` the even parity bit of the 16-bit input `d` (XOR of all bits).",
        "module cf_par16(input [15:0] d, output p);\n  assign p = ^d;\nendmodule\n",
        TB_TEMPLATE.format(
            decls="  reg [15:0] d; wire p;\n  cf_par16 dut(.d(d), .p(p));",
            body="    d = 16'h0001; #1; if (p !== 1'b1) errors = errors + 1;\n"
                 "    d = 16'h0303; #1; if (p !== 1'b0) errors = errors + 1;",
        ),
    ),
]

YOSYS = [
    ("How do I synthesise cf_top with Yosys and print cell statistics?",
     "read_verilog cf_counter.v cf_alu.v cf_top.v\nhierarchy -check -top cf_top\nsynth -top cf_top\nstat\n"),
    ("How can I flatten the design and write a netlist without attributes using Yosys?",
     "read_verilog cf_counter.v cf_alu.v cf_top.v\nsynth -flatten -top cf_top\nopt_clean -purge\n"
     "write_verilog -noattr netlist.v\n"),
    ("Which Yosys passes check for problems such as undriven wires before synthesis?",
     "read_verilog cf_counter.v cf_alu.v cf_top.v\nhierarchy -top cf_top\nproc\nopt\ncheck -assert\n"),
]

SDC = [
    ("Write SDC constraints for a 100 MHz clock on clk with 2 ns input and output delays.",
     "create_clock -name clk -period 10 [get_ports clk]\nset_input_delay 2 -clock clk [all_inputs]\n"
     "set_output_delay 2 -clock clk [all_outputs]\n"),
    ("How do I make rst_n a false path and add clock uncertainty in SDC?",
     "create_clock -name core -period 5 [get_ports clk]\nset_false_path -from [get_ports rst_n]\n"
     "set_clock_uncertainty 0.2 [get_clocks core]\n"),
    ("How do I constrain loads and input transitions for all outputs and inputs of cf_top?",
     "create_clock -name clk -period 8 [get_ports clk]\nset_load 0.05 [all_outputs]\n"
     "set_input_transition 0.1 [all_inputs]\nset_max_fanout 16 [current_design]\n"),
]

STA_TIMING = [
    ("How do I report the worst setup paths of cf_top in OpenSTA?",
     "read_liberty cells.lib\nread_verilog netlist.v\nlink_design cf_top\nread_sdc cf_top.sdc\n"
     "report_checks -path_delay max -group_path_count 5\nreport_wns\n"),
    ("How can I list the total negative slack per clock in OpenSTA?",
     "foreach clk_name {clk} {\n  puts \"clock $clk_name\"\n}\nreport_tns\nreport_worst_slack -max\n"),
]

STA_POWER = [
    ("How do I report power for cf_top in OpenSTA with a default input activity?",
     "read_liberty cells.lib\nread_verilog netlist.v\nlink_design cf_top\n"
     "set_power_activity -input -activity 0.1\nreport_power\n"),
    ("How can I annotate switching activity from a VCD before a power report in OpenSTA?",
     "read_vcd -scope tb/dut sim.vcd\nreport_power -digits 4\n"),
]

OPENROAD_PLACE = [
    ("How do I run global and detailed placement in OpenROAD with a target density?",
     "global_placement -density 0.6\ndetailed_placement\ncheck_placement -verbose\n"),
    ("How can I add placement padding and place pins before global placement in OpenROAD?",
     "set_placement_padding -global -left 1 -right 1\nplace_pins -hor_layers metal3 -ver_layers metal2\n"
     "global_placement\n"),
]

OPENROAD_ROUTE = [
    ("How do I restrict routing layers and run global routing in OpenROAD?",
     "set_routing_layers -signal metal2-metal6 -clock metal4-metal6\nglobal_route -verbose\n"
     "write_guides route.guide\n"),
    ("How do I reduce congestion on lower layers before detailed routing in OpenROAD?",
     "set_global_routing_layer_adjustment metal2 0.5\nglobal_route\ndetailed_route -output_drc drc.rpt\n"),
]


def fenced(lang: str, code: str) -> str:
    return f"```{lang}\n{code.rstrip()}\n```"


def good_reply(kind: str, variant: int) -> str:
    """A canned model reply (strict JSON) that passes every tool check."""
    if kind == "verilog":
        instr, code, tb = VERILOG[variant % len(VERILOG)]
        return json.dumps({"instruction": instr, "answer": "Here is the design.\n\n" + fenced("verilog", code),
                           "testbench": tb})
    table = {"yosys": (YOSYS, "yosys"), "sdc": (SDC, "sdc"), "sta_timing": (STA_TIMING, "tcl"),
             "sta_power": (STA_POWER, "tcl"), "or_place": (OPENROAD_PLACE, "tcl"), "or_route": (OPENROAD_ROUTE, "tcl")}
    items, lang = table[kind]
    instr, code = items[variant % len(items)]
    return json.dumps({"instruction": instr, "answer": "Use this script:\n\n" + fenced(lang, code)})


def kind_of_prompt(user: str) -> str:
    if "design task" in user:
        return "verilog"
    if "Yosys" in user:
        return "yosys"
    if "timing constraints" in user:
        return "sdc"
    if "OpenROAD" in user:
        return "or_place" if "about placement" in user else "or_route"
    if "OpenSTA" in user:
        return "sta_power" if "power analysis" in user else "sta_timing"
    raise ValueError(f"canned server: cannot tell the task from the prompt: {user[:200]}")


def reply_for(user: str, variant: int | None = None) -> str:
    """The canned reply; ``variant`` defaults to one derived from the prompt text."""
    if "GARBAGE-REPLY" in user:
        return "Sure! Here is a great example of a synthesis script for you."
    kind = kind_of_prompt(user)
    if variant is None:
        variant = int(hashlib.sha256(user.encode()).hexdigest()[:8], 16)
    if "BAD-VERILOG" in user:
        return json.dumps({"instruction": "Write a broken module.", "answer": fenced(
            "verilog", "module cf_bad(input a, output y);\n  assign y = a & undefined_net;\nendmodule"),
            "testbench": "module tb; initial begin $display(\"TEST PASSED\"); $finish; end endmodule"})
    return good_reply(kind, variant)


# ----------------------------------------------------------------------------- server

class CannedServer(ChatServer):
    """OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1, in a background thread."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []
        self.seen_429: set[str] = set()
        self.served: dict[str, int] = {}  # answers served per kind: the next variant in turn

    async def _handle(self, request):
        from aiohttp import web

        payload = await request.json()
        user = next((m["content"] for m in payload.get("messages", []) if m["role"] == "user"), "")
        key = hashlib.sha256(user.encode()).hexdigest()
        entry = {"path": request.path, "auth": request.headers.get("Authorization"),
                 "content_type": request.headers.get("Content-Type"), "payload": payload, "key": key}
        if "SERVER-ERROR-500" in user:
            entry["status"] = 500
            self.requests.append(entry)
            return web.json_response({"error": {"message": "canned internal error", "type": "server_error"}},
                                     status=500)
        if "RATE-LIMIT-429" in user and key not in self.seen_429:
            self.seen_429.add(key)
            entry["status"] = 429
            self.requests.append(entry)
            return web.json_response({"error": {"message": "slow down"}}, status=429)
        entry["status"] = 200
        kind = "garbage" if "GARBAGE-REPLY" in user else kind_of_prompt(user)
        variant = self.served.get(kind, 0)
        self.served[kind] = variant + 1
        content = reply_for(user, variant)
        entry["reply"] = content
        self.requests.append(entry)
        return web.json_response({
            "id": "cmpl-" + key[:8], "object": "chat.completion", "model": payload.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(user.split()), "completion_tokens": len(content.split())},
        })


@pytest.fixture()
def canned_server() -> Iterator[CannedServer]:
    server = CannedServer().start()
    yield server
    server.stop()


class SlowServer(CannedServer):
    """The canned server answering each request after ``delay_s`` (an overloaded or rate-limiting endpoint);
    ``arrived`` counts the requests that reached it."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s, self.arrived = delay_s, 0

    async def _handle(self, request):
        import asyncio

        self.arrived += 1
        await asyncio.sleep(self.delay_s)
        return await super()._handle(request)


@pytest.fixture()
def slow_server() -> Iterator[SlowServer]:
    server = SlowServer(delay_s=2.0).start()
    yield server
    server.stop()


# ----------------------------------------------------------------------------- tiny model

TOKENIZER_TEXTS = [
    "module counter(input clk, output reg [3:0] q); always @(posedge clk) q <= q + 1; endmodule",
    '{"instruction": "Write a Yosys script", "answer": "```yosys\\nread_verilog top.v\\nsynth\\n```"}',
    "create_clock -name clk -period 10 [get_ports clk] set_input_delay 2 report_checks report_power",
    "You are an expert ASIC engineer. Reply with exactly ONE JSON object and nothing else.",
    "global_placement detailed_placement global_route detailed_route set_routing_layers",
] * 4


def build_tiny_model(path: Path) -> str:
    from training.tiny import save_tiny_model

    return save_tiny_model(str(path), TOKENIZER_TEXTS, vocab_size=300, hidden_size=32, num_layers=1, num_heads=2,
                           max_position_embeddings=1024)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")
