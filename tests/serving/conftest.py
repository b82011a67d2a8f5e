from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.serving import fixtures


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return fixtures.tiny_registry(tmp_path_factory)


@pytest.fixture(scope="session")
def server(ray_session: None, tiny_registry: dict[str, Any]) -> Iterator[str]:
    """The test application on 127.0.0.1 (deployed once per session); yields its base URL."""
    yield fixtures.deploy_test_app(tiny_registry["registry"])
    fixtures.shutdown()
