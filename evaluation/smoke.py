"""The users' acceptance prompts, shipped as a smoke suite (``evaluation/data/smoke.json``).

Items (all written for this project):

- ``verilog``: a design prompt (4-bit counter, ALU with 8 operations, FIFO buffer, fix a syntax
  error) with a testbench (``data/smoke/*_tb.v``) and a reference answer (``*_ref.v``). The answer
  is simulated like a benchmark problem (``harness: smoke``): pass = the testbench prints
  ``TEST PASSED`` and not ``TEST FAILED``.
- ``text``: explain a module's interface; passes when the answer names every ``expect_terms``
  entry (whole words); ROUGE-L and chrF against the reference explanation are reported too.
- ``routing``: a user request and the phase a router must send it to ("How do I optimize for
  power?" → ``power_analysis``, ...), asked of the phase classifier and, where registered, the
  triage specialist and its base.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

from evaluation.benchmarks import SMOKE_FAIL, SMOKE_PASS

DATA = resources.files("evaluation") / "data"


def load_suite() -> dict[str, Any]:
    suite = json.loads((DATA / "smoke.json").read_text())
    for item in suite["items"]:
        for key in ("testbench", "reference"):
            if item.get(key):
                item[key + "_text"] = (DATA / item[key]).read_text()
    return suite


def problem(item: dict[str, Any]) -> dict[str, Any]:
    """A ``verilog`` smoke item as a problem dict (``evaluation.benchmarks``' format, ``harness: smoke``)."""
    top = item["top"]
    return {
        "key": f"smoke/{item['id']}", "benchmark": "smoke", "id": item["id"], "harness": "smoke", "task": "smoke",
        "top": top, "prompt": item["prompt"], "header": None, "answer_file": f"{top}.v",
        "files": {"tb.v": item["testbench_text"]},
        "compile_argv": ["iverilog", "-g2012", "-s", "tb", "-o", "sim.vvp", "tb.v", f"{top}.v"],
        "pass_regex": re.escape(SMOKE_PASS), "fail_regex": re.escape(SMOKE_FAIL), "verdict_regex": None,
        "reference": item["reference_text"],
    }


def missing_terms(answer: str | None, terms: list[str]) -> list[str]:
    """``terms`` the answer does not name as whole words (case-sensitive identifiers)."""
    text = answer or ""
    return [t for t in terms if not re.search(rf"(?<![A-Za-z0-9_]){re.escape(t)}(?![A-Za-z0-9_])", text)]
