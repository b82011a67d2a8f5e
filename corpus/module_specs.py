"""Behavioural specifications written by a synthesis engine from each module, kept only when the
module can be regenerated from them (the MG-Verilog / CodeV pattern).

Without an engine the dataset job builds the "write this module" spec from the author's comment,
the ports, the parameters and the submodules (``corpus.dataset.spec_text``), and skips modules whose
comment describes nothing (``description_too_short``). With one (the dataset job's
``module_specs.engine``), every module ``ModuleStage`` would build examples of, or would skip only
as ``description_too_short`` (:func:`eligible`: a ``module`` of at most ``max_source_chars``), gets
two rounds with the same engine:

1. :func:`prompt_row` (round 0): the module source → a behavioural specification (what it does,
   interface semantics, timing and reset behaviour) as one JSON object ``{"description": ...}``,
   without code. The module rides along in the prompt's ``seed_json`` (engines pass it through).
2. :func:`describe` checks the reply strictly: size caps, the exact shape, at least
   ``min_description_words`` words, no code in it (a fence, ``module``/``endmodule``, ``assign``,
   ``always @`` ...: the module body) and no run of ``max_shared_tokens`` tokens in common with the
   module's code (comments dropped: restating the author's comment is not copying code).
3. :func:`regen_row` (round 1): the description plus the module's header (ports and parameters)
   → "write this module". :func:`regen_reason` extracts the Verilog, refuses unsafe code
   (``evaluation.simulate.unsafe_or_refused``), compiles it with ``iverilog -g2012`` inside the
   sandbox (``synthesis.sandbox.run``; a submodule the module instantiates is allowed to be missing)
   and requires the module of the same name with the same ports (names and directions, parsed by
   ``corpus.verilog``).

A description that passes becomes the spec of a ``write_module`` example (``spec_text`` with the
engine's description as the behaviour, the original module as the answer, the generator in
``provenance.generator``, the module's repository as its group so splits hold). A dropped one is a
skip row ``module_spec_<reason>`` of the module's group (per module: the reply's first failure),
and a module whose author did describe it keeps its comment-based ``write_module`` example as the
fallback (``keep_fallback`` keeps it beside a kept one too). The ``outcome`` column
(:func:`tally`) gives the ``module_specs`` report its prompted / kept / dropped counts.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
from pydantic import Field

from chipforge.config import Config
from chipforge.vocab import content_hash
from corpus.dataset import (MODULE_REQUIRED, TAGGED_SCHEMA, ModuleStage, describable, make_example,
                            module_examples, module_skip_reason, spec_text, split_header, validate_rows)
from corpus.doc_questions import load_json_reply
from corpus.schema import MODULES_SCHEMA
from corpus.splits import module_group
from synthesis.engines import EngineConfig

TASK = "write_module"  # the same task as the comment-based spec (corpus.dataset.module_examples)
TEMPLATE = "module_specs@v1"
REGEN_TEMPLATE = "module_specs_regen@v1"
SKIP_PREFIX = "module_spec_"  # skip reason of a dropped description: module_spec_<reason>
MODULE_FIELDS = ("id", "repo", "commit", "path", "start_line", "end_line", "url", "license", "name", "kind",
                 "comment", "ports", "parameters", "instances", "source")
OUTCOME_SCHEMA = pa.schema([*TAGGED_SCHEMA, pa.field("outcome", pa.string())])
SYSTEM = ("You write specifications of hardware modules for engineers who will implement them. "
          "Describe behaviour in prose; never write code. Reply with one JSON object and nothing else.")
REGEN_SYSTEM = "You are a hardware engineer. You write synthesizable Verilog/SystemVerilog from specifications."


class ModuleSpecsConfig(Config):
    """The dataset job's ``module_specs`` block: engine-written behavioural specifications per module."""

    engine: EngineConfig | None = None  # None: the comment-based spec only (no generation)
    max_source_chars: int = Field(12_000, ge=200)  # longer modules are not described (nor prompted)
    max_reply_chars: int = Field(8000, ge=100)
    min_description_words: int = Field(15, ge=1)
    max_description_chars: int = Field(4000, ge=100)
    max_shared_tokens: int = Field(8, ge=3)  # a run this long in common with the module's code: copied
    max_regen_chars: int = Field(40_000, ge=200)
    compile_timeout_s: float = Field(20.0, gt=0)
    keep_fallback: bool = False  # also keep the comment-based spec for described modules that keep an engine spec


