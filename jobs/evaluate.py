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

from collections.abc import Sequence

from chipforge import job
from pipelines.evaluate import SPEC, EvaluateConfig, run

CONFIG_CLASS = EvaluateConfig


def main(argv: Sequence[str] | None = None) -> int:
    return job.main(SPEC, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
