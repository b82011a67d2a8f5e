"""jobs.synthesize end to end: hf (tiny CPU model), openai (canned server on 127.0.0.1),
vllm (fails fast here, never executed). The report's counts must add up."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from chipforge.config import launch_command, read_yaml, validate
from corpus.schema import EXAMPLES_SCHEMA, MODULES_SCHEMA, conform, from_rows
from jobs import synthesize
from jobs.synthesize import SynthesizeConfig
from tests.corpus.synthesis.conftest import SDC, VERILOG, CannedServer, build_tiny_model, fenced
from tests.corpus.synthesis.conftest import canned_server  # noqa: F401 — fixture shared with the engine tests
from tests.corpus.synthesis.test_seeds import module_row, write_docs

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("jobs", "configs").glob("synthesize_*.yaml"))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


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


def test_plan_round_oversamples_and_respects_the_budget() -> None:
    from collections import Counter

    cfg = SynthesizeConfig(phases={"synthesis": {"quota": 10}, "routing": {"quota": 4}},
                           budget={"max_prompts": 30, "oversample": 2.0, "max_oversample": 5.0})
    assert synthesize.plan_round(cfg, Counter(), Counter(), 0, {"synthesis", "routing"}) == {"synthesis": 20,
                                                                                             "routing": 8}
    # observed keep rate 1/4 → about 4.4 prompts per missing example, capped by what is left (10)
    plan = synthesize.plan_round(cfg, Counter(synthesis=2), Counter(synthesis=8), 20, {"synthesis", "routing"})
    assert sum(plan.values()) == 10 and plan["synthesis"] > plan["routing"] > 0
    assert synthesize.plan_round(cfg, Counter(synthesis=10, routing=4), Counter(), 0, {"synthesis"}) == {}
    assert synthesize.plan_round(cfg, Counter(), Counter(), 30, {"synthesis"}) == {}
    assert synthesize.split_of("abc", {"train": 1.0}) == "train"
    splits = [synthesize.split_of(str(i), {"train": 0.5, "validation": 0.5}) for i in range(200)]
    assert 60 < splits.count("train") < 140


def test_hf_engine_end_to_end_on_cpu(ray_session, tiny_model_dir: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "synth"
    argv = ["--config", "jobs/configs/synthesize_tiny_cpu.yaml", "--output", str(out),
            f"engine.hf.model_path={tiny_model_dir}"]
    t0 = time.perf_counter()
    assert synthesize.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    check_counts(report)
    assert report["totals"]["prompts"] == 8 and report["budget"]["spent_prompts"] == 8
    assert report["engine"]["name"] == "hf"
    # random weights: the answers are not the strict JSON format; each is counted by reason
    assert sum(v for k, v in report["totals"]["rejected"].items() if k.startswith("malformed/")) >= 6
    assert report["status"] in {"budget_spent", "quotas_met"}
    assert read_synthetic(out).num_rows == report["totals"]["kept"]
    assert "=== synthesize:" in capsys.readouterr().out
    # a rerun of the same finished config is skipped
    t1 = time.perf_counter()
    assert synthesize.main(argv) == 0
    assert time.perf_counter() - t1 < min(5.0, t1 - t0)
    assert "already holds a finished run" in capsys.readouterr().out


def write_dataset(root: Path, instruction: str, answer: str) -> None:
    row = {"id": "d1", "phase": "timing_analysis", "task": "doc_qa", "split": "train", "source": "documentation",
           "messages": [{"role": "user", "content": instruction}, {"role": "assistant", "content": answer}]}
    path = root / "examples" / "phase=timing_analysis" / "split=train"
    path.mkdir(parents=True)
    pq.write_table(from_rows([row], EXAMPLES_SCHEMA, stage="test"), path / "part-0.parquet")


def test_openai_engine_end_to_end_keeps_only_validated(ray_session, canned_server: CannedServer, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CF_CANNED_KEY", "sk-test")
    dataset = tmp_path / "dataset"
    sdc_answer = "Use this script:\n\n" + fenced("sdc", SDC[0][1])
    write_dataset(dataset, SDC[0][0], sdc_answer)
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
    report = synthesize.run(cfg)
    check_counts(report)
    assert report["seeds"] == {"docs": 3, "modules": 2}
    assert report["phases"]["rtl_design"]["seeds"] == {"doc": 0, "module": 2, "topic": 2}
    assert report["phases"]["routing"]["seeds"]["doc"] == 1 and report["phases"]["synthesis"]["seeds"]["doc"] == 1
    used = {r["provenance"]["generator"].split("/", 2)[2] for r in read_synthetic(out).to_pylist()}
    assert "rtl_design/module_from_reference@v1" in used or report["phases"]["rtl_design"]["generated"] < 2
    assert report["status"] == "quotas_met", json.dumps(report["phases"], indent=1)
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
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)
    assert all(r["split"] in {"train", "validation"} for r in rows)
    assert sdc_answer not in {r["messages"][1]["content"] for r in rows}
    assert all(VERILOG[1][1].strip() not in r["messages"][1]["content"] for r in rows)
    texts = [r["messages"][0]["content"] + r["messages"][1]["content"] for r in rows]
    assert len(set(texts)) == len(texts)
    for phase_dir in (out / "synthetic").iterdir():
        assert phase_dir.name.startswith("phase=") and all(d.name.startswith("split=") for d in phase_dir.iterdir())
    assert {r["phase"] for r in rows} == set(cfg.phases)
    rtl = [r for r in rows if r["phase"] == "rtl_design"]
    assert all("```verilog" in r["messages"][1]["content"] for r in rtl)
    assert report["sandbox"]["network_isolation"] in {"netns", "userns+netns", "none"}
    assert report["command_lists"]["openroad"]["source"] == "fallback"


def test_vllm_engine_fails_fast_without_gpus_or_vllm(ray_session, tmp_path: Path, capsys) -> None:
    t0 = time.perf_counter()
    rc = synthesize.main(["--config", "jobs/configs/synthesize_cluster.yaml", "--output", str(tmp_path / "v"),
                          "docs_dir=null", "corpus_dir=null", "dataset_dir=null", "decontam.benchmark_paths=[]",
                          "engine.vllm.wait_for_gpus_s=0"])
    assert rc == 2
    assert time.perf_counter() - t0 < 15
    msg = capsys.readouterr().out
    assert "engine 'vllm' cannot run on this cluster" in msg and "GPU" in msg and "vllm package" in msg
    assert not (tmp_path / "v" / "synthetic").exists()
