"""Job-test fixtures shared by several job modules."""

from __future__ import annotations

import pytest


@pytest.fixture()
def ray_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting Ray fails the test: a usage error must be found before Ray starts."""
    from chipforge import job

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray must not start for a usage error")

    monkeypatch.setattr(job, "_ray_started", lambda: False)
    monkeypatch.setattr(job, "init_ray", no_ray)
