"""Phase classification evaluation: keyword baseline vs trained classifier on the shipped labelled set.

Trains the TF-IDF + LogisticRegression classifier on ``train_path`` (or loads the artifact at
``model_path`` when it exists; otherwise trains and saves it there), scores it and the keyword
baseline on ``eval_path``: per-phase precision/recall/F1 tables and confusion matrices for both
plus the macro-F1 comparison, printed and written to ``DIR/report.json``.
"""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from chipforge import fs
from chipforge.config import Config
from chipforge.job import JobSpec, Run
from corpus.phases import EVAL_PATH, PHASES, TRAIN_PATH, PhaseClassifier, evaluate, keyword_baseline, load_labelled


class ClassifyEvalConfig(Config):
    train_path: str = str(TRAIN_PATH)
    eval_path: str = str(EVAL_PATH)
    phases: list[str] = list(PHASES)
    model_path: str | None = None  # classifier artifact (JSON); None → train in memory only
    output_dir: str = "out/classify_eval"  # report.json with every metric

    @field_validator("phases")
    @classmethod
    def _phases(cls, v: list[str]) -> list[str]:
        if len(v) < 2 or len(set(v)) != len(v):
            raise ValueError("phases must list at least two distinct names")
        return v


def format_metrics(name: str, m: dict[str, Any]) -> str:
    """Readable per-phase table and confusion matrix (rows = true, columns = predicted)."""
    lines = [f"== {name}: macro-F1 {m['macro_f1']:.3f}  accuracy {m['accuracy']:.3f}",
             f"{'phase':<16}{'prec':>7}{'rec':>7}{'f1':>7}{'n':>5}"]
    for ph, v in m["per_phase"].items():
        lines.append(f"{ph:<16}{v['precision']:>7.3f}{v['recall']:>7.3f}{v['f1']:>7.3f}{v['support']:>5}")
    labels = m["confusion"]["labels"]
    lines.append("confusion (rows = true, columns = predicted):")
    lines.append(" " * 16 + "".join(f"{lb[:6]:>7}" for lb in labels))
    for lb, row in zip(labels, m["confusion"]["matrix"]):
        lines.append(f"{lb:<16}" + "".join(f"{v:>7}" for v in row))
    return "\n".join(lines)


def build_classifier(cfg: ClassifyEvalConfig) -> PhaseClassifier:
    if cfg.model_path and fs.exists(cfg.model_path):
        return PhaseClassifier.load(cfg.model_path)
    clf = PhaseClassifier.train_default(cfg.train_path, cfg.phases)
    if cfg.model_path:
        clf.save(cfg.model_path)
    return clf


def run(cfg: ClassifyEvalConfig, job: Run) -> dict[str, Any]:
    """The job's body (small enough for the driver: no Ray)."""
    ev = load_labelled(cfg.eval_path, cfg.phases)
    texts, y = [r["text"] for r in ev], [r["phase"] for r in ev]
    tools = [r.get("tool") for r in ev]
    clf = build_classifier(cfg)
    report = {
        "eval_path": cfg.eval_path,
        "train_path": cfg.train_path,
        "n_eval": len(ev),
        "phases": list(cfg.phases),
        "baseline": evaluate(y, keyword_baseline(texts, cfg.phases, tools=tools), cfg.phases),
        "classifier": evaluate(y, clf.predict(texts, tools=tools), cfg.phases),
    }
    report["macro_f1_gain"] = report["classifier"]["macro_f1"] - report["baseline"]["macro_f1"]
    return report


def summary(report: dict[str, Any]) -> str:
    b, c = report["baseline"]["macro_f1"], report["classifier"]["macro_f1"]
    return "\n".join([format_metrics("keyword baseline", report["baseline"]),
                      format_metrics("trained classifier (TF-IDF + LogisticRegression)", report["classifier"]),
                      f"macro-F1 on {report['n_eval']} labelled items ({report['eval_path']}): baseline {b:.3f}, "
                      f"classifier {c:.3f} ({c - b:+.3f})"])


def check_labels(cfg: ClassifyEvalConfig) -> None:
    """Preflight: both labelled files read, every label in them is one of ``phases`` and every
    phase has a training example, so a misspelt or new phase is an error naming it (exit 2)."""
    from chipforge import fs
    from chipforge.config import ConfigError

    labels: dict[str, set[str]] = {}
    for field, path in (("train_path", cfg.train_path), ("eval_path", cfg.eval_path)):
        try:
            labels[field] = {row.get("phase") for _, row in fs.read_jsonl(path) if isinstance(row, dict)}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{field}: cannot read {path}: {exc}") from exc
        unknown = sorted(str(p) for p in labels[field] - set(cfg.phases))
        if unknown:
            raise ConfigError(f"phases: {path} ({field}) labels examples {unknown}, which phases does not list "
                              f"(phases: {list(cfg.phases)})")
    untrained = [p for p in cfg.phases if p not in labels["train_path"]]
    if untrained:
        raise ConfigError(f"phases: {untrained} has no labelled example in {cfg.train_path} to learn from (its labels: "
                          f"{sorted(str(p) for p in labels['train_path'])}); add examples or fix the name")


SPEC = JobSpec(name="classify_eval", config=ClassifyEvalConfig, default_config="jobs/configs/classify_eval.yaml",
               summary=summary, flags={"--output": "output_dir", "--model": "model_path"},
               inputs={"train_path": "a labelled JSONL file", "eval_path": "a labelled JSONL file"},
               uses_ray=False, outputs=lambda r: r["n_eval"], preflight=check_labels, description=__doc__)
