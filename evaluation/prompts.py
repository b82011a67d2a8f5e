"""Prompt rows: every prompt built once and copied to each model, with identical sampling.

A row is one (prompt, model) pair in ``evaluation.models.PROMPT_SCHEMA``: ``prompt_id`` hashes
what identifies the prompt (kind, suite, item, sample index) and is the same for every model,
``row_id`` adds the model. Kinds: ``loss`` (the whole conversation, teacher-forced), ``generation``
(the test split's prompt; the reference reply in ``target_json``), ``benchmark`` (one greedy row
and ``benchmarks.n_samples`` sampled rows per problem), ``smoke`` and ``routing``. The self-check's
``reference`` rows are already answered (:func:`reference_row`) and skip the engines.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from chipforge import fs
from chipforge.vocab import PHASES, SYSTEM_PROMPTS
from evaluation import benchmarks as bench
from evaluation.models import ModelSpec, engine_row

REFERENCE = "reference"


def row_hash(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:20]


class Rows:
    """Prompt rows: one prompt copied to each model, with identical messages and sampling."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, kind: str, suite: str, item_id: str, messages: list[dict[str, str]], models: Sequence[str], *,
            sampling: Mapping[str, Any], sample: int = -1, target: Mapping[str, Any] | None = None) -> None:
        prompt_id = row_hash(kind, suite, item_id, sample)
        text = json.dumps(messages, ensure_ascii=False)
        for model in models:
            self.rows.append({
                "row_id": row_hash(prompt_id, model), "prompt_id": prompt_id, "kind": kind, "suite": suite,
                "item_id": item_id, "model": model, "sample": sample, "messages_json": text,
                "temperature": float(sampling["temperature"]), "top_p": float(sampling["top_p"]),
                "max_tokens": int(sampling["max_tokens"]), "seed": sampling.get("seed"),
                "target_json": json.dumps(dict(target or {}), ensure_ascii=False),
            })


def greedy(sampling: Any, max_tokens: int | None = None) -> dict[str, Any]:
    return {"temperature": 0.0, "top_p": 1.0, "max_tokens": max_tokens or sampling.max_tokens,
            "seed": sampling.seed if sampling.seed is not None else 0}


def sampled(sampling: Any, i: int) -> dict[str, Any]:
    return {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens,
            "seed": (sampling.seed if sampling.seed is not None else 0) + i}


def read_split(dataset_dir: str, phase: str, split: str) -> list[dict[str, Any]]:
    """Rows of one phase's split (the dataset job's ``examples/`` and the synthesis job's ``synthetic/``)."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for sub in ("examples", "synthetic"):
        base = fs.join(dataset_dir, sub, f"phase={phase}", f"split={split}")
        for p in fs.listdir(base):
            if p.endswith(".parquet"):
                filesystem, inner = fs.resolve(p)
                with filesystem.open_input_file(inner) as f:
                    rows += pq.read_table(f, columns=["id", "messages"]).to_pylist()
    return sorted({r["id"]: r for r in reversed(rows)}.values(), key=lambda r: r["id"])  # an id once


def dataset_phases(dataset_dir: str | None) -> list[str]:
    if not dataset_dir:
        return []
    found = set()
    for sub in ("examples", "synthetic"):
        for p in fs.listdir(fs.join(dataset_dir, sub)):
            name = p.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("phase="):
                found.add(name.split("=", 1)[1])
    return [p for p in PHASES if p in found]


def split_example(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str] | None:
    """(the prompt: messages before the last assistant reply, that reply) or None without a reply."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or not (messages[last]["content"] or "").strip():
        return None
    return [{"role": m["role"], "content": m["content"]} for m in messages[:last]], messages[last]["content"]


def answer_kind(reply: str) -> str:
    """``verilog`` when the reference reply is Verilog code, else ``text``."""
    fenced = re.search(r"```[ \t]*(?:verilog|systemverilog|sv)\b", reply, re.I)
    if (fenced or bench.MODULE_DECL.search(reply)) and bench.extract_verilog(reply):
        return "verilog"
    return "text"


