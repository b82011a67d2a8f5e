"""Evaluation job: every specialist against its base model on the same prompts → ``DIR/report.{json,html}``,
``DIR/samples/*.parquet``, and each specialist's metrics in the registry.

    python -m jobs.evaluate                          # bundled sample, tiny in-process model, no registry
    python -m jobs.evaluate --registry out/registry.json --dataset out/dataset --output out/eval \\
        benchmarks.verilog_eval_v2=/data/verilog-eval benchmarks.rtllm=/data/RTLLM benchmarks.n_samples=10
    python -m jobs.evaluate --reference evaluate_models=false benchmarks.verilog_eval_v2=/data/verilog-eval
    ray job submit --working-dir . -- python -m jobs.evaluate --config jobs/configs/evaluate_cluster.yaml

``--reference`` is ``reference=true`` (the harness self-check). The pipeline is ``pipelines.evaluate``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from chipforge import job
from pipelines.evaluate import SPEC, EvaluateConfig, run

CONFIG_CLASS = EvaluateConfig


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--reference" in args:  # a switch for the self-check: the override reference=true
        args = [a for a in args if a != "--reference"] + ["reference=true"]
    return job.main(SPEC, run, args)


if __name__ == "__main__":
    raise SystemExit(main())
