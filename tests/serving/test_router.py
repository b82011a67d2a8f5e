"""The triage router: classifier routing, thresholds and fallbacks, the triage-specialist scorer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from serving.catalog import Catalog, CatalogError, load_catalog
from serving.router import Router, triage_answer

QUESTIONS = {
    "How do I fix setup slack violations reported by OpenSTA report_checks?": "timing_analysis",
    "What is the worst negative slack and how do I read the critical path?": "timing_analysis",
    "Write a Verilog module for an 8-bit counter with synchronous reset": "rtl_design",
    "How do I write a testbench for my FIFO in SystemVerilog?": "rtl_design",
}


def registry(tmp_path: Path, phases: list[str], bases: dict[str, str] | None = None) -> str:
    entries = {p: {"phase": p, "base_model": (bases or {}).get(p, "/models/base"), "adapter_path": f"/a/{p}",
                   "metrics": {"eval_loss": 1.0}, "config": {}} for p in phases}
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"version": 1, "specialists": entries}))
    return str(path)


def route(router: Router, text: str):
    return asyncio.run(router.route(text))


def test_catalog_names_and_groups(tmp_path):
    cat = load_catalog(registry(tmp_path, ["rtl_design", "timing_analysis"]))
    assert cat.model_names() == ["chipforge", "chipforge-rtl_design", "chipforge-timing_analysis", "chipforge-base"]
    assert cat.resolve("chipforge-rtl_design").phase == "rtl_design"
    assert cat.resolve("chipforge-base").kind == "base" and cat.resolve("nope") is None
    assert Catalog.from_dict(cat.to_dict()).to_dict() == cat.to_dict()
    two = load_catalog(registry(tmp_path, ["rtl_design", "routing"], {"routing": "/models/other"}))
    assert [g.name for g in two.groups] == ["chipforge-base", "chipforge-base-2"]
    assert two.specialists["routing"].group != two.specialists["rtl_design"].group
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(str(tmp_path / "missing.json"))
    with pytest.raises(CatalogError, match=r"\['power_analysis'\] are not in registry"):
        load_catalog(registry(tmp_path, ["rtl_design"]), phases=["power_analysis"])


def test_classifier_routes_labelled_questions(tmp_path):
    router = Router(load_catalog(registry(tmp_path, ["rtl_design", "timing_analysis"])), threshold=0.35)
    assert router.mode == "classifier"
    for q, phase in QUESTIONS.items():
        d = route(router, q)
        assert (d.phase, d.fallback, d.by) == (phase, False, "classifier"), q
        assert d.target.name == f"chipforge-{phase}" and d.confidence >= 0.35
        assert d.as_dict()["specialist"] == phase


def test_low_confidence_and_unserved_phases_fall_back(tmp_path):
    cat = load_catalog(registry(tmp_path, ["rtl_design", "timing_analysis"]))
    d = route(Router(cat, threshold=0.35), "How do I reduce congestion in global routing?")  # routing: not served
    assert d.fallback and d.target.kind == "base" and d.as_dict()["specialist"] == "base"
    assert route(Router(cat, threshold=0.35), "Hello, what can you do?").fallback  # a triage question
    assert route(Router(cat, threshold=0.999), next(iter(QUESTIONS))).fallback  # under the threshold
    assert route(Router(cat), "   ").fallback


def test_triage_specialist_decides_when_registered(tmp_path):
    cat = load_catalog(registry(tmp_path, ["rtl_design", "timing_analysis", "triage"]))
    seen = []

    async def scorer(text, phases):
        seen.append(phases)
        return {p: (-0.1 if p == "timing_analysis" else -5.0) for p in phases}

    router = Router(cat, scorer=scorer, threshold=0.5)
    assert router.mode == "triage" and seen == []
    d = route(router, "anything")
    assert (d.phase, d.by, d.fallback) == ("timing_analysis", "triage", False) and d.confidence > 0.9
    assert seen == [["rtl_design", "timing_analysis"]]  # triage is never a candidate

    async def unsure(text, phases):
        return {p: 0.0 for p in phases}

    d = route(Router(cat, scorer=unsure, threshold=0.6), "anything")
    assert d.fallback and d.target.name == "chipforge-triage"  # the triage specialist answers
    d = route(Router(cat, scorer=unsure, threshold=0.6, fallback="base"), "anything")
    assert d.target.name == "chipforge-base"
    assert Router(cat, mode="classifier", scorer=scorer).mode == "classifier"
    with pytest.raises(ValueError, match="no triage specialist"):
        Router(load_catalog(registry(tmp_path, ["rtl_design"])), mode="triage")
    assert triage_answer("routing") == '{"phase": "routing"}'