def build_rows(cfg: Any, specs: Sequence[ModelSpec], phases: Sequence[str], problems: list[dict[str, Any]],
               suite: dict[str, Any] | None, route_items: list[dict[str, Any]]
               ) -> tuple[Rows, list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(prompt rows for the engines, reference rows (self-check, already answered), phase info)."""
    rows = Rows()
    refs: list[dict[str, Any]] = []
    s = cfg.engine.sampling
    bases = [m for m in specs if m.kind == "base"]
    specialist = {m.phase: m for m in specs if m.kind == "specialist"}
    phase_info: dict[str, dict[str, Any]] = {}

    def phase_models(phase: str) -> list[str]:
        sp = specialist.get(phase)
        return [sp.name, sp.base] if sp else [b.name for b in bases]

    for phase in phases:
        info: dict[str, Any] = {"specialist": specialist[phase].name if phase in specialist else None,
                                "models": phase_models(phase) if specs else []}
        examples, used = [], None
        if cfg.dataset_dir:
            for split in [cfg.split] + ([cfg.fallback_split] if cfg.fallback_split else []):
                examples = read_split(cfg.dataset_dir, phase, split)
                if examples:
                    used = split
                    break
        info.update(split=used, split_fallback=used is not None and used != cfg.split, n_examples=len(examples))
        phase_info[phase] = info
        if not specs or not examples:
            continue
        models = phase_models(phase)
        parsed = [(e["id"], split_example(e["messages"] or [])) for e in examples]
        parsed = [(i, p) for i, p in parsed if p is not None]
        if cfg.loss.enabled:
            chosen = parsed[: cfg.loss.max_examples] if cfg.loss.max_examples else parsed
            info["loss_examples"] = len(chosen)
            for eid, (prompt, reply) in chosen:
                rows.add("loss", phase, eid, prompt + [{"role": "assistant", "content": reply}], models,
                         sampling=greedy(s))
        if cfg.generation.enabled:
            chosen = parsed[: cfg.generation.max_examples] if cfg.generation.max_examples else parsed
            kinds = Counter()
            for eid, (prompt, reply) in chosen:
                k = answer_kind(reply)
                kinds[k] += 1
                rows.add("generation", phase, eid, prompt, models, sampling=greedy(s),
                         target={"answer_kind": k, "reference": reply})
            info["generation_examples"] = dict(kinds)

    bench_models = [b.name for b in bases] + [m.name for m in specs if m.kind == "specialist" and (
        cfg.benchmarks.models is None or m.name in cfg.benchmarks.models)]
    for p in problems:
        msgs = bench.messages(p)
        target = {"problem": p["key"]}
        if specs:
            rows.add("benchmark", p["benchmark"], p["id"], msgs, bench_models, sampling=greedy(s), target=target)
            for i in range(cfg.benchmarks.n_samples):
                rows.add("benchmark", p["benchmark"], p["id"], msgs, bench_models, sampling=sampled(s, i), sample=i,
                         target=target)
        if cfg.reference:
            refs.append(reference_row("benchmark", p["benchmark"], p["id"], msgs, p["reference"],
                                      {**target, "raw": True}))

    triage = specialist.get("triage")
    routers = [triage.name, triage.base] if triage else []
    if suite is not None:
        for item in suite["items"]:
            if item["kind"] == "routing":
                msgs = [{"role": "system", "content": SYSTEM_PROMPTS["triage"]},
                        {"role": "user", "content": item["prompt"]}]
                if routers:
                    rows.add("routing", "smoke", item["id"], msgs, routers,
                             sampling=greedy(s, cfg.routing.max_tokens), target={"expected": item["expected_phase"]})
                continue
            msgs = [{"role": "system", "content": SYSTEM_PROMPTS[item["phase"]]},
                    {"role": "user", "content": item["prompt"]}]
            if item["kind"] == "verilog":
                target = {"problem": f"smoke/{item['id']}"}
            else:
                target = {"expect_terms": item.get("expect_terms", []), "reference": item.get("reference_text", "")}
            if specs:
                rows.add("smoke", "smoke", item["id"], msgs, [m.name for m in specs], sampling=greedy(s),
                         target=target)
            if cfg.reference:
                refs.append(reference_row("smoke", "smoke", item["id"], msgs, item["reference_text"],
                                          {**target, "raw": True}))
    if routers:
        for item in route_items:
            msgs = [{"role": "system", "content": SYSTEM_PROMPTS["triage"]}, {"role": "user", "content": item["text"]}]
            rows.add("routing", "phase_eval", item["id"], msgs, routers, sampling=greedy(s, cfg.routing.max_tokens),
                     target={"expected": item["phase"]})
    return rows, refs, phase_info


def reference_row(kind: str, suite: str, item_id: str, messages: list[dict[str, str]], answer: str,
                  target: Mapping[str, Any]) -> dict[str, Any]:
    """A self-check row: the problem answered by its own reference solution (no engine)."""
    prompt_id = row_hash(kind, suite, item_id, -1)
    row = {"row_id": row_hash(prompt_id, REFERENCE), "prompt_id": prompt_id, "kind": kind, "suite": suite,
           "item_id": item_id, "model": REFERENCE, "sample": -1,
           "messages_json": json.dumps(messages, ensure_ascii=False),
           "temperature": None, "top_p": None, "max_tokens": None, "seed": None,
           "target_json": json.dumps(dict(target))}
    return engine_row(row, completion=answer, prompt_sha=None)
