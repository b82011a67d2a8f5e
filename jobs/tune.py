"""Ray Tune sweep (ASHA) of one phase's LoRA fine-tune; the best trial is registered.

    python -m jobs.tune                                    # 2 trials of the tiny CPU model, bundled sample
    python -m jobs.tune --config jobs/configs/tune_cluster.yaml --phase routing --registry s3://b/registry.json

The dataset is prepared once and shared by every trial; the trial with the lowest final
``eval_loss`` is written to OUTPUT/adapter and replaces the phase's entry in the specialist
registry. A rerun with the same config and dataset is skipped (``--force`` redoes it); a
sweep that was stopped part way resumes (``Tuner.restore``: finished trials kept, unfinished
ones continue from their checkpoints). The pipeline itself is ``pipelines.tune``.
"""

from __future__ import annotations

from collections.abc import Sequence

from chipforge import job
from pipelines.tune import SPEC, TuneJobConfig, run

CONFIG_CLASS = TuneJobConfig


def main(argv: Sequence[str] | None = None) -> int:
    return job.main(SPEC, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
