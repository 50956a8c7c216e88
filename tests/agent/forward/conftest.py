"""Every upstream pool a forwarder test creates is closed when the test ends (no leaked sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.agent.forward import forward_helpers


@pytest.fixture(autouse=True)
async def _close_pools() -> AsyncIterator[None]:
    yield
    pools, forward_helpers.POOLS[:] = list(forward_helpers.POOLS), []
    for pool in pools:
        await pool.aclose()
