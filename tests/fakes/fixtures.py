"""Pytest fixtures for the fake Kubernetes API.

``tests/conftest.py`` re-exports them (``from tests.fakes.fixtures import fake_kube``), so any test can ask
for ``fake_kube``: a :class:`~tests.fakes.kube_api.FakeKube` already serving over TLS on 127.0.0.1 in the
test's nursery, with the bearer token :data:`ADMIN_TOKEN` for a ``system:masters`` user. It stops when
the test ends.
"""

from __future__ import annotations

import pytest
import trio

from tests.fakes.kube_api import FakeKube, serve_fake_kube

ADMIN_TOKEN = "admin-token"


@pytest.fixture
async def fake_kube(nursery: trio.Nursery) -> FakeKube:
    fake = FakeKube(admin_token=ADMIN_TOKEN)
    await nursery.start(serve_fake_kube, fake)
    return fake
