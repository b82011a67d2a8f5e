"""Engine-written module specifications: prompts, strict parsing, the copy checks, regeneration.

The Verilog below was written for these tests. A deterministic fake engine (prompt rows →
``GENERATION_SCHEMA`` rows) answers round 0 (the description) and round 1 (the regenerated
module) per module; each module must end up kept or dropped with the reason named here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pytest

from corpus import module_specs as ms
from corpus.dataset import TAGGED_SCHEMA, ApplySplits
from corpus.module_specs import ModuleSpecsConfig, SpecError, parse_description, prompt_row
from corpus.schema import EXAMPLES_SCHEMA, MODULES_SCHEMA, from_rows
from synthesis.engines import GENERATION_SCHEMA
from synthesis.seeds import PROMPT_SCHEMA

COUNTER = """module sat_counter #(parameter W = 4) (
  input clk,
  input rst_n,
  input en,
  output reg [W-1:0] count,
  output full
);
  assign full = &count;
  always @(posedge clk or negedge rst_n) begin
    if (!rst_n) count <= {W{1'b0}};
    else if (en && !full) count <= count + 1'b1;
  end
endmodule"""
# a correct regeneration, written differently from the original
COUNTER_REGEN = """```verilog
module sat_counter #(parameter W = 4) (
  input clk, input rst_n, input en,
  output reg [W-1:0] count,
  output full
);
  assign full = (count == {W{1'b1}});
  always @(posedge clk or negedge rst_n)
    if (!rst_n) count <= 0;
    else if (en & ~full) count <= count + 1;
endmodule
```"""
GOOD_DESC = ("A saturating up-counter of W bits. On each rising edge of clk, while en is high and the counter "
             "has not reached its maximum value, count increases by one; once every bit is one it holds. "
             "The output full is high exactly when count is at its maximum. rst_n is an active-low asynchronous "
             "reset that clears count to zero at once, independently of clk.")

WRAPPER = """module pipe_wrap (
  input clk,
  input [7:0] d,
  output [7:0] q
);
  dff8 u_stage (.clk(clk), .d(d), .q(q));
endmodule"""
WRAPPER_REGEN = """```verilog
module pipe_wrap (input clk, input [7:0] d, output [7:0] q);
  dff8 stage0 (.clk(clk), .d(d), .q(q));
endmodule
```"""
WRAPPER_DESC = ("Registers the eight-bit input d for one cycle of clk by instantiating the eight-bit register "
                "dff8, whose output drives q. There is no reset and no enable: q follows d one rising clock "
                "edge later.")


def module(mid: str, source: str, name: str, ports: list[tuple[str, str, str]], comment: str = "",
           params: list[tuple[str, str]] = (), instances: list[str] = (), repo: str = "repo_a") -> dict[str, Any]:
    return {"id": mid, "repo": repo, "commit": "c0ffee", "path": f"rtl/{name}.v", "url": f"file:///{repo}",
            "start_line": 1, "end_line": source.count("\n") + 1, "name": name, "kind": "module", "comment": comment,
            "license": "MIT", "parameters": [{"name": n, "default": d, "kind": "parameter"} for n, d in params],
            "ports": [{"name": n, "direction": d, "type": t} for n, d, t in ports], "instances": list(instances),
            "source": source, "parse_ok": True, "error_line_share": 0.0, "keep": True}


COUNTER_PORTS = [("clk", "input", ""), ("rst_n", "input", ""), ("en", "input", ""), ("count", "output", "reg [W-1:0]"),
                 ("full", "output", "")]


def counter(mid: str, comment: str = "") -> dict[str, Any]:
    return module(mid, COUNTER, "sat_counter", COUNTER_PORTS, comment=comment, params=[("W", "4")])


def desc(text: str) -> str:
    return json.dumps({"description": text})


MODULES = {
    "good": counter("good"),  # undescribed by its author: only the engine can give it a spec
    "described": counter("described", "Saturating counter with an asynchronous active-low reset."),
    "submodule": module("submodule", WRAPPER, "pipe_wrap", [("clk", "input", ""), ("d", "input", "[7:0]"),
                                                            ("q", "output", "[7:0]")], instances=["dff8"],
                        repo="repo_b"),
    "no_compile": counter("no_compile"),
    "ports_differ": counter("ports_differ"),
    "copies": counter("copies"),
    "has_body": counter("has_body"),
    "malformed": counter("malformed"),
    "error": counter("error"),
}
# module id → (round-0 reply, round-1 reply); None in round 0: an engine error
REPLIES: dict[str, tuple[str | None, str | None]] = {
    "good": (desc(GOOD_DESC), COUNTER_REGEN),
    "described": (f"```json\n{desc(GOOD_DESC)}\n```", COUNTER_REGEN),
    "submodule": (desc(WRAPPER_DESC), WRAPPER_REGEN),
    "no_compile": (desc(GOOD_DESC), COUNTER_REGEN.replace("count + 1;", "count + 1")),  # a syntax error
    "ports_differ": (desc(GOOD_DESC), COUNTER_REGEN.replace("output full", "output full_o").replace("(count ==", "(count==")
                     .replace("assign full", "assign full_o").replace("~full", "~full_o")),
    "copies": (desc("It counts: if (!rst_n) count <= {W{1'b0}} resets, and full is the AND of all count bits when en "
                    "is high and the clock rises."), COUNTER_REGEN),
    "has_body": (desc(GOOD_DESC + " In Verilog: always @(posedge clk) count <= count + 1;"), COUNTER_REGEN),
    "malformed": ('{"description": "A saturating counter that', COUNTER_REGEN),
    "error": (None, COUNTER_REGEN),
}


class FakeEngine:
    """The engine interface answering round 0 and round 1 by module id (``answer(id, round)``)."""

    def __init__(self, answer: Callable[[str, int], str | None]) -> None:
        self.answer, self.calls = answer, Counter()

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for r in batch.to_pylist():
            self.calls[r["round"]] += 1
            text = self.answer(json.loads(r["seed_json"])["module"]["id"], r["round"])
            out.append({**{k: r[k] for k in ("prompt_id", "round", "phase", "task", "template_id", "seed_json")},
                        "generated_text": text, "engine_error": None if text is not None else "http_error: 503",
                        "prompt_tokens": 100, "completion_tokens": 50})
        return pa.Table.from_pylist(out, schema=GENERATION_SCHEMA)


def run_checked(cfg: ModuleSpecsConfig, mods: dict[str, dict[str, Any]], engine: Any) -> list[dict[str, Any]]:
    prompts = pa.Table.from_pylist([prompt_row(m, "rtl_design", cfg) for m in mods.values()], schema=PROMPT_SCHEMA)
    settings = cfg.model_dump(mode="json", exclude={"engine"})
    return ms.run_local(prompts, engine, settings, "fake/m/module_specs@v1").to_pylist()


@pytest.fixture(scope="module")
def checked() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for mid, m in MODULES.items():  # one module at a time, so every row is known to belong to its module
        engine = FakeEngine(lambda i, rnd: REPLIES[i][rnd])
        rows += [{**r, "module": mid} for r in run_checked(ModuleSpecsConfig(), {mid: m}, engine)]
    return rows


def by_module(rows: list[dict[str, Any]], mid: str) -> Counter[str]:
    return Counter(r["outcome"] for r in rows if r["module"] == mid)


@pytest.mark.tools("iverilog")
def test_each_module_is_kept_or_dropped_with_its_reason(checked: list[dict[str, Any]]) -> None:
    assert by_module(checked, "good") == {"kept": 1}
    assert by_module(checked, "described") == {"kept": 1}  # a fenced JSON reply; no fallback beside it
    assert by_module(checked, "submodule") == {"kept": 1}  # dff8 lives in another file: allowed missing
    assert by_module(checked, "no_compile") == {"dropped:regen_compile": 1}
    assert by_module(checked, "ports_differ") == {"dropped:regen_ports_differ": 1}
    assert by_module(checked, "copies") == {"dropped:copies_code": 1}
    assert by_module(checked, "has_body") == {"dropped:contains_code": 1}
    assert by_module(checked, "malformed") == {"dropped:not_json": 1}
    assert by_module(checked, "error") == {"dropped:engine_error": 1}


@pytest.mark.tools("iverilog")
def test_kept_specs_are_the_write_module_examples(checked: list[dict[str, Any]]) -> None:
    kept = [r for r in checked if r["outcome"] == "kept"]
    for r in kept:
        e = json.loads(r["example"])
        user, answer = e["messages"][1]["content"], e["messages"][2]["content"]
        src = MODULES[r["module"]]["source"]
        assert e["task"] == ms.TASK == "write_module" and e["source"] == "verilog_code" and e["license"] == "MIT"
        assert answer == f"```verilog\n{src}\n```"  # the original module is the answer
        assert (GOOD_DESC if r["module"] != "submodule" else WRAPPER_DESC) in user
        assert "Ports:" in user and "endmodule" not in user and not ms.shared_run(user, src, 8)
        assert e["provenance"]["generator"] == "fake/m/module_specs@v1" and e["provenance"]["path"].startswith("rtl/")
        assert r["group"] == MODULES[r["module"]]["repo"] == e["group"]  # the repository: splits hold
    assert "Parameters:\n- W (default 4)" in json.loads(kept[0]["example"])["messages"][1]["content"]
    table = ms.without_outcome(pa.Table.from_pylist(checked, schema=pa.schema([*ms.OUTCOME_SCHEMA,
                                                                               pa.field("module", pa.string())])))
    assert table.schema == TAGGED_SCHEMA
    keep = {(i, g) for i, g, s in zip(*(table.column(c).to_pylist() for c in ("id", "group", "skip"))) if not s}
    written = ApplySplits({g: "train" for g in table.column("group").to_pylist()}, keep)(table)
    assert written.schema == EXAMPLES_SCHEMA and written.num_rows == len(kept)


@pytest.mark.tools("iverilog")
def test_drops_are_skip_rows_counted_by_tally(checked: list[dict[str, Any]]) -> None:
    skips = Counter(r["skip"] for r in checked if r["skip"])
    assert skips == {"module_spec_regen_compile": 1, "module_spec_regen_ports_differ": 1, "module_spec_copies_code": 1,
                     "module_spec_contains_code": 1, "module_spec_not_json": 1, "module_spec_engine_error": 1}
    rep = ms.tally(checked)
    assert rep["prompted"] == 9 and rep["kept"] == 3 and rep["fallback"] == 0
    assert rep["per_phase"]["rtl_design"]["dropped"]["regen_compile"] == 1


@pytest.mark.tools("iverilog")
def test_described_module_falls_back_to_its_comment_spec() -> None:
    m = counter("fb", "Saturating counter with an asynchronous active-low reset.")
    rows = run_checked(ModuleSpecsConfig(), {"fb": m}, FakeEngine(lambda i, rnd: REPLIES["no_compile"][rnd]))
    assert Counter(r["outcome"] for r in rows) == {"dropped:regen_compile": 1, "fallback": 1}
    fb = json.loads(next(r["example"] for r in rows if r["outcome"] == "fallback"))
    assert "Saturating counter with an asynchronous" in fb["messages"][1]["content"] and fb["task"] == "write_module"
    both = run_checked(ModuleSpecsConfig(keep_fallback=True), {"fb": m}, FakeEngine(lambda i, rnd: REPLIES["good"][rnd]))
    assert Counter(r["outcome"] for r in both) == {"kept": 1, "fallback": 1}


def test_round_one_is_asked_only_for_descriptions_that_pass() -> None:
    engine = FakeEngine(lambda i, rnd: REPLIES[i][rnd] if rnd == 0 else "no code here")
    rows = run_checked(ModuleSpecsConfig(), {k: MODULES[k] for k in ("good", "copies", "malformed")}, engine)
    assert engine.calls == {0: 3, 1: 1}
    assert Counter(r["outcome"] for r in rows) == {"dropped:regen_no_code": 1, "dropped:copies_code": 1,
                                                   "dropped:not_json": 1}


def test_prompts_carry_the_module_and_the_header() -> None:
    cfg = ModuleSpecsConfig()
    row = prompt_row(MODULES["good"], "rtl_design", cfg)
    user = json.loads(row["messages_json"])[-1]["content"]
    assert COUNTER in user and '{"description": "..."}' in user and row["round"] == 0
    seed = json.loads(row["seed_json"])
    assert seed["module"]["source"] == COUNTER and seed["group"] == "repo_a"
    gen = {**row, "generated_text": desc(GOOD_DESC), "engine_error": None}
    regen = ms.regen_row(gen, GOOD_DESC)
    user2 = json.loads(regen["messages_json"])[-1]["content"]
    assert GOOD_DESC in user2 and "module sat_counter #(parameter W = 4) (" in user2 and "assign full" not in user2
    assert regen["round"] == 1 and json.loads(regen["seed_json"])["description"] == GOOD_DESC


@pytest.mark.parametrize("text,reason", [
    (None, "empty"), ("  ", "empty"), ("x" * 9000, "too_long"), ("Here is the spec.", "not_json"),
    ("I cannot describe this module.", "unanswerable"), ('{"desc": "x"}', "bad_shape"),
    ('{"description": ["x"]}', "bad_shape"), ('{"description": "x", "notes": ""}', "bad_shape"),
    ('{"description": "A counter."}', "too_short"), ('{"description": {"a": {"b": {"c": 1}}}}', "too_deep"),
    (json.dumps({"description": "word " * 1000}), "description_too_long"),
])
def test_parse_description_rejects(text: str | None, reason: str) -> None:
    with pytest.raises(SpecError) as exc:
        parse_description(text, ModuleSpecsConfig())
    assert exc.value.reason == reason


def test_copy_checks() -> None:
    cfg, m = ModuleSpecsConfig(), MODULES["good"]
    assert ms.description_reason(GOOD_DESC, m, cfg) is None
    assert ms.description_reason(GOOD_DESC + " ```verilog\nx\n```", m, cfg) == "contains_code"
    assert ms.description_reason("It ends with endmodule as usual, " + GOOD_DESC, m, cfg) == "contains_code"
    assert ms.description_reason(GOOD_DESC + " Then assign full = &count holds.", m, cfg) == "contains_code"
    assert ms.description_reason("The flag is else if (en && !full) count in effect.", m, cfg) == "copies_code"
    # the author's comments are not code: restating one is no copy
    src = "// counts the rising edges of the input clock while enable is high\n" + COUNTER
    text = "It counts the rising edges of the input clock while enable is high, saturating at the maximum."
    assert ms.description_reason(text, {**m, "source": src}, cfg) is None


def test_prompt_stage_prompts_modules_the_builder_would_use() -> None:
    rows = [counter("a"), counter("b", "Saturating counter with an asynchronous active-low reset."),
            {**counter("c"), "keep": False}, {**counter("d"), "kind": "package"},
            {**counter("e"), "source": COUNTER + "\n" + "// pad\n" * 3000}]
    prompts = ms.SpecPromptStage(ModuleSpecsConfig().model_dump(mode="json", exclude={"engine"}))(
        from_rows(rows, MODULES_SCHEMA, stage="test"))
    assert prompts.schema == PROMPT_SCHEMA
    assert [json.loads(s)["module"]["id"] for s in prompts.column("seed_json").to_pylist()] == ["a", "b"]
    assert set(prompts.column("phase").to_pylist()) == {"rtl_design"}


@pytest.mark.tools("iverilog")
def test_real_hf_engine_path_with_the_tiny_model() -> None:
    """The in-process transformers engine on real prompt rows: the tiny model writes noise, so every
    module ends with a counted drop (the plumbing, not the model)."""
    from synthesis.engines import HFGenerator

    engine = HFGenerator("tiny", {"max_tokens": 24, "temperature": 0.0})
    rows = run_checked(ModuleSpecsConfig(), {k: MODULES[k] for k in ("good", "submodule")}, engine)
    rep = ms.tally(rows)
    assert rep["prompted"] == 2 and rep["kept"] == 0 and sum(rep["dropped"].values()) == 2, rep
    assert all(r["skip"].startswith(ms.SKIP_PREFIX) for r in rows if r["skip"])


@pytest.mark.tools("iverilog")
def test_module_stage_leaves_write_module_of_prompted_modules_to_the_check() -> None:
    """With an engine, ModuleStage keeps explain/complete and its other skips; the write_module
    example (engine spec or comment fallback) of every prompted module comes from the check alone."""
    from corpus.dataset import ModuleStage

    described = counter("b", "Saturating counter with an asynchronous active-low reset.")
    rows = [counter("a"), described, {**counter("c"), "keep": False}]
    table = from_rows(rows, MODULES_SCHEMA, stage="test")
    plain = ModuleStage()(table).to_pylist()
    cfg = ModuleSpecsConfig()
    staged = ModuleStage(specs_max_chars=cfg.max_source_chars)(table).to_pylist()
    task = lambda rs: Counter(json.loads(r["example"])["task"] for r in rs if r["example"])  # noqa: E731
    assert task(plain) == {"write_module": 1, "explain_module": 1, "complete_module": 1}
    assert task(staged) == {"explain_module": 1, "complete_module": 1}
    assert Counter(r["skip"] for r in plain if r["skip"]) == {"description_too_short": 1, "not_kept_by_dedup": 1}
    assert Counter(r["skip"] for r in staged if r["skip"]) == {"not_kept_by_dedup": 1}
    engine = FakeEngine(lambda i, rnd: REPLIES["good" if i == "a" else "no_compile"][rnd])
    checked = run_checked(cfg, {"a": counter("a"), "b": described}, engine)
    assert Counter(r["outcome"] for r in checked) == {"kept": 1, "dropped:regen_compile": 1, "fallback": 1}
    fallback = next(json.loads(r["example"]) for r in checked if r["outcome"] == "fallback")
    assert fallback["id"] == next(json.loads(r["example"])["id"] for r in plain
                                  if r["example"] and json.loads(r["example"])["task"] == "write_module")


def fake_engine_batch(batch: pa.Table) -> pa.Table:
    """Module level, so Ray workers import it: the fake engine as a Ray Data batch function."""
    return FakeEngine(lambda i, rnd: REPLIES[i][rnd])(batch)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.tools("iverilog")
def test_dataset_job_module_specs_on_ray(ray_session: None, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """pipelines.dataset: modules → prompts → (fake) engine → description checks → regeneration
    prompts → engine → compile checks on Ray, then the build step, where ModuleStage leaves the
    write_module example of prompted modules to the check."""
    import pyarrow.parquet as pq

    import pipelines.synthesis
    from corpus.phases import PhaseClassifier
    from pipelines.dataset import DatasetConfig, build, module_spec_data
    from synthesis.engines import EngineConfig

    monkeypatch.setattr(pipelines.synthesis, "make_engine", lambda cfg, hf=None: (
        lambda ds: ds.map_batches(fake_engine_batch, batch_format="pyarrow", num_cpus=0.25), {}))
    described = {**counter("no_compile", "Saturating counter with an asynchronous active-low reset."),
                 "path": "rtl/other.v"}
    rows = [MODULES["good"], described, {**counter("malformed"), "path": "rtl/third.v"}]
    part = tmp_path / "c/modules/repo=repo_a"
    part.mkdir(parents=True)
    table = from_rows(rows, MODULES_SCHEMA, stage="test")
    pq.write_table(table.drop_columns(["repo"]), part / "part-0.parquet")
    clf = tmp_path / "clf.json"
    PhaseClassifier.load(None).save(clf)
    cfg = DatasetConfig(corpus_dir=str(tmp_path / "c"), docs_dir=None, output_dir=str(tmp_path / "out"),
                        classifier_path=str(clf), module_specs=ModuleSpecsConfig(engine=EngineConfig()))
    specs, report = module_spec_data(cfg)
    assert report["prompted"] == 3 and report["kept"] == 1 and report["fallback"] == 1
    assert report["dropped"] == {"regen_compile": 1, "not_json": 1} and report["engine"] == "hf/tiny/module_specs@v1"
    tagged = build(cfg, module_specs=specs).take_all()
    assert all(set(r) == set(TAGGED_SCHEMA.names) for r in tagged)
    tasks = Counter(json.loads(r["example"])["task"] for r in tagged if r["example"] is not None)
    assert tasks == {"write_module": 2, "explain_module": 1, "complete_module": 1}  # no write_module twice
    assert Counter(r["skip"] for r in tagged if r["skip"]) == {"module_spec_regen_compile": 1, "module_spec_not_json": 1}
    assert {r["group"] for r in tagged} == {"repo_a"}
    _, none = module_spec_data(cfg.model_copy(update={"module_specs": ModuleSpecsConfig()}))
    assert none["engine"] is None