# ----------------------------------------------------------------------------- prompts

def eligible(row: Mapping[str, Any], reason: str | None, max_source_chars: int) -> bool:
    """Whether a module (with ``ModuleStage``'s skip ``reason``) gets an engine description: one
    that would have examples, or is skipped only because its author did not describe it; a
    ``module`` (packages and interfaces have no port list to regenerate) no longer than the cap."""
    return reason in (None, "description_too_short") and (row.get("kind") or "module") == "module" \
        and len(row.get("source") or "") <= max_source_chars


def prompted(row: Mapping[str, Any], reason: str | None, max_source_chars: int) -> bool:
    """:func:`eligible` and with a header to show in round 1: the modules :class:`SpecPromptStage`
    prompts (and ``ModuleStage(specs_max_chars=...)`` leaves the ``write_module`` example of)."""
    return eligible(row, reason, max_source_chars) and header_of(row) is not None


def _lang(src: str) -> str:
    return "systemverilog" if re.search(r"\blogic\b", src) else "verilog"


def prompt_row(row: Mapping[str, Any], phase: str, cfg: ModuleSpecsConfig) -> dict[str, Any]:
    """One ``synthesis.seeds.PROMPT_SCHEMA`` row asking for a behavioural specification of ``row``.
    ``seed_json`` holds the module (``MODULE_FIELDS``) and its split group."""
    src = row["source"]
    user = (f"```{_lang(src)}\n{src}\n```\n\n"
            f"Write a behavioural specification of the {row['name']} module above, from which an engineer could "
            "implement it without seeing this code:\n"
            "- what it does (its function, as an engineer would describe it);\n"
            "- what each port and parameter means (its role, not only its width);\n"
            "- timing and reset behaviour: which clock edge, synchronous or asynchronous reset and the reset "
            "values, latency, what happens when enables or valid signals are low.\n"
            "Rules: prose only. Do not copy lines of the code, do not write Verilog, no code blocks. "
            "Refer to ports and parameters by their names.\n\n"
            'Reply with one JSON object: {"description": "..."}')
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    module = {k: row.get(k) for k in MODULE_FIELDS}
    seed = {"module": module, "group": module_group(row)}
    return {"prompt_id": content_hash("module_specs", row.get("id"), TEMPLATE, length=16),
            "round": 0, "phase": phase, "task": TASK, "template_id": TEMPLATE,
            "seed_json": json.dumps(seed), "messages_json": json.dumps(messages)}


def header_of(module: Mapping[str, Any]) -> str | None:
    """The module's declaration header (``module m #(...) (...);``), None when it has none."""
    parts = split_header(module)
    return None if isinstance(parts, str) else parts[0]


def regen_row(gen: Mapping[str, Any], description: str) -> dict[str, Any]:
    """Round 1: the description and the header → "write this module" (``seed_json`` gains the description)."""
    seed = json.loads(gen["seed_json"])
    module = seed["module"]
    lang = _lang(module["source"])
    user = (f"Write the complete {'SystemVerilog' if lang == 'systemverilog' else 'Verilog'} module {module['name']} "
            f"from this specification.\n\nSpecification:\n{description}\n\n"
            f"Keep exactly this interface (module name, parameters and ports):\n```{lang}\n{header_of(module)}\n```\n\n"
            f"Reply with the whole module, from `module` to `endmodule`, in one ```{lang} block.")
    messages = [{"role": "system", "content": REGEN_SYSTEM}, {"role": "user", "content": user}]
    return {"prompt_id": content_hash(gen["prompt_id"], REGEN_TEMPLATE, description, length=16), "round": 1,
            "phase": gen["phase"], "task": TASK, "template_id": REGEN_TEMPLATE,
            "seed_json": json.dumps({**seed, "description": description}), "messages_json": json.dumps(messages)}


