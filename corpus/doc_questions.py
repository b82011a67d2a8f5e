"""Documentation questions written by a synthesis engine from each section, kept only when grounded.

Without an engine the dataset job asks a section-title question per chunk (``corpus.dataset.doc_question``).
With one (the dataset job's ``doc_questions.engine``), each eligible chunk (long enough, not a
triage chunk: the same rule and classifier as ``corpus.dataset.DocStage``) becomes one prompt
(:func:`prompt_row`) asking for ``per_section`` question/answer pairs of the kinds users ask
(:data:`KINDS`), answered from the section only, as one JSON object. The chunk rides along in the
prompt's ``seed_json`` (engines pass it through unchanged), so the check needs no join.

Every reply is parsed strictly (:func:`parse_reply`: size capped, one JSON object
``{"pairs": [{"kind", "question", "answer"}]}``) and every pair checked (:func:`pair_reason`):

- the answer is supported by the section: at least ``min_support`` of its content words (stemmed,
  stop words and a few connective words aside) occur in the section, and every hard term — an
  option (``-density``), a number, an identifier with ``_`` or digits, a file name, anything in
  code — occurs in it verbatim (:func:`support`);
- the question does not carry the answer: no run of ``max_shared_words`` words in common;
- a question the section cannot answer is dropped (the model says so, or support is too low);
- the answer does not talk about "the section" (at inference time there is none).

Kept pairs become ``doc_question`` examples (``corpus.dataset.make_example``, source
``documentation``, the chunk's provenance with the generator in ``provenance.generator``); a chunk
that keeps none gets the title fallback instead (``keep_fallback`` keeps it always). Dropped
pairs and failed replies become skip rows ``doc_question_<reason>`` of the chunk's page group,
so the dataset report counts them per phase and split like every other filter; the ``outcome``
column (:func:`tally`) gives the ``doc_questions`` report its generated / kept / dropped counts.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa
from pydantic import Field, field_validator

from chipforge.config import Config
from chipforge.vocab import content_hash
from corpus.dataset import TAGGED_SCHEMA, doc_examples, make_example
from corpus.splits import doc_group
from synthesis.engines import EngineConfig
from synthesis.parsing import JSON_FENCE, json_depth

TASK = "doc_question"  # the title fallback keeps task "doc_qa"
TEMPLATE = "doc_questions@v1"
SKIP_PREFIX = "doc_question_"  # skip reason of a dropped pair or failed reply: doc_question_<reason>
KINDS: dict[str, str] = {
    "how_to": "how to do something with the tool (which command, which steps)",
    "option": "what a command option, setting or report field means",
    "error": "why an error, warning or unexpected result appears",
    "fix": "how to fix a violation or problem",
}
CHUNK_FIELDS = ("id", "source", "tool", "url", "title", "section_path", "license")
OUTCOME_SCHEMA = pa.schema([*TAGGED_SCHEMA, pa.field("outcome", pa.string())])
SYSTEM = ("You write training data for a chip-design assistant: questions that real users of a tool ask, "
          "each with an answer taken only from the documentation section you are given. "
          "Reply with one JSON object and nothing else.")


class DocQuestionsConfig(Config):
    """The dataset job's ``doc_questions`` block: engine-written questions per documentation section."""

    engine: EngineConfig | None = None  # None: the section-title fallback only (no generation)
    per_section: int = Field(3, ge=1, le=8)  # pairs asked for per section (extra ones are dropped)
    kinds: list[str] = Field(default_factory=lambda: list(KINDS))
    min_support: float = Field(0.8, gt=0.0, le=1.0)  # share of the answer's content words found in the section
    max_shared_words: int = Field(8, ge=3)  # a question sharing a run this long with its answer is dropped
    max_section_chars: int = Field(6000, ge=200)  # section text shown to the model (and checked against)
    max_reply_chars: int = Field(16_000, ge=100)
    max_question_chars: int = Field(400, ge=20)
    max_answer_chars: int = Field(2500, ge=50)
    min_answer_words: int = Field(4, ge=1)
    keep_fallback: bool = False  # also keep the title question for chunks that keep engine pairs

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, v: list[str]) -> list[str]:
        bad = sorted(set(v) - set(KINDS))
        if bad or not v:
            raise ValueError(f"kinds must be a non-empty subset of {list(KINDS)}; unknown: {bad}")
        return v


# ----------------------------------------------------------------------------- prompts

def section_text(doc: Mapping[str, Any], max_chars: int) -> str:
    """The chunk text the model sees and the answer is checked against (cut at ``max_chars``)."""
    return (doc.get("text") or "").strip()[:max_chars]


