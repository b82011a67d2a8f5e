"""Router (triage) training data from real questions, labelled by their source, never by a classifier.

The router learns ``user message → {"phase": ...}``. Its examples used to be the dataset's own
template prompts labelled with the phase classifier's predictions (circular: the router could
only learn the classifier's mistakes). Here every label comes from where the text came from:

- Shipped labelled rows (``RouterConfig.questions_paths``): ``corpus/data/phase_train.jsonl``
  (hand-labelled questions, documentation excerpts and module snippets, as users paste them)
  and ``corpus/data/router_questions.jsonl`` (questions written for this project in varied
  styles, with general and off-topic ones labelled ``triage``). The label is the file's.
- Engine-written questions (optional, ``engine`` + ``per_phase``): one prompt per phase, style
  and topic asks a synthesis engine for one user message; the label is the phase the prompt
  asked for (general and off-topic prompts → ``triage``). Generations that failed, are empty,
  too short or long, not text, copy the prompt's wording, or repeat a kept question are dropped
  and counted by reason.
- Held out: ``corpus/data/phase_eval.jsonl`` (``eval_path``) is never a source. Every candidate
  text is compared with every eval text (Jaccard similarity of character 5-gram shingles of
  the normalised text, :func:`similarity`); one at or above ``near_copy`` is dropped
  (``near_eval``), so the router's evaluation stays on questions it never saw.

Splits: the router's own grouping, never the corpus's (a question has no repository). Each
question goes to ``validation`` with probability ``validation_share`` by a hash of its key (the
shipped row id or the engine prompt id), else to ``train``; never to ``test`` (the router's test
set is the held-out eval file). Rows are tagged with group ``router:<split>``
(:func:`is_router_group`) so the dataset job leaves them out of the per-repository cap and
the repository split.

:func:`score_router` trains the :class:`~corpus.phases.PhaseClassifier` on the train examples'
user turns (label: the assistant's JSON) and scores it on the held-out file: the figure the
dataset report carries as ``router.eval``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import Field

from chipforge.config import Config
from chipforge.vocab import PHASES, content_hash, unit_interval
from corpus.dataset import make_example
from corpus.phases import DATA_DIR, EVAL_PATH, TRAIN_PATH, PhaseClassifier, evaluate, load_labelled
from synthesis.engines import EngineConfig

EXTRA_PATH = DATA_DIR / "router_questions.jsonl"
ROUTER_GROUP = "router"  # tagged group of a router example: "router:<split>"
SHIPPED_SOURCE = "labelled_questions"  # EXAMPLES_SCHEMA.source of shipped rows ("synthetic" for engine rows)
SHIPPED_LICENSE = "Apache-2.0"  # the project's own data
TASK = "route"

# What users ask each specialist about: the engine prompt's brief and topic hints.
PHASE_BRIEFS: dict[str, tuple[str, tuple[str, ...]]] = {
    "rtl_design": ("writing, simulating or debugging Verilog/SystemVerilog RTL",
                   ("a state machine", "a FIFO", "a testbench", "a lint or simulator warning", "reset style",
                    "a bus interface", "parameterised modules", "clock-domain crossing in RTL")),
    "synthesis": ("logic synthesis with Yosys and ABC",
                  ("a Yosys script", "technology mapping to a Liberty library", "cell count or area",
                   "flattening and hierarchy", "a synthesis warning", "optimisation passes", "inferred latches")),
    "placement": ("floorplanning and placement in OpenROAD (RePlAce, DREAMPlace)",
                  ("die and core area", "macro placement", "target density", "legalisation errors",
                   "IO pin placement", "tap and endcap cells", "utilisation")),
    "routing": ("global and detailed routing (FastRoute, TritonRoute, Magic)",
                ("DRC violations after routing", "congestion", "routing layers", "antenna violations",
                 "LVS shorts or opens", "parasitic extraction", "vias")),
    "timing_analysis": ("static timing analysis with OpenSTA and SDC constraints",
                        ("setup or hold violations", "clock definitions", "input and output delays",
                         "false and multicycle paths", "reading a timing report", "corners and derates")),
    "power_analysis": ("power analysis, power intent and power grids",
                       ("switching activity", "leakage", "clock gating", "IR drop", "the power grid",
                        "power domains and isolation", "a power report")),
    "triage": ("something that is not about one step of the chip-design flow",
               ("which tool or flow step to use first", "installing or setting up the tools",
                "the assistant itself", "general chip-design background", "a request unrelated to chip "
                "design (cooking, travel, sport, arithmetic, poems)", "a vague problem that names no step")),
}
STYLES: dict[str, str] = {
    "short": "a terse question of at most twelve words, as typed into a search box",
    "detailed": "two or three sentences: what they are doing and what they see, then the question",
    "beginner": "from a student new to chip design, in plain words",
    "error": "quoting one short message a tool printed, then asking what it means or how to fix it",
    "vague": "underspecified: it names no tool and leaves details out",
    "request": "an instruction rather than a question (\"Show me how ...\", \"Give me ...\")",
}
SYSTEM = ("You write realistic messages that users send to a chip-design assistant. Reply with the "
          "message only: no preamble, no quotation marks, no answer.")
_PREFIX = re.compile(r"^(?:\*\*)?(?:user|question|message|q)\s*[:\-]\s*(?:\*\*)?\s*", re.I)


class RouterConfig(Config):
    """Where the router's examples come from (the dataset job's ``router`` block)."""

    questions_paths: list[str] = Field(default_factory=lambda: [str(TRAIN_PATH), str(EXTRA_PATH)])
    kinds: list[str] = Field(default_factory=lambda: ["question", "doc", "module"])  # rows of those kinds
    eval_path: str = str(EVAL_PATH)  # held out: never a source; near copies of its texts are dropped
    engine: EngineConfig | None = None  # None: shipped questions only (no generation)
    per_phase: int = Field(0, ge=0)  # engine-written questions asked for per phase (0: none)
    min_chars: int = Field(8, ge=1)
    max_chars: int = Field(400, ge=1)
    near_copy: float = Field(0.5, gt=0.0, le=1.0)  # similarity to an eval text that counts as a copy
    validation_share: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0


# ----------------------------------------------------------------------------- similarity

def normalise(text: str) -> str:
    """Lower-case words and numbers joined by single spaces (the form compared and deduplicated)."""
    return " ".join(re.findall(r"[a-z0-9_]+", text.lower()))


def shingles(text: str, n: int = 5) -> frozenset[str]:
    """Character ``n``-grams of the normalised text (the whole text when shorter)."""
    t = normalise(text)
    return frozenset(t[i:i + n] for i in range(max(1, len(t) - n + 1)))


def similarity(a: frozenset[str], b: frozenset[str]) -> float:
    """Jaccard similarity of two shingle sets."""
    return len(a & b) / len(a | b) if a or b else 1.0


def near_copies(texts: Sequence[str], others: Sequence[str], threshold: float) -> list[tuple[int, int, float]]:
    """``(i, j, sim)`` for every ``texts[i]`` whose closest ``others[j]`` has similarity ≥ ``threshold``."""
    other_sh = [shingles(o) for o in others]
    out = []
    for i, t in enumerate(texts):
        s = shingles(t)
        best = max(((similarity(s, o), j) for j, o in enumerate(other_sh)), default=(0.0, -1))
        if best[0] >= threshold:
            out.append((i, best[1], round(best[0], 3)))
    return out


# ----------------------------------------------------------------------------- sources

def shipped_questions(paths: Sequence[str], kinds: Sequence[str], phases: Sequence[str] = PHASES) -> list[dict[str, Any]]:
    """Rows of the labelled files whose ``kind`` is in ``kinds`` (a row without kind is a question),
    as candidates ``{"key", "text", "phase", "source", "path", "line", "id"}``; label = the file's."""
    out = []
    for path in paths:
        for line, row in enumerate(load_labelled(path, phases), 1):
            if (row.get("kind") or "question") in kinds:
                out.append({"key": f"{Path(path).name}:{row.get('id') or line}", "text": row["text"].strip(),
                            "phase": row["phase"], "source": SHIPPED_SOURCE, "path": Path(path).name,
                            "line": line, "id": row.get("id"), "generator": None, "kind": row.get("kind") or "question"})
    return out


