"""The Serve config YAML, the RayService manifest and the vLLM application config, checked offline.

``check_serve_config`` / ``check_serve_dict`` are the rule for ``serving/serve_config*.yaml`` (for
tests/test_configs.py): Ray's ``ServeDeploySchema``, no unknown application keys (the schema
ignores them), an importable builder, and ``args`` valid as ``serving.config.ServeConfig``.
The vLLM backend is only configured here, never executed (no GPU, no vLLM): its ``LLMConfig``
dicts are validated with Ray's own config class, which imports without vLLM.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.catalog import load_catalog
from serving.config import JOB_ONLY, ServeConfig

REPO = Path(__file__).resolve().parents[2]
SERVE_CONFIGS = sorted(p.relative_to(REPO) for p in (REPO / "serving").glob("serve_config*.y*ml"))
RAYSERVICES = sorted(p.relative_to(REPO) for p in (REPO / "k8s").glob("rayservice-*.y*ml"))


def check_serve_dict(data: dict[str, Any], where: str) -> list[ServeConfig]:
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

    ServeDeploySchema.model_validate(data)
    unknown = set(data) - set(ServeDeploySchema.model_fields)
    assert not unknown, f"{where}: unknown Serve config keys {unknown}"
    configs = []
    for app in data["applications"]:
        unknown = set(app) - set(ServeApplicationSchema.model_fields)
        assert not unknown, f"{where}: application {app.get('name')}: unknown keys {unknown}"
        module, _, attr = app["import_path"].partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), f"{where}: {app['import_path']}"
        assert app["import_path"] == "serving.app:build_app", f"{where}: import_path"
        from serving.app import validate_args

        configs.append(validate_args(app.get("args") or {}))
    return configs


def check_serve_config(path: Path) -> list[ServeConfig]:
    return check_serve_dict(yaml.safe_load(Path(path).read_text()), str(path))


def check_rayservice(path: Path) -> list[ServeConfig]:
    from tests.test_configs import _cluster_spec_ok

    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    configs = []
    for doc in docs:
        assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService" and doc["metadata"]["name"]
        spec = doc["spec"]
        allowed = {"serveConfigV2", "rayClusterConfig", "upgradeStrategy", "serveService", "excludeHeadPodFromServeSvc",
                   "serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold",
                   "rayClusterDeletionDelaySeconds"}
        assert set(spec) <= allowed, f"{path}: unknown RayService fields {set(spec) - allowed}"
        assert spec.get("upgradeStrategy", {}).get("type", "NewCluster") in {"NewCluster",
                                                                             "NewClusterWithIncrementalUpgrade", "None"}
        assert isinstance(spec["serveConfigV2"], str), f"{path}: serveConfigV2 must be a YAML string"
        configs += check_serve_dict(yaml.safe_load(spec["serveConfigV2"]), f"{path}:serveConfigV2")
        _cluster_spec_ok(spec["rayClusterConfig"], f"{path}:rayClusterConfig")
    return configs


def test_the_files_exist():
    assert Path("serving/serve_config.yaml") in SERVE_CONFIGS
    assert Path("k8s/rayservice-chipforge.yaml") in RAYSERVICES


@pytest.mark.parametrize("rel", SERVE_CONFIGS, ids=[p.as_posix() for p in SERVE_CONFIGS])
def test_serve_configs_validate(rel):
    (cfg,) = check_serve_config(REPO / rel)
    assert cfg.backend == "hf" and cfg.registry == "out/quickstart/registry.json"


@pytest.mark.parametrize("rel", RAYSERVICES, ids=[p.as_posix() for p in RAYSERVICES])
def test_rayservice_manifests_validate(rel):
    (cfg,) = check_rayservice(REPO / rel)
    assert cfg.backend == "vllm" and cfg.vllm.lora_root
    doc = yaml.safe_load((REPO / rel).read_text())
    assert yaml.safe_load(doc["spec"]["serveConfigV2"])["http_options"]["host"] == "0.0.0.0"
    gpu = [g for g in doc["spec"]["rayClusterConfig"]["workerGroupSpecs"]
           if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu, "the vLLM backend needs a GPU worker group"
    env = doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert any(e["name"] == cfg.api_key_env and "secretKeyRef" in e["valueFrom"] for e in env)


def test_rules_reject_bad_serve_configs(tmp_path):
    data = yaml.safe_load((REPO / "serving/serve_config.yaml").read_text())
    bad = json.loads(json.dumps(data))
    bad["applications"][0]["args"]["regsitry"] = "x"
    with pytest.raises(ValueError, match="regsitry"):
        check_serve_dict(bad, "t")
    bad = json.loads(json.dumps(data))
    bad["applications"][0]["improt_path"] = bad["applications"][0].pop("import_path")
    with pytest.raises(Exception):
        check_serve_dict(bad, "t")
    bad = json.loads(json.dumps(data))
    bad["applications"][0]["args"]["hf"] = {"max_batch_size": "many"}
    with pytest.raises(ValueError, match="hf.max_batch_size"):
        check_serve_dict(bad, "t")


def test_serve_config_round_trips_the_job_config():
    from chipforge.config import read_yaml

    cfg = ServeConfig.model_validate(read_yaml(REPO / "jobs/configs/serve_tiny_cpu.yaml"))
    (back,) = check_serve_dict(cfg.serve_config(), "generated")
    assert back.model_dump(exclude=JOB_ONLY) == cfg.model_dump(exclude=JOB_ONLY)
    full = cfg.serve_config(minimal=False)
    assert full["http_options"] == {"host": cfg.host, "port": cfg.port}


def fake_registry(tmp_path: Path, rank: int = 8) -> str:
    entries = {}
    for p in ("rtl_design", "timing_analysis"):
        d = tmp_path / "adapters" / p
        d.mkdir(parents=True)
        (d / "adapter_config.json").write_text(json.dumps({"r": rank}))
        entries[p] = {"phase": p, "base_model": "Qwen/Qwen2.5-Coder-7B-Instruct", "adapter_path": str(d)}
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"version": 1, "specialists": entries}))
    return str(path)


def test_vllm_app_config_builds_without_vllm(tmp_path):
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig

    from serving import vllm

    (cfg,) = check_rayservice(REPO / "k8s/rayservice-chipforge.yaml")
    cfg = cfg.model_copy(update={"registry": fake_registry(tmp_path)})
    catalog = load_catalog(cfg.registry)
    configs = vllm.llm_configs(cfg, catalog)
    assert len(configs) == 1
    llm = LLMConfig.model_validate(configs[0])
    assert llm.model_id == "chipforge-base"
    assert llm.engine_kwargs["enable_lora"] is True
    assert llm.engine_kwargs["max_loras"] == cfg.vllm.max_loras == llm.lora_config.max_num_adapters_per_replica
    assert llm.engine_kwargs["max_lora_rank"] == cfg.vllm.max_lora_rank
    assert llm.lora_config.dynamic_lora_loading_path == "s3://BUCKET/chipforge/loras/chipforge-base"
    assert vllm.vllm_model_id(cfg, catalog, "timing_analysis", 0) == "chipforge-base:chipforge-timing_analysis"
    args = vllm.serve_args(cfg, catalog)
    assert args["ingress_cls_config"]["ingress_cls"] == "serving.vllm:ChipforgeIngress"
    assert ServeConfig.model_validate(args["ingress_cls_config"]["ingress_extra_kwargs"]["chipforge"]["args"])
    # Ray Serve LLM rejects local adapter paths; the config does too, naming the field.
    with pytest.raises(ValueError, match="lora_root"):
        ServeConfig(backend="vllm", vllm={"lora_root": "/local/loras"})
    with pytest.raises(ValueError, match="max_lora_rank"):
        vllm.stage_adapters(cfg, load_catalog(fake_registry(tmp_path / "big", rank=64)))


def test_vllm_is_imported_only_when_the_app_is_built():
    code = ("import sys, serving.vllm, serving.app, pipelines.serve; "
            "assert not any(m == 'vllm' or m.startswith('vllm.') for m in sys.modules), 'vllm imported'; "
            "assert 'ray.serve.llm' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
