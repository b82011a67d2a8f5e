"""training.trainer: the bound on waiting for workers' resources (Train V2's start timeout, finite retries)."""

from __future__ import annotations

from training.config import FinetuneConfig
from training.trainer import resource_wait_message, start_attempt_timeout_s


class WorkerGroupStartupTimeoutError(Exception):
    """Named as Train V2's own: :func:`resource_wait_message` matches the type's name, wrapped or not."""


class ControllerError(Exception):
    def __init__(self, failure: BaseException) -> None:
        super().__init__(str(failure))
        self.controller_failure = failure


def test_resource_wait_is_shared_by_the_start_attempts_and_its_timeout_is_named():
    cfg = FinetuneConfig(scaling={"use_gpu": True, "num_workers": 8, "gpus_per_worker": 1, "resource_wait_s": 600},
                         max_failures=3)
    assert start_attempt_timeout_s(cfg) == 150.0  # 4 attempts (controller_failure_limit = max_failures)
    msg = resource_wait_message(cfg, ControllerError(WorkerGroupStartupTimeoutError("timed out")))
    assert msg and "scaling.resource_wait_s (600 s)" in msg and "scaling.num_workers=8 workers of {CPU: 1, GPU: 1}" in msg
    assert "scaling.use_gpu: true" in msg and "set scaling.use_gpu=false" in msg
    try:
        raise RuntimeError("fit failed") from WorkerGroupStartupTimeoutError("x")
    except RuntimeError as exc:
        assert resource_wait_message(cfg, exc)
    assert resource_wait_message(cfg, ControllerError(ValueError("a worker died"))) is None
