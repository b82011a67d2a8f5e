"""Docs job: EDA documentation (sites or local folders) → section chunks (Parquet) + ``DIR/report.json``.

    python -m jobs.scrape_docs                      # the bundled sample docs (docs_sample.yaml)
    python -m jobs.scrape_docs --config jobs/configs/docs.yaml --output out/docs

A rerun into the same output is skipped when the config and local sources are unchanged
(``--force`` redoes it; the crawl cache still revalidates pages). The pipeline is ``pipelines.docs``.
"""

from __future__ import annotations

from collections.abc import Sequence

from chipforge import job
from pipelines.docs import SPEC, ScrapeDocsConfig, run

CONFIG_CLASS = ScrapeDocsConfig


def main(argv: Sequence[str] | None = None) -> int:
    return job.main(SPEC, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
