"""The whole pipeline on the bundled sample: corpus → docs → dataset → tiny LoRA fine-tune.

Each step is the ordinary job (its own YAML config and ``--output`` under the quickstart's
output directory), run through the job skeleton, so a rerun skips every step whose config
and inputs are unchanged and reruns only what changed downstream. A step that fails stops
the pipeline (later steps would only read missing inputs).
"""

from __future__ import annotations

import importlib
import time
from typing import Any, Literal

from pydantic import Field

from chipforge import job as jobs
from chipforge.config import Config
from chipforge.job import JobSpec, Run

Step = Literal["corpus", "docs", "dataset", "finetune"]
PIPELINES = {"corpus": "pipelines.corpus", "docs": "pipelines.docs", "dataset": "pipelines.dataset",
             "finetune": "pipelines.finetune"}


class QuickstartConfig(Config):
    output_dir: str = "out/quickstart"
    steps: list[Step] = Field(default_factory=lambda: ["corpus", "docs", "dataset", "finetune"])
    corpus_config: str = "jobs/configs/corpus_sample.yaml"
    docs_config: str = "jobs/configs/docs_sample.yaml"
    dataset_config: str = "jobs/configs/dataset_sample.yaml"
    finetune_config: str = "jobs/configs/finetune_tiny_cpu.yaml"
    finetune_phase: str = "rtl_design"


def step_argv(cfg: QuickstartConfig) -> dict[str, list[str]]:
    """Each step's command line, wired so each step reads the previous steps' outputs."""
    out = cfg.output_dir.rstrip("/")
    return {
        "corpus": ["--config", cfg.corpus_config, "--output", f"{out}/corpus"],
        "docs": ["--config", cfg.docs_config, "--output", f"{out}/docs"],
        "dataset": ["--config", cfg.dataset_config, "--corpus", f"{out}/corpus", "--docs", f"{out}/docs",
                    "--output", f"{out}/dataset"],
        "finetune": ["--config", cfg.finetune_config, "--dataset", f"{out}/dataset", "--phase", cfg.finetune_phase,
                     "--output", f"{out}/finetune"],
    }


def run_step(step: str, argv: list[str]) -> int:
    """Run one step's job in this process (one Ray for all steps)."""
    module = importlib.import_module(PIPELINES[step])
    return jobs.main(module.SPEC, module.run, argv)


def run(cfg: QuickstartConfig, job: Run, runner: Any = None) -> dict[str, Any]:
    runner = runner or run_step
    argvs = step_argv(cfg)
    extra = [*(["--force"] if job.force else []), *(["--verbose"] if job.verbose else [])]
    steps: dict[str, dict[str, Any]] = {}
    for step in cfg.steps:
        print(f"=== quickstart {step}: python -m {_JOB_MODULE[step]} {' '.join(argvs[step])}", flush=True)
        t0 = time.perf_counter()
        rc = runner(step, argvs[step] + extra)
        steps[step] = {"argv": argvs[step], "exit_code": rc, "wall_s": round(time.perf_counter() - t0, 2)}
        if rc != 0:
            print(f"=== quickstart: step {step} failed with exit code {rc}; stopping", flush=True)
            break
    ok = len(steps) == len(cfg.steps) and all(s["exit_code"] == 0 for s in steps.values())
    return {"ok": ok, "step_results": steps, "n_steps_ok": sum(s["exit_code"] == 0 for s in steps.values())}


_JOB_MODULE = {"corpus": "jobs.build_corpus", "docs": "jobs.scrape_docs", "dataset": "jobs.build_dataset",
               "finetune": "jobs.finetune"}


def summary(report: dict[str, Any]) -> str:
    lines = [f"  {step:<9} {'ok' if r['exit_code'] == 0 else 'FAILED (exit %d)' % r['exit_code']:<16} "
             f"{r['wall_s']:>7.1f} s" for step, r in report["step_results"].items()]
    return "\n".join(lines)


SPEC = JobSpec(name="quickstart", config=QuickstartConfig, default_config="jobs/configs/quickstart.yaml",
               summary=summary, flags={"--output": "output_dir"}, uses_ray=False, marker=False,
               outputs=lambda r: r["n_steps_ok"] if r["ok"] else 0, description=__doc__)
