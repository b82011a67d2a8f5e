"""jobs.synthesize / pipelines.synthesis: the no-argument run (bundled sample, tiny in-process model,
offline), split inheritance from the seed's group, synthetic rows built like real ones, input
errors before Ray, one bad row never aborting the run; end to end with hf (tiny), openai (canned
server on 127.0.0.1) and vllm (fails fast here, never executed). The report's counts must add up."""

from __future__ import annotations

import importlib.util
import json
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from chipforge import job
from chipforge.config import launch_command, load_config, read_yaml, validate
from corpus.dataset import SYSTEM, example_id
from corpus.schema import EXAMPLES_SCHEMA, MODULES_SCHEMA, conform, from_rows
from jobs import synthesize
from pipelines import synthesis as pipe
from pipelines.synthesis import SPEC, SynthesizeConfig
from synthesis import engines, validate as validate_mod
from synthesis.engines import SamplingConfig, VLLMConfig
from tests.synthesis.conftest import SDC, VERILOG, CannedServer, SlowServer, fenced
from tests.synthesis.conftest import canned_server, slow_server, tiny_model  # noqa: F401 — fixtures shared with the engine tests
from tests.synthesis.test_seeds import module_row, write_docs

pytestmark = pytest.mark.tools("iverilog", "vvp", "verilator", "yosys", "tclsh", "bwrap")

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(REPO.joinpath("jobs", "configs").glob("synthesize_*.yaml"))


def read_synthetic(out: Path) -> pa.Table:
    if not list((out / "synthetic").rglob("*.parquet")):
        return EXAMPLES_SCHEMA.empty_table()
    ds = pads.dataset(str(out / "synthetic"), format="parquet", partitioning="hive")
    return conform(ds.to_table(), EXAMPLES_SCHEMA, stage="test")


def check_counts(report: dict) -> None:
    for phase, r in report["phases"].items():
        assert r["generated"] == r["kept"] + sum(r["rejected"].values()), phase
        assert r["counts_add_up"] is True
    t = report["totals"]
    assert t["generated"] == t["kept"] + sum(t["rejected"].values()) and t["counts_add_up"]
    assert t["generated"] == sum(r["generated"] for r in report["phases"].values())
    assert t["prompts"] == t["generated"]  # every prompt yields one counted row


def candidate(phase: str, task: str, instruction: str, answer: str, seed: dict, reason: str | None = None,
              pid: str = "p") -> dict:
    return {"prompt_id": pid, "round": 0, "phase": phase, "task": task, "template_id": f"{phase}/{task}@v1",
            "seed_json": json.dumps(seed), "reason": reason, "detail": None, "instruction": instruction,
            "answer": answer, "prompt_tokens": 1, "completion_tokens": 1}


# ------------------------------------------------------------------------ configs, no Ray

@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_configs_validate(path: Path) -> None:
    assert launch_command(path) == f"python -m jobs.synthesize --config jobs/configs/{path.name}"
    validate(synthesize.CONFIG_CLASS, read_yaml(path), source=str(path))


def test_config_errors_are_clear() -> None:
    with pytest.raises(SystemExit, match="no synthesis templates for phase"):
        validate(SynthesizeConfig, {"phases": {"triage": {}}}, source="x.yaml")
    with pytest.raises(SystemExit, match="unknown task"):
        validate(SynthesizeConfig, {"phases": {"synthesis": {"tasks": ["nope"]}}}, source="x.yaml")
    with pytest.raises(SystemExit, match="splits"):
        validate(SynthesizeConfig, {"splits": {"train": 0.5}}, source="x.yaml")
    with pytest.raises(SystemExit, match="force"):  # the old flag is gone: --force of the skeleton replaces it
        validate(SynthesizeConfig, {"force": True}, source="x.yaml")


