from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.service import Service


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with Service.running(tmp_path_factory.mktemp("service")) as svc:
        yield svc


@pytest.fixture
def states(tmp_path: Path) -> Path:
    """Where this test's servers keep their state."""
    path = tmp_path / "servers"
    path.mkdir()
    return path
