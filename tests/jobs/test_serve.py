"""``python -m jobs.serve``: usage errors before Ray starts, and a real deployment (detached) on loopback."""

from __future__ import annotations

import json
import os

import pytest
import requests

from jobs import serve as serve_job
from tests.serving import fixtures


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory):
    return fixtures.tiny_registry(tmp_path_factory)


def test_missing_registry_and_bad_fields_are_usage_errors(tmp_path, capsys):
    assert serve_job.main(["--registry", str(tmp_path / "nope.json"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--registry" in err and "does not exist" in err and "registry" in err
    assert "python -m jobs.quickstart writes out/quickstart/registry.json" in err, err  # what a fresh clone lacks
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({"version": 1, "specialists": {}}))
    assert serve_job.main(["--registry", str(reg), "--port", "99999", "--output", str(tmp_path / "o")]) == 2
    assert "port" in capsys.readouterr().err
    assert serve_job.main(["--registry", str(reg), "--backend", "tgi", "--output", str(tmp_path / "o")]) == 2
    assert "backend" in capsys.readouterr().err
    assert serve_job.main(["--registry", str(reg), "--output", str(tmp_path / "o")]) == 2
    assert "has no specialists" in capsys.readouterr().err


@pytest.mark.integration
def test_serve_job_deploys_the_registry(ray_session, tiny_registry, tmp_path, capsys):
    from ray import serve

    from tests.serving.test_configs import check_serve_config

    port = fixtures.serve_port()
    out = tmp_path / "serve"
    argv = ["--registry", tiny_registry["registry"], "--port", str(port), "--host", "127.0.0.1", "--output", str(out),
            "app_name=job-test", "route_prefix=/job", "detach=true", "hf.torch_threads=1", "ingress.num_cpus=0"]
    try:
        assert serve_job.main(argv) == 0
        text = capsys.readouterr().out
        url = f"http://127.0.0.1:{port}/job"
        assert f"serving 4 models at {url}/v1 (backend hf, no API key)" in text
        for name in ("chipforge ", "chipforge-rtl_design", "chipforge-timing_analysis", "chipforge-base"):
            assert name in text
        assert "try: curl" in text and "detached" in text
        models = requests.get(f"{url}/v1/models", timeout=60).json()
        assert [m["id"] for m in models["data"]][:2] == ["chipforge", "chipforge-rtl_design"]
        r = requests.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "chipforge", "max_tokens": 3,
            "messages": [{"role": "user", "content": "Write a Verilog module for a 4-bit counter"}]})
        assert r.status_code == 200 and r.headers["x-chipforge-specialist"] == "rtl_design"
        (cfg,) = check_serve_config(out / "serve_config.yaml")
        assert cfg.registry == tiny_registry["registry"] and cfg.route_prefix == "/" and cfg.app_name == "chipforge"
        report = json.loads((out / "report.json").read_text())
        assert report["status"] == "ok" and report["url"] == url and report["models"][0] == "chipforge"
    finally:
        serve.delete("job-test")
        os.environ["CHIPFORGE_TEST_SERVE_APP_DELETED"] = "1"  # read by tests/serving/test_server.py


def _registry_with_truncated_adapter(tiny_registry, tmp_path) -> tuple[str, str]:
    """tiny_registry's registry with the timing_analysis adapter copied and its weights cut in half."""
    import shutil

    bad = tmp_path / "truncated-adapter"
    shutil.copytree(tiny_registry["adapters"]["timing_analysis"], bad)
    weights = bad / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    data = json.loads(open(tiny_registry["registry"]).read())
    data["specialists"]["timing_analysis"]["adapter_path"] = str(bad)
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps(data))
    return str(reg), str(bad)