def test_no_argument_config_is_the_offline_sample_run() -> None:
    """`python -m jobs.synthesize` with no arguments: local inputs only, the in-process tiny model."""
    assert SPEC.default_config == "jobs/configs/synthesize_tiny_cpu.yaml"
    for cfg in (load_config(SynthesizeConfig, [], prog="t", default_config=SPEC.default_config), SynthesizeConfig()):
        paths = [cfg.output_dir, cfg.dataset_dir, *(s.path for s in cfg.doc_sources)]
        assert not any("://" in p for p in paths), paths
        assert all((REPO / p).exists() for p in paths[1:])
        assert cfg.docs_dir is None and cfg.corpus_dir is None
        assert cfg.engine.name == "hf" and cfg.engine.hf.model_path == engines.TINY and not cfg.engine.hf.allow_download
        assert cfg.budget.max_prompts <= 8 and not cfg.validation.allow_unsandboxed
    docs_sample = read_yaml(REPO / "jobs" / "configs" / "docs_sample.yaml")["sources"]
    assert [s.model_dump(exclude_none=True, exclude={"globs"}) for s in SynthesizeConfig().doc_sources] == docs_sample


@pytest.mark.parametrize("flag,field", [("--docs", "docs_dir"), ("--corpus", "corpus_dir"),
                                        ("--dataset", "dataset_dir")])
