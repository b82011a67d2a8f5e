"""Seeds (docs job and corpus job outputs → seeds) and deterministic prompt building."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from corpus.schema import DOCS_SCHEMA, MODULES_SCHEMA, from_rows
from synthesis import seeds
from synthesis.templates import TEMPLATES, templates_for
from synthesis.validate import design_context

LONG = " More words to pass the minimum length of a useful chunk." * 5


def write_docs(root: Path) -> None:
    rows = [
        {"id": "d1", "source": "yosys", "tool": "yosys", "title": "synth", "section_path": ["synth"],
         "url": "https://docs/yosys/synth", "text": "The synth command runs a generic synthesis script." + LONG,
         "license": "ISC"},
        {"id": "d2", "source": "opensta", "tool": "opensta", "title": "Power", "section_path": ["Power", "report"],
         "url": "https://docs/opensta/power", "text": "report_power prints switching and leakage power." + LONG},
        {"id": "d3", "source": "openroad", "tool": "openroad", "title": "Global route",
         "url": "https://docs/openroad/route", "text": "global_route reduces congestion per layer." + LONG},
        {"id": "d4", "source": "yosys", "tool": "yosys", "title": "short", "text": "too short"},
    ]
    (root / "docs").mkdir(parents=True)
    pq.write_table(from_rows(rows, DOCS_SCHEMA, stage="test"), root / "docs" / "part-0.parquet")


def module_row(i: int, keep: bool = True, n_lines: int = 12, parse_ok: bool = True) -> dict:
    return {"id": f"m{i}", "repo": "r", "path": f"rtl/m{i}.v", "kind": "module", "name": f"m{i}", "url": "u",
            "commit": "c", "start_line": 1, "end_line": n_lines, "n_lines": n_lines, "parse_ok": parse_ok,
            "keep": keep, "license": "MIT", "source": f"module m{i}; endmodule"}


def test_doc_phases() -> None:
    assert seeds.doc_phases({"tool": "yosys", "text": "anything"}) == ["synthesis"]
    assert seeds.doc_phases({"tool": "opensta", "text": "report_power and vcd activity"}) == ["power_analysis"]
    assert seeds.doc_phases({"tool": "openroad", "title": "Detailed routing", "text": "route guides"}) == ["routing"]
    assert seeds.doc_phases({"tool": "unknown", "text": "clock slack"}) == ["timing_analysis"]


def test_load_doc_seeds(tmp_path: Path) -> None:
    write_docs(tmp_path)
    found, raw = seeds.load_doc_seeds(str(tmp_path), max_chars=300)
    assert [s["id"] for s in found] == ["d1", "d2", "d3"]  # d4 is too short to seed anything
    assert found[0]["phases"] == ["synthesis"] and found[1]["phases"] == ["power_analysis"]
    assert "routing" in found[2]["phases"] and len(found[0]["text"]) <= 300 and found[1]["section"] == "Power > report"
    assert len(raw) == 4 and raw[1]["tool"] == "opensta"
    # the documentation page, as in the dataset (corpus.splits.doc_group)
    assert [seeds.group_of(s) for s in found] == ["yosys:https://docs/yosys/synth", "opensta:https://docs/opensta/power",
                                                  "openroad:https://docs/openroad/route"]
    with pytest.raises(FileNotFoundError, match="no docs/"):
        seeds.load_doc_seeds(str(tmp_path / "absent"))


def test_load_module_seeds_keeps_only_kept_parsed_modest_modules(tmp_path: Path) -> None:
    part = tmp_path / "modules" / "repo=r"
    part.mkdir(parents=True)
    rows = [module_row(1), module_row(2, keep=False), module_row(3, n_lines=500), module_row(4, parse_ok=False),
            module_row(5, n_lines=3), module_row(6)]
    pq.write_table(from_rows(rows, MODULES_SCHEMA, stage="test"), part / "part-0.parquet")
    found = seeds.load_module_seeds(str(tmp_path), min_lines=8, max_lines=150)
    assert [s["id"] for s in found] == ["m1", "m6"] and found[0]["kind"] == "module" and found[0]["repo"] == "r"
    assert seeds.group_of(found[0]) == "r"  # the repository, as in the dataset


def test_seed_groups() -> None:
    assert seeds.group_of({"kind": "topic", "topic": "fsm"}) == "topic:fsm"
    assert seeds.group_of({"kind": "module", "repo": "tinycores"}) == "tinycores"
    assert seeds.group_of({"kind": "doc", "group": "yosys-sample", "id": "x"}) == "yosys-sample"
    ref = json.loads(seeds.seed_ref({"kind": "doc", "group": "g", "text": "long", "source": "s", "phases": []}))
    assert ref == {"kind": "doc", "group": "g"}  # the group travels with the prompt, the text does not


def test_sample_docs_are_read_in_process_with_the_docs_jobs_source_names(repo_root: Path) -> None:
    from chipforge.config import read_yaml
    from corpus.docs.sources import LocalSource

    docs_cfg = read_yaml(repo_root / "jobs" / "configs" / "docs_sample.yaml")
    sources = [LocalSource(**{**s, "path": str(repo_root / s["path"])}) for s in docs_cfg["sources"]]
    rows, stats = seeds.read_local_docs(sources, chunk_chars=docs_cfg["chunk"]["max_chars"])
    assert set(stats) == {s.name for s in sources} and all(v["pages"] > 0 and v["failed"] == 0 for v in stats.values())
    found, raw = seeds.doc_seeds(rows)
    assert {s["group"].split(":", 1)[0] for s in found} == {s.name for s in sources}  # <source>:<page>
    split_of_group = json.loads((repo_root / "sample" / "dataset" / "report.json").read_text())["split_of_group"]
    assert {s["group"] for s in found} <= set(split_of_group)  # every sample doc group has a split in the dataset
    assert {"synthesis", "timing_analysis"} <= {p for s in found for p in s["phases"]}


def test_build_prompts_is_deterministic_and_cycles_templates() -> None:
    pool = seeds.seeds_by_kind("synthesis", [{"kind": "doc", "id": "d", "text": "synth docs", "tool": "yosys",
                                              "title": "t", "phases": ["synthesis"]}], [], ["fsm", "abc"])
    args = dict(round_=0, seed=3, templates=templates_for("synthesis"), seeds=pool, design=design_context())
    a = seeds.build_prompts("synthesis", 5, **args)
    assert a == seeds.build_prompts("synthesis", 5, **args)
    assert len({r["prompt_id"] for r in a}) == 5
    assert {r["template_id"] for r in a} == {"synthesis/yosys_script_doc@v1", "synthesis/yosys_script_topic@v1"}
    msgs = json.loads(a[0]["messages_json"])
    assert [m["role"] for m in msgs] == ["system", "user"] and "cf_top" in msgs[1]["content"]
    later = seeds.build_prompts("synthesis", 5, **(args | {"round_": 1}), offset=5)
    assert not {r["prompt_id"] for r in a} & {r["prompt_id"] for r in later}
    assert seeds.build_prompts("rtl_design", 3, **(args | {"templates": templates_for("rtl_design"),
                                                           "seeds": {"module": [], "topic": []}})) == []


def test_templates_render_their_fields() -> None:
    rtl = TEMPLATES["rtl_design/module_from_reference@v1"]
    text = rtl.render({"kind": "module", "name": "m9", "source": "module m9 {weird braces}; endmodule"},
                      design_context())[1]["content"]
    assert "module m9 {weird braces}" in text and "TEST PASSED" in text and "testbench" in text
    doc = TEMPLATES["power_analysis/opensta_power_doc@v1"].render({"text": "report_power {x}", "title": "P",
                                                                   "tool": "opensta"}, design_context())[1]["content"]
    assert "report_power {x}" in doc and "OpenSTA" in doc and "{" not in doc.split("report_power {x}")[1][:3]
    assert all(t.id == f"{t.phase}/{t.task}@v{t.version}" for t in TEMPLATES.values())
    provenance = seeds.provenance({"kind": "doc", "url": "u", "section": "A > B"}, "vllm/m/x@v1")
    assert provenance["url"] == "u" and provenance["section"] == "A > B" and provenance["generator"] == "vllm/m/x@v1"
