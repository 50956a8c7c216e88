"""The ``store`` fixture: one open store of every backend (memory, SQLite, etcd), closed after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from registry.store._common import BaseStore
from tests.registry.store.store_helpers import BACKENDS, open_backend


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BaseStore]:
    s = await open_backend(request.param, tmp_path)
    yield s
    await s.aclose()
