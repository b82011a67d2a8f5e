"""Corpus job: Verilog repositories → parsed, deduplicated modules (Parquet) + ``DIR/report.json``.

    python -m jobs.build_corpus                       # bundled sample (jobs/configs/corpus_sample.yaml)
    python -m jobs.build_corpus --manifest my_repos.yaml --output out/corpus
    ray job submit --working-dir . -- python -m jobs.build_corpus \\
        --config jobs/configs/corpus_cluster.yaml --output s3://bucket/corpus

A rerun into the same output is skipped when the config and manifest are unchanged (``--force``
redoes it). The pipeline itself is ``pipelines.corpus``.
"""

from __future__ import annotations

from collections.abc import Sequence

from chipforge import job
from pipelines.corpus import SPEC, CorpusConfig, run

CONFIG_CLASS = CorpusConfig


def main(argv: Sequence[str] | None = None) -> int:
    return job.main(SPEC, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
