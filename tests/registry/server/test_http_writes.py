"""How many writes an answer costs: a small fixed answer is one ``send_all`` (one TLS record, one syscall,
one wake-up of the client), a big one is not copied behind its head, and keep-alive still works."""

from __future__ import annotations

import trio
import trio.testing

from registry.server.http import HTTPLimits, Request, Response, handle_connection


class _Recording(trio.abc.Stream):
    """A stream whose ``send_all`` calls are recorded, wrapping one end of an in-memory pair."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


BIG = b"x" * (1024 * 1024)


async def _handler(request: Request) -> Response:
    if request.path == "/big":
        return Response(200, [("content-type", "application/octet-stream")], BIG)
    return Response.json(200, {"path": request.path})


async def _read_answer(client: trio.abc.Stream, ending: bytes) -> bytes:
    got = b""
    with trio.fail_after(5):
        while not got.endswith(ending):
            got += await client.receive_some(1 << 20)
    return got


async def test_a_small_answer_is_one_write_and_keep_alive_goes_on() -> None:
    server_end, client = trio.testing.memory_stream_pair()
    recording = _Recording(server_end)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle_connection, recording, _handler, HTTPLimits())
        for n in range(3):
            await client.send_all(f"GET /small/{n} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            answer = await _read_answer(client, f'"/small/{n}"}}'.encode())
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert len(recording.writes) == n + 1  # head, body and end together
            assert recording.writes[-1] == answer
        await client.aclose()


async def test_a_big_answer_is_not_copied_behind_its_head() -> None:
    server_end, client = trio.testing.memory_stream_pair()
    recording = _Recording(server_end)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle_connection, recording, _handler, HTTPLimits())
        await client.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await _read_answer(client, BIG[-64:])
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"content-length: 1048576" in head.lower()
        assert body == BIG
        assert recording.writes[1] == BIG  # the body as it was, on its own
        await client.aclose()
