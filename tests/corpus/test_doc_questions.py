"""Engine-written documentation questions: prompts, strict parsing, the support check, outcomes.

The section texts below were written for these tests. A deterministic fake engine (the engine
interface: prompt rows → ``GENERATION_SCHEMA`` rows) returns one canned reply per chunk; each
reply must end up kept or dropped with the reason named here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from corpus import doc_questions as dq
from corpus.dataset import TAGGED_SCHEMA, ApplySplits, DocStage
from corpus.doc_questions import DocQuestionsConfig, ReplyError, check_batch, parse_reply, prompt_row, support
from corpus.schema import DOCS_SCHEMA, EXAMPLES_SCHEMA
from corpus.splits import doc_group
from synthesis.engines import GENERATION_SCHEMA
from synthesis.seeds import PROMPT_SCHEMA

HOLD = (
    "A hold violation means that new data reaches a register too soon after the capturing clock edge, "
    "before the hold requirement of the register has passed. List the worst hold paths with\n\n"
    "```tcl\nreport_checks -path_delay min -group_count 5\n```\n\n"
    "A violating path has a negative slack in the report. To fix hold violations, insert delay buffers on "
    "the data path with `repair_timing -hold -hold_margin 0.05`; the margin is in nanoseconds. "
    "If report_checks prints \"No paths found\", the design has no constrained register-to-register paths: "
    "define the clock first, for example `create_clock -name core -period 10 [get_ports clk]`."
)
DENSITY = (
    "The -density option of global_placement sets the target cell density in each bin, between 0 and 1. "
    "A low density spreads the cells and leaves room for routing; a high density packs them and shortens wires. "
    "Values from 0.5 to 0.7 suit most designs. If placement stops with the error GPL-0302 \"target density is "
    "lower than the utilisation\", raise -density above the core utilisation or enlarge the core area."
)


def doc(chunk_id: str, text: str, title: str = "Timing checks", section: str = "Fixing hold violations") -> dict[str, Any]:
    return {"id": chunk_id, "source": "opensta", "tool": "opensta", "url": f"https://example.org/sta/{title.lower()}.html#x",
            "title": title, "section_path": [title, section], "text": text, "n_chars": len(text), "has_code": True,
            "sha256": chunk_id, "license": "GPL-3.0"}


def reply(*pairs: tuple[str, str, str]) -> str:
    return json.dumps({"pairs": [{"kind": k, "question": q, "answer": a} for k, q, a in pairs]})


GOOD = reply(
    ("how_to", "How can I see which paths break hold in my design?",
     "Run `report_checks -path_delay min -group_count 5` to list the worst hold paths; a violating path has a negative slack."),
    ("fix", "My design fails hold checks after CTS. How do I repair them?",
     "Insert delay buffers on the data path with `repair_timing -hold -hold_margin 0.05`. The margin is in nanoseconds."),
    ("error", "Why does report_checks tell me No paths found?",
     "The design has no constrained register-to-register paths. Define the clock first, for example with "
     "`create_clock -name core -period 10 [get_ports clk]`."),
)
UNSUPPORTED = reply(
    ("fix", "How do I fix hold violations?",  # an option and a number the section never mentions
     "Run `repair_timing -hold -max_buffer_percent 30` so the repair inserts delay buffers on the data path."),
    ("error", "Why do hold violations appear after clock tree synthesis?",  # prose with facts from elsewhere
     "Clock skew introduced during clock tree synthesis shifts capture edges; useful skew scheduling in the router "
     "usually absorbs it without extra buffering."),
)
COPIED = reply(
    ("fix", "Should I insert delay buffers on the data path with repair_timing to fix hold?",
     "Yes: insert delay buffers on the data path with `repair_timing -hold -hold_margin 0.05`."),
)
CANNOT = "I'm sorry, but I can't answer questions about this section; it is too short."
SAYS_NOT = reply(
    ("option", "What does the -hold_margin option default to?", "The section does not say what the default margin is."),
)
MALFORMED = '{"pairs": [{"kind": "how_to", "question": "How do I list hold paths?", "answer": "Run report_checks'
DENSITY_REPLY = reply(
    ("option", "What does -density mean for global_placement?",
     "It sets the target cell density in each bin, between 0 and 1; values from 0.5 to 0.7 suit most designs."),
    ("error", "What does GPL-0302 target density is lower than the utilisation mean?",
     "Raise -density above the core utilisation or enlarge the core area."),
    ("how_to", "How do I leave more room for routing during placement?",
     "Use a lower -density: a low density spreads the cells and leaves room for routing."),
    ("how_to", "Which density should I start from?", "Values from 0.5 to 0.7 suit most designs."),  # over quota
)

DOCS = {"good": doc("good", HOLD), "unsupported": doc("unsupported", HOLD), "copied": doc("copied", HOLD),
        "cannot": doc("cannot", HOLD), "says_not": doc("says_not", HOLD), "malformed": doc("malformed", HOLD),
        "error": doc("error", HOLD), "density": doc("density", DENSITY, "Global placement", "Target density")}
REPLIES: dict[str, tuple[str | None, str | None]] = {
    "good": (GOOD, None), "unsupported": (UNSUPPORTED, None), "copied": (COPIED, None), "cannot": (CANNOT, None),
    "says_not": (SAYS_NOT, None), "malformed": (MALFORMED, None), "error": (None, "http_error: 503"),
    "density": (DENSITY_REPLY, None)}


class FakeEngine:
    """The engine interface (``HFGenerator`` / ``OpenAIChat``: prompt rows → ``GENERATION_SCHEMA``
    rows) answering each prompt with ``answer(chunk_id)`` → (text, engine_error)."""

    def __init__(self, answer: Callable[[str], tuple[str | None, str | None]]) -> None:
        self.answer = answer

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for r in batch.to_pylist():
            text, error = self.answer(json.loads(r["seed_json"])["chunk"]["id"])
            out.append({**{k: r[k] for k in ("prompt_id", "round", "phase", "task", "template_id", "seed_json")},
                        "generated_text": text, "engine_error": error, "prompt_tokens": 100, "completion_tokens": 50})
        return pa.Table.from_pylist(out, schema=GENERATION_SCHEMA)


def run_checked(cfg: DocQuestionsConfig, answer: Callable[[str], tuple[str | None, str | None]],
                docs: dict[str, dict[str, Any]] = DOCS) -> list[dict[str, Any]]:
    prompts = pa.Table.from_pylist([prompt_row(d, "timing_analysis", cfg) for d in docs.values()], schema=PROMPT_SCHEMA)
    gens = FakeEngine(answer)(prompts)
    return check_batch(gens, cfg.model_dump(mode="json", exclude={"engine"}), "fake/m/doc_questions@v1").to_pylist()


@pytest.fixture(scope="module")
def checked() -> list[dict[str, Any]]:
    cfg = DocQuestionsConfig()
    rows: list[dict[str, Any]] = []
    for cid, d in DOCS.items():  # one chunk at a time, so every row is known to belong to its chunk
        rows += [{**r, "chunk": cid} for r in run_checked(cfg, lambda c: REPLIES[c], {cid: d})]
    return rows


def by_chunk(rows: list[dict[str, Any]], cid: str) -> Counter[str]:
    return Counter(r["outcome"] for r in rows if r["chunk"] == cid)


def test_each_reply_is_kept_or_dropped_with_its_reason(checked: list[dict[str, Any]]) -> None:
    assert by_chunk(checked, "good") == {"kept:how_to": 1, "kept:fix": 1, "kept:error": 1}  # no title fallback
    assert by_chunk(checked, "unsupported") == {"dropped:unsupported_term": 1, "dropped:unsupported": 1, "fallback": 1}
    assert by_chunk(checked, "copied") == {"dropped:question_copies_answer": 1, "fallback": 1}
    assert by_chunk(checked, "cannot") == {"reply:unanswerable": 1, "fallback": 1}
    assert by_chunk(checked, "says_not") == {"dropped:unanswerable": 1, "fallback": 1}
    assert by_chunk(checked, "malformed") == {"reply:not_json": 1, "fallback": 1}
    assert by_chunk(checked, "error") == {"reply:engine_error": 1, "fallback": 1}
    assert by_chunk(checked, "density") == {"kept:option": 1, "kept:error": 1, "kept:how_to": 1, "dropped:over_quota": 1}


def test_kept_examples_are_grounded_and_never_carry_their_answer(checked: list[dict[str, Any]]) -> None:
    examples = [json.loads(r["example"]) for r in checked if r["example"]]
    kept = [e for e in examples if e["task"] == dq.TASK]
    assert len(kept) == 6 and {e["task"] for e in examples} == {dq.TASK, "doc_qa"}
    for e in examples:
        user, answer = e["messages"][1]["content"], e["messages"][2]["content"]
        assert not dq.ngrams(user, 8) & dq.ngrams(answer, 8), e["id"]
        assert e["source"] == "documentation" and e["phase"] == "timing_analysis" and e["license"] == "GPL-3.0"
    for e in kept:
        section = HOLD if "hold" in e["provenance"]["section"].lower() else DENSITY
        share, missing = support(e["messages"][2]["content"], section)
        assert share >= 0.8 and not missing
        assert e["provenance"]["generator"].startswith("fake/m/doc_questions@v1/")
        assert e["provenance"]["url"].startswith("https://example.org/sta/")
    # groups are the chunk's page (corpus.splits.doc_group), so splits by documentation page apply
    assert {r["group"] for r in checked} == {doc_group(d) for d in DOCS.values()}
    table = dq.without_outcome(pa.Table.from_pylist(checked, schema=pa.schema([*dq.OUTCOME_SCHEMA,
                                                                               pa.field("chunk", pa.string())])))
    assert table.schema == TAGGED_SCHEMA
    keep = {(i, g) for i, g, s in zip(*(table.column(c).to_pylist() for c in ("id", "group", "skip"))) if not s}
    written = ApplySplits({g: "train" for g in table.column("group").to_pylist()}, keep)(table)
    assert written.schema == EXAMPLES_SCHEMA and written.num_rows == len(examples)


def test_dropped_pairs_are_skip_rows_counted_by_tally(checked: list[dict[str, Any]]) -> None:
    skips = Counter(r["skip"] for r in checked if r["skip"])
    assert skips["doc_question_unsupported_term"] == 1 and skips["doc_question_not_json"] == 1
    assert all(s.startswith(dq.SKIP_PREFIX) for s in skips)
    rep = dq.tally(checked)
    assert rep["kept"] == 6 and rep["fallback"] == 6
    # generated: every pair the model wrote (kept or dropped one by one), not the failed replies
    assert rep["generated"] == 6 + 1 + 1 + 1 + 1 + 1  # kept, unsupported x2, copied, says_not, over_quota
    assert rep["dropped"]["reply/engine_error"] == 1 and rep["dropped"]["reply/unanswerable"] == 1
    assert rep["per_phase"]["timing_analysis"]["kept_per_kind"] == {"error": 2, "fix": 1, "how_to": 2, "option": 1}


def test_keep_fallback_augments_instead_of_replacing() -> None:
    rows = run_checked(DocQuestionsConfig(keep_fallback=True), lambda c: REPLIES[c], {"good": DOCS["good"]})
    assert Counter(r["outcome"] for r in rows)["fallback"] == 1 and sum(r["outcome"].startswith("kept") for r in rows) == 3


def test_prompt_carries_the_section_asks_for_json_and_never_holds_an_answer() -> None:
    cfg = DocQuestionsConfig(per_section=2, kinds=["how_to", "fix"])
    row = prompt_row(DOCS["good"], "timing_analysis", cfg)
    user = json.loads(row["messages_json"])[-1]["content"]
    assert HOLD in user and "Fixing hold violations" in user and "opensta" in user and '"pairs"' in user
    assert "Write 2 different questions" in user and '"fix"' in user and '"option"' not in user
    seed = json.loads(row["seed_json"])
    assert seed["chunk"]["id"] == "good" and seed["chunk"]["text"] == HOLD and seed["kinds"] == ["how_to", "fix"]
    assert prompt_row(DOCS["good"], "timing_analysis", cfg)["prompt_id"] == row["prompt_id"]
    assert prompt_row(DOCS["copied"], "timing_analysis", cfg)["prompt_id"] != row["prompt_id"]
    long = prompt_row(doc("long", HOLD * 20), "timing_analysis", DocQuestionsConfig(max_section_chars=500))
    assert len(json.loads(long["messages_json"])[-1]["content"]) < 2500  # the section shown is cut


@pytest.mark.parametrize("text,reason", [
    (None, "empty"), ("   ", "empty"), ("x" * 20_000, "too_long"), ("Sure! Here are questions.", "not_json"),
    ("I cannot answer from this text.", "unanswerable"), ('{"pairs": []}', "unanswerable"),
    ('{"questions": []}', "bad_shape"), ('{"pairs": {}}', "bad_shape"), ('{"pairs": [], "note": 1}', "bad_shape"),
    ('[{"question": "q"}]', "not_json"), ('{"pairs": [[[[[[1]]]]]]}', "too_deep"),
])
def test_parse_reply_rejects_whole_replies(text: str | None, reason: str) -> None:
    with pytest.raises(ReplyError) as exc:
        parse_reply(text, DocQuestionsConfig())
    assert exc.value.reason == reason


def test_parse_reply_counts_bad_pairs_and_accepts_a_json_fence() -> None:
    cfg = DocQuestionsConfig(per_section=2, max_question_chars=40)
    items = [{"kind": "how_to", "question": "How do I list hold paths?", "answer": "Run report_checks."},
             {"kind": "poem", "question": "Write me a poem?", "answer": "No."},
             {"question": "Missing answer?"}, {"question": "q" * 50, "answer": "a"},
             {"kind": "fix", "question": "", "answer": "a"}, {"kind": "fix", "question": 3, "answer": "a"},
             {"kind": "How-to", "question": "How do I fix hold?", "answer": "Run repair_timing -hold."},
             {"kind": "fix", "question": "One more?", "answer": "More."}]
    pairs, dropped = parse_reply("```json\n" + json.dumps({"pairs": items}) + "\n```", cfg)
    assert [p["question"] for p in pairs] == ["How do I list hold paths?", "How do I fix hold?"]
    assert [p["kind"] for p in pairs] == ["how_to", "how_to"]  # "How-to" is the kind how_to
    assert dropped == {"unknown_kind": 1, "bad_pair": 2, "question_too_long": 1, "empty_field": 1, "over_quota": 1}


def test_support_needs_every_option_number_and_code_token() -> None:
    assert support("Insert delay buffers with `repair_timing -hold -hold_margin 0.05`.", HOLD) == (1.0, [])
    assert support("Use repair_timing -hold -hold_margin 0.1.", HOLD)[1] == ["0.1"]
    assert support("Run `report_checks -path_delay max`.", HOLD)[1] == ["max"]
    assert support("Run report_timing -hold.", HOLD)[1] == ["report_timing"]
    assert support("Values from 0.50 to 0.7 suit most designs.", DENSITY) == (1.0, [])  # 0.50 is 0.5
    assert support("1. Raise -density.\n2. Enlarge the core area.", DENSITY) == (1.0, [])  # list markers are no facts
    share, missing = support("Hold problems come from crosstalk noise on long nets.", HOLD)
    assert share < 0.5 and not missing


def test_pair_checks() -> None:
    cfg = DocQuestionsConfig()
    ok = {"question": "What does -density control?", "answer": "The target cell density in each bin, between 0 and 1."}
    assert dq.pair_reason(ok, DENSITY, cfg) is None
    assert dq.pair_reason({**ok, "answer": "According to the section, the target cell density in each bin."},
                          DENSITY, cfg) == "refers_to_section"
    assert dq.pair_reason({**ok, "answer": "Between 0 and 1."}, DENSITY, cfg) is None  # numbers only, all in it
    assert dq.pair_reason({**ok, "answer": "Between 0 and 2."}, DENSITY, cfg) == "unsupported_term"
    assert dq.pair_reason({**ok, "answer": "0 to 1."}, DENSITY, cfg) == "answer_too_short"
    assert dq.pair_reason({**ok, "question": "Density?"}, DENSITY, cfg) == "question_too_short"
    assert dq.pair_reason({**ok, "answer": "It is not mentioned in the text at all, sorry."}, DENSITY, cfg) == "unanswerable"


def test_doc_stage_without_titles_only_counts_skips() -> None:
    """With an engine the title examples of eligible chunks come from check_batch, so DocStage
    must not emit them a second time; its skips stay."""
    rows = [doc("a", DENSITY, "Global placement", "Target density"), doc("b", "too short")]
    table = pa.Table.from_pylist(rows, schema=DOCS_SCHEMA)
    with_titles = DocStage(min_chars=80)(table).to_pylist()
    without = DocStage(min_chars=80, titles=False)(table).to_pylist()
    assert sum(r["example"] is not None for r in with_titles) == 1
    assert [r["skip"] for r in without] == ["doc_too_short"]


def test_doc_prompt_stage_prompts_the_chunks_doc_stage_would_build() -> None:
    rows = [doc("a", DENSITY, "Global placement", "Target density"), doc("b", "too short"), doc("c", HOLD)]
    table = pa.Table.from_pylist(rows, schema=DOCS_SCHEMA)
    prompts = dq.DocPromptStage(DocQuestionsConfig().model_dump(mode="json", exclude={"engine"}))(table)
    assert prompts.schema == PROMPT_SCHEMA
    built = {r["phase"] for r in DocStage(min_chars=80)(table).to_pylist() if r["example"]}
    assert [json.loads(s)["chunk"]["id"] for s in prompts.column("seed_json").to_pylist()] == ["a", "c"]
    assert set(prompts.column("phase").to_pylist()) == built


def test_real_hf_engine_path_with_the_tiny_model() -> None:
    """The in-process transformers engine on real prompt rows: the tiny model writes noise, so
    every chunk ends with a counted drop and its title fallback (the plumbing, not the model)."""
    from synthesis.engines import HFGenerator

    cfg = DocQuestionsConfig(per_section=2)
    prompts = pa.Table.from_pylist([prompt_row(DOCS[c], "timing_analysis", cfg) for c in ("good", "density")],
                                   schema=PROMPT_SCHEMA)
    gens = HFGenerator("tiny", {"max_tokens": 24, "temperature": 0.0})(prompts)
    assert gens.num_rows == 2
    rows = check_batch(gens, cfg.model_dump(mode="json", exclude={"engine"}), "hf/tiny/doc_questions@v1").to_pylist()
    rep = dq.tally(rows)
    assert rep["kept"] == 0 and rep["fallback"] == 2 and sum(rep["dropped"].values()) >= 2, rep
    for r in rows:
        if r["example"]:
            e = json.loads(r["example"])
            assert not dq.ngrams(e["messages"][1]["content"], 8) & dq.ngrams(e["messages"][2]["content"], 8)


def fake_engine_batch(batch: pa.Table) -> pa.Table:
    """Module level, so Ray workers import it: the fake engine as a Ray Data batch function."""
    return FakeEngine(lambda c: REPLIES[c])(batch)


@pytest.mark.integration
@pytest.mark.slow  # ~20 s on an idle 2-core machine; 76 s measured under a load average of 17
def test_dataset_job_doc_questions_on_ray(ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pipelines.dataset: docs → prompts → (fake) engine → checks on Ray, then the build step, where
    DocStage adds only its skips: a chunk that kept questions has no title example, the others do."""
    import pyarrow.parquet as pq

    import pipelines.synthesis
    from corpus.phases import PhaseClassifier
    from corpus.schema import from_rows
    from pipelines.dataset import DatasetConfig, build, doc_question_data
    from synthesis.engines import EngineConfig

    monkeypatch.setattr(pipelines.synthesis, "make_engine", lambda cfg, hf=None: (
        lambda ds: ds.map_batches(fake_engine_batch, batch_format="pyarrow", num_cpus=0.25), {}))
    rows = [DOCS["good"], DOCS["unsupported"], doc("short", "Too short to ask about.")]
    (tmp_path / "d/docs").mkdir(parents=True)
    pq.write_table(from_rows(rows, DOCS_SCHEMA, stage="test"), tmp_path / "d/docs/part.parquet")
    clf = tmp_path / "clf.json"  # a saved classifier: the actors load it instead of training one each
    PhaseClassifier.load(None).save(clf)
    cfg = DatasetConfig(corpus_dir=None, docs_dir=str(tmp_path / "d"), output_dir=str(tmp_path / "out"),
                        classifier_path=str(clf), doc_questions=DocQuestionsConfig(engine=EngineConfig()))
    part, report = doc_question_data(cfg)
    assert report["kept"] == 3 and report["fallback"] == 1 and report["generated"] == 5
    assert report["dropped"] == {"unsupported": 1, "unsupported_term": 1} and report["engine"] == "hf/tiny/doc_questions@v1"
    tagged = build(cfg, doc_questions=part).take_all()
    assert all(set(r) == set(TAGGED_SCHEMA.names) for r in tagged)
    tasks = Counter(json.loads(r["example"])["task"] for r in tagged if r["example"] is not None)
    assert tasks == {dq.TASK: 3, "doc_qa": 1}  # the good chunk's title example is replaced, not doubled
    assert Counter(r["skip"] for r in tagged if r["skip"]) == {"doc_too_short": 1, "doc_question_unsupported": 1,
                                                       "doc_question_unsupported_term": 1}
    _, none = doc_question_data(cfg.model_copy(update={"doc_questions": DocQuestionsConfig()}))
    assert none["engine"] is None
