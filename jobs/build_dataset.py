"""Dataset job: corpus modules + doc chunks → per-phase, per-split chat examples (Parquet) + report.

    python -m jobs.build_dataset                    # out/sample/{corpus,docs} → out/sample/dataset
    python -m jobs.build_dataset --corpus out/corpus --docs out/docs --output out/dataset \\
        benchmark_paths='[/data/verilog-eval]'

A rerun is skipped when the config and the corpus/docs outputs are unchanged (``--force``
redoes it). The pipeline is ``pipelines.dataset``.
"""

from __future__ import annotations

from collections.abc import Sequence

from chipforge import job
from pipelines.dataset import SPEC, DatasetConfig, run

CONFIG_CLASS = DatasetConfig


def main(argv: Sequence[str] | None = None) -> int:
    return job.main(SPEC, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
