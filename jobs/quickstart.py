"""The whole pipeline locally on the bundled sample: corpus → docs → dataset → tiny LoRA fine-tune.

    python -m jobs.quickstart                      # everything into out/quickstart/
    python -m jobs.quickstart --output DIR steps='[corpus, docs]'
    python -m jobs.quickstart --force              # redo every step

A rerun skips the steps whose config and inputs are unchanged; the pipeline is ``pipelines.quickstart``.
"""

from __future__ import annotations

from collections.abc import Sequence

from chipforge import job
from pipelines.quickstart import SPEC, QuickstartConfig, run

CONFIG_CLASS = QuickstartConfig


def main(argv: Sequence[str] | None = None) -> int:
    return job.main(SPEC, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
