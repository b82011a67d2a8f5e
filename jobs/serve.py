"""Serve job: every registered specialist behind one OpenAI-compatible endpoint (Ray Serve).

    python -m jobs.serve                                   # out/quickstart/registry.json on 127.0.0.1:8000
    python -m jobs.serve --registry out/quickstart/registry.json --host 0.0.0.0 --port 8000
    python -m jobs.serve --config jobs/configs/serve_vllm.yaml --registry s3://BUCKET/registry.json

Runs until Ctrl-C (``detach=true`` deploys and exits). The same application as a Serve config:
``serving/serve_config.yaml`` (``serve run``) and ``k8s/rayservice-chipforge.yaml`` (KubeRay).
The pipeline itself is ``pipelines.serve``; the application is ``serving.app``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chipforge import job
from pipelines.serve import SPEC, ServeConfig, run
from serving.adapters import preflight

CONFIG_CLASS = ServeConfig


def checked_run(cfg: ServeConfig, run_: job.Run) -> dict[str, Any]:
    """Every specialist checked before Ray starts (exit 2 naming each bad one; ``on_bad_specialist=skip``:
    the others served, the skipped ones reported), then the pipeline."""
    return run(preflight(cfg, lambda line: run_.progress(f"warning: {line}")), run_)


def main(argv: Sequence[str] | None = None) -> int:
    return job.main(SPEC, checked_run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
