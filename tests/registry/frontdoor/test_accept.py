"""The front door's accept loop shares the registry API's (``registry.server.http.accept_retrying``): resource
exhaustion is retried, any other accept error ends the front door with that error instead of spinning forever.

Same scripted listener as tests/registry/server/test_http_accept.py: a real listener on 127.0.0.1 whose first
``accept`` calls fail with scripted errors."""

from __future__ import annotations

import errno
import logging
from datetime import UTC, datetime

import pytest
import trio

from registry.frontdoor.serve import FrontDoorLimits, frontdoor_server_context, serve_frontdoor
from registry.server.http import ACCEPT_CAPACITY_ERRNOS
from registry.server.service import Registry
from registry.store import MemoryStore
from tests.registry.frontdoor.frontdoor_helpers import FakeHub, ca, credentials, frontdoor_env, read_until_eof, request
from tests.registry.frontdoor.frontdoor_helpers import user as user_identity
from tests.registry.server.test_http_accept import _leaves, scripted


@pytest.mark.parametrize("code", sorted(ACCEPT_CAPACITY_ERRNOS), ids=lambda c: errno.errorcode[c])
async def test_resource_exhaustion_is_retried_and_the_front_door_keeps_serving(
    caplog: pytest.LogCaptureFixture, code: int
) -> None:
    listener = await scripted([OSError(code, "scripted") for _ in range(3)])
    with caplog.at_level(logging.ERROR, logger="registry.server.http"), trio.fail_after(10):
        async with frontdoor_env(FrontDoorLimits(drain_timeout=0.1), listeners=[listener]) as env:
            assert env.port == listener.socket.getsockname()[1]
            stream = await env.connect(credentials(user_identity()))
            await stream.send_all(request("no-such-cluster"))
            answer = await read_until_eof(stream)
    assert answer.startswith(b"HTTP/1.1 404 "), answer[:200]  # served after the shortage
    assert listener.errors == []
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 3 and all(errno.errorcode[code] in m and "front door" in m for m in retries), retries


@pytest.mark.parametrize("code", [errno.EINVAL, errno.EPERM, errno.EBADF], ids=lambda c: errno.errorcode[c])
async def test_any_other_accept_error_ends_the_front_door_with_that_error(code: int) -> None:
    fault = OSError(code, "scripted")
    listener = await scripted([fault])
    store = MemoryStore()
    registry = Registry(store, ca(), cluster_name="frontdoor-test")
    context = frontdoor_server_context(ca(), now=datetime.now(tz=UTC))
    with trio.fail_after(10), pytest.raises(BaseExceptionGroup) as caught:
        await serve_frontdoor(registry, FakeHub(), ssl_context=context, listeners=[listener])
    assert _leaves(caught.value) == [fault]
    assert listener.closed  # the listeners are closed on the way out
    await store.aclose()
