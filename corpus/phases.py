"""Design-phase classification: a transparent keyword/tool-name baseline and a trained classifier.

Phases (``PHASES``) are the specialists' areas plus ``triage`` (general questions about the flow,
which tool or step to use, set-up and out-of-scope requests: the router's own class). Every
function takes a ``phases`` list so a config can add a phase; the shipped data covers ``PHASES``.

- ``keyword_baseline``: per phase, a list of tool names, commands and domain terms (``KEYWORDS``,
  regexes on the lower-cased text, tried as written and with ``_`` read as a space so that
  ``set_power_activity`` counts for ``power``). Score = number of distinct patterns that match;
  the highest score wins; ties go to the phase listed first in ``phases`` (so rtl_design before
  synthesis before placement ... before power_analysis); no match at all → ``triage``. Nothing
  is learned, so its errors are easy to read off the confusion matrix.
- ``PhaseClassifier``: scikit-learn TF-IDF (word 1-2 grams + char_wb 3-5 grams, sublinear tf)
  feeding LogisticRegression (lbfgs, ``class_weight="balanced"``, ``random_state=0``):
  deterministic, trains in about a second on CPU from ``corpus/data/phase_train.jsonl`` and is
  scored on the disjoint ``corpus/data/phase_eval.jsonl`` (``python -m jobs.classify_eval``).
- Tool prior: ``predict(texts, tools=[...])`` prepends a token ``__tool_<name>__`` for texts
  whose source tool is known (a doc chunk crawled from the OpenSTA docs → ``opensta``). Training
  rows may carry a ``tool`` field too; the token is a learned feature, not a hard rule, so an
  OpenROAD page about routing is not forced into placement. Rows without a tool get no token.
- Artifact (``save``/``load``): a JSON document of the fitted parameters, never a pickle
  (issue 8: ``pickle.loads`` ran code from a crafted file before any check). It holds, per
  vectorizer, its settings, its terms in feature order and its idf; and the logistic
  regression's classes, coefficients and intercepts. ``load`` checks the format name and
  version, the size, every type and shape and that the vectorizer settings are the ones this
  code builds (a file cannot smuggle in a different regex), then rebuilds the scikit-learn
  pipeline; predictions after a round trip are bit-identical (floats round-trip exactly through
  JSON). A pickled artifact from an older version is refused without being unpickled.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from chipforge import fs, vocab

PHASES: tuple[str, ...] = vocab.PHASES
KINDS: tuple[str, ...] = ("question", "doc", "module")

ARTIFACT_FORMAT = "chipforge.phase_classifier"
ARTIFACT_VERSION = 2  # 1 was a pickle (refused)
MAX_ARTIFACT_BYTES = 256 << 20
# TfidfVectorizer settings that shape ``transform`` (saved, and checked against ``_build`` on load).
_VECTORIZER_SETTINGS = ("analyzer", "ngram_range", "lowercase", "sublinear_tf", "token_pattern", "norm", "use_idf",
                        "smooth_idf", "binary", "strip_accents", "dtype")
_VECTORIZER_UNSUPPORTED = ("preprocessor", "tokenizer", "stop_words", "vocabulary")  # must be None to save

DATA_DIR = Path(__file__).parent / "data"
TRAIN_PATH = DATA_DIR / "phase_train.jsonl"
EVAL_PATH = DATA_DIR / "phase_eval.jsonl"

KEYWORDS: dict[str, tuple[str, ...]] = {
    "rtl_design": (
        r"\bmodule\b", r"\bendmodule\b", r"\balways(_ff|_comb)?\b", r"\bassign\b", r"\bverilog\b",
        r"systemverilog", r"\brtl\b", r"\bfsm\b", r"state machine", r"\bfifo\b", r"testbench",
        r"\biverilog\b", r"\bverilator\b", r"\bposedge\b", r"\blogic\b", r"\bcounter\b", r"\blatch",
        r"\bsimulat", r"\bparameter\b", r"\bwire\b", r"\breg\b", r"\b(en|de)coder\b", r"\balu\b",
        r"shifter", r"\buart\b", r"\b(apb|axi|ahb)\b", r"handshake", r"\bcase[zx]\b", r"blocking",
        r"\$(display|dumpvars|finish)", r"\binitial\b", r"\bmux",
    ),
    "synthesis": (
        r"\byosys\b", r"\babc\b", r"synth", r"\bnetlist\b", r"technology mapping", r"techmap",
        r"\bliberty\b", r"dfflibmap", r"\bopt_", r"\bflatten", r"cell count", r"\bluts?\b",
        r"logic optimi", r"read_verilog", r"\bstat\b", r"\bgate[- ]level\b", r"\bmapp(ed|ing)\b",
    ),
    "placement": (
        r"\bplac(e|ed|er|ing|ement)\b", r"\breplace\b", r"dreamplace", r"global_placement",
        r"detailed_placement", r"\bdensity\b", r"legali[sz]", r"floorplan", r"\bcore area\b",
        r"utili[sz]ation", r"\bmacros?\b", r"\bhpwl\b", r"wirelength", r"\bio pins?\b", r"\brows?\b",
        r"tapcell", r"aspect ratio", r"\bdie\b", r"fp_core_util", r"\bhalos?\b",
    ),
    "routing": (
        r"\brout(e|es|ed|er|ing)\b", r"tritonroute", r"fastroute", r"global_route", r"detailed_route",
        r"\bvias?\b", r"\bdrc\b", r"congestion", r"\bguides?\b", r"metal layers?", r"\bspacing\b",
        r"\bshorts?\b", r"\bmagic\b", r"\bspef\b", r"\bantenna\b", r"\btracks?\b", r"\blvs\b",
        r"\bwir(es?|ing)\b", r"\bmetal\b",
    ),
    "timing_analysis": (
        r"\bsta\b", r"opensta", r"\bslack\b", r"\bsetup\b", r"\bhold\b", r"\bsdc\b",
        r"create_clock", r"report_checks", r"critical path", r"\btiming\b", r"\bwns\b", r"\btns\b",
        r"clock skew", r"set_input_delay", r"set_output_delay", r"false[_ ]path", r"multicycle",
        r"\bclock period\b", r"\bfrequency\b", r"derate", r"uncertainty", r"generated[ _]clock",
        r"get_clocks", r"arrival", r"required time", r"\b(start|end)point", r"\b(max|min)_delay\b",
        r"\brecovery\b", r"\bremoval\b", r"\bdelays?\b",
    ),
    "power_analysis": (
        r"\bpower\b", r"leakage", r"dynamic power", r"switching activity", r"\bvcd\b", r"\bsaif\b",
        r"clock gating", r"\bicg\b", r"ir[ -]drop", r"\bpdn\b", r"voltage", r"report_power",
        r"power domain", r"\bupf\b", r"energy", r"\bvdd\b", r"\bmw\b|\buw\b", r"isolation",
        r"retention", r"\btoggl", r"\bactivity\b", r"\bsleep\b", r"glitch", r"consumption",
        r"electromigration", r"\bstraps?\b", r"\bsuppl(y|ies)\b", r"\bdroop\b",
    ),
    "triage": (),
}


def _compile(keywords: Mapping[str, Sequence[str]]) -> dict[str, list[re.Pattern[str]]]:
    return {p: [re.compile(k) for k in ks] for p, ks in keywords.items()}


_COMPILED = _compile(KEYWORDS)


def keyword_baseline(texts: Sequence[str], phases: Sequence[str] = PHASES,
                     keywords: Mapping[str, Sequence[str]] | None = None,
                     tools: Sequence[str | None] | None = None) -> list[str]:
    """Phase with the most distinct keyword/tool-name matches; ties → earlier in ``phases``; none → triage.

    ``keywords`` replaces ``KEYWORDS`` (a config adding a phase passes its rules); ``tools``
    appends the source tool's name to each text, so ``opensta`` counts as a timing keyword.
    """
    compiled = _COMPILED if keywords is None else _compile(keywords)
    fallback = "triage" if "triage" in phases else phases[0]
    tool_list = list(tools) if tools is not None else [None] * len(texts)
    out: list[str] = []
    for text, tool in zip(texts, tool_list, strict=True):
        low = (text + (f" {tool}" if tool else "")).lower()
        spaced = low.replace("_", " ")  # so \bpower\b also matches set_power_activity, FP_PDN_*
        best, best_score = fallback, 0
        for phase in phases:
            score = sum(1 for rx in compiled.get(phase, ()) if rx.search(low) or rx.search(spaced))
            if score > best_score:
                best, best_score = phase, score
        out.append(best)
    return out


def load_labelled(path: str | Path, phases: Sequence[str] = PHASES) -> list[dict[str, Any]]:
    """Rows ``{"id", "text", "phase", "kind", optional "tool"}``; a bad line raises naming file:line."""
    rows: list[dict[str, Any]] = []
    for i, row in fs.read_jsonl(str(path)):
        if not isinstance(row, dict) or row.get("phase") not in phases or not isinstance(row.get("text"), str):
            raise ValueError(f"{path}:{i}: needs a 'text' string and a 'phase' in {tuple(phases)}")
        rows.append(row)
    return rows


def _with_tool(texts: Sequence[str], tools: Sequence[str | None] | None) -> list[str]:
    if tools is None:
        return list(texts)
    return [f"__tool_{t.lower()}__ {x}" if t else x for x, t in zip(texts, tools, strict=True)]


def evaluate(y_true: Sequence[str], y_pred: Sequence[str], phases: Sequence[str] = PHASES) -> dict[str, Any]:
    """Per-phase precision/recall/F1/support, macro-F1 (over ``phases``), accuracy, confusion matrix.

    ``confusion[i][j]`` counts items of true phase ``labels[i]`` predicted as ``labels[j]``.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items, y_pred {len(y_pred)}")
    labels = list(phases)
    unknown = sorted(set(y_true) - set(labels))
    if unknown:
        raise ValueError(f"true labels outside phases {labels}: {unknown}")
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    return {
        "per_phase": {ph: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                           "support": int(s[i])} for i, ph in enumerate(labels)},
        "macro_f1": float(sum(f) / len(labels)),
        "accuracy": float(sum(a == b for a, b in zip(y_true, y_pred)) / max(1, len(y_true))),
        "labels": labels,
        "confusion": {"rows": "true", "columns": "predicted", "labels": labels, "matrix": cm.tolist()},
    }