def prompt_row(doc: Mapping[str, Any], phase: str, cfg: DocQuestionsConfig) -> dict[str, Any]:
    """One ``synthesis.seeds.PROMPT_SCHEMA`` row asking for ``cfg.per_section`` pairs about ``doc``.

    ``seed_json`` holds the chunk (its provenance fields and the section text shown), the kinds
    and the count, so the reply can be checked from the generation row alone."""
    tool = doc.get("tool") or doc.get("source") or "the tool"
    path = " > ".join(s for s in (doc.get("section_path") or []) if s) or (doc.get("title") or "")
    text = section_text(doc, cfg.max_section_chars)
    kinds = "\n".join(f'- "{k}": {KINDS[k]}' for k in cfg.kinds)
    user = (f"Tool: {tool}\nPage: {doc.get('title') or ''}\nSection: {path}\n\n<section>\n{text}\n</section>\n\n"
            f"Write {cfg.per_section} different questions a user of {tool} might ask that this section answers, "
            f"each of one of these kinds:\n{kinds}\n\n"
            "Rules:\n"
            "- Answer each question using only facts stated in the section; write commands, options, numbers "
            "and names exactly as the section does. Add nothing the section does not say.\n"
            "- Ask as a user would, without quoting the answer; the question must make sense without the section.\n"
            "- Answer directly; never mention \"the section\" or \"the documentation\".\n"
            "- Skip a kind the section does not answer. If it answers no such question, reply {\"pairs\": []}.\n\n"
            'Reply with one JSON object: {"pairs": [{"kind": "...", "question": "...", "answer": "..."}]}')
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    chunk = {k: doc.get(k) for k in CHUNK_FIELDS} | {"text": doc.get("text") or ""}  # whole: the fallback's answer
    seed = {"chunk": chunk, "kinds": list(cfg.kinds), "n": cfg.per_section}
    return {"prompt_id": content_hash("doc_questions", doc.get("id"), TEMPLATE, cfg.per_section, list(cfg.kinds),
                                      length=16),
            "round": 0, "phase": phase, "task": TASK, "template_id": TEMPLATE,
            "seed_json": json.dumps(seed), "messages_json": json.dumps(messages)}


class DocPromptStage:
    """Batch of DOCS_SCHEMA rows → prompt rows for the chunks ``DocStage`` would build examples of
    (at least ``min_chars`` of text, a phase other than triage from the same classifier)."""

    def __init__(self, settings: Mapping[str, Any], model_path: str | None = None, min_chars: int = 80) -> None:
        from corpus.phases import PhaseClassifier

        self.cfg = DocQuestionsConfig(**settings)
        self.clf, self.min_chars = PhaseClassifier.load(model_path), min_chars

    def __call__(self, batch: pa.Table) -> pa.Table:
        from synthesis.seeds import PROMPT_SCHEMA

        docs = [d for d in batch.to_pylist()  # DocStage's rules: id and source set, text long enough
                if d.get("id") and d.get("source") and len((d.get("text") or "").strip()) >= self.min_chars]
        phases = self.clf.predict([d["text"] for d in docs], tools=[d.get("tool") for d in docs]) if docs else []
        rows = [prompt_row(d, ph, self.cfg) for d, ph in zip(docs, phases) if ph != "triage"]
        return pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA)


# ----------------------------------------------------------------------------- parsing

def load_json_reply(text: str | None, *, max_chars: int, max_depth: int, cannot: re.Pattern[str],
                    error: Callable[..., Exception]) -> Any:
    """The JSON value of an engine reply (a ```json fence is allowed), or ``error(reason[, detail])``:
    ``empty``, ``too_long`` (over ``max_chars``), ``unanswerable`` (plain text matching ``cannot``),
    ``not_json``, ``too_deep`` (nesting over ``max_depth``, checked before parsing)."""
    if text is None or not str(text).strip():
        raise error("empty")
    if len(text) > max_chars:
        raise error("too_long", f"{len(text)} chars")
    raw = text.strip()
    m = JSON_FENCE.match(raw)
    raw = m.group("body").strip() if m else raw
    if not raw.startswith("{"):
        raise error("unanswerable" if cannot.search(raw) else "not_json")
    if json_depth(raw, max_depth) > max_depth:
        raise error("too_deep")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise error("not_json", str(exc)[:120]) from exc


