"""Issue 8 (data side): inputs crossing a stage boundary are checked, and artifacts are data.

(a) A modules table without ``keep``/``source`` used to be read as nulls and give 0 examples
silently; now a missing column is an error naming it (and the file, on the driver), and a row
with a null required value is a counted skip naming the row's id.
(b) The phase classifier artifact used to be ``pickle.loads``-ed: a crafted file ran code
before any check. Now it is JSON, checked and rebuilt; a pickle is refused unexecuted.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus.dataset import DocStage, ModuleStage, check_input_files, MODULE_REQUIRED, DOC_REQUIRED
from corpus.phases import EVAL_PATH, PhaseClassifier, load_labelled
from corpus.schema import DOCS_SCHEMA, MODULES_SCHEMA, SchemaError, from_rows

SRC = "module blink (\n  input clk,\n  output reg led\n);\n  always @(posedge clk) led <= ~led;\nendmodule"


def mod(**kw: Any) -> dict[str, Any]:
    row = {"id": "m1", "repo": "r1", "commit": "abc", "path": "rtl/blink.v", "url": "file:///r1", "start_line": 1,
           "end_line": 6, "name": "blink", "comment": "Toggles an LED on every rising clock edge.", "license": "MIT",
           "parameters": [], "ports": [{"name": "clk", "direction": "input", "type": ""}], "source": SRC,
           "parse_ok": True, "error_line_share": 0.0, "keep": True}
    return row | kw


@pytest.fixture(scope="module")
def clf() -> PhaseClassifier:
    return PhaseClassifier.load()  # trained on the shipped set, once per process


# -- (a) stage boundaries --
def test_modules_table_without_keep_and_source_is_an_error_not_zero_examples() -> None:
    rows = [mod(id=f"m{i}", repo=f"r{i}") for i in range(3)]
    table = pa.Table.from_pylist(rows).drop_columns(["keep", "source"])
    with pytest.raises(SchemaError, match=r"dataset.modules: missing required columns \['source', 'keep'\]"):
        ModuleStage()(table)


def test_invalid_rows_are_counted_skips_naming_the_row() -> None:
    rows = [mod(id="ok", repo="r1"), mod(id="nokeep", keep=None), mod(id="nosource", source=""),
            mod(id="noname", name=None), mod(id="noparse", parse_ok=None)]
    table = pa.Table.from_pylist(rows, schema=MODULES_SCHEMA)
    out = ModuleStage(min_comment_chars=10)(table).to_pylist()
    skips = {r["id"]: r["skip"] for r in out if r["skip"]}
    assert skips == {"nokeep": "invalid_row:keep is null or empty", "nosource": "invalid_row:source is null or empty",
                     "noname": "invalid_row:name is null or empty", "noparse": "invalid_row:parse_ok is null or empty"}
    made = [r for r in out if not r["skip"]]
    # 3 tasks for the one valid module; router (triage) examples come from labelled questions, not modules
    assert {r["phase"] for r in made} == {"rtl_design"} and len(made) == 3


def test_docs_table_without_text_is_an_error() -> None:
    table = pa.table({"id": ["d1"], "source": ["yosys"], "tool": ["yosys"]})
    with pytest.raises(SchemaError, match=r"dataset.docs: missing required columns \['text'\]"):
        DocStage(model_path=None)(table)


def test_doc_rows_with_null_text_are_counted(clf: PhaseClassifier) -> None:
    text = "Run `synth -top top` in Yosys to map the design to gates; `abc` then optimises the logic. " * 2
    rows = [{"id": "d1", "source": "yosys", "tool": "yosys", "text": text},
            {"id": "d2", "source": "yosys", "tool": "yosys", "text": None}]
    out = DocStage(model_path=None)(from_rows(rows, DOCS_SCHEMA, stage="test")).to_pylist()
    assert [(r["id"], r["skip"]) for r in out if r["skip"]] == [("d2", "invalid_row:text is null or empty")]
    assert len([r for r in out if not r["skip"]]) == 1  # one doc_qa example; no classifier-labelled router example


def test_driver_check_names_the_file_that_lacks_columns(tmp_path: Path) -> None:
    good = tmp_path / "modules" / "repo=r1"
    bad = tmp_path / "modules" / "repo=r2"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    table = from_rows([mod()], MODULES_SCHEMA, stage="test").drop_columns(["repo"])
    pq.write_table(table, good / "part-0.parquet")
    assert check_input_files(str(tmp_path / "modules"), MODULE_REQUIRED, "modules") == 1
    pq.write_table(table.drop_columns(["keep"]), bad / "part-0.parquet")
    with pytest.raises(SchemaError, match=r"modules file .*repo=r2/part-0.parquet: missing required columns \['keep'\]"):
        check_input_files(str(tmp_path / "modules"), MODULE_REQUIRED, "modules")
    docs = tmp_path / "docs"
    docs.mkdir()
    pq.write_table(pa.table({"id": ["d"], "source": ["s"]}), docs / "a.parquet")
    with pytest.raises(SchemaError, match=r"a.parquet: missing required columns \['text'\]"):
        check_input_files(str(docs), DOC_REQUIRED, "docs")


# -- (b) the classifier artifact --
class _Boom:
    """Unpickling this creates ``marker`` (what a malicious artifact would do, harmlessly)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_pickled_artifact_is_refused_without_running_it(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "clf.pkl"
    path.write_bytes(pickle.dumps({"format": 1, "phases": ["triage"], "pipeline": _Boom(marker)}, protocol=protocol))
    with pytest.raises(ValueError, match="clf.pkl"):
        PhaseClassifier.load(path)
    assert not marker.exists()


def test_round_trip_predictions_are_identical(tmp_path: Path, clf: PhaseClassifier) -> None:
    rows = load_labelled(EVAL_PATH)
    texts, tools = [r["text"] for r in rows], [r.get("tool") for r in rows]
    path = tmp_path / "clf.json"
    clf.save(path)
    assert path.read_bytes()[:1] == b"{" and json.loads(path.read_text())["version"] == 2
    back = PhaseClassifier.load(path)
    assert back.classes == clf.classes and back.phases == clf.phases
    assert back.predict(texts, tools) == clf.predict(texts, tools)
    assert (back.predict_proba(texts, tools) == clf.predict_proba(texts, tools)).all()
    back.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()


def _tampered(tmp_path: Path, clf: PhaseClassifier, edit: Any) -> Path:
    obj = clf.to_artifact()
    edit(obj)
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize(("edit", "message"), [
    (lambda o: o.update(format="other"), "not a chipforge.phase_classifier artifact"),
    (lambda o: o.update(version=1), "version 1, expected 2"),
    (lambda o: o["vectorizers"][0]["settings"].update(token_pattern=r"(a+)+$"), "settings"),
    (lambda o: o["vectorizers"][1]["settings"].update(analyzer="word"), "settings"),
    (lambda o: o["vectorizers"].pop(), "'vectorizers' must be"),
    (lambda o: o["vectorizers"][0]["idf"].pop(), "idf has shape"),
    (lambda o: o["vectorizers"][0]["idf"].__setitem__(0, "1.0"), "finite numbers"),
    (lambda o: o["vectorizers"][0]["terms"].__setitem__(1, o["vectorizers"][0]["terms"][0]), "duplicate terms"),
    (lambda o: o["classifier"]["coef"][0].pop(), "classifier.coef has a ragged shape"),
    (lambda o: o["classifier"]["intercept"].append(0.0), "classifier.intercept has shape"),
    (lambda o: o["classifier"]["classes"].__setitem__(0, "layout"), "classes"),
    (lambda o: o.update(phases="triage"), "'phases' must be"),
])
def test_tampered_artifacts_are_refused_with_a_clear_error(tmp_path: Path, clf: PhaseClassifier, edit: Any,
                                                           message: str) -> None:
    path = _tampered(tmp_path, clf, edit)
    with pytest.raises(ValueError, match=message) as info:
        PhaseClassifier.load(path)
    assert "tampered.json" in str(info.value)


def test_non_finite_and_oversized_artifacts_are_refused(tmp_path: Path, clf: PhaseClassifier,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(clf.to_artifact()).replace('"intercept":[', '"intercept":[NaN,', 1)
                    .replace('"intercept": [', '"intercept": [NaN, ', 1))
    with pytest.raises(ValueError, match="nan.json"):
        PhaseClassifier.load(path)
    import corpus.phases

    monkeypatch.setattr(corpus.phases, "MAX_ARTIFACT_BYTES", 100)
    clf.save(tmp_path / "big.json")
    with pytest.raises(ValueError, match="big.json: .* bytes > 100"):
        PhaseClassifier.load(tmp_path / "big.json")
