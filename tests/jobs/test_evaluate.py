"""jobs.evaluate / pipelines.evaluate: configs; the whole job on a tiny base with two LoRA specialists
(every metric for each specialist and the base, counts that add up, the same prompts for every
model, the registry updated, a rerun skipped); fake models behind an OpenAI-compatible server whose
answers are each classed right while a bystander process lives; vLLM failing fast on CPU."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest

from chipforge.config import launch_command, load_config, read_yaml, validate
from jobs import evaluate as job_module
from evaluation.prompts import Rows, build_rows, greedy
from pipelines.evaluate import SPEC, EvaluateConfig
from synthesis.engines import SamplingConfig
from tests.evaluation.conftest import fake_models, rtllm_checkout, specialists, v2_checkout  # noqa: F401 — fixtures

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(REPO.joinpath("jobs", "configs").glob("evaluate_*.yaml"))


# ------------------------------------------------------------------------ configs, no Ray

@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_configs_validate(path: Path) -> None:
    assert launch_command(path) == f"python -m jobs.evaluate --config jobs/configs/{path.name}"
    validate(job_module.CONFIG_CLASS, read_yaml(path), source=str(path))


def test_no_argument_run_is_the_offline_sample() -> None:
    cfg = load_config(EvaluateConfig, [], prog="t", default_config=SPEC.default_config, flags=SPEC.flags)
    assert cfg.dataset_dir == "sample/dataset" and cfg.registry is None
    assert cfg.engine.name == "hf" and cfg.engine.hf.model_path == "tiny"  # built in-process: nothing downloaded
    assert cfg.benchmarks.verilog_eval_v2 is None and cfg.benchmarks.rtllm is None and cfg.smoke


def test_flags_and_errors() -> None:
    cfg = load_config(EvaluateConfig, ["--phases", "rtl_design,triage", "--engine", "openai", "--registry", "r.json",
                                       "benchmarks.rtllm=/x", "benchmarks.ks=[10,1]"],
                      prog="t", default_config=SPEC.default_config, flags=SPEC.flags)
    assert cfg.phases == ["rtl_design", "triage"] and cfg.engine.name == "openai" and cfg.registry == "r.json"
    assert cfg.benchmarks.rtllm == "/x" and cfg.benchmarks.ks == [1, 10]
    with pytest.raises(SystemExit, match="phases"):
        validate(EvaluateConfig, {"phases": ["nope"]}, source="x.yaml")
    with pytest.raises(SystemExit, match="{phase}"):
        validate(EvaluateConfig, {"openai_adapter_name": "served"}, source="x.yaml")
    with pytest.raises(SystemExit, match="reference=true"):
        validate(EvaluateConfig, {"evaluate_models": False}, source="x.yaml")


def test_missing_benchmark_checkout_is_a_usage_error_before_ray(tmp_path: Path, capsys) -> None:
    rc = job_module.main(["--output", str(tmp_path / "o"), f"benchmarks.rtllm={tmp_path / 'nope'}"])
    assert rc == 2 and "benchmarks.rtllm" in capsys.readouterr().err


def test_base_and_specialist_get_identical_prompt_rows(specialists: dict[str, Any], v2_checkout: Path) -> None:
    """Fails if any prompt given to a specialist differs from the one its base gets (or is missing)."""
    from evaluation import benchmarks as bench
    from evaluation import smoke
    from evaluation.models import resolve_models

    cfg = EvaluateConfig(dataset_dir=str(specialists["dataset"]), registry=str(specialists["registry"]),
                         benchmarks={"n_samples": 2}, routing={"max_items": 5})
    specs = resolve_models(json.loads(specialists["registry"].read_text()), phases=None, default_base="tiny",
                           base_override=None, engine="hf")
    suite = smoke.load_suite()
    items = [{"id": f"q{i}", "text": f"question {i}", "phase": "synthesis"} for i in range(5)]
    rows, refs, _ = build_rows(cfg, specs, ["rtl_design", "triage", "timing_analysis"],
                               bench.load_verilog_eval_v2(str(v2_checkout)), suite, items)
    assert_same_prompts(rows.rows, specs)
    assert not refs
    assert {r["kind"] for r in rows.rows} == {"loss", "generation", "benchmark", "smoke", "routing"}


def assert_same_prompts(rows: list[dict[str, Any]], specs: Any, prompt_key: str = "messages_json") -> None:
    by_prompt: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_prompt[r["prompt_id"]].append(r)
    for pid, rs in by_prompt.items():
        same = {(r[prompt_key], r["temperature"], r["top_p"], r["max_tokens"], r["seed"], r["kind"], r["suite"],
                 r["item_id"], r["sample"]) for r in rs}
        assert len(same) == 1, f"prompt {pid} differs between models {[r['model'] for r in rs]}"
        assert len({r["model"] for r in rs}) == len(rs)
    for sp in (s for s in specs if s.kind == "specialist"):
        mine = {r["prompt_id"] for r in rows if r["model"] == sp.name}
        base = {r["prompt_id"] for r in rows if r["model"] == sp.base}
        assert mine and mine <= base, f"{sp.name} got prompts its base {sp.base} did not"


def test_rows_helper_copies_one_prompt_per_model() -> None:
    rows = Rows()
    rows.add("benchmark", "b", "p1", [{"role": "user", "content": "x"}], ["base", "rtl_design"],
             sampling=greedy(SamplingConfig(max_tokens=8, seed=3)))
    a, b = rows.rows
    assert a["prompt_id"] == b["prompt_id"] and a["row_id"] != b["row_id"]
    assert {k: v for k, v in a.items() if k not in ("model", "row_id")} == {
        k: v for k, v in b.items() if k not in ("model", "row_id")}
    assert a["temperature"] == 0.0 and a["seed"] == 3 and a["max_tokens"] == 8


# ------------------------------------------------------------------------ the whole job (Ray)

def read_samples(out: Path) -> list[dict[str, Any]]:
    return pads.dataset(str(out / "samples"), format="parquet").to_table().to_pylist()


@pytest.mark.integration
@pytest.mark.tools("iverilog", "vvp", "verilator", "bwrap")
def test_whole_job_tiny_base_two_specialists(ray_session: None, specialists: dict[str, Any], v2_checkout: Path,
                                             rtllm_checkout: Path, tmp_path: Path, capsys) -> None:
    registry = tmp_path / "registry.json"
    shutil.copy(specialists["registry"], registry)
    out = tmp_path / "eval"
    argv = ["--registry", str(registry), "--dataset", str(specialists["dataset"]), "--output", str(out),
            f"benchmarks.verilog_eval_v2={v2_checkout}", f"benchmarks.rtllm={rtllm_checkout}",
            "benchmarks.n_samples=2", "benchmarks.ks=[1,2]", "benchmarks.models=[rtl_design]",
            "engine.sampling.max_tokens=40", "routing.max_items=8", "generation.max_examples=3",
            "simulation.sim_timeout_s=10", "--reference"]
    assert job_module.main(argv) == 0
    printed = capsys.readouterr().out
    assert "checked" in printed and "== evaluate summary (ok" in printed
    rep = json.loads((out / "report.json").read_text())
    models = {"base", "rtl_design", "triage"}
    assert set(rep["models"]) == models | {"reference"}

    # 1-2: loss, perplexity and generation metrics per phase, the specialist and its base side by side
    for phase in ("rtl_design", "triage"):
        ph = rep["phases"][phase]
        assert ph["split"] == "test" and ph["specialist"] == phase
        for m in (phase, "base"):
            lo = ph["loss"][m]
            assert lo["tokens"] > 0 and math.isfinite(lo["loss"]) and lo["perplexity"] == pytest.approx(
                math.exp(lo["loss"]))
            assert ph["generation"][m]["n"] == 3
        assert ph["loss"][phase]["tokens"] == ph["loss"]["base"]["tokens"]  # the same examples, the same tokens
    assert rep["phases"]["rtl_design"]["generation"]["base"]["verilog"]["n"] == 3
    assert rep["phases"]["triage"]["generation"]["base"]["text"]["n"] == 3
    assert set(rep["phases"]["timing_analysis"]["loss"]) == {"base"}  # no specialist: the base alone
    side = {(r["specialist"], r["area"], r["metric"]) for r in rep["side_by_side"]}
    for metric in ("loss", "perplexity"):
        assert ("rtl_design", "test split (test)", metric) in side and ("triage", "test split (test)", metric) in side
    for metric in ("parse_rate", "compile_rate", "lint_rate"):
        assert ("rtl_design", "generation (verilog)", metric) in side
    assert ("triage", "generation (text)", "rouge_l") in side and ("triage", "generation (text)", "chrf") in side
    assert ("triage", "routing", "macro_f1") in side and ("rtl_design", "smoke", "pass_rate") in side
    for r in rep["side_by_side"]:
        if r["difference"] is not None:
            assert r["difference"] == pytest.approx(r["specialist_value"] - r["base_value"])

    # 3-4: benchmarks, counts that add up, the self-check
    n = {"verilog_eval_v2/spec-to-rtl": 3, "verilog_eval_v2/code-complete": 3, "rtllm": 2}
    assert set(rep["benchmarks"]) == set(n)
    for name, cells in rep["benchmarks"].items():
        assert set(cells) == {"base", "rtl_design", "reference"}  # benchmarks.models=[rtl_design]
        for m, c in cells.items():
            assert c["n_problems"] == n[name]
            assert c["samples"] == n[name] * (1 if m == "reference" else 3)
            assert c["samples"] == c["passed"] + sum(c["failures"].values()) and c["counts_add_up"]
            assert 0.0 <= c["pass_at_1"] <= 1.0
        assert set(cells["base"]["pass_at_k"]) == {"1", "2"} and cells["base"]["pass_at_k_from"] == "sampled"
        assert cells["reference"]["pass_at_1"] == 1.0
    ref = rep["reference_check"]
    assert ref["simulator"]["iverilog"].startswith("Icarus Verilog") and "vvp" in ref["simulator"]
    assert all(c["ceiling"] == 1.0 and not c["cannot_pass"] for c in ref["benchmarks"].values())
    assert ref["smoke"]["passed"] == ref["smoke"]["n_items"] == 5
    assert rep["simulator"]["iverilog"].startswith("Icarus Verilog")

    # 5: routing: the classifier on the whole set, the triage specialist and its base on the same items
    routers = rep["routing"]["routers"]
    assert routers["classifier"]["n"] == 245 and routers["triage"]["n"] == routers["base"]["n"] == 8
    for m in routers.values():
        assert sum(map(sum, m["confusion"]["matrix"])) == m["n"] and 0 <= m["macro_f1"] <= 1

    # 6: the smoke suite for every model; the routing prompts for every router
    assert {m: v["total"] for m, v in rep["smoke"]["models"].items()} == {"base": 5, "rtl_design": 5, "triage": 5,
                                                                          "reference": 5}
    assert rep["smoke"]["routing"]["classifier"]["passed"] == 3
    assert rep["smoke"]["routing"]["triage"]["total"] == rep["smoke"]["routing"]["base"]["total"] == 3

    # samples: one row per prompt and model, the same prompts for the base and each specialist
    samples = read_samples(out)
    assert len(samples) == rep["rows"]["total"] - rep["rows"]["by_kind"]["loss"]
    assert len({(s["prompt_id"], s["model"]) for s in samples}) == len(samples)
    assert all(s["verdict"] in {"pass", "fail", "scored"} for s in samples)
    assert all(s["log_excerpt"] for s in samples if s["kind"] == "benchmark" and s["verdict"] == "fail")
    from evaluation.models import resolve_models

    specs = resolve_models(json.loads(specialists["registry"].read_text()), phases=None, default_base="tiny",
                           base_override=None, engine="hf")
    engine_rows = [s for s in samples if s["model"] != "reference"]
    assert_same_prompts(engine_rows, specs, prompt_key="prompt")
    assert_same_prompts(engine_rows, specs, prompt_key="prompt_sha")  # as rendered by the engine

    # the report page, and the registry entries
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5  # plots embedded: one self-contained page
    assert "<script" not in page and 'src="http' not in page and "<link" not in page
    entries = json.loads(registry.read_text())["specialists"]
    for phase in ("rtl_design", "triage"):
        ev = entries[phase]["evaluation"]
        assert ev["report"] == str(out) + "/report.json" and ev["adapter_path"] == entries[phase]["adapter_path"]
        assert ev["metrics"]["test split (test)/loss"]["base"] == pytest.approx(rep["phases"][phase]["loss"]["base"]
                                                                                 ["loss"])
        assert entries[phase]["metrics"] == {"eval_loss": 1.0}  # the training metrics are left alone

    # a rerun with the same inputs is skipped, although the job wrote into the registry
    assert job_module.main(argv) == 0
    assert "up to date, skipped" in capsys.readouterr().out


@pytest.mark.integration
@pytest.mark.tools("iverilog", "vvp", "verilator", "bwrap")
def test_fake_models_are_classed_and_nothing_else_is_killed(ray_session: None, v2_checkout: Path,
                                                            rtllm_checkout: Path, fake_models: Any,
                                                            tmp_path: Path) -> None:
    """Behind an OpenAI-compatible server: the base returns each problem's reference, three
    specialists return a syntax error, a wrong output and a simulation that never ends (the smoke
    suite's problems are classed the same way in tests/evaluation/test_checks.py)."""
    from evaluation import benchmarks as bench
    from training.registry import register

    problems = bench.load_verilog_eval_v2(str(v2_checkout)) + bench.load_rtllm(str(rtllm_checkout))
    behaviour = {"fake-base": "reference", "rtl_design": "syntax", "synthesis": "wrong", "placement": "hang"}
    server = fake_models(problems, behaviour)
    registry = tmp_path / "registry.json"
    for phase in ("rtl_design", "synthesis", "placement"):
        register(str(registry), phase, base_model="fake-org/fake-base", adapter_path=f"/nowhere/{phase}",
                 dataset_version="sha256:x", metrics={}, config={})
    bystanders = [subprocess.Popen(["sleep", "300"]), subprocess.Popen(["vvp", "-V"], stdout=subprocess.DEVNULL)]
    bystanders[1].wait()
    hang_image = tmp_path / "spin.vvp"
    (tmp_path / "spin.v").write_text("module spin; initial forever begin end endmodule\n")
    subprocess.run(["iverilog", "-o", str(hang_image), str(tmp_path / "spin.v")], check=True)
    bystanders[1] = subprocess.Popen(["vvp", "-n", str(hang_image)], stdout=subprocess.DEVNULL)
    out = tmp_path / "eval"
    try:
        rc = job_module.main(["--engine", "openai", "--registry", str(registry), "--output", str(out),
                              "dataset_dir=null", f"engine.openai.url={server.url}", "engine.openai.model=fake-base",
                              "engine.openai.api_key_env=null", f"benchmarks.verilog_eval_v2={v2_checkout}",
                              f"benchmarks.rtllm={rtllm_checkout}", "routing.enabled=false", "smoke=false",
                              "simulation.sim_timeout_s=4", "--reference"])
        assert rc == 0
        assert all(b.poll() is None for b in bystanders), "a process outside the evaluation was killed"
    finally:
        for b in bystanders:
            b.kill()
            b.wait()
    rep = json.loads((out / "report.json").read_text())
    expected = {"base": None, "rtl_design": "syntax", "synthesis": "sim_mismatch", "placement": "timeout"}
    for name, cells in rep["benchmarks"].items():
        assert cells["reference"]["passed"] == cells["reference"]["samples"]
        for model, cls in expected.items():
            c = cells[model]
            if cls is None:
                assert c["passed"] == c["samples"] == c["n_problems"] and c["pass_at_1"] == 1.0, (name, model)
            else:
                assert c["passed"] == 0 and c["failures"][cls] == c["samples"] == c["n_problems"], (name, model, c)
    assert rep["reference_check"]["simulator"]["iverilog"].startswith("Icarus Verilog")
    assert rep["engine_info"]["check_batch_size"] == 4  # unset: a few rows over the session's CPUs
    assert "loss" not in rep["rows"]["by_kind"]  # no dataset given: no loss rows
    # every model was asked exactly the same chats with the same sampling
    asked: dict[str, set[str]] = defaultdict(set)
    for p in server.requests:
        key = json.dumps({k: v for k, v in p.items() if k != "model"}, sort_keys=True)
        asked[key].add(p["model"])
    assert all(models == set(behaviour) for models in asked.values())
    # the pass@k of each benchmark sits in the page too
    assert "pass@k" in (out / "report.html").read_text()


@pytest.mark.integration
def test_vllm_engine_fails_fast_on_a_cpu_cluster(ray_session: None, specialists: dict[str, Any], tmp_path: Path,
                                                 capsys) -> None:
    registry = tmp_path / "registry.json"
    shutil.copy(specialists["registry"], registry)
    rc = job_module.main(["--engine", "vllm", "--registry", str(registry), "--output", str(tmp_path / "o"),
                          "dataset_dir=null", "smoke=false", "routing.enabled=false"])
    err = capsys.readouterr().err
    assert rc == 2 and "vllm" in err and "GPU" in err
    assert not (tmp_path / "o" / "report.json").exists()


@pytest.mark.integration
def test_missing_registry_is_a_usage_error(ray_session: None, tmp_path: Path, capsys) -> None:
    rc = job_module.main(["--registry", str(tmp_path / "none.json"), "--output", str(tmp_path / "o")])
    assert rc == 2 and "none.json" in capsys.readouterr().err


def test_check_batch_size_spreads_samples_over_the_cluster():
    from pipelines.evaluate import check_batch_size

    assert check_batch_size(362, 2) == 46  # ~4 tasks per CPU
    assert check_batch_size(10, 2) == 4 and check_batch_size(100_000, 64) == 64  # bounds
    assert check_batch_size(362, 0) == 64 and check_batch_size(362, 2, fixed=8) == 8  # no Ray yet; config wins