class ReplyError(ValueError):
    """A reply that yields no pairs at all; ``reason`` is what the report counts."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


_CANNOT = re.compile(
    r"\b(?:can ?not|can't|unable to|not possible to)\s+(?:be\s+)?answer|"
    r"\b(?:section|documentation|docs|text|passage|excerpt)\s+(?:does not|doesn't|do not|don't)\s+"
    r"(?:say|mention|describe|cover|specify|explain|state|contain|provide)|"
    r"\bnot\s+(?:mentioned|covered|stated|described|specified|explained|provided)\s+(?:in|by)\s+the\b|"
    r"\bno information\b|\binsufficient information\b", re.I)
_META = re.compile(r"\b(?:th(?:e|is) (?:section|passage|excerpt|text above)|according to the (?:section|documentation|"
                   r"text|passage)|the (?:given|provided) (?:section|documentation|text))\b", re.I)


def _kind(item: Mapping[str, str], kinds: Sequence[str]) -> str:
    """The pair's kind as asked for (``How-to`` → ``how_to``); the first kind asked when it has none."""
    return re.sub(r"[\s-]+", "_", item.get("kind", kinds[0]).strip().lower())


def parse_reply(text: str | None, cfg: DocQuestionsConfig, kinds: Sequence[str] | None = None
                ) -> tuple[list[dict[str, str]], Counter[str]]:
    """Pairs ``{"kind", "question", "answer"}`` of a reply, and the pairs dropped while parsing by reason.

    Raises :class:`ReplyError` when the reply as a whole is unusable: ``empty``, ``too_long``,
    ``unanswerable`` (a refusal, or no pairs), ``not_json``, ``too_deep``, ``bad_shape``. Per pair:
    ``bad_pair`` (not an object of strings, unknown keys), ``unknown_kind``, ``empty_field``,
    ``question_too_long``, ``answer_too_long``, ``over_quota`` (beyond ``per_section``)."""
    kinds = list(kinds or cfg.kinds)
    obj = load_json_reply(text, max_chars=cfg.max_reply_chars, max_depth=4, cannot=_CANNOT, error=ReplyError)
    if not isinstance(obj, dict) or set(obj) != {"pairs"} or not isinstance(obj["pairs"], list):
        raise ReplyError("bad_shape", "want exactly {\"pairs\": [...]}")
    if not obj["pairs"]:
        raise ReplyError("unanswerable", "no pairs")
    dropped: Counter[str] = Counter()
    pairs: list[dict[str, str]] = []
    for item in obj["pairs"]:
        if not isinstance(item, dict) or not {"question", "answer"} <= set(item) <= {"kind", "question", "answer"} \
                or not all(isinstance(v, str) for v in item.values()):
            dropped["bad_pair"] += 1
        elif _kind(item, kinds) not in kinds:
            dropped["unknown_kind"] += 1
        elif not item["question"].strip() or not item["answer"].strip():
            dropped["empty_field"] += 1
        elif len(item["question"]) > cfg.max_question_chars:
            dropped["question_too_long"] += 1
        elif len(item["answer"]) > cfg.max_answer_chars:
            dropped["answer_too_long"] += 1
        elif len(pairs) >= cfg.per_section:
            dropped["over_quota"] += 1
        else:
            pairs.append({"kind": _kind(item, kinds), "question": item["question"].strip(),
                          "answer": item["answer"].strip()})
    return pairs, dropped


# ----------------------------------------------------------------------------- support

STOP = frozenset("""a an the and or but if then else of to in on at by for with from into onto over under as is are was
were be been being it its this that these those there here which who whom whose what when where why how
you your yours we our us i me my they them their he she his her not no nor so such than too very can could
may might must shall should will would do does did done doing have has had having also only just more most
less least any all each every both either neither other another some same own about above below between
through during before after again further once per via while until because e.g i.e etc eg ie one""".split())
# Connective words an answer may use without the section using them (how answers are phrased).
GLUE = frozenset("""use used using run runs running call calls set sets setting pass give gives get make makes
need needs want first then next finally also instead example command commands option options flag flags value
values default tool step steps add adds way ways able sure note means mean meaning yes""".split())
_WORD = re.compile(r"[a-z][a-z0-9_]*")
_CODE = re.compile(r"```[^\n]*\n(.*?)```|`([^`\n]+)`", re.S)
_OPTION = re.compile(r"(?<![\w-])(-{1,2}[A-Za-z][\w-]*)")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")
_IDENT = re.compile(r"\b(?:[A-Za-z_]\w*_\w*|[A-Za-z]+\d\w*|\w+\.[A-Za-z]\w*)\b")
_CODE_TOKEN = re.compile(r"-{0,2}[A-Za-z_][\w.]*|\d+(?:\.\d+)?")
_LIST_MARK = re.compile(r"^\s*\d+[.)]\s", re.M)


