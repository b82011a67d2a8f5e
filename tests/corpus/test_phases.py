"""Phase classifier vs keyword baseline on the shipped labelled sets."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from corpus.phases import (EVAL_PATH, KINDS, PHASES, TRAIN_PATH, PhaseClassifier, evaluate, keyword_baseline,
                           load_labelled)


def _norm(text: str) -> list[str]:
    return re.findall(r"[a-z0-9_]+", text.lower())


def _grams3(text: str) -> set[tuple[str, ...]]:
    w = _norm(text)
    return {tuple(w[i:i + 3]) for i in range(len(w) - 2)} or {tuple(w)}


@pytest.fixture(scope="module")
def sets() -> tuple[list[dict], list[dict]]:
    return load_labelled(TRAIN_PATH), load_labelled(EVAL_PATH)


@pytest.fixture(scope="module")
def trained() -> PhaseClassifier:
    return PhaseClassifier.train_default()


def test_shipped_sets_size_mix_and_ids(sets: tuple[list[dict], list[dict]]) -> None:
    train, ev = sets
    assert len(ev) >= 210 and len(train) >= 350
    for rows in (train, ev):
        per_phase = Counter(r["phase"] for r in rows)
        assert set(per_phase) == set(PHASES) and min(per_phase.values()) >= 30
        assert {r["kind"] for r in rows} == set(KINDS)
    ids = [r["id"] for r in train + ev]
    assert len(ids) == len(set(ids))
    kinds = Counter((r["phase"], r["kind"]) for r in ev)
    for phase in PHASES:
        assert kinds[(phase, "question")] >= 5 and kinds[(phase, "doc")] >= 5, phase
    assert sum(v for (_, k), v in kinds.items() if k == "module") >= 15
    assert sum(1 for r in ev if r["kind"] == "module" and r["phase"] != "rtl_design") >= 5


def test_train_and_eval_disjoint(sets: tuple[list[dict], list[dict]]) -> None:
    train, ev = sets
    train_norm = {" ".join(_norm(r["text"])) for r in train}
    assert not [r["id"] for r in ev if " ".join(_norm(r["text"])) in train_norm]
    train_grams = [(r["id"], _grams3(r["text"])) for r in train]
    near = []
    for r in ev:
        e = _grams3(r["text"])
        near += [(r["id"], tid) for tid, t in train_grams if len(e & t) / len(e | t) >= 0.6]
    assert near == []


def test_trained_beats_baseline_on_shipped_eval(sets: tuple[list[dict], list[dict]], trained: PhaseClassifier) -> None:
    _, ev = sets
    y, x = [r["phase"] for r in ev], [r["text"] for r in ev]
    base = evaluate(y, keyword_baseline(x))
    clf = evaluate(y, trained.predict(x))
    assert base["macro_f1"] > 0.6  # the baseline is a real competitor, not a strawman
    assert clf["macro_f1"] > base["macro_f1"] + 0.02, (clf["macro_f1"], base["macro_f1"])
    assert clf["accuracy"] > base["accuracy"]


def test_baseline_rules_ties_and_fallback() -> None:
    assert keyword_baseline([
        "report_checks shows negative slack on the setup path",
        "run yosys synth and abc",
        "hello there",
        "set_power_activity -input -activity 0.1",  # underscores read as word breaks
        "a fifo in the netlist",  # one rtl_design and one synthesis match: tie → earlier phase
    ]) == ["timing_analysis", "synthesis", "triage", "power_analysis", "rtl_design"]
    assert keyword_baseline(["a fifo in the netlist"], phases=("triage", "synthesis", "rtl_design")) == ["synthesis"]
    assert keyword_baseline(["see the manual"], tools=["opensta"]) == ["timing_analysis"]
    custom = {"dft": (r"scan chain", r"\batpg\b")}
    assert keyword_baseline(["insert the scan chain", "x"], phases=("triage", "dft"), keywords=custom) == ["dft", "triage"]


def test_classifier_deterministic_and_roundtrip(tmp_path: Path, trained: PhaseClassifier) -> None:
    texts = ["global_placement -density 0.7", "write an always block", "set_false_path between clocks"]
    a = PhaseClassifier.load(tmp_path / "clf.json")  # trains and saves
    assert (tmp_path / "clf.json").exists()
    b = PhaseClassifier.load(tmp_path / "clf.json")
    assert a.predict(texts) == b.predict(texts) == trained.predict(texts)
    assert (a.predict_proba(texts) == trained.predict_proba(texts)).all()
    assert set(a.predict(texts)) <= set(PHASES) and a.classes == sorted(PHASES)
    proba = b.predict_proba(texts)
    assert proba.shape == (3, len(PHASES)) and abs(proba.sum(axis=1) - 1).max() < 1e-9
    assert PhaseClassifier.load() is PhaseClassifier.load()  # default: trained once per process
    assert PhaseClassifier.load().predict(texts) == trained.predict(texts)


def test_classifier_artifact_on_object_storage(s3_env, trained: PhaseClassifier) -> None:
    """``router.classifier`` / ``model_path`` may be an s3:// URI (it used to become a local ``s3:`` folder)."""
    from chipforge import fs
    from tests.conftest import make_bucket

    uri = make_bucket(s3_env, "cf-classifier") + "/router/clf.json"
    a = PhaseClassifier.load(uri)  # trains and saves there
    assert fs.exists(uri) and not Path("s3:").exists()
    texts = ["global_placement -density 0.7", "set_false_path between clocks"]
    assert PhaseClassifier.load(uri).predict(texts) == a.predict(texts) == trained.predict(texts)


def test_tool_prior_is_a_learned_feature() -> None:
    texts = ["The command prints a summary table.", "Run it again with more iterations."] * 4
    tools = ["opensta", "tritonroute"] * 4
    labels = ["timing_analysis", "routing"] * 4
    clf = PhaseClassifier().fit(texts, labels, tools)
    assert clf.predict(["It writes a report."] * 2, tools=["opensta", "tritonroute"]) == ["timing_analysis", "routing"]
    assert len(clf.predict(["It writes a report."])) == 1  # no tool: still predicts


def test_evaluate_metrics() -> None:
    m = evaluate(["a", "a", "b", "b"], ["a", "b", "b", "b"], phases=["a", "b", "c"])
    assert m["confusion"]["matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert m["confusion"]["labels"] == ["a", "b", "c"] and m["confusion"]["rows"] == "true"
    assert m["per_phase"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert m["per_phase"]["b"]["precision"] == pytest.approx(2 / 3) and m["per_phase"]["c"]["f1"] == 0.0
    assert m["accuracy"] == 0.75 and m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    with pytest.raises(ValueError, match="outside phases"):
        evaluate(["z"], ["a"], phases=["a"])


def test_bad_input_rejected(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "x", "phase": "layout"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_labelled(f)
    with pytest.raises(RuntimeError, match="not fitted"):
        PhaseClassifier().predict(["x"])
    with pytest.raises(ValueError, match="outside phases"):
        PhaseClassifier().fit(["x", "y"], ["triage", "layout"])
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="junk.pkl"):
        PhaseClassifier.load(junk)
