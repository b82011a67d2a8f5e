"""jobs.classify_eval on the shipped sets: metrics printed and written, classifier beats baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corpus.phases import PHASES
from jobs.classify_eval import main


def test_classify_eval_writes_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, model = tmp_path / "ce", tmp_path / "clf.json"
    assert main(["--output", str(out), "--model", str(model)]) == 0
    printed = capsys.readouterr().out
    assert "confusion (rows = true" in printed and "keyword baseline" in printed and "macro-F1 on" in printed
    rep = json.loads((out / "report.json").read_text())
    assert model.exists()
    assert rep["n_eval"] >= 210 and rep["phases"] == list(PHASES)
    for key in ("baseline", "classifier"):
        m = rep[key]
        assert set(m["per_phase"]) == set(PHASES)
        assert sum(v["support"] for v in m["per_phase"].values()) == rep["n_eval"]
        cm = m["confusion"]["matrix"]
        assert len(cm) == len(PHASES) and all(len(row) == len(PHASES) for row in cm)
        assert sum(map(sum, cm)) == rep["n_eval"]
        assert sum(cm[i][i] for i in range(len(cm))) == round(m["accuracy"] * rep["n_eval"])
        assert 0 < m["macro_f1"] <= 1
    assert rep["classifier"]["macro_f1"] > rep["baseline"]["macro_f1"]
    assert rep["macro_f1_gain"] == pytest.approx(rep["classifier"]["macro_f1"] - rep["baseline"]["macro_f1"])
    # a second run reuses the saved artifact and gives the same figures
    assert main(["--output", str(out), "--model", str(model), "--force"]) == 0
    assert json.loads((out / "report.json").read_text())["classifier"] == rep["classifier"]


def test_classify_eval_bad_config_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phases=[triage]", "--output", str(tmp_path / "m")]) == 2
    assert "command-line override 'phases=[triage]'" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_misspelt_or_unlabelled_phase_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Both were tracebacks from deep in the job; now exit 2 naming the phase, before any training."""
    misspelt = [p if p != "rtl_design" else "rtl_desgn" for p in PHASES]
    assert main([f"phases=[{','.join(misspelt)}]", "--output", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "error: phases:" in err and "['rtl_design']" in err and "Traceback" not in err
    assert main([f"phases=[{','.join([*PHASES, 'dft'])}]", "--output", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "['dft'] has no labelled example" in err and "Traceback" not in err