def stem(word: str) -> str:
    """A crude suffix strip so ``spreads``/``spread`` and ``placed``/``place`` compare equal."""
    for suffix in ("ing", "ed", "es", "s", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)].rstrip("e") if suffix in ("ing", "ed") else word[: -len(suffix)]
    return word.rstrip("e") if len(word) > 3 else word


def content_words(text: str) -> set[str]:
    """Stems of the words that carry facts: not stop or connective words, at least two characters."""
    return {stem(w) for w in _WORD.findall(text.lower()) if w not in STOP and w not in GLUE and len(w) > 1}


def hard_terms(text: str) -> set[str]:
    """Terms an answer may not invent: everything in code (fenced or inline), options, numbers
    (not list markers), identifiers with ``_`` or digits, file names. Lower case."""
    terms: set[str] = set()
    for fenced, inline in _CODE.findall(text):
        terms |= {t.lower().rstrip(".") for t in _CODE_TOKEN.findall(fenced or inline)}
    prose = _LIST_MARK.sub(" ", _CODE.sub(" ", text))
    terms |= {t.lower() for t in _OPTION.findall(prose)}
    terms |= set(_NUMBER.findall(prose))
    terms |= {t.lower().rstrip(".") for t in _IDENT.findall(prose)}
    return {t for t in terms if t and t not in ("e.g", "i.e")}


def _number_forms(text: str) -> set[str]:
    out = set()
    for n in _NUMBER.findall(text):
        out.add(n)
        out.add(repr(float(n)))
    return out


def reference_terms(section: str) -> tuple[set[str], set[str]]:
    """(content stems, verbatim terms) of a section: what a supported answer may say."""
    low = section.lower()
    terms = {t.lower().rstrip(".") for t in _CODE_TOKEN.findall(section)} | {t.lower() for t in _OPTION.findall(section)}
    terms |= {t.lower().rstrip(".") for t in _IDENT.findall(section)} | _number_forms(section)
    terms |= set(_WORD.findall(low))
    return content_words(section), terms


