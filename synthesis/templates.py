"""Versioned prompt templates, one per (phase, task kind).

A template turns a seed (documentation chunk, module record or topic) into chat messages
asking the model for ONE example in the strict JSON format of ``parsing``. Its ``id``
(``phase/task@vN``) goes into every kept row's ``provenance.generator``, so a change of
wording is a new version and old rows stay traceable. ``requires`` names the code kinds
the answer must contain (each is validated by a tool); ``tool`` picks the documented
command list for Tcl; ``testbench`` asks for a self-checking testbench that is simulated.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any, Literal

SeedKind = Literal["doc", "module", "topic"]

PASS_MARKER = "TEST PASSED"
FAIL_MARKER = "TEST FAILED"

SYSTEM = textwrap.dedent(
    """\
    You are an expert ASIC/FPGA design and EDA tool engineer who writes training examples for
    an assistant. Reply with exactly ONE JSON object and nothing else, with these string fields:
      "instruction": a self-contained request a user could send (no reference to 'the text above'),
      "answer": the ideal reply; every piece of code goes in a fenced block tagged with its
        language (```verilog, ```yosys, ```tcl or ```sdc) and must run as written.
    Do not add other fields unless asked. Escape newlines inside JSON strings as \\n."""
)


@dataclass(frozen=True)
class Template:
    phase: str
    task: str
    version: int
    seed_kind: SeedKind
    body: str  # str.format fields: see ``render``
    requires: tuple[str, ...]  # code kinds: verilog | yosys | tcl | sdc
    tool: str | None = None  # tcl command list: opensta | openroad | sdc
    testbench: bool = False

    @property
    def id(self) -> str:
        return f"{self.phase}/{self.task}@v{self.version}"

    def render(self, seed: dict[str, Any], design: dict[str, str]) -> list[dict[str, str]]:
        """Chat messages (system, user) for ``seed``; ``design`` describes the shipped design."""
        fields = {
            "topic": seed.get("topic", ""),
            "doc_title": seed.get("title") or "",
            "doc_tool": seed.get("tool") or "",
            "doc_text": seed.get("text", ""),
            "module_source": seed.get("source", ""),
            "module_name": seed.get("name", ""),
            "design_files": design.get("files", ""),
            "design_top": design.get("top", ""),
            "design_ports": design.get("ports", ""),
            "pass_marker": PASS_MARKER,
            "fail_marker": FAIL_MARKER,
        }
        user = self.body.format(**fields).strip()
        if self.testbench:
            user += "\n\n" + TESTBENCH_RULES.format(**fields)
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


TESTBENCH_RULES = textwrap.dedent(
    """\
    Also add a third JSON field "testbench": a self-checking Verilog testbench (module `tb`) for
    your design. It must print "{pass_marker}" when every check passes, print "{fail_marker}" on
    any mismatch, and call $finish within 10000 time units. Use no file I/O and no $system."""
)

_DOC = textwrap.dedent(
    """\
    Documentation excerpt ({doc_tool}: {doc_title}):
    ---
    {doc_text}
    ---
    """
)

_RTL_REFERENCE = textwrap.dedent(
    """\
    Here is a Verilog module `{module_name}` from an open-source project:
    ```verilog
    {module_source}
    ```
    Write a NEW design task inspired by it (do not copy it): the instruction specifies the module
    name, every port with direction and width, and the exact behaviour (reset, clocking). The
    answer explains the design briefly and gives the complete implementation in ONE ```verilog
    block (synthesizable Verilog-2005 or SystemVerilog, no vendor primitives)."""
)

_RTL_TOPIC = textwrap.dedent(
    """\
    Topic: {topic}
    Write a design task on this topic: the instruction specifies the module name, every port with
    direction and width, and the exact behaviour (reset, clocking). The answer explains the design
    briefly and gives the complete implementation in ONE ```verilog block (synthesizable
    Verilog-2005 or SystemVerilog, no vendor primitives)."""
)

_YOSYS = textwrap.dedent(
    """\
    The user's working directory holds the Verilog files {design_files} (top module `{design_top}`).
    Write a question a hardware engineer could ask about logic synthesis with Yosys{focus}, and an
    answer that explains and includes a complete Yosys script in a ```yosys block. The script must
    run with `yosys -s script.ys` in that directory: read only those files by relative name, write
    outputs (if any) to relative file names in the same directory, and use no shell commands."""
)

_TCL = textwrap.dedent(
    """\
    Write a question a physical-design engineer could ask about {what} with {tool_name}{focus}, and
    an answer that explains and includes a {tool_name} Tcl script in a ```tcl block. Use only
    documented {tool_name} commands and plain Tcl (set, foreach, puts, ...); assume the design is
    `{design_top}` with ports {design_ports}; use no exec, open, file or socket commands."""
)

_SDC = textwrap.dedent(
    """\
    Write a question about timing constraints{focus} for the design `{design_top}` with ports
    {design_ports}, and an answer that explains and gives the constraints in a ```sdc block using
    only standard SDC commands (create_clock, set_input_delay, set_false_path, ...)."""
)


def _focus(kind: SeedKind) -> str:
    return " as described in the documentation excerpt above" if kind == "doc" else " on the topic: {topic}"


def _tcl(phase: str, task: str, kind: SeedKind, what: str, tool: str, tool_name: str) -> Template:
    body = _TCL.replace("{what}", what).replace("{tool_name}", tool_name).replace("{focus}", _focus(kind))
    return Template(phase, task, 1, kind, (_DOC if kind == "doc" else "") + body, ("tcl",), tool=tool)


TEMPLATES: dict[str, Template] = {
    t.id: t
    for t in [
        Template("rtl_design", "module_from_reference", 1, "module", _RTL_REFERENCE, ("verilog",), testbench=True),
        Template("rtl_design", "module_from_topic", 1, "topic", _RTL_TOPIC, ("verilog",), testbench=True),
        Template("synthesis", "yosys_script_doc", 1, "doc", _DOC + _YOSYS.replace("{focus}", _focus("doc")),
                 ("yosys",)),
        Template("synthesis", "yosys_script_topic", 1, "topic", _YOSYS.replace("{focus}", _focus("topic")),
                 ("yosys",)),
        _tcl("placement", "openroad_placement_doc", "doc", "placement", "openroad", "OpenROAD"),
        _tcl("placement", "openroad_placement_topic", "topic", "placement", "openroad", "OpenROAD"),
        _tcl("routing", "openroad_routing_doc", "doc", "routing", "openroad", "OpenROAD"),
        _tcl("routing", "openroad_routing_topic", "topic", "routing", "openroad", "OpenROAD"),
        Template("timing_analysis", "sdc_constraints_topic", 1, "topic", _SDC.replace("{focus}", _focus("topic")),
                 ("sdc",), tool="sdc"),
        _tcl("timing_analysis", "opensta_timing_doc", "doc", "static timing analysis", "opensta", "OpenSTA"),
        _tcl("timing_analysis", "opensta_timing_topic", "topic", "static timing analysis", "opensta", "OpenSTA"),
        _tcl("power_analysis", "opensta_power_doc", "doc", "power analysis", "opensta", "OpenSTA"),
        _tcl("power_analysis", "opensta_power_topic", "topic", "power analysis", "opensta", "OpenSTA"),
    ]
}


def templates_for(phase: str, tasks: list[str] | None = None) -> list[Template]:
    """Templates of ``phase`` (all, or those whose task is in ``tasks``), in a stable order."""
    found = [t for t in TEMPLATES.values() if t.phase == phase and (tasks is None or t.task in tasks)]
    return sorted(found, key=lambda t: t.id)


def template_phases() -> list[str]:
    return sorted({t.phase for t in TEMPLATES.values()})
