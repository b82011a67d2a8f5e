"""Router (triage) data: labels from the source, the held-out eval file kept apart, engine filters."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from corpus import router
from corpus.dataset import ApplySplits
from corpus.phases import EVAL_PATH, PhaseClassifier, load_labelled
from corpus.router import (RouterConfig, build_examples, clean_generation, near_copies, prompt_rows, score_router,
                           tagged)
from corpus.schema import EXAMPLES_SCHEMA
from synthesis.engines import GENERATION_SCHEMA, EngineConfig

EVAL = load_labelled(EVAL_PATH)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def texts_and_labels(examples: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(router.user_text(e), router.label_of(e)) for e in examples]


def test_labels_come_from_the_file_never_from_the_classifier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Labels a classifier would not give (a placement question labelled power_analysis) survive
    as written, and the classifier is never asked."""
    def boom(*_: Any, **__: Any) -> None:
        raise AssertionError("the router data must not call the phase classifier")

    monkeypatch.setattr(PhaseClassifier, "predict", boom)
    monkeypatch.setattr(PhaseClassifier, "fit", boom)
    rows = [{"id": "a", "text": "How do I run global placement with a target density?", "phase": "power_analysis", "kind": "question"},
            {"id": "b", "text": "Tell me about the weather on Mars tonight.", "phase": "triage", "kind": "question"},
            {"id": "c", "text": "set_wire_rc -signal -layer metal3", "phase": "routing", "kind": "doc"}]
    path = write_jsonl(tmp_path / "q.jsonl", rows)
    examples, report = build_examples(RouterConfig(questions_paths=[path], kinds=["question"]))
    assert texts_and_labels(examples) == [(rows[0]["text"], "power_analysis"), (rows[1]["text"], "triage")]
    for e in examples:
        assert e["phase"] == "triage" and e["task"] == "route" and e["source"] == "labelled_questions"
        assert e["messages"][0]["role"] == "system" and json.loads(e["messages"][2]["content"]) == {"phase": router.label_of(e)}
        assert e["provenance"]["path"] == "q.jsonl" and e["provenance"]["section"] in {"a", "b"}
    assert sum(report["per_phase_source_split"].values()) == 2
    both, _ = build_examples(RouterConfig(questions_paths=[path], kinds=["question", "doc"]))
    assert ("set_wire_rc -signal -layer metal3", "routing") in texts_and_labels(both)


def test_eval_texts_and_their_near_copies_never_reach_the_output(tmp_path: Path) -> None:
    ev = [r for r in EVAL if r.get("kind") == "question"]
    planted = [
        {"id": "p1", "text": ev[0]["text"], "phase": ev[0]["phase"], "kind": "question"},  # verbatim
        {"id": "p2", "text": ev[1]["text"].upper().rstrip("?") + " ??", "phase": ev[1]["phase"], "kind": "question"},
        {"id": "p3", "text": "Please: " + ev[2]["text"], "phase": ev[2]["phase"], "kind": "question"},
        {"id": "ok", "text": "Which flag of my toaster oven bakes bread fastest?", "phase": "triage", "kind": "question"},
    ]
    path = write_jsonl(tmp_path / "q.jsonl", planted)
    examples, report = build_examples(RouterConfig(questions_paths=[path]))
    assert [router.user_text(e) for e in examples] == [planted[3]["text"]]
    assert report["dropped"] == {"labelled_questions/near_eval": 3} and len(report["near_eval_examples"]) == 3


def test_default_sources_hold_no_eval_text_and_split_train_validation_only() -> None:
    examples, report = build_examples(RouterConfig())
    texts = [router.user_text(e) for e in examples]
    assert not near_copies(texts, [r["text"] for r in EVAL], 0.5)
    assert not set(map(router.normalise, texts)) & {router.normalise(r["text"]) for r in EVAL}
    assert Counter(e["split"] for e in examples).keys() == {"train", "validation"}
    assert {router.label_of(e) for e in examples if e["split"] == "train"} == set(router.PHASES)
    assert len({e["id"] for e in examples}) == len(examples) == report["n_examples"]
    again, _ = build_examples(RouterConfig())
    assert [(e["id"], e["split"]) for e in again] == [(e["id"], e["split"]) for e in examples]  # deterministic


def test_router_trained_on_the_dataset_triage_examples_meets_the_target() -> None:
    """Done-when of issue 13: the router trained on the new data scores ≥ 0.85 macro-F1 on the
    shipped labelled set it never saw. The examples go through the job's own tagging and split
    stage (corpus.dataset.ApplySplits), so what is scored is what the dataset writes."""
    examples, _ = build_examples(RouterConfig())
    table = tagged(examples)
    split_of = {g: g.split(":", 1)[1] for g in set(table.column("group").to_pylist())}
    keep = {(i, g) for i, g in zip(table.column("id").to_pylist(), table.column("group").to_pylist())}
    written = ApplySplits(split_of, keep)(table)
    assert written.schema == EXAMPLES_SCHEMA and set(written.column("split").to_pylist()) <= {"train", "validation"}
    rows = written.to_pylist()
    score = score_router(rows)
    assert score["n_train"] == sum(r["split"] == "train" for r in rows) and score["near_eval_copies"] == 0
    assert score["macro_f1"] >= 0.85, score
    assert score["questions_macro_f1"] >= 0.85, score


