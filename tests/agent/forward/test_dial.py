"""The forwarder's dial refuses a cloud metadata service as the connected peer (agent.forward.dial)."""

from __future__ import annotations

import functools

import pytest
import trio

from agent.forward.dial import open_api_stream


async def test_a_peer_that_is_refused_gets_no_byte_and_the_dial_fails(nursery: trio.Nursery) -> None:
    received: list[bytes] = []
    ended = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some(100):
            received.append(data)
        ended.set()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    # 127.0.0.1 stands in for a metadata address that a name resolved to
    with pytest.raises(OSError, match=r"resolves to 127\.0\.0\.1, a cloud metadata service"):
        await open_api_stream("127.0.0.1", port, refused=lambda peer: peer == "127.0.0.1")
    with trio.fail_after(5):
        await ended.wait()
    assert received == []  # not even a TLS hello
    stream = await open_api_stream("127.0.0.1", port)  # the real rule: loopback is an ordinary API server
    await stream.send_all(b"hello")
    await stream.aclose()
