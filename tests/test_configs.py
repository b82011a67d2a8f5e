"""Every YAML file in the repository is loaded and validated by a rule; a YAML no rule covers fails.

Rules: job configs (``jobs/configs``) with the Config class of the module their ``# launch:``
header names; repository manifests with ``corpus.manifest.load_manifest``; ``ray_cluster.yaml``
against the JSON schema shipped in the ray package (plus the launcher's own offline checks);
KubeRay manifests (``k8s/``) structurally, including that the entrypoint names an existing job
module and config file.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from chipforge.config import launch_command, read_yaml, validate

REPO = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", "out", "runs", "build", "tmp", ".pytest_cache", "node_modules", ".venv", "venv", "__pycache__"}


def all_yamls() -> list[Path]:
    found = []
    for pattern in ("**/*.yaml", "**/*.yml"):
        for p in REPO.glob(pattern):
            rel = p.relative_to(REPO)
            if any(part in SKIP_DIRS or part.startswith(".ray") or part.endswith(".egg-info")
                   for part in rel.parts[:-1]):
                continue
            found.append(rel)
    return sorted(found)


def rule_for(rel: Path) -> str | None:
    s = rel.as_posix()
    if re.fullmatch(r"jobs/configs/[^/]+\.ya?ml", s):
        return "job_config"
    if re.fullmatch(r"jobs/manifests/[^/]+\.ya?ml", s) or s == "sample/manifest.yaml":
        return "manifest"
    if s == "ray_cluster.yaml":
        return "cluster_launcher"
    if re.fullmatch(r"k8s/[^/]+\.ya?ml", s):
        return "kuberay"
    if re.fullmatch(r"serving/serve_config[^/]*\.ya?ml", s):
        return "serve_config"
    return None


YAMLS = all_yamls()


def test_repository_has_the_expected_yamls():
    names = {p.as_posix() for p in YAMLS}
    assert {"ray_cluster.yaml", "k8s/rayjob-corpus.yaml", "jobs/configs/corpus_sample.yaml",
            "jobs/configs/corpus_cluster.yaml", "sample/manifest.yaml", "jobs/manifests/default.yaml"} <= names


@pytest.mark.parametrize("rel", YAMLS, ids=[p.as_posix() for p in YAMLS])
def test_every_yaml_is_valid(rel: Path):
    rule = rule_for(rel)
    assert rule is not None, f"{rel}: no validation rule covers this YAML; add one to tests/test_configs.py"
    CHECKS[rule](REPO / rel)


def check_job_config(path: Path) -> None:
    cmd = launch_command(path)
    assert cmd, f"{path}: missing '# launch: python -m jobs.<module> --config <path>' header"
    argv = shlex.split(cmd)
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("jobs."), f"{path}: bad launch header {cmd!r}"
    assert "--config" in argv, f"{path}: launch header has no --config"
    named = argv[argv.index("--config") + 1]
    assert (REPO / named).resolve() == path.resolve(), f"{path}: launch header names {named}, not this file"
    module = importlib.import_module(argv[2])
    cls = getattr(module, "CONFIG_CLASS", None)
    assert cls is not None, f"{argv[2]} has no module-level CONFIG_CLASS"
    validate(cls, read_yaml(path), source=str(path))


def check_manifest(path: Path) -> None:
    from corpus.manifest import load_manifest

    manifest = load_manifest(path)
    assert manifest.repositories, f"{path}: no repositories"


def check_cluster_launcher(path: Path) -> None:
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = yaml.safe_load(path.read_text())
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu_types = [n for n, t in types.items() if re.match(r"(g\d|p\d)", t["node_config"]["InstanceType"])]
    cpu_workers = [n for n in types if n != cfg["head_node_type"] and n not in gpu_types]
    assert gpu_types and cpu_workers, f"{path}: needs a CPU worker group and a GPU worker group"
    assert any("pip install" in c and "-e" in c for c in cfg["setup_commands"]), "setup must install chipforge"


def _entrypoint_ok(entrypoint: str, where: str) -> None:
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("jobs."), f"{where}: entrypoint {entrypoint!r}"
    module_file = REPO / (argv[2].replace(".", "/") + ".py")
    assert module_file.is_file(), f"{where}: entrypoint module {argv[2]} does not exist"
    if "--config" in argv:
        cfg = REPO / argv[argv.index("--config") + 1]
        assert cfg.is_file(), f"{where}: entrypoint config {cfg} does not exist"
        check_job_config(cfg)


def _pod_template_ok(template: dict, where: str) -> None:
    containers = template["spec"]["containers"]
    assert containers and all(c.get("image") and c.get("name") for c in containers), f"{where}: containers"


def _cluster_spec_ok(spec: dict, where: str) -> None:
    import ray

    assert str(spec["rayVersion"]) == ray.__version__, f"{where}: rayVersion {spec['rayVersion']} != {ray.__version__}"
    head = spec["headGroupSpec"]
    assert isinstance(head.get("rayStartParams", {}), dict)
    _pod_template_ok(head["template"], f"{where}.headGroupSpec")
    groups = spec.get("workerGroupSpecs") or []
    assert groups, f"{where}: no workerGroupSpecs"
    for g in groups:
        assert g["groupName"] and isinstance(g.get("rayStartParams", {}), dict)
        assert 0 <= g.get("minReplicas", 0) <= g.get("replicas", 0) <= g.get("maxReplicas", g.get("replicas", 0))
        _pod_template_ok(g["template"], f"{where}.workerGroupSpecs[{g['groupName']}]")


def check_kuberay(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path}: empty"
    for doc in docs:
        assert doc["apiVersion"] == "ray.io/v1", f"{path}: apiVersion {doc.get('apiVersion')}"
        assert doc["metadata"]["name"]
        spec = doc["spec"]
        kind = doc["kind"]
        if kind == "RayJob":
            allowed = {"entrypoint", "runtimeEnvYAML", "rayClusterSpec", "shutdownAfterJobFinishes",
                       "ttlSecondsAfterFinished", "submissionMode", "backoffLimit", "activeDeadlineSeconds",
                       "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "clusterSelector",
                       "submitterPodTemplate", "suspend", "jobId", "metadata", "managedBy", "deletionStrategy"}
            assert set(spec) <= allowed, f"{path}: unknown RayJob fields {set(spec) - allowed}"
            _entrypoint_ok(spec["entrypoint"], str(path))
            env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")
            assert isinstance(env, dict), f"{path}: runtimeEnvYAML must be a YAML mapping"
            if spec.get("shutdownAfterJobFinishes"):
                assert isinstance(spec.get("ttlSecondsAfterFinished", 0), int)
            _cluster_spec_ok(spec["rayClusterSpec"], f"{path}:rayClusterSpec")
        elif kind == "RayService":
            from tests.serving.test_configs import check_serve_dict

            check_serve_dict(yaml.safe_load(spec["serveConfigV2"]), f"{path}:serveConfigV2")
            _cluster_spec_ok(spec["rayClusterConfig"], f"{path}:rayClusterConfig")
        elif kind == "RayCluster":
            _cluster_spec_ok(spec, f"{path}:spec")
        else:
            pytest.fail(f"{path}: unsupported kind {kind}")


CHECKS = {
    "job_config": check_job_config,
    "manifest": check_manifest,
    "cluster_launcher": check_cluster_launcher,
    "kuberay": check_kuberay,
    "serve_config": lambda p: __import__("tests.serving.test_configs", fromlist=["x"]).check_serve_config(p),
}


def test_rules_reject_bad_files(tmp_path: Path):
    """The rules can fail: a missing header, a bad field, a schema typo, a wrong entrypoint."""
    from chipforge.config import ConfigError

    assert rule_for(Path("docs/random.yaml")) is None
    cfg_dir = tmp_path / "jobs" / "configs"
    cfg_dir.mkdir(parents=True)
    no_header = cfg_dir / "x.yaml"
    no_header.write_text("manifest: m.yaml\n")
    with pytest.raises(AssertionError, match="launch"):
        check_job_config(no_header)
    src = (REPO / "jobs/configs/corpus_sample.yaml").read_text()
    bad = REPO / "jobs/configs/corpus_sample.yaml"
    with pytest.raises(ConfigError, match="no_such_field"):
        data = read_yaml(bad)
        data["no_such_field"] = 1
        validate(importlib.import_module("jobs.build_corpus").CONFIG_CLASS, data, source="t")
    assert src  # untouched
    cluster = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    cluster["available_node_types"]["cpu_corpus"]["min_worker"] = 1
    typo = tmp_path / "ray_cluster.yaml"
    typo.write_text(yaml.safe_dump(cluster))
    import jsonschema

    with pytest.raises(jsonschema.ValidationError):
        check_cluster_launcher(typo)
    job = yaml.safe_load((REPO / "k8s/rayjob-corpus.yaml").read_text())
    job["spec"]["entrypoint"] = "python -m jobs.no_such_job --config jobs/configs/corpus_cluster.yaml"
    wrong = tmp_path / "rayjob.yaml"
    wrong.write_text(yaml.safe_dump(job))
    with pytest.raises(AssertionError, match="does not exist"):
        check_kuberay(wrong)
    job["spec"]["entrypoint"] = "python -m jobs.build_corpus"
    job["spec"]["shutdownAfterJobFinish"] = True
    wrong.write_text(yaml.safe_dump(job))
    with pytest.raises(AssertionError, match="unknown RayJob fields"):
        check_kuberay(wrong)
