"""Fine-tune without Ray: the same data preparation and training loop as ``jobs.finetune``, under torchrun.

    torchrun --nproc_per_node 8 -m jobs.train_torchrun --config jobs/configs/finetune_rtl_design.yaml \\
        --dataset /data/dataset --output /data/ft_rtl_design
    python -m jobs.train_torchrun --output out/ft_local          # one process, tiny CPU model

For a single machine that has GPUs but no Ray. Every rank prepares the data in process
(``training.data.prepare_local``) and runs ``training.loop.run_training``; rank 0 prints one line
per logging step and writes OUTPUT/adapter, tokenizer/, config.yaml, tensorboard/ and
report.json. Checkpoints go to OUTPUT/checkpoints/<run_name>-<key of config and dataset>/: the
same command again resumes an unfinished run; a changed config or dataset starts afresh. Inputs are
checked before training and ``registry=PATH`` registers the adapter on rank 0, as in ``jobs.finetune``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from chipforge.config import ConfigError, load_config
from chipforge.job import JobError, check_paths
from pipelines.finetune import SPEC, FinetuneConfig, check_inputs, checkpoint_run_name, register, summary

CONFIG_CLASS = FinetuneConfig


def main(argv: Sequence[str] | None = None) -> int:
    from chipforge import fs
    from training.data import DatasetError
    from training.loop import run_local
    from training.registry import RegistryError

    try:
        cfg, opts = load_config(FinetuneConfig, argv, prog="torchrun [--nproc_per_node N] -m jobs.train_torchrun",
                                default_config=SPEC.default_config, flags=SPEC.flags, description=__doc__,
                                with_origins=True)
        check_paths(SPEC, cfg, opts.origin)
        check_inputs(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_id = checkpoint_run_name(cfg)
    try:
        report = run_local(cfg, run_id=run_id)
        if report is not None and cfg.registry:  # rank 0: the adapter becomes its phase's specialist
            report["registry_entry"] = register(cfg, cfg, report, run=run_id)
            report["config"] = cfg.model_dump(mode="json")
            fs.write_json(fs.join(cfg.output_dir, "report.json"), report)
    except (DatasetError, JobError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    if report is not None:  # rank 0
        print(f"== finetune (torchrun) summary → {cfg.output_dir}\n{summary(report)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