def test_missing_input_dir_exits_2_naming_the_flag(flag: str, field: str, tmp_path: Path, capsys,
                                                   ray_forbidden: None) -> None:
    missing = tmp_path / "nope"
    assert synthesize.main([flag, str(missing), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{flag} {missing}" in err and "does not exist" in err
    assert not (tmp_path / "out").exists()


def test_missing_benchmark_path_exits_2_before_ray(tmp_path: Path, capsys, ray_forbidden: None) -> None:
    nope = tmp_path / "nope"
    assert synthesize.main([f'decontam.benchmark_paths=["{nope}"]', "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error: decontam.benchmark_paths: benchmark path does not exist" in err and "Traceback" not in err


def test_plan_round_oversamples_and_respects_the_budget() -> None:
    cfg = SynthesizeConfig(phases={"synthesis": {"quota": 10}, "routing": {"quota": 4}},
                           budget={"max_prompts": 30, "oversample": 2.0, "max_oversample": 5.0})
    assert pipe.plan_round(cfg, Counter(), Counter(), 0, {"synthesis", "routing"}) == {"synthesis": 20, "routing": 8}
    # observed keep rate 1/4 → about 4.4 prompts per missing example, capped by what is left (10)
    plan = pipe.plan_round(cfg, Counter(synthesis=2), Counter(synthesis=8), 20, {"synthesis", "routing"})
    assert sum(plan.values()) == 10 and plan["synthesis"] > plan["routing"] > 0
    assert pipe.plan_round(cfg, Counter(synthesis=10, routing=4), Counter(), 0, {"synthesis"}) == {}
    assert pipe.plan_round(cfg, Counter(), Counter(), 30, {"synthesis"}) == {}
    assert pipe.split_of("abc", {"train": 1.0}) == "train"
    splits = [pipe.split_of(str(i), {"train": 0.5, "validation": 0.5}) for i in range(200)]
    assert 60 < splits.count("train") < 140


# ------------------------------------------------------------------------ rows and splits, no Ray

def test_synthetic_rows_have_the_system_prompt_and_id_formula_of_real_examples() -> None:
    real = conform(pads.dataset(str(REPO / "sample" / "dataset" / "examples"), format="parquet",
                                partitioning="hive").to_table(), EXAMPLES_SCHEMA, stage="test").to_pylist()
    for r in real:  # the formula real examples use
        assert r["id"] == example_id(r["phase"], r["task"], r["messages"])
    ref = next(r for r in real if r["phase"] == "synthesis" and r["task"] == "doc_qa")
    user, assistant = ref["messages"][1]["content"], ref["messages"][2]["content"]
    row = pipe.example_row(candidate("synthesis", "doc_qa", user, assistant, {"kind": "topic", "topic": "t"}),
                           "openai/m/synthesis/doc_qa@v1", "train")
    assert row["messages"] == ref["messages"]  # system prompt, user, assistant: exactly as a real example
    assert row["id"] == ref["id"]  # same content, same id: dedup across real and synthetic works
    assert row["source"] == "synthetic" and row["provenance"]["generator"] == "openai/m/synthesis/doc_qa@v1"
    assert row["messages"][0] == {"role": "system", "content": SYSTEM["synthesis"]}
    from_rows([row], EXAMPLES_SCHEMA, stage="test")


def test_examples_inherit_the_split_of_their_seeds_group() -> None:
    cfg = SynthesizeConfig(dataset_dir=None, splits={"train": 0.5, "validation": 0.5})
    split_map = {"repo-test": "test", "repo-val": "validation", "repo-train": "train", "opensta-docs": "test"}
    seeds_ = [{"kind": "module", "repo": "repo-test", "group": "repo-test"},
              {"kind": "module", "repo": "repo-val", "group": "repo-val"},
              {"kind": "module", "repo": "repo-train", "group": "repo-train"},
              {"kind": "doc", "group": "opensta-docs", "url": "u"},
              {"kind": "module", "repo": "unknown-repo", "group": "unknown-repo"}]
    cands = []
    for i, seed in enumerate(seeds_):
        for j in range(6):  # many distinct examples per seed: a per-example hash would scatter them
            cands.append(candidate("rtl_design", "module_from_reference", f"Design block {i}-{j} " + "x" * j,
                                   f"```verilog\nmodule m{i}_{j}; endmodule\n```" + " y" * (i * 7 + j),
                                   seed, pid=f"p{i}-{j}"))
    tally = pipe.Tally(list(cfg.phases) + ["rtl_design"])

    class NoFilters:
        def reason(self, *args):
            return None

    kept, _ = pipe.collect(cands, cands, tally, NoFilters(), cfg, split_map)  # type: ignore[arg-type]
    assert kept == len(cands)
    by_repo: dict[str, set[str]] = {}
    for row in tally.rows:
        group = row["provenance"]["repo"] or "opensta-docs"
        by_repo.setdefault(group, set()).add(row["split"])
    assert by_repo["repo-test"] == {"test"} and by_repo["opensta-docs"] == {"test"}
    assert by_repo["repo-val"] == {"validation"} and by_repo["repo-train"] == {"train"}
    assert len(by_repo["unknown-repo"]) == 1  # unknown group: one split for the whole group
    assert not [r for r in tally.rows if r["split"] == "train" and r["provenance"]["repo"] in {"repo-test", "repo-val"}]
    assert tally.split_how == Counter(dataset=24, group_hash=6)


def test_split_map_comes_from_the_dataset_report(tmp_path: Path) -> None:
    split_map = pipe.load_split_map(str(REPO / "sample" / "dataset"))
    assert split_map["opensta-sample:Timing reports with report_checks"] in {"train", "validation", "test"}
    assert split_map["tinycores"] == "train"
    with pytest.raises(SystemExit, match="dataset_dir .* no report.json"):
        pipe.load_split_map(str(tmp_path))
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(SystemExit, match="without split_of_group"):
        pipe.load_split_map(str(tmp_path))


def test_one_bad_row_is_one_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"prompt_id": f"p{i}", "round": 0, "phase": "synthesis", "task": "yosys_script_topic",
             "template_id": "synthesis/yosys_script_topic@v1", "seed_json": "{}", "generated_text": "not json",
             "engine_error": None, "prompt_tokens": 1, "completion_tokens": 1} for i in range(3)]
    real = validate_mod.validate_row

    def flaky(row, validator):
        if row["prompt_id"] == "p1":
            raise RuntimeError("validator bug")
        return real(row, validator)

    monkeypatch.setattr(validate_mod, "validate_row", flaky)
    stage = pipe.ValidateRows(validate_mod.settings_dict(validate_mod.Settings()), load_parser=False)
    out = stage(pa.Table.from_pylist(rows, schema=engines.GENERATION_SCHEMA)).to_pylist()
    assert [r["prompt_id"] for r in out] == ["p0", "p1", "p2"]
    assert [r["reason"] for r in out] == ["malformed/not_json", "validate/error", "malformed/not_json"]
    assert "validator bug" in out[1]["detail"]
    # driver side: a candidate that cannot become a row is a rejection, the counts still add up
    cfg = SynthesizeConfig(dataset_dir=None)
    tally = pipe.Tally(list(cfg.phases))
    good = candidate("synthesis", "yosys_script_topic", "Q?", "```yosys\nsynth\n```", {"kind": "topic", "topic": "a"},
                     pid="ok")
    bad = {**good, "prompt_id": "bad", "seed_json": "{not json", "answer": "other answer entirely different"}

    class NoFilters:
        def reason(self, *args):
            return None

    kept, counts = pipe.collect([good, bad], [good, bad], tally, NoFilters(), cfg, {})  # type: ignore[arg-type]
    assert kept == 1 and counts == Counter({"pipeline/error": 1})
    assert tally.generated["synthesis"] == 2 == tally.kept["synthesis"] + sum(tally.rejected["synthesis"].values())


# ------------------------------------------------------------------------ with Ray

@pytest.mark.integration
def test_no_argument_run_is_offline_on_the_sample(ray_session, tmp_path: Path, capsys) -> None:
    """The default run (only the output moved out of the repository): sample docs, sample/dataset,
    the tiny model built in-process. HF_HUB_OFFLINE is set for the session (tests/conftest.py),
    so any hub access would have turned into engine errors."""
    out = tmp_path / "synth"
    t0 = time.perf_counter()
    assert synthesize.main(["--output", str(out)]) == 0
    wall = time.perf_counter() - t0
    report = json.loads((out / "report.json").read_text())
    check_counts(report)
    assert report["status"] == "ok" and report["engine"]["model"] == "tiny" and report["engine"]["random_weights"]
    assert report["totals"]["prompts"] == 8 and report["budget"]["spent_prompts"] == 8
    assert "engine/error" not in report["totals"]["rejected"]  # the model loaded, no hub involved
    assert sum(v for k, v in report["totals"]["rejected"].items() if k.startswith("malformed/")) >= 6
    assert report["seeds"]["docs"] > 0 and set(report["seeds"]["doc_sources"]) >= {"yosys-sample", "opensta-sample"}
    assert report["splits"]["dataset_groups"] > 0 and report["sandbox"]["mode"] in {"bwrap", "none"}
    assert read_synthetic(out).num_rows == report["totals"]["kept"]
    text = capsys.readouterr().out
    assert "keeps ~0 examples" in text and "outcome:" in text
    assert wall < 180  # well under a minute on an idle 2-CPU laptop; generous for a shared test machine
    # a rerun of the same finished config is skipped (the skeleton's completion marker)
    t1 = time.perf_counter()
    assert synthesize.main(["--output", str(out)]) == 0
    assert time.perf_counter() - t1 < min(10.0, wall)
    assert "up to date, skipped" in capsys.readouterr().out


def write_dataset(root: Path, instruction: str, answer: str, split_of_group: dict[str, str]) -> None:
    from corpus.dataset import make_example

    row = make_example("timing_analysis", "doc_qa", instruction, answer, "documentation",
                       {"url": "u", "section": "s"}, None) | {"split": "train"}
    path = root / "examples" / "phase=timing_analysis" / "split=train"
    path.mkdir(parents=True)
    pq.write_table(from_rows([row], EXAMPLES_SCHEMA, stage="test"), path / "part-0.parquet")
    (root / "report.json").write_text(json.dumps({"split_of_group": split_of_group}))


@pytest.mark.integration
def test_openai_engine_end_to_end_keeps_only_validated(ray_session, canned_server: CannedServer, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CF_CANNED_KEY", "sk-test")
    dataset = tmp_path / "dataset"
    sdc_answer = "Use this script:\n\n" + fenced("sdc", SDC[0][1])
    # the docs' sources and the module repository as the dataset job split them
    split_of_group = {"yosys:https://docs/yosys/synth": "test", "opensta:https://docs/opensta/power": "validation",
                      "openroad:https://docs/openroad/route": "train", "r": "test"}  # doc groups are pages
    write_dataset(dataset, SDC[0][0], sdc_answer, split_of_group)
    bench = tmp_path / "benchmarks" / "dataset_spec-to-rtl"  # VerilogEval v2 layout
    bench.mkdir(parents=True)
    (bench / "Prob001_counter_prompt.txt").write_text("Build a counter.\n")
    (bench / "Prob001_counter_ref.sv").write_text(VERILOG[1][1])  # one canned design is "a benchmark solution"
    write_docs(tmp_path / "docs")
    modules = tmp_path / "corpus" / "modules" / "repo=r"
    modules.mkdir(parents=True)
    pq.write_table(from_rows([module_row(1), module_row(2), module_row(3, keep=False)], MODULES_SCHEMA, stage="test"),
                   modules / "part-0.parquet")
    out = tmp_path / "synth"
    cfg = SynthesizeConfig(
        output_dir=str(out), dataset_dir=str(dataset), decontam={"benchmark_paths": [str(tmp_path / "benchmarks")]},
        docs_dir=str(tmp_path / "docs"), corpus_dir=str(tmp_path / "corpus"),
        phases={
            # doc/module and topic templates alternate: every topic below is used in round 0
            "rtl_design": {"quota": 2, "topics": ["a gray counter", "a BAD-VERILOG adder"]},
            "synthesis": {"quota": 3, "topics": ["GARBAGE-REPLY flattening", "SERVER-ERROR-500 abc",
                                                 "RATE-LIMIT-429 retiming"]},
            "placement": {"quota": 1, "topics": ["density"]},
            "routing": {"quota": 1, "topics": ["layers"]},
            "timing_analysis": {"quota": 2, "topics": ["io delays", "false paths", "uncertainty"]},
            "power_analysis": {"quota": 1, "topics": ["activity"]},
        },
        engine={"name": "openai", "sampling": {"temperature": 0.0, "max_tokens": 512},
                "openai": {"url": canned_server.url, "model": "canned-model", "api_key_env": "CF_CANNED_KEY",
                           "max_retries": 2, "base_retry_wait_s": 0.05, "concurrency": 1, "batch_size": 16}},
        validation={"concurrency": 1, "batch_size": 8, "sim_timeout_s": 5},
        budget={"max_prompts": 80, "max_rounds": 3, "oversample": 2.0},
    )
    assert job.execute(SPEC, pipe.run, cfg) == 0
    report = json.loads((out / "report.json").read_text())
    check_counts(report)
    assert report["seeds"]["docs"] == 3 and report["seeds"]["modules"] == 2  # doc_sources yield to docs_dir
    assert report["phases"]["rtl_design"]["seeds"] == {"doc": 0, "module": 2, "topic": 2}
    assert report["phases"]["routing"]["seeds"]["doc"] == 1 and report["phases"]["synthesis"]["seeds"]["doc"] == 1
    used = {r["provenance"]["generator"].split("/", 2)[2] for r in read_synthetic(out).to_pylist()}
    assert "rtl_design/module_from_reference@v1" in used or report["phases"]["rtl_design"]["generated"] < 2
    assert report["outcome"] == "quotas_met", json.dumps(report["phases"], indent=1)
    for phase, r in report["phases"].items():
        assert r["kept"] >= cfg.phases[phase].quota

    # every rejection is explained by what the server sent
    served = [r for r in canned_server.requests if r["status"] == 200]
    users = [next(m["content"] for m in r["payload"]["messages"] if m["role"] == "user") for r in served]
    n500 = sum(r["status"] == 500 for r in canned_server.requests)  # not retried: one per prompt
    rej = report["totals"]["rejected"]
    assert rej.get("engine/error", 0) == n500 > 0
    assert rej.get("malformed/not_json", 0) == sum("GARBAGE-REPLY" in u for u in users) > 0
    # the broken design is not instantiated by its testbench, so iverilog (-s tb) never elaborates it;
    # verilator lints the design itself and rejects it
    assert rej.get("verilog/verilator", 0) == sum("BAD-VERILOG" in u for u in users) > 0
    assert any(r["status"] == 429 for r in canned_server.requests)
    assert all(any(s["key"] == r["key"] and s["status"] == 200 for s in served)
               for r in canned_server.requests if r["status"] == 429)  # retried, then answered
    replies = [json.loads(r["reply"]) for r in served if r["reply"].startswith("{")]
    in_dataset = sum(r["answer"] == sdc_answer for r in replies)
    assert rej.get("dedup/near_dup_dataset", 0) == in_dataset
    in_bench = sum(VERILOG[1][1].strip() in r["answer"] for r in replies)
    assert rej.get("decontam/benchmark", 0) == in_bench > 0
    assert report["totals"]["generated"] == len(users) + n500

    table = read_synthetic(out)
    assert table.num_rows == report["totals"]["kept"]
    rows = table.to_pylist()
    assert len({r["id"] for r in rows}) == len(rows)
    assert {r["source"] for r in rows} == {"synthetic"}
    assert all(r["provenance"]["generator"].startswith("openai/canned-model/") for r in rows)
    assert all("@v" in r["provenance"]["generator"] for r in rows)
    # built like real examples: the phase's system prompt, the dataset's id formula
    assert all([m["role"] for m in r["messages"]] == ["system", "user", "assistant"] for r in rows)
    assert all(r["messages"][0]["content"] == SYSTEM[r["phase"]] for r in rows)
    assert all(r["id"] == example_id(r["phase"], r["task"], r["messages"]) for r in rows)
    # splits: the seed's group's split; topics by a hash of the topic into train/validation
    group_of_url = {u: f"{u.split('/')[3]}:{u}" for u in ("https://docs/yosys/synth", "https://docs/opensta/power",
                                                           "https://docs/openroad/route")}
    seeded = 0
    for r in rows:
        group = r["provenance"]["repo"] or group_of_url.get(r["provenance"]["url"] or "")
        if group:
            seeded += 1
            assert r["split"] == split_of_group[group], (group, r["split"])
        else:
            assert r["split"] in {"train", "validation"}
    assert seeded > 0 and not [r for r in rows if r["split"] == "train" and r["provenance"]["repo"] == "r"]
    assert sum(report["splits"]["kept_by_split"].values()) == len(rows)
    assert sdc_answer not in {r["messages"][2]["content"] for r in rows}
    assert all(VERILOG[1][1].strip() not in r["messages"][2]["content"] for r in rows)
    texts = [r["messages"][1]["content"] + r["messages"][2]["content"] for r in rows]
    assert len(set(texts)) == len(texts)
    for phase_dir in (out / "synthetic").iterdir():
        assert phase_dir.name.startswith("phase=") and all(d.name.startswith("split=") for d in phase_dir.iterdir())
    assert {r["phase"] for r in rows} == set(cfg.phases)
    rtl = [r for r in rows if r["phase"] == "rtl_design"]
    assert all("```verilog" in r["messages"][2]["content"] for r in rtl)
    assert report["sandbox"]["network_isolation"] in {"userns+netns", "none"}
    assert report["command_lists"]["openroad"]["source"] == "fallback"


@pytest.mark.integration
def test_vllm_engine_fails_fast_without_gpus_or_vllm(ray_session, tmp_path: Path, capsys) -> None:
    t0 = time.perf_counter()
    rc = synthesize.main(["--config", "jobs/configs/synthesize_cluster.yaml", "--output", str(tmp_path / "v"),
                          "docs_dir=null", "corpus_dir=null", "dataset_dir=null", "decontam.benchmark_paths=[]",
                          "engine.vllm.wait_for_gpus_s=0"])
    assert rc == 2
    assert time.perf_counter() - t0 < 15
    msg = capsys.readouterr().err
    assert "engine 'vllm' cannot run on this cluster" in msg and "GPU" in msg and "vllm package" in msg
    assert not (tmp_path / "v" / "synthetic").exists()


@pytest.mark.integration
def test_vllm_processor_builds_without_vllm(ray_session, tiny_model: str) -> None:  # noqa: F811
    assert importlib.util.find_spec("vllm") is None  # the point of this test: no vllm here
    cfg = VLLMConfig(model_source=tiny_model, concurrency=3, batch_size=8, accelerator_type="H100",
                     max_model_len=1024, engine_kwargs={"gpu_memory_utilization": 0.8})
    proc = pipe.build_vllm_processor(cfg, SamplingConfig(temperature=0.2, max_tokens=64, seed=1))
    assert proc.list_stage_names() == ["ChatTemplateStage", "TokenizeStage", "vLLMEngineStage", "DetokenizeStage"]
    summary = pipe.stage_summary(proc)
    assert summary[2]["stage"] == "vLLMEngineStage" and summary[2]["num_gpus"] == 1
    assert summary[2]["accelerator_type"] == "H100"
    tp = pipe.stage_summary(pipe.build_vllm_processor(VLLMConfig(model_source=tiny_model, tensor_parallel_size=2,
                                                                 pipeline_parallel_size=2), SamplingConfig()))
    assert tp[2]["num_gpus"] == 0  # tensor/pipeline parallel: GPUs come from the engine's placement group


@pytest.mark.integration
def test_asking_to_run_vllm_here_fails_fast(ray_session) -> None:
    t0 = time.perf_counter()
    with pytest.raises(engines.EngineUnavailable, match="cannot run on this cluster.*--engine hf"):
        pipe.check_vllm_runnable(VLLMConfig())
    assert time.perf_counter() - t0 < 5


@pytest.mark.integration
def test_an_engine_that_fails_as_a_whole_stops_the_run_with_a_report(ray_session, tmp_path: Path, capsys,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_engine(cfg, hf=None, deadline=None):
        def engine(ds):
            raise RuntimeError("engine replica died")
        return engine, {}

    monkeypatch.setattr(pipe, "make_engine", broken_engine)
    out = tmp_path / "synth"
    assert synthesize.main(["--output", str(out)]) == 1
    assert "aborted in round 0: RuntimeError: engine replica died" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["outcome"] == "aborted" and report["totals"]["generated"] == 0
    assert not (out / "_chipforge" / "synthesize.json").exists()  # not marked done: a rerun redoes it


@pytest.mark.integration
def test_openai_job_against_a_slow_endpoint_ends_within_its_wall_time_budget(
        ray_session, slow_server: SlowServer, tmp_path: Path, capsys) -> None:  # noqa: F811
    """400 prompts against an endpoint that takes 2 s a reply, 4 in flight: about 200 s of requests, with
    no bound but the prompt count (before: no other bound). ``budget.max_wall_s=20`` ends the job soon after
    20 s (Ray's actor start-up included): what was answered is validated and written, the prompts not sent or cut are ``engine/deadline``
    (counts still add up), the summary names the bound, and the exit code follows the usual policy."""
    out = tmp_path / "synth"
    cfg = SynthesizeConfig(
        output_dir=str(out), phases={"synthesis": {"quota": 200}, "timing_analysis": {"quota": 200}},
        engine={"name": "openai", "sampling": {"temperature": 0.0, "max_tokens": 512},
                "openai": {"url": slow_server.url, "model": "canned-model", "api_key_env": None, "timeout_s": 60,
                           "max_retries": 3, "concurrency": 1, "batch_size": 4}},
        validation={"concurrency": 1, "batch_size": 8, "sim_timeout_s": 5},
        budget={"max_prompts": 400, "max_rounds": 5, "max_wall_s": 20},
    )
    t0 = time.perf_counter()
    code = job.execute(SPEC, pipe.run, cfg)
    wall = time.perf_counter() - t0
    report = json.loads((out / "report.json").read_text())
    check_counts(report)
    assert wall < 20 + 30, wall  # the bound, then validating what came back and writing it
    assert report["outcome"] == "deadline" and report["budget"]["deadline_reached"]
    cut = report["totals"]["rejected"]["engine/deadline"]
    assert cut == report["budget"]["not_answered_by_deadline"] > 0
    assert slow_server.arrived <= 4 * 20 / 2  # at most 4 in flight per 2 s, not 400 requests
    answered = report["totals"]["generated"] - cut
    assert 0 < answered <= slow_server.arrived
    assert read_synthetic(out).num_rows == report["totals"]["kept"]
    assert code == (0 if report["totals"]["kept"] else 1)
    text = capsys.readouterr().out
    assert "outcome: deadline (budget.max_wall_s=20 s reached" in text and "engine/deadline" in text


def test_openai_engine_without_its_key_exits_2_before_ray_naming_the_variable(tmp_path: Path, capsys, monkeypatch,
                                                                             ray_forbidden: None) -> None:
    """``--engine openai`` with ``$OPENAI_API_KEY`` unset: exit 2 naming the variable before Ray starts (before:
    the same error only after Ray had started, 13 s in). The variable is the one the config names; a server
    without keys (``api_key_env: null``) needs none."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("CF_OTHER_KEY", raising=False)
    assert synthesize.main(["--engine", "openai", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "engine.openai.api_key_env" in err and "$OPENAI_API_KEY, which is not set" in err
    assert "api_key_env=null" in err and "Traceback" not in err and not (tmp_path / "out").exists()

    assert synthesize.main(["--engine", "openai", "engine.openai.api_key_env=CF_OTHER_KEY",
                            "--output", str(tmp_path / "out")]) == 2
    assert "$CF_OTHER_KEY, which is not set" in capsys.readouterr().err

    pipe.preflight(SynthesizeConfig(engine={"name": "openai", "openai": {"api_key_env": None}}))
    monkeypatch.setenv("CF_OTHER_KEY", "sk-test")
    pipe.preflight(SynthesizeConfig(engine={"name": "openai", "openai": {"api_key_env": "CF_OTHER_KEY"}}))
