"""The whole pipeline on the bundled sample: corpus → docs → dataset → tiny LoRA specialists → evaluation.

Each step is the ordinary job (its own YAML config and ``--output`` under the quickstart's
output directory), run through the job skeleton, so a rerun skips every step whose config
and inputs are unchanged and reruns only what changed downstream. A step that fails stops
the pipeline (later steps would only read missing inputs).
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any, Literal

from pydantic import Field

from chipforge import fs
from chipforge import job as jobs
from chipforge.config import Config, ConfigError, load_config
from chipforge.job import JobSpec, Run
from chipforge.vocab import Phase

Step = Literal["corpus", "docs", "dataset", "finetune", "evaluate"]
PIPELINES = {"corpus": "pipelines.corpus", "docs": "pipelines.docs", "dataset": "pipelines.dataset",
             "finetune": "pipelines.finetune", "evaluate": "pipelines.evaluate"}
_JOB_MODULE = {"corpus": "jobs.build_corpus", "docs": "jobs.scrape_docs", "dataset": "jobs.build_dataset",
               "finetune": "jobs.finetune", "evaluate": "jobs.evaluate"}


class QuickstartConfig(Config):
    output_dir: str = "out/quickstart"
    steps: list[Step] = Field(default_factory=lambda: ["corpus", "docs", "dataset", "finetune", "evaluate"])
    corpus_config: str = "jobs/configs/corpus_sample.yaml"
    docs_config: str = "jobs/configs/docs_sample.yaml"
    dataset_config: str = "jobs/configs/dataset_sample.yaml"
    finetune_config: str = "jobs/configs/finetune_tiny_cpu.yaml"
    evaluate_config: str = "jobs/configs/evaluate_sample.yaml"
    # One tiny LoRA specialist per phase, all on the first one's tiny base model, registered in
    # OUTPUT/registry.json (what `python -m jobs.serve --registry` and the evaluation read).
    specialists: list[Phase] = Field(default_factory=lambda: ["rtl_design", "synthesis"], min_length=1)


def _absolute(path: str) -> str:
    """Ray workers do not share the driver's working directory: local paths they read are absolute."""
    return path if fs.is_uri(path) else os.path.abspath(path)


def step_argv(cfg: QuickstartConfig) -> list[tuple[str, str, list[str]]]:
    """(step, label, command line) of each job, wired so each reads the previous ones' outputs."""
    out = cfg.output_dir.rstrip("/")
    registry = f"{out}/registry.json"
    plan: list[tuple[str, str, list[str]]] = [
        ("corpus", "corpus", ["--config", cfg.corpus_config, "--output", f"{out}/corpus"]),
        ("docs", "docs", ["--config", cfg.docs_config, "--output", f"{out}/docs"]),
        ("dataset", "dataset", ["--config", cfg.dataset_config, "--corpus", f"{out}/corpus", "--docs", f"{out}/docs",
                                "--output", f"{out}/dataset"]),
    ]
    first = f"{out}/specialists/{cfg.specialists[0]}"
    for i, phase in enumerate(cfg.specialists):
        argv = ["--config", cfg.finetune_config, "--dataset", f"{out}/dataset", "--phase", phase,
                "--output", f"{out}/specialists/{phase}", f"registry={registry}", "log_every_steps=18"]
        if i:  # one base model for every specialist (the first one's), one worker for the small phases
            argv += [f"base_model={_absolute(first)}/base_model", "scaling.num_workers=1", "optim.micro_batch_size=1"]
        plan.append(("finetune", f"finetune {phase}", argv))
    plan.append(("evaluate", "evaluate", ["--config", cfg.evaluate_config, "--registry", registry,
                                          "--dataset", f"{out}/dataset", "--output", f"{out}/evaluation"]))
    return [p for p in plan if p[0] in cfg.steps]


def check_steps(cfg: QuickstartConfig) -> None:
    """Every step's config, validated as its job will validate it, before the first step runs.

    Paths are not checked: the later steps read what the earlier ones will write.
    """
    for step, label, argv in step_argv(cfg):
        spec = importlib.import_module(PIPELINES[step]).SPEC
        try:
            load_config(spec.config, argv, prog=f"python -m {_JOB_MODULE[step]}", default_config=spec.default_config,
                        flags=spec.flags)
        except ConfigError as exc:
            raise ConfigError(f"quickstart step {label} (python -m {_JOB_MODULE[step]} {' '.join(argv)}):\n"
                              f"{exc}") from exc


def run_step(step: str, argv: list[str]) -> int:
    """Run one step's job in this process (one Ray for all steps)."""
    module = importlib.import_module(PIPELINES[step])
    return jobs.main(module.SPEC, module.run, argv)


def run(cfg: QuickstartConfig, job: Run, runner: Any = None) -> dict[str, Any]:
    runner = runner or run_step
    extra = [*(["--force"] if job.force else []), *(["--verbose"] if job.verbose else []),
             *([] if job.verbose else ["--brief"])]
    steps: dict[str, dict[str, Any]] = {}
    plan = step_argv(cfg)
    for step, label, argv in plan:
        print(f"=== quickstart {label}: python -m {_JOB_MODULE[step]} {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        rc = runner(step, argv + extra)
        steps[label] = {"argv": argv, "exit_code": rc, "wall_s": round(time.perf_counter() - t0, 2)}
        if rc != 0:
            print(f"=== quickstart: step {label} failed with exit code {rc}; stopping", flush=True)
            break
    ok = len(steps) == len(plan) and all(s["exit_code"] == 0 for s in steps.values())
    return {"ok": ok, "step_results": steps, "n_steps_ok": sum(s["exit_code"] == 0 for s in steps.values()),
            "registry": f"{cfg.output_dir.rstrip('/')}/registry.json" if "finetune" in cfg.steps else None}


def summary(report: dict[str, Any]) -> str:
    lines = [f"  {step:<22} {'ok' if r['exit_code'] == 0 else 'FAILED (exit %d)' % r['exit_code']:<16} "
             f"{r['wall_s']:>7.1f} s" for step, r in report["step_results"].items()]
    if report["ok"] and report.get("registry"):
        lines.append(f"  serve the specialists: python -m jobs.serve --registry {report['registry']}")
    return "\n".join(lines)


def _failure(report: dict[str, Any]) -> str | None:
    failed = [k for k, r in report["step_results"].items() if r["exit_code"] != 0]
    return None if report["ok"] else f"step {failed[0] if failed else '?'} failed (its own error is above)"


SPEC = JobSpec(name="quickstart", config=QuickstartConfig, default_config="jobs/configs/quickstart.yaml",
               summary=summary, flags={"--output": "output_dir"}, uses_ray=False, marker=False,
               failure=_failure, description=__doc__, preflight=check_steps)