def test_a_corrupt_adapter_is_a_usage_error_before_ray_starts(tiny_registry, tmp_path, capsys):
    """Before: the job started Ray and deployed; every replica failed in PEFT (SafetensorError) and Serve
    retried them until the deploy failed (exit 1 after a minute or more, a traceback per attempt)."""
    import ray

    reg, bad = _registry_with_truncated_adapter(tiny_registry, tmp_path)
    ray_before = ray.is_initialized()
    assert serve_job.main(["--registry", reg, "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"chipforge-timing_analysis: adapter {bad}:" in err and "truncated or corrupt" in err, err
    assert "1 of 2 specialists cannot be served" in err and "on_bad_specialist=skip" in err and "Traceback" not in err
    assert ray.is_initialized() == ray_before  # nothing was started


def test_backend_vllm_without_vllm_is_a_usage_error_before_ray_starts(tiny_registry, tmp_path, capsys, monkeypatch):
    """Before: Ray started, then ``import ray.serve.llm`` failed with three chained tracebacks ending in Ray's
    "pip install ray[llm]" and "error: serve failed (traceback above)", exit 1."""
    import sys

    import ray

    monkeypatch.setitem(sys.modules, "ray.serve.llm", None)  # vLLM not importable here, even where it is installed
    ray_before = ray.is_initialized()
    argv = ["--registry", tiny_registry["registry"], "--backend", "vllm", "vllm.lora_root=s3://b/loras",
            "--output", str(tmp_path / "o")]
    assert serve_job.main(argv) == 2
    err = capsys.readouterr().err
    assert "backend vllm needs vLLM" in err and "--backend hf" in err and ".[gpu]" in err, err
    assert "Traceback" not in err
    assert ray.is_initialized() == ray_before  # nothing was started


@pytest.mark.integration
def test_serve_job_skips_a_bad_specialist_and_reports_it(ray_session, tiny_registry, tmp_path, capsys):
    """``on_bad_specialist=skip``: the good specialist is served, the skipped one is in the startup log,
    ``/health`` (names), ``/stats`` (why) and its own 404."""
    from ray import serve

    reg, bad = _registry_with_truncated_adapter(tiny_registry, tmp_path)
    port = fixtures.serve_port()
    argv = ["--registry", reg, "--port", str(port), "--host", "127.0.0.1", "--output", str(tmp_path / "serve"),
            "app_name=job-skip", "route_prefix=/skip", "detach=true", "hf.torch_threads=1", "ingress.num_cpus=0",
            "on_bad_specialist=skip", "api_key_env=null"]
    try:
        assert serve_job.main(argv) == 0
        out = capsys.readouterr().out
        assert "warning: not serving chipforge-timing_analysis: adapter" in out and "truncated or corrupt" in out
        assert "chipforge-timing_analysis  NOT SERVED (failed the startup checks)" in out
        assert "not served (failed the startup checks): chipforge-timing_analysis" in out  # the summary
        report = json.loads((tmp_path / "serve" / "report.json").read_text())
        assert list(report["skipped_specialists"]) == ["chipforge-timing_analysis"]
        assert "truncated or corrupt" in report["skipped_specialists"]["chipforge-timing_analysis"]
        url = f"http://127.0.0.1:{port}/skip"
        assert [m["id"] for m in requests.get(f"{url}/v1/models", timeout=60).json()["data"]] == \
            ["chipforge", "chipforge-rtl_design", "chipforge-base"]
        health = requests.get(f"{url}/health", timeout=60)
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        assert health.json()["skipped_specialists"] == ["chipforge-timing_analysis"]
        assert bad not in health.text  # paths and reasons only behind the key (GET /stats)
        assert "truncated or corrupt" in requests.get(f"{url}/stats", timeout=60).json()[
            "skipped_specialists"]["chipforge-timing_analysis"]
        r = requests.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "chipforge-timing_analysis", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 404 and "failed this server's startup checks" in r.json()["error"]["message"]
        r = requests.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "chipforge-rtl_design", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("length", "stop")
    finally:
        serve.delete("job-skip")
        os.environ["CHIPFORGE_TEST_SERVE_APP_DELETED"] = "1"  # read by tests/serving/test_server.py


@pytest.mark.parametrize("text, says", [("{not json", "not valid JSON"), ('{"version": 2, "specialists": {}}',
                                                                           "unsupported format (version 2"),
                                        ("[]", "expected a JSON object")])
def test_a_registry_that_is_not_one_is_a_usage_error(tmp_path, capsys, text, says):
    reg = tmp_path / "registry.json"
    reg.write_text(text)
    assert serve_job.main(["--registry", str(reg), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert says in err and str(reg) in err and "Traceback" not in err, err