GOOD = {  # one plausible engine reply per phase, unlike each other and unlike the eval texts
    "triage": "Is it raining in Lisbon right now?",
    "rtl_design": "My always_comb block trips a Verilator UNOPTFLAT warning, what now?",
    "synthesis": "yosys abc keeps mapping adders to huge XOR trees; any option for that?",
    "placement": "RePlAce diverges at iteration 400 on my core with two macros.",
    "routing": "TritonRoute leaves 14 metal2 spacing markers near the SRAM edge.",
    "timing_analysis": "OpenSTA shows my hold check at -40 ps between two generated clocks.",
    "power_analysis": "Leakage doubled after I swapped to the low-Vt library, expected?",
}


class FakeEngine:
    """The engine interface (``HFGenerator`` / ``OpenAIChat``: prompt rows → ``GENERATION_SCHEMA``
    rows) with a canned reply ``reply(phase, index)`` for each prompt."""

    def __init__(self, reply: Any) -> None:
        self.reply = reply

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for r in batch.to_pylist():
            text, error = self.reply(r["phase"], json.loads(r["seed_json"])["index"])
            out.append({**{k: r[k] for k in ("prompt_id", "round", "phase", "task", "template_id", "seed_json")},
                        "generated_text": text, "engine_error": error, "prompt_tokens": 10, "completion_tokens": 5})
        return pa.Table.from_pylist(out, schema=GENERATION_SCHEMA)


def test_engine_questions_are_labelled_by_their_prompt_and_filtered(tmp_path: Path) -> None:
    prompts = prompt_rows(8)
    user = {p["phase"]: json.loads(p["messages_json"])[-1]["content"] for p in prompts if p["template_id"] == "router/error"}

    def reply(phase: str, i: int) -> tuple[str | None, str | None]:
        return {0: (f'Question: "{GOOD[phase]}"', None), 1: ("", None), 2: ("x" * 500, None), 3: (user[phase], None),
                4: (None, "http_error: 500"), 5: (GOOD[phase].lower() + "!", None), 6: (EVAL[0]["text"], None),
                7: ("%% 12 ## 77 ::: ;;", None)}[i]

    gens = FakeEngine(reply)(pa.Table.from_pylist(prompts)).to_pylist()
    cfg = RouterConfig(questions_paths=[write_jsonl(tmp_path / "none.jsonl", [])], engine=EngineConfig(), per_phase=8)
    examples, report = build_examples(cfg, gens, prompts)
    n = len(router.PHASES)
    # index 0 survives in every phase, labelled with the phase its prompt asked for (triage included)
    assert sorted(texts_and_labels(examples)) == sorted((GOOD[p], p) for p in router.PHASES)
    d = report["dropped"]
    assert d == {"engine/empty": n, "engine/too_long": n, "engine/copies_prompt": n, "engine/engine_error": n,
                 "engine/not_text": n, "synthetic/near_eval": n, "synthetic/duplicate": n}
    assert all(e["source"] == "synthetic" and e["provenance"]["generator"].startswith("hf/tiny/router/")
               and e["split"] in ("train", "validation") for e in examples)
    assert sum(report["per_phase_source_split"].values()) + sum(d.values()) == len(prompts)
    assert report["engine"] == "hf/tiny/router"


def test_prompts_cover_every_phase_style_and_ask_for_general_questions_under_triage() -> None:
    prompts = prompt_rows(12)
    assert Counter(p["phase"] for p in prompts) == {p: 12 for p in router.PHASES}
    assert {p["template_id"] for p in prompts} == {f"router/{s}" for s in router.STYLES}
    triage = [json.loads(p["messages_json"])[-1]["content"] for p in prompts if p["phase"] == "triage"]
    assert any("unrelated to chip design" in t for t in triage) and any("setting up" in t for t in triage)
    assert len({p["prompt_id"] for p in prompts}) == len(prompts)


def test_clean_generation() -> None:
    assert clean_generation('Question: "How do I route clocks?"\n\nSure, here is the answer...') == "How do I route clocks?"
    assert clean_generation("**User:** why is my slack negative") == "why is my slack negative"
    assert clean_generation(None) == ""


def test_real_hf_engine_path_with_the_tiny_model(tmp_path: Path) -> None:
    """The in-process transformers engine on prompt rows: every prompt ends up kept or counted as
    a drop, and whatever is kept carries its prompt's phase (the tiny model writes noise)."""
    from synthesis.engines import HFGenerator

    prompts = prompt_rows(1)
    engine = HFGenerator("tiny", {"max_tokens": 16, "temperature": 0.0})
    gens = engine(pa.Table.from_pylist(prompts)).to_pylist()
    cfg = RouterConfig(questions_paths=[write_jsonl(tmp_path / "none.jsonl", [])], engine=EngineConfig(), per_phase=1)
    examples, report = build_examples(cfg, gens, prompts)
    by_id = {p["prompt_id"]: p["phase"] for p in prompts}
    assert all(router.label_of(e) == by_id[e["provenance"]["section"]] for e in examples)
    assert len(examples) + sum(report["dropped"].values()) == len(prompts)