class SpecPromptStage:
    """Batch of MODULES_SCHEMA rows → round-0 prompt rows for the :func:`eligible` modules, with
    the phase ``ModuleStage`` (same settings) gives them."""

    def __init__(self, settings: Mapping[str, Any], min_comment_chars: int = 20, max_error_share: float = 0.05,
                 classify: bool = False, model_path: str | None = None, min_confidence: float = 0.6) -> None:
        self.cfg = ModuleSpecsConfig(**settings)
        self.stage = ModuleStage(min_comment_chars, max_error_share, classify, model_path, min_confidence)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from synthesis.seeds import PROMPT_SCHEMA

        table, _ = validate_rows(batch, MODULES_SCHEMA, MODULE_REQUIRED, "repo", "module_specs.modules")
        mods = [r for r in table.to_pylist()
                if prompted(r, module_skip_reason(r, self.stage.min_comment_chars, self.stage.max_error_share),
                            self.cfg.max_source_chars)]
        rows = [prompt_row(r, ph, self.cfg) for r, ph in zip(mods, self.stage.phases(mods))]
        return pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA)


# ----------------------------------------------------------------------------- round 0: the description

class SpecError(ValueError):
    """A description (or its regeneration) that fails a check; ``reason`` is what the report counts."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


_CANNOT = re.compile(r"\b(?:can ?not|can't|unable to)\s+(?:describe|write|determine)|\binsufficient information\b", re.I)
_CODE_IN_PROSE = re.compile(
    r"```|\bendmodule\b|\bendcase\b|\bmodule\s+\w+\s*(?:#\s*)?[(;]|\balways(?:_ff|_comb|_latch)?\s*@|"
    r"\bassign\s+[\w\[\]:.]+\s*=|<=\s*[\w'{(~!]+[^.\n]*;|\b(?:input|output)\s+(?:wire|reg|logic)\b",
    re.I | re.M)
_TOKEN = re.compile(r"[A-Za-z_]\w*|\d+|[^\s\w]")
_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


def parse_description(text: str | None, cfg: ModuleSpecsConfig) -> str:
    """The description of a round-0 reply; raises :class:`SpecError` (``empty``, ``too_long``,
    ``unanswerable``, ``not_json``, ``too_deep``, ``bad_shape``, ``too_short``, ``description_too_long``)."""
    obj = load_json_reply(text, max_chars=cfg.max_reply_chars, max_depth=3, cannot=_CANNOT, error=SpecError)
    if not isinstance(obj, dict) or set(obj) != {"description"} or not isinstance(obj["description"], str):
        raise SpecError("bad_shape", 'want exactly {"description": "..."}')
    desc = obj["description"].strip()
    if len(desc) > cfg.max_description_chars:
        raise SpecError("description_too_long", f"{len(desc)} chars")
    if _CANNOT.search(desc):
        raise SpecError("unanswerable")
    if len(re.findall(r"[A-Za-z]\w*", desc)) < cfg.min_description_words:
        raise SpecError("too_short")
    return desc


def code_tokens(source: str) -> list[str]:
    """Tokens of the module's code, comments dropped (identifiers, numbers, single punctuation)."""
    return _TOKEN.findall(_COMMENTS.sub(" ", source))


def shared_run(description: str, source: str, n: int) -> tuple[str, ...] | None:
    """A run of ``n`` tokens the description has in common with the code, or None."""
    def grams(tokens: list[str]) -> set[tuple[str, ...]]:
        return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}

    common = grams(_TOKEN.findall(description)) & grams(code_tokens(source))
    return min(common) if common else None


def description_reason(description: str, module: Mapping[str, Any], cfg: ModuleSpecsConfig) -> str | None:
    """``contains_code`` (the body, a fence, statements) or ``copies_code`` (a shared token run); None: passes."""
    if _CODE_IN_PROSE.search(description):
        return "contains_code"
    if shared_run(description, module["source"], cfg.max_shared_tokens):
        return "copies_code"
    return None


def describe(gen: Mapping[str, Any], cfg: ModuleSpecsConfig) -> str:
    """The checked description of a round-0 generation row; raises :class:`SpecError`."""
    if gen.get("engine_error"):
        raise SpecError("engine_error")
    desc = parse_description(gen.get("generated_text"), cfg)
    reason = description_reason(desc, json.loads(gen["seed_json"])["module"], cfg)
    if reason:
        raise SpecError(reason)
    return desc


# ----------------------------------------------------------------------------- round 1: regeneration

_UNKNOWN_MODULE = re.compile(r"error: Unknown module type: (\S+)")
def regenerated_code(text: str | None, name: str) -> str | None:
    """The Verilog of a round-1 reply: the fenced block that declares ``module <name>``, else the
    first block with a module, else the bare reply when it is one; None when there is none."""
    from synthesis.parsing import ParseError, code_blocks

    if not text or not text.strip():
        return None
    try:
        blocks = [b.code for b in code_blocks(text) if re.search(r"\bmodule\b", b.code)]
    except ParseError:
        blocks = []
    named = [b for b in blocks if re.search(rf"\bmodule\s+{re.escape(name)}\b", b)]
    if named or blocks:
        return (named or blocks)[0]
    return text.strip() + "\n" if re.match(r"\s*module\b", text) and "endmodule" in text else None


