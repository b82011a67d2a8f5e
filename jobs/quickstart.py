"""The whole pipeline on the bundled sample, locally: corpus → docs → dataset → tiny LoRA fine-tune.

    python -m jobs.quickstart                      # everything into out/quickstart/
    python -m jobs.quickstart --output DIR steps='[corpus, docs]'

Each step is the ordinary job, launched with its own YAML config and ``--output``; the
steps' outputs feed the next step's inputs. A step that fails stops the pipeline (later
steps would only read missing inputs) and the exit code says so.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import Field

from chipforge import fs
from chipforge.config import Config, load_config

Step = Literal["corpus", "docs", "dataset", "finetune"]


class QuickstartConfig(Config):
    output_dir: str = "out/quickstart"
    steps: list[Step] = Field(default_factory=lambda: ["corpus", "docs", "dataset", "finetune"])
    corpus_config: str = "jobs/configs/corpus_sample.yaml"
    docs_config: str = "jobs/configs/docs_sample.yaml"
    dataset_config: str = "jobs/configs/dataset_sample.yaml"
    finetune_config: str = "jobs/configs/finetune_tiny_cpu.yaml"
    finetune_phase: str = "rtl_design"


CONFIG_CLASS = QuickstartConfig
DEFAULT_CONFIG = "jobs/configs/quickstart.yaml"


def step_commands(cfg: QuickstartConfig) -> dict[str, tuple[str, list[str]]]:
    """Module and argv of each step, wired so each step reads the previous steps' outputs."""
    out = cfg.output_dir.rstrip("/")
    return {
        "corpus": ("jobs.build_corpus", ["--config", cfg.corpus_config, "--output", f"{out}/corpus"]),
        "docs": ("jobs.scrape_docs", ["--config", cfg.docs_config, "--output", f"{out}/docs"]),
        "dataset": (
            "jobs.build_dataset",
            ["--config", cfg.dataset_config, "--corpus", f"{out}/corpus", "--docs", f"{out}/docs",
             "--output", f"{out}/dataset"],
        ),
        "finetune": (
            "jobs.finetune",
            ["--config", cfg.finetune_config, "--dataset", f"{out}/dataset", "--phase", cfg.finetune_phase,
             "--output", f"{out}/finetune"],
        ),
    }


def run(cfg: QuickstartConfig, runner: Callable[[str, list[str]], int] | None = None) -> dict:
    import importlib

    def default_runner(module: str, argv: list[str]) -> int:
        return int(importlib.import_module(module).main(argv) or 0)

    runner = runner or default_runner
    commands = step_commands(cfg)
    results: dict[str, dict] = {}
    for step in cfg.steps:
        module, argv = commands[step]
        print(f"\n=== quickstart: {step}: python -m {module} {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        error = None
        try:
            rc = runner(module, argv)
        except Exception as exc:  # the step's own message is what the user needs; later steps cannot run
            traceback.print_exc()
            rc, error = 1, f"{type(exc).__name__}: {exc}"
        results[step] = {"module": module, "argv": argv, "exit_code": rc, "error": error,
                         "wall_s": round(time.perf_counter() - t0, 2)}
        if rc != 0:
            print(f"=== quickstart: step {step} failed with exit code {rc}; stopping", flush=True)
            break
    report = {"output_dir": cfg.output_dir, "steps": results, "ok": all(r["exit_code"] == 0 for r in results.values())
              and len(results) == len(cfg.steps)}
    fs.write_json(fs.join(cfg.output_dir, "quickstart.json"), report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    cfg = load_config(QuickstartConfig, argv, prog="python -m jobs.quickstart", default_config=DEFAULT_CONFIG,
                      flags={"--output": "output_dir"},
                      description=__doc__)
    report = run(cfg)
    print("\n=== quickstart summary")
    for step, r in report["steps"].items():
        status = "ok" if r["exit_code"] == 0 else f"FAILED (exit {r['exit_code']})"
        print(f"  {step:<9} {status:<22} {r['wall_s']:>8.1f} s" + (f"  {r['error']}" if r.get("error") else ""))
    print(json.dumps({"ok": report["ok"], "output_dir": cfg.output_dir}))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
