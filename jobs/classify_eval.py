"""Phase classifier check: keyword baseline vs the trained classifier on the shipped labelled set.

    python -m jobs.classify_eval                         # prints the tables, writes out/classify_eval/report.json
    python -m jobs.classify_eval --model out/phase_clf.json --output out/classify_eval

The pipeline is ``pipelines.classify_eval`` (no Ray: it runs on the driver).
"""

from __future__ import annotations

from collections.abc import Sequence

from chipforge import job
from pipelines.classify_eval import SPEC, ClassifyEvalConfig, run

CONFIG_CLASS = ClassifyEvalConfig


def main(argv: Sequence[str] | None = None) -> int:
    return job.main(SPEC, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
