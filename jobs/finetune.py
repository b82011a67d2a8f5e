"""Fine-tune one LoRA specialist for one phase (Ray Data + Ray Train + DeepSpeed + PEFT).

    python -m jobs.finetune                                         # tiny CPU model, bundled sample
    python -m jobs.finetune --dataset out/dataset --phase routing --output out/ft_routing
    ray job submit --working-dir . -- python -m jobs.finetune \\
        --config jobs/configs/finetune_rtl_design.yaml --dataset s3://BUCKET/dataset

A rerun with the same config and dataset is skipped (``--force`` redoes it); a run that stopped
part way resumes from its latest checkpoint. Without Ray: ``torchrun -m jobs.train_torchrun``.
The pipeline itself is ``pipelines.finetune``.
"""

from __future__ import annotations

from collections.abc import Sequence

from chipforge import job
from pipelines.finetune import SPEC, FinetuneConfig, run

CONFIG_CLASS = FinetuneConfig


def main(argv: Sequence[str] | None = None) -> int:
    return job.main(SPEC, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