def compile_log(code: str, timeout_s: float) -> tuple[bool, str]:
    """(compiled, log) of ``iverilog -g2012`` on ``code`` in the sandbox."""
    from synthesis import sandbox

    run = sandbox.run(["iverilog", "-g2012", "-o", "regen.vvp", "regen.sv"], {"regen.sv": code},
                      limits=sandbox.Limits(timeout_s=timeout_s))
    return run.ok, run.output


def compiles(code: str, instances: Sequence[str], timeout_s: float) -> bool:
    """Whether ``code`` compiles, allowing only the submodules the original instantiates to be
    missing (they live in other files of the repository)."""
    ok, log = compile_log(code, timeout_s)
    if ok:
        return True
    errors = [ln for ln in log.splitlines() if "error" in ln.lower() and "during elaboration" not in ln]
    return bool(errors) and all((m := _UNKNOWN_MODULE.search(ln)) and m.group(1) in set(instances) for ln in errors)


def port_signature(ports: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    return sorted(((p.get("name") or ""), (p.get("direction") or "")) for p in ports)


def regen_reason(text: str | None, module: Mapping[str, Any], cfg: ModuleSpecsConfig) -> str | None:
    """Why a regenerated module fails, or None: ``regen_no_code``, ``regen_too_long``, ``regen_unsafe``,
    ``regen_compile``, ``regen_name_differs``, ``regen_ports_differ``."""
    from evaluation.simulate import unsafe_or_refused

    code = regenerated_code(text, module["name"])
    if code is None:
        return "regen_no_code"
    if len(code) > cfg.max_regen_chars:
        return "regen_too_long"
    if unsafe_or_refused(code):
        return "regen_unsafe"
    if not compiles(code, module.get("instances") or [], cfg.compile_timeout_s):
        return "regen_compile"
    from corpus.verilog import shared_parser

    try:
        units = [u for u in shared_parser().parse(code, path="regen.sv") if u.get("name") == module["name"]]
    except Exception:  # noqa: BLE001 - parser limits: it compiled, but cannot be compared
        units = []
    if not units:
        return "regen_name_differs"
    if port_signature(units[0].get("ports") or []) != port_signature(module.get("ports") or []):
        return "regen_ports_differ"
    return None


# ----------------------------------------------------------------------------- outcomes

def _rows(module: Mapping[str, Any], phase: str, group: str, outcome: str, skip: str | None = None,
          example: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": example["id"] if example else module.get("id"), "phase": phase, "group": group, "skip": skip,
            "example": json.dumps({**example, "group": group}) if example else None, "outcome": outcome}


def spec_example(module: Mapping[str, Any], description: str, phase: str, generator: str) -> dict[str, Any]:
    """The ``write_module`` example whose spec is ``spec_text`` with the engine's description as the behaviour."""
    base = module_examples(dict(module), phase)[0]  # the comment-based one: its wording, language and provenance
    spec = spec_text({**module, "comment": description})
    user = base["messages"][1]["content"]
    user = user[: user.index("\n\n") + 2] + spec
    return make_example(phase, TASK, user, base["messages"][2]["content"], "verilog_code",
                        {**base["provenance"], "generator": generator}, module.get("license"))


def _fallback(module: Mapping[str, Any], phase: str, group: str, min_comment_chars: int) -> list[dict[str, Any]]:
    if not describable(module, min_comment_chars):
        return []
    return [_rows(module, phase, group, "fallback", example=module_examples(dict(module), phase)[0])]


def dropped(gen: Mapping[str, Any], reason: str, min_comment_chars: int = 20) -> list[dict[str, Any]]:
    """A module's skip row ``module_spec_<reason>`` (outcome ``dropped:<reason>``) and its fallback."""
    seed = json.loads(gen["seed_json"])
    module, group = seed["module"], seed["group"]
    return [_rows(module, gen["phase"], group, f"dropped:{reason}", skip=SKIP_PREFIX + reason),
            *_fallback(module, gen["phase"], group, min_comment_chars)]


def regen_batch(batch: pa.Table, settings: Mapping[str, Any]) -> pa.Table:
    """Round-0 generation rows → round-1 prompt rows of the descriptions that pass (a Ray-free map stage)."""
    from synthesis.seeds import PROMPT_SCHEMA

    cfg = ModuleSpecsConfig(**settings)
    rows = []
    for g in batch.to_pylist():
        try:
            rows.append(regen_row(g, describe(g, cfg)))
        except SpecError:
            pass
    return pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA)


