"""Export job: registered specialists as merged Hugging Face models or Ollama Modelfiles + adapters.

    python -m jobs.export --registry out/quickstart/registry.json --phase all --format merged --output out/merged
    python -m jobs.export --registry out/quickstart/registry.json --phase all --format ollama --output out/ollama

The pipeline itself is ``pipelines.export`` (the work in ``serving.export``).
"""

from __future__ import annotations

from collections.abc import Sequence

from chipforge import job
from pipelines.export import SPEC, ExportConfig, run

CONFIG_CLASS = ExportConfig


def main(argv: Sequence[str] | None = None) -> int:
    return job.main(SPEC, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
