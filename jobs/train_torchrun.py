"""Fine-tune without Ray: the same data preparation and training loop as ``jobs.finetune``, under torchrun.

    torchrun --nproc_per_node 8 -m jobs.train_torchrun --config jobs/configs/finetune_rtl_design.yaml \\
        --dataset /data/dataset --output /data/ft_rtl_design
    python -m jobs.train_torchrun --output out/ft_local          # one process, tiny CPU model

For a single machine that has GPUs but no Ray. Every rank prepares the data in process
(``training.data.prepare_local``) and runs ``training.loop.run_training``; rank 0 holds OUTPUT (a second
run into it is exit 2), prints one line per logging step and writes OUTPUT/adapter, tokenizer/,
config.yaml, tensorboard/ and, last, report.json. Checkpoints go to OUTPUT/checkpoints/<run_name>-<key
of config and dataset>/: the same command again resumes an unfinished run, also one stopped by SIGTERM
(exit 143; Ctrl-C: 130); a changed config or dataset starts afresh. Inputs are checked before training
and ``registry=PATH`` registers the adapter on rank 0, as in ``jobs.finetune``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from chipforge import job
from chipforge.config import ConfigError, load_config
from pipelines.finetune import SPEC, FinetuneConfig, check_inputs, checkpoint_run_name, register, summary

CONFIG_CLASS = FinetuneConfig


def main(argv: Sequence[str] | None = None) -> int:
    from training.data import DatasetError
    from training.loop import run_local
    from training.registry import RegistryError

    try:
        cfg, opts = load_config(FinetuneConfig, argv, prog="torchrun [--nproc_per_node N] -m jobs.train_torchrun",
                                default_config=SPEC.default_config, flags=SPEC.flags, description=__doc__,
                                with_origins=True)
        job.check_paths(SPEC, cfg, opts.origin)
        check_inputs(cfg)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        run_id = checkpoint_run_name(cfg)
        finish = (lambda r: {**r, "registry_entry": register(cfg, cfg, r, run=run_id),  # the phase's specialist
                             "config": cfg.model_dump(mode="json")}) if cfg.registry else None
        with job.sigterm_stops():
            report = run_local(cfg, run_id=run_id, finish=finish)
    except (ConfigError, DatasetError, job.JobError, RegistryError) as exc:  # a usage error (2) or a failure (1)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return job.EXIT_USAGE if isinstance(exc, ConfigError) else job.EXIT_FAILED
    except KeyboardInterrupt as exc:  # no traceback; complete checkpoints are kept, nothing half written
        how = "stopped (SIGTERM)" if isinstance(exc, job.Stopped) else "interrupted"
        print(f"error: finetune (torchrun): {how}; no report written, the same command resumes", file=sys.stderr)
        return job.EXIT_STOPPED if isinstance(exc, job.Stopped) else job.EXIT_INTERRUPTED
    if report is not None:  # rank 0
        print(f"== finetune (torchrun) summary → {cfg.output_dir}\n{summary(report)}", flush=True)
    return job.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