class PhaseClassifier:
    """TF-IDF word+char n-grams → LogisticRegression; ``fit``/``predict``/``save``/``load``.

    ``pipeline`` is the fitted scikit-learn Pipeline (``predict_proba``, ``classes_``).
    """

    def __init__(self, pipeline: Any | None = None, phases: Sequence[str] = PHASES) -> None:
        self.pipeline = pipeline
        self.phases = tuple(phases)

    @staticmethod
    def _build() -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, Pipeline

        features = FeatureUnion([
            ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True,
                                     token_pattern=r"[A-Za-z_][A-Za-z0-9_]+")),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True,
                                     lowercase=True)),
        ])
        clf = LogisticRegression(C=10.0, max_iter=3000, solver="lbfgs", class_weight="balanced", random_state=0)
        return Pipeline([("features", features), ("clf", clf)])

    @property
    def classes(self) -> list[str]:
        """Column order of ``predict_proba``."""
        self._check()
        return [str(c) for c in self.pipeline.classes_]

    def _check(self) -> None:
        if self.pipeline is None:
            raise RuntimeError("PhaseClassifier is not fitted: call fit() or load()")

    def fit(self, texts: Sequence[str], labels: Sequence[str],
            tools: Sequence[str | None] | None = None) -> "PhaseClassifier":
        bad = sorted(set(labels) - set(self.phases))
        if bad:
            raise ValueError(f"labels outside phases {self.phases}: {bad}")
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        self.pipeline = self._build()
        self.pipeline.fit(_with_tool(texts, tools), list(labels))
        return self

    def predict(self, texts: Sequence[str], tools: Sequence[str | None] | None = None) -> list[str]:
        self._check()
        if len(texts) == 0:
            return []
        return [str(p) for p in self.pipeline.predict(_with_tool(texts, tools))]

    def predict_proba(self, texts: Sequence[str], tools: Sequence[str | None] | None = None) -> Any:
        """(n, len(classes)) numpy array of probabilities; columns follow ``classes``."""
        self._check()
        return self.pipeline.predict_proba(_with_tool(texts, tools))

    def save(self, path: str | Path) -> None:
        """Write the JSON artifact (``to_artifact``) to ``path`` atomically (temp file, then rename)."""
        fs.write_bytes(str(path), json.dumps(self.to_artifact(), separators=(",", ":"), allow_nan=False).encode())

    def to_artifact(self) -> dict[str, Any]:
        """The fitted parameters as plain JSON types (see the module docstring)."""
        self._check()
        steps = getattr(self.pipeline, "named_steps", {})
        features, clf = steps.get("features"), steps.get("clf")
        if features is None or clf is None or not hasattr(features, "transformer_list"):
            raise ValueError("only the TF-IDF FeatureUnion + LogisticRegression pipeline of PhaseClassifier can be saved")
        vectorizers = []
        for name, vec in features.transformer_list:
            params = vec.get_params()
            custom = [k for k in _VECTORIZER_UNSUPPORTED if params.get(k) is not None]
            if custom:
                raise ValueError(f"vectorizer {name!r}: {custom} cannot be saved as data")
            settings = {k: params[k] for k in _VECTORIZER_SETTINGS}
            settings["ngram_range"] = list(settings["ngram_range"])
            settings["dtype"] = _dtype_name(settings["dtype"])
            terms = [t for t, _ in sorted(vec.vocabulary_.items(), key=lambda kv: kv[1])]
            vectorizers.append({"name": name, "settings": settings, "terms": terms,
                                "idf": [float(x) for x in vec.idf_]})
        return {
            "format": ARTIFACT_FORMAT,
            "version": ARTIFACT_VERSION,
            "phases": list(self.phases),
            "vectorizers": vectorizers,
            "classifier": {"classes": [str(c) for c in clf.classes_],
                           "coef": [[float(x) for x in row] for row in clf.coef_],
                           "intercept": [float(x) for x in clf.intercept_]},
        }

    @classmethod
    def from_artifact(cls, obj: Any, where: str = "phase classifier artifact") -> "PhaseClassifier":
        """Rebuild from ``to_artifact``'s dict; ValueError naming ``where`` and the problem if it does not fit."""
        import numpy as np

        def bad(problem: str) -> ValueError:
            return ValueError(f"{where}: {problem}")

        if not isinstance(obj, dict) or obj.get("format") != ARTIFACT_FORMAT:
            raise bad(f"not a {ARTIFACT_FORMAT} artifact (written by PhaseClassifier.save)")
        if obj.get("version") != ARTIFACT_VERSION:
            raise bad(f"version {obj.get('version')!r}, expected {ARTIFACT_VERSION} (retrain and save again)")
        phases = obj.get("phases")
        if not isinstance(phases, list) or not phases or not all(isinstance(x, str) for x in phases):
            raise bad("'phases' must be a non-empty list of strings")
        expected = {name: vec.get_params() for name, vec in cls._build().named_steps["features"].transformer_list}
        specs = obj.get("vectorizers")
        if not isinstance(specs, list) or [s.get("name") if isinstance(s, dict) else None for s in specs] != list(expected):
            raise bad(f"'vectorizers' must be {list(expected)} in that order")
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.pipeline import FeatureUnion, Pipeline

        transformers = []
        n_features = 0
        for spec in specs:
            name, settings, terms, idf = spec["name"], spec.get("settings"), spec.get("terms"), spec.get("idf")
            want = {k: expected[name][k] for k in _VECTORIZER_SETTINGS}
            want["ngram_range"], want["dtype"] = list(want["ngram_range"]), _dtype_name(want["dtype"])
            if settings != want:
                raise bad(f"vectorizer {name!r} settings {settings!r} differ from this version's {want!r} (retrain)")
            if not isinstance(terms, list) or not terms or not all(isinstance(t, str) for t in terms):
                raise bad(f"vectorizer {name!r}: 'terms' must be a non-empty list of strings")
            if len(set(terms)) != len(terms):
                raise bad(f"vectorizer {name!r}: duplicate terms")
            idf_arr = _finite_array(idf, (len(terms),), f"vectorizer {name!r} idf", bad)
            vec = TfidfVectorizer(**expected[name])  # the stored settings, checked equal above
            vec.vocabulary_ = {t: i for i, t in enumerate(terms)}
            vec.fixed_vocabulary_ = False
            vec.idf_ = idf_arr
            transformers.append((name, vec))
            n_features += len(terms)
        spec = obj.get("classifier")
        if not isinstance(spec, dict):
            raise bad("'classifier' must be an object")
        classes = spec.get("classes")
        if (not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes)
                or len(set(classes)) != len(classes) or not set(classes) <= set(phases)):
            raise bad("'classifier.classes' must be at least two distinct phases from 'phases'")
        rows = 1 if len(classes) == 2 else len(classes)
        coef = _finite_array(spec.get("coef"), (rows, n_features), "classifier.coef", bad)
        intercept = _finite_array(spec.get("intercept"), (rows,), "classifier.intercept", bad)
        template = cls._build().named_steps["clf"]
        clf = type(template)(**template.get_params())
        clf.classes_ = np.array(classes)
        clf.coef_, clf.intercept_ = coef, intercept
        clf.n_features_in_ = n_features
        clf.n_iter_ = np.zeros(1, dtype=np.int32)
        return cls(Pipeline([("features", FeatureUnion(transformers)), ("clf", clf)]), phases)
    @classmethod
    def train_default(cls, train_path: str | Path = TRAIN_PATH, phases: Sequence[str] = PHASES) -> "PhaseClassifier":
        """Fit on a labelled jsonl (the shipped train set by default)."""
        rows = load_labelled(train_path, phases)
        return cls(phases=phases).fit([r["text"] for r in rows], [r["phase"] for r in rows],
                                      [r.get("tool") for r in rows])

    @classmethod
    def load(cls, path: str | Path | None = None) -> "PhaseClassifier":
        """Saved artifact at ``path``; ``None`` → trained on the shipped train set (once per process).

        A ``path`` that does not exist yet is trained on the shipped set and saved there.
        """
        if path is None:
            return _default_classifier()
        if fs.exists(str(path)):
            return cls.read(path)
        clf = cls.train_default()
        clf.save(path)
        return clf

    @classmethod
    def read(cls, path: str | Path) -> "PhaseClassifier":
        """Load the JSON artifact at ``path``. Never unpickles: a pickle (or anything that is not
        the expected JSON document) raises ValueError naming the file, before any of it is used."""
        where = f"phase classifier artifact {path}"
        try:
            filesystem, inner = fs.resolve(str(path))
            size = filesystem.get_file_info(inner).size
            if size is None:
                raise FileNotFoundError(str(path))
            if size > MAX_ARTIFACT_BYTES:
                raise ValueError(f"{where}: {size} bytes > {MAX_ARTIFACT_BYTES}")
            data = fs.read_bytes(str(path))
        except OSError as e:
            raise ValueError(f"{where}: unreadable ({e})") from e
        if data[:1] == b"\x80":
            raise ValueError(f"{where}: a pickle (written by an older chipforge?) is refused without being "
                             "loaded; delete it to retrain, or point to a JSON artifact")
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"{where}: not a JSON artifact written by PhaseClassifier.save ({e})") from e
        return cls.from_artifact(obj, where)


def _dtype_name(dtype: Any) -> str:
    import numpy as np

    return np.dtype(dtype).name


def _finite_array(value: Any, shape: tuple[int, ...], what: str, bad: Any) -> Any:
    """``value`` as a float64 array of ``shape`` with finite entries, else ``bad(problem)`` is raised."""
    import numpy as np

    def numbers(v: Any, depth: int) -> bool:
        if depth == 0:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        return isinstance(v, list) and all(numbers(x, depth - 1) for x in v)

    if not numbers(value, len(shape)):
        raise bad(f"{what} must be nested lists of finite numbers")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except ValueError:  # ragged nested lists
        raise bad(f"{what} has a ragged shape, expected {shape}") from None
    if arr.shape != shape:
        raise bad(f"{what} has shape {arr.shape}, expected {shape}")
    return arr


@lru_cache(maxsize=1)
def _default_classifier() -> PhaseClassifier:
    return PhaseClassifier.train_default()