def support(answer: str, section: str) -> tuple[float, list[str]]:
    """(share of the answer's content stems found in the section, the answer's hard terms missing
    from it). An answer without content words has the support of its hard terms (0 with none)."""
    stems, terms = reference_terms(section)
    words, hard = content_words(answer), hard_terms(answer)
    missing = sorted(t for t in hard if t not in terms and not (_NUMBER.fullmatch(t) and repr(float(t)) in terms))
    share = len(words & stems) / len(words) if words else float(bool(hard) and not missing)
    return round(share, 3), missing


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Word ``n``-grams of the lower-cased text (the dataset tests' overlap measure)."""
    words = re.findall(r"[a-z0-9_]+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def pair_reason(pair: Mapping[str, str], section: str, cfg: DocQuestionsConfig) -> str | None:
    """Why a parsed pair is dropped, or None when it is kept (see the module docstring)."""
    q, a = pair["question"], pair["answer"]
    if _CANNOT.search(a):
        return "unanswerable"
    if len(re.findall(r"\w+", q)) < 3:
        return "question_too_short"
    if len(re.findall(r"\w+", a)) < cfg.min_answer_words:
        return "answer_too_short"
    if ngrams(q, cfg.max_shared_words) & ngrams(a, cfg.max_shared_words):
        return "question_copies_answer"
    if _META.search(a):
        return "refers_to_section"
    share, missing = support(a, section)
    if missing:
        return "unsupported_term"
    if share < cfg.min_support:
        return "unsupported"
    return None


# ----------------------------------------------------------------------------- examples

def check_generation(gen: Mapping[str, Any], cfg: DocQuestionsConfig, generator: str | None = None
                     ) -> list[dict[str, Any]]:
    """One generation row → tagged rows (``OUTCOME_SCHEMA`` as dicts): a ``doc_question`` example per
    kept pair (outcome ``kept:<kind>``), the title fallback where none is kept or ``keep_fallback``
    (``fallback``), and a skip row ``doc_question_<reason>`` per dropped pair (``dropped:<reason>``)
    or failed reply (``reply:<reason>``). All rows carry the chunk's phase and page group."""
    seed = json.loads(gen["seed_json"])
    chunk, phase = seed["chunk"], gen["phase"]
    group = doc_group(chunk)
    # what the model was shown: the section, its tool and headings (an answer may name the tool)
    section = "\n".join([section_text(chunk, cfg.max_section_chars), str(chunk.get("tool") or chunk.get("source") or ""),
                         str(chunk.get("title") or ""), *[s for s in (chunk.get("section_path") or []) if s]])
    out: list[dict[str, Any]] = []

    def drop(where: str, reason: str, n: int = 1) -> None:
        out.extend({"id": chunk["id"], "phase": phase, "group": group, "skip": SKIP_PREFIX + reason,
                    "example": None, "outcome": f"{where}:{reason}"} for _ in range(n))

    pairs: list[dict[str, str]] = []
    if gen.get("engine_error"):
        drop("reply", "engine_error")
    else:
        try:
            pairs, bad = parse_reply(gen.get("generated_text"), cfg, seed.get("kinds"))
            for reason, n in sorted(bad.items()):
                drop("dropped", reason, n)
        except ReplyError as exc:
            drop("reply", exc.reason)
    path = [s for s in (chunk.get("section_path") or []) if s]
    prov = {"repo": None, "commit": None, "path": None, "start_line": None, "end_line": None, "url": chunk.get("url"),
            "section": " > ".join(path) or (chunk.get("title") or chunk.get("source")), "generator": None}
    seen: set[str] = set()
    kept = 0
    for p in pairs:
        reason = pair_reason(p, section, cfg)
        key = " ".join(re.findall(r"[a-z0-9_]+", p["question"].lower()))
        if reason is None and key in seen:
            reason = "duplicate"
        if reason:
            drop("dropped", reason)
            continue
        seen.add(key)
        gen_name = f"{generator or gen.get('template_id')}/{p['kind']}"
        ex = make_example(phase, TASK, p["question"], p["answer"], "documentation",
                          {**prov, "generator": gen_name}, chunk.get("license"))
        out.append({"id": ex["id"], "phase": phase, "group": group, "skip": None,
                    "example": json.dumps({**ex, "group": group}), "outcome": f"kept:{p['kind']}"})
        kept += 1
    if kept == 0 or cfg.keep_fallback:
        for ex in doc_examples(chunk, phase):
            out.append({"id": ex["id"], "phase": phase, "group": group, "skip": None,
                        "example": json.dumps({**ex, "group": group}), "outcome": "fallback"})
    return out


def check_batch(batch: pa.Table, settings: Mapping[str, Any], generator: str | None = None) -> pa.Table:
    """Generation rows (``GENERATION_SCHEMA``) → ``OUTCOME_SCHEMA`` rows (a Ray-free map stage)."""
    cfg = DocQuestionsConfig(**settings)
    rows = [r for g in batch.to_pylist() for r in check_generation(g, cfg, generator)]
    return pa.Table.from_pylist(rows, schema=OUTCOME_SCHEMA)


def tally(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``doc_questions`` report from ``(phase, outcome)`` rows: per phase and in total, the
    pairs generated (kept + dropped per pair), kept (per kind), title fallbacks, and drops by reason
    (``reply/<reason>`` for a whole reply)."""
    per: dict[str, dict[str, Counter[str]]] = {}
    for r in rows:
        where, _, what = r["outcome"].partition(":")
        c = per.setdefault(r["phase"], {"kept": Counter(), "dropped": Counter(), "fallback": Counter()})
        if where == "kept":
            c["kept"][what] += 1
        elif where == "fallback":
            c["fallback"]["chunks"] += 1
        else:
            c["dropped"][what if where == "dropped" else f"reply/{what}"] += 1

    def block(cs: Sequence[dict[str, Counter[str]]]) -> dict[str, Any]:
        kept, dropped = sum((c["kept"] for c in cs), Counter()), sum((c["dropped"] for c in cs), Counter())
        pair_drops = sum(v for k, v in dropped.items() if not k.startswith("reply/"))
        return {"generated": sum(kept.values()) + pair_drops, "kept": sum(kept.values()),
                "kept_per_kind": dict(sorted(kept.items())), "fallback": sum(c["fallback"]["chunks"] for c in cs),
                "dropped": dict(sorted(dropped.items()))}

    return {**block(list(per.values())), "per_phase": {p: block([c]) for p, c in sorted(per.items())}}


def without_outcome(table: pa.Table) -> pa.Table:
    """The tagged rows as ``corpus.dataset.TAGGED_SCHEMA`` (the ``outcome`` column dropped)."""
    return table.select(TAGGED_SCHEMA.names).cast(TAGGED_SCHEMA)
