"""``python -m jobs.serve``: usage errors before Ray starts, and a real deployment (detached) on loopback."""

from __future__ import annotations

import os

import json

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
