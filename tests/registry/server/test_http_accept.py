"""The accept loop follows ``trio.serve_listeners``: resource exhaustion is retried, other errors end the server.

The listener is a real one on 127.0.0.1 behind a fake whose first ``accept`` calls fail with scripted
errors, so no file descriptors are really exhausted."""

from __future__ import annotations

import errno
import logging

import httpx
import pytest
import trio

from registry.server.http import ACCEPT_CAPACITY_ERRNOS, Request, Response, ServerInfo, serve_http


async def ok_handler(request: Request) -> Response:
    return Response.json(200, {"path": request.path})


class ScriptedListener(trio.abc.Listener[trio.SocketStream]):
    """A real ``trio.SocketListener`` whose next ``accept`` calls raise ``errors`` first, in order."""

    def __init__(self, real: trio.SocketListener, errors: list[OSError]) -> None:
        self.real = real
        self.socket = real.socket  # serve_http reports the bound address from it
        self.errors = list(errors)
        self.closed = False

    async def accept(self) -> trio.SocketStream:
        await trio.lowlevel.checkpoint()
        if self.errors:
            raise self.errors.pop(0)
        return await self.real.accept()

    async def aclose(self) -> None:
        self.closed = True
        await self.real.aclose()


async def scripted(errors: list[OSError]) -> ScriptedListener:
    (real,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    return ScriptedListener(real, errors)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


@pytest.mark.parametrize("code", sorted(ACCEPT_CAPACITY_ERRNOS), ids=lambda c: errno.errorcode[c])
async def test_resource_exhaustion_is_retried_and_the_server_keeps_serving(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    listener = await scripted([OSError(code, "scripted") for _ in range(3)])
    with caplog.at_level(logging.ERROR, logger="registry.server.http"), trio.fail_after(10):
        info: ServerInfo = await nursery.start(
            lambda task_status: serve_http(ok_handler, listeners=[listener], task_status=task_status)
        )
        async with httpx.AsyncClient(base_url=f"http://{info.address}") as client:
            first = await client.get("/after-the-shortage")
            second = await client.get("/still")
    assert first.json() == {"path": "/after-the-shortage"} and second.status_code == 200
    assert listener.errors == []  # every scripted failure was met, and survived
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 3 and all(errno.errorcode[code] in m for m in retries), retries


@pytest.mark.parametrize("code", [errno.EINVAL, errno.EPERM, errno.EBADF], ids=lambda c: errno.errorcode[c])
async def test_any_other_accept_error_ends_the_server_with_that_error(code: int) -> None:
    fault = OSError(code, "scripted")
    listener = await scripted([fault])
    with trio.fail_after(10), pytest.raises(BaseExceptionGroup) as caught:
        await serve_http(ok_handler, listeners=[listener])
    assert _leaves(caught.value) == [fault]
    assert listener.closed  # the server's listeners are closed on the way out
