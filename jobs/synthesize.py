"""Synthesis job: LLM-written examples for thin phases, every one validated by EDA tools.

    python -m jobs.synthesize                      # bundled sample, tiny random model, offline (< 1 min on CPU)
    python -m jobs.synthesize --config jobs/configs/synthesize_openai.yaml     # any OpenAI-compatible server
    ray job submit --working-dir . -- python -m jobs.synthesize \\
        --config jobs/configs/synthesize_cluster.yaml \\
        --docs s3://B/docs --corpus s3://B/corpus --dataset s3://B/dataset --output s3://B/synth

Writes ``DIR/synthetic/phase=<p>/split=<s>/part-00000.parquet`` (the dataset job's schema and
example builder, each example in the split of its seed's repository or documentation source)
and ``DIR/report.json``. A rerun into the same output is skipped when the config and inputs are
unchanged (``--force`` redoes it). The pipeline itself is ``pipelines.synthesis``.
"""

from __future__ import annotations

from collections.abc import Sequence

from chipforge import job
from pipelines.synthesis import SPEC, SynthesizeConfig, run

CONFIG_CLASS = SynthesizeConfig


def main(argv: Sequence[str] | None = None) -> int:
    return job.main(SPEC, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