def describe_drops(batch: pa.Table, settings: Mapping[str, Any], min_comment_chars: int = 20) -> pa.Table:
    """Round-0 generation rows → ``OUTCOME_SCHEMA`` rows of the descriptions that fail (and their fallbacks)."""
    cfg = ModuleSpecsConfig(**settings)
    rows: list[dict[str, Any]] = []
    for g in batch.to_pylist():
        try:
            describe(g, cfg)
        except SpecError as exc:
            rows += dropped(g, exc.reason, min_comment_chars)
    return pa.Table.from_pylist(rows, schema=OUTCOME_SCHEMA)


def check_generation(gen: Mapping[str, Any], cfg: ModuleSpecsConfig, generator: str | None = None,
                     min_comment_chars: int = 20) -> list[dict[str, Any]]:
    """A round-1 generation row → tagged rows: the engine-spec ``write_module`` example (``kept``)
    when the regenerated module compiles with the same ports, else the skip row ``module_spec_<reason>``
    (and the fallback); ``keep_fallback`` adds the comment-based example beside a kept one."""
    seed = json.loads(gen["seed_json"])
    module, group, phase = seed["module"], seed["group"], gen["phase"]
    reason = "regen_engine_error" if gen.get("engine_error") else regen_reason(gen.get("generated_text"), module, cfg)
    if reason:
        return dropped(gen, reason, min_comment_chars)
    ex = spec_example(module, seed["description"], phase, generator or TEMPLATE)
    out = [_rows(module, phase, group, "kept", example=ex)]
    if cfg.keep_fallback:
        out += _fallback(module, phase, group, min_comment_chars)
    return out


def check_batch(batch: pa.Table, settings: Mapping[str, Any], generator: str | None = None,
                min_comment_chars: int = 20) -> pa.Table:
    """Round-1 generation rows (``GENERATION_SCHEMA``) → ``OUTCOME_SCHEMA`` rows (a Ray-free map stage)."""
    cfg = ModuleSpecsConfig(**settings)
    rows = [r for g in batch.to_pylist() for r in check_generation(g, cfg, generator, min_comment_chars)]
    return pa.Table.from_pylist(rows, schema=OUTCOME_SCHEMA)


def run_local(prompts: pa.Table, engine: Any, settings: Mapping[str, Any], generator: str | None = None,
              min_comment_chars: int = 20) -> pa.Table:
    """Both rounds without Ray: prompt rows → ``engine`` (prompt rows → generation rows) → outcomes."""
    gens = engine(prompts)
    regen = regen_batch(gens, settings)
    parts = [describe_drops(gens, settings, min_comment_chars)]
    if regen.num_rows:
        parts.append(check_batch(engine(regen), settings, generator, min_comment_chars))
    return pa.concat_tables(parts)


def tally(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``module_specs`` report from ``(phase, outcome)`` rows: per phase and in total, modules
    described (prompted), kept, comment-based fallbacks, and drops by reason."""
    per: dict[str, Counter[str]] = {}
    for r in rows:
        per.setdefault(r["phase"], Counter())[r["outcome"]] += 1

    def block(cs: Sequence[Counter[str]]) -> dict[str, Any]:
        c = sum(cs, Counter())
        drops = {k.split(":", 1)[1]: v for k, v in c.items() if k.startswith("dropped:")}
        return {"prompted": c["kept"] + sum(drops.values()), "kept": c["kept"], "fallback": c["fallback"],
                "dropped": dict(sorted(drops.items()))}

    return {**block(list(per.values())), "per_phase": {p: block([c]) for p, c in sorted(per.items())}}


def without_outcome(table: pa.Table) -> pa.Table:
    """The tagged rows as ``corpus.dataset.TAGGED_SCHEMA`` (the ``outcome`` column dropped)."""
    return table.select(TAGGED_SCHEMA.names).cast(TAGGED_SCHEMA)