def prompt_rows(per_phase: int, phases: Sequence[str] = PHASES, seed: int = 0) -> list[dict[str, Any]]:
    """``per_phase`` engine prompts per phase (``synthesis.seeds.PROMPT_SCHEMA`` rows), cycling
    through the styles and the phase's topic hints; ``phase`` is the label of what comes back."""
    rows = []
    styles = list(STYLES)
    for phase in phases:
        brief, topics = PHASE_BRIEFS[phase]
        for i in range(per_phase):
            style, topic = styles[i % len(styles)], topics[(i // len(styles) + i) % len(topics)]
            user = (f"Write one message a user might send about {brief}, on this topic: {topic}. "
                    f"Style: {STYLES[style]}. Make it different from the usual textbook question. "
                    f"(variant {seed}.{i})")
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
            template_id = f"router/{style}"
            rows.append({"prompt_id": content_hash("router", phase, template_id, topic, seed, i, length=16),
                         "round": 0, "phase": phase, "task": "router_question", "template_id": template_id,
                         "seed_json": json.dumps({"topic": topic, "style": style, "index": i}),
                         "messages_json": json.dumps(messages)})
    return rows


def clean_generation(text: str | None) -> str:
    """The user message in a generation: first paragraph, without a ``Question:`` label or quotes."""
    t = (text or "").strip()
    t = _PREFIX.sub("", t).strip()
    t = re.split(r"\n\s*\n", t, maxsplit=1)[0].strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'`":
        t = t[1:-1].strip()
    return t


def _copies_prompt(text: str, prompt: str, n: int = 6) -> bool:
    """True when the text repeats ``n`` consecutive words of the prompt (instructions echoed back)."""
    words, pw = normalise(text).split(), normalise(prompt).split()
    grams = {tuple(pw[i:i + n]) for i in range(len(pw) - n + 1)}
    return any(tuple(words[i:i + n]) in grams for i in range(len(words) - n + 1))


def generation_reason(text: str, prompt: str, min_chars: int, max_chars: int) -> str | None:
    """Why an engine's (cleaned) message is not kept, or None."""
    if not text:
        return "empty"
    if len(text) < min_chars:
        return "too_short"
    if len(text) > max_chars:
        return "too_long"
    letters = sum(c.isalpha() or c.isspace() for c in text)
    if letters < 0.6 * len(text) or len(normalise(text).split()) < 2:
        return "not_text"
    if _copies_prompt(text, prompt):
        return "copies_prompt"
    return None


def engine_questions(prompts: Sequence[dict[str, Any]], generations: Sequence[dict[str, Any]],
                     min_chars: int, max_chars: int, generator: Callable[[str], str] | None = None
                     ) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Generation rows (``GENERATION_SCHEMA``) → candidates labelled by their prompt's phase, and
    the drops by reason. A prompt with no generation counts as ``missing``."""
    by_id = {p["prompt_id"]: p for p in prompts}
    dropped: Counter[str] = Counter()
    out = []
    answered = set()
    for g in generations:
        prompt = by_id.get(g["prompt_id"])
        if prompt is None:
            dropped["unknown_prompt"] += 1
            continue
        answered.add(g["prompt_id"])
        if g.get("engine_error"):
            dropped["engine_error"] += 1
            continue
        user = json.loads(prompt["messages_json"])[-1]["content"]
        text = clean_generation(g.get("generated_text"))
        reason = generation_reason(text, user, min_chars, max_chars)
        if reason:
            dropped[reason] += 1
            continue
        out.append({"key": prompt["prompt_id"], "text": text, "phase": prompt["phase"], "source": "synthetic",
                    "path": None, "line": None, "id": prompt["prompt_id"], "kind": "question",
                    "generator": generator(prompt["template_id"]) if generator else prompt["template_id"]})
    dropped["missing"] += len(set(by_id) - answered)
    return out, +dropped


# ----------------------------------------------------------------------------- examples

def split_for(key: str, validation_share: float, seed: int = 0) -> str:
    """``validation`` for a hash share of keys, else ``train`` (the router never feeds ``test``)."""
    return "validation" if unit_interval(f"{seed}:{ROUTER_GROUP}:{key}") < validation_share else "train"


def is_router_group(group: str | None) -> bool:
    """True for the dataset job's router groups (``router:<split>``)."""
    return bool(group) and group.startswith(ROUTER_GROUP + ":")


def router_example(cand: dict[str, Any], split: str) -> dict[str, Any]:
    """An EXAMPLES_SCHEMA row (``corpus.dataset.make_example``) with ``split`` and tagged ``group``."""
    prov = {"repo": None, "commit": None, "path": cand["path"], "start_line": cand["line"], "end_line": cand["line"],
            "url": None, "section": cand["id"], "generator": cand["generator"]}
    lic = SHIPPED_LICENSE if cand["source"] == SHIPPED_SOURCE else None
    ex = make_example("triage", TASK, cand["text"], json.dumps({"phase": cand["phase"]}), cand["source"], prov, lic)
    return {**ex, "split": split, "group": f"{ROUTER_GROUP}:{split}"}


def build_examples(cfg: RouterConfig, generations: Sequence[dict[str, Any]] | None = None,
                   prompts: Sequence[dict[str, Any]] | None = None, phases: Sequence[str] = PHASES,
                   ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Router examples (shipped first, then engine-written) and a report of counts and drops.

    ``generations``: the engine's rows for ``prompts`` (``prompt_rows(cfg.per_phase)`` when not
    given); None means no engine. Candidates are deduplicated on their normalised text (the first
    wins: shipped before engine-written) and checked against the held-out eval file.
    """
    cands = shipped_questions(cfg.questions_paths, cfg.kinds, phases)
    dropped: Counter[str] = Counter()
    if generations is not None:
        prompts = list(prompts) if prompts is not None else prompt_rows(cfg.per_phase, phases, cfg.seed)
        gen = cfg.engine.generator if cfg.engine else None
        made, gen_dropped = engine_questions(prompts, generations, cfg.min_chars, cfg.max_chars, gen)
        cands += made
        dropped.update({f"engine/{k}": v for k, v in gen_dropped.items()})
    held_out = [r["text"] for r in load_labelled(cfg.eval_path, phases)]
    copies = {i: (j, s) for i, j, s in near_copies([c["text"] for c in cands], held_out, cfg.near_copy)}
    seen: set[str] = set()
    per: Counter[str] = Counter()
    kept_sh: list[frozenset[str]] = []
    examples, near = [], []
    for i, c in enumerate(cands):
        norm = normalise(c["text"])
        if i in copies:  # an eval text, or a near copy of one (identical texts have similarity 1)
            dropped[f"{c['source']}/near_eval"] += 1
            j, sim = copies[i]
            near.append({"text": c["text"][:120], "eval": held_out[j][:120], "sim": sim})
            continue
        if not norm or norm in seen:
            dropped[f"{c['source']}/duplicate"] += 1
            continue
        if c["source"] != SHIPPED_SOURCE:  # engine rows: also drop near duplicates of kept texts
            s = shingles(c["text"])
            if any(similarity(s, k) >= cfg.near_copy for k in kept_sh):
                dropped[f"{c['source']}/duplicate"] += 1
                continue
        seen.add(norm)
        kept_sh.append(shingles(c["text"]))
        examples.append(router_example(c, split_for(c["key"], cfg.validation_share, cfg.seed)))
        per[f"{c['phase']}/{c['source']}/{examples[-1]['split']}"] += 1
    report = {"n_examples": len(examples), "per_phase_source_split": dict(sorted(per.items())),
              "dropped": dict(sorted(dropped.items())), "near_eval_examples": near[:10],
              "n_held_out": len(held_out), "eval_path": cfg.eval_path, "sources": list(cfg.questions_paths),
              "kinds": list(cfg.kinds), "engine": cfg.engine.generator("router") if cfg.engine and generations
              is not None else None}
    return examples, report


def tagged(examples: Sequence[dict[str, Any]]) -> pa.Table:
    """Router examples as the dataset job's tagged batch (``corpus.dataset.TAGGED_SCHEMA``): they
    join the module and doc rows for deduplication, decontamination and writing."""
    from corpus.dataset import TAGGED_SCHEMA

    return pa.table({"id": [e["id"] for e in examples], "phase": [e["phase"] for e in examples],
                     "group": [e["group"] for e in examples], "skip": [None] * len(examples),
                     "example": [json.dumps(e) for e in examples]}, schema=TAGGED_SCHEMA)


def label_of(example: dict[str, Any]) -> str:
    """The phase in a router example's assistant turn."""
    return json.loads(example["messages"][-1]["content"])["phase"]


def user_text(example: dict[str, Any]) -> str:
    """The user turn of an example (the text the router sees)."""
    return next(m["content"] for m in example["messages"] if m["role"] == "user")


def score_router(examples: Sequence[dict[str, Any]], eval_path: str | Path = EVAL_PATH,
                 phases: Sequence[str] = PHASES, split: str = "train") -> dict[str, Any]:
    """Train the PhaseClassifier on the ``split`` triage examples (user turn → the assistant's
    phase) and score it on the held-out file: macro-F1 and accuracy on all its rows and on its
    questions only, per-phase F1, and how many training texts are near copies of eval texts."""
    train = [e for e in examples if e["phase"] == "triage" and e.get("split") == split]
    texts, labels = [user_text(e) for e in train], [label_of(e) for e in train]
    rows = load_labelled(eval_path, phases)
    clf = PhaseClassifier(phases=phases).fit(texts, labels)
    pred = clf.predict([r["text"] for r in rows])
    full = evaluate([r["phase"] for r in rows], pred, phases)
    qi = [i for i, r in enumerate(rows) if (r.get("kind") or "question") == "question"]
    quest = evaluate([rows[i]["phase"] for i in qi], [pred[i] for i in qi], phases)
    return {"n_train": len(train), "train_per_phase": dict(sorted(Counter(labels).items())), "n_eval": len(rows),
            "macro_f1": round(full["macro_f1"], 4), "accuracy": round(full["accuracy"], 4),
            "questions_macro_f1": round(quest["macro_f1"], 4), "n_eval_questions": len(qi),
            "f1_per_phase": {p: round(v["f1"], 3) for p, v in full["per_phase"].items()},
            "near_eval_copies": len(near_copies(texts, [r["text"] for r in rows], 0.5))}
