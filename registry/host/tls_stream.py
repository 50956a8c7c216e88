"""TLS streams for the access path: ``trio.SSLStream`` without its extra schedule point per transport call.

``trio.SSLStream`` guards every call into its transport (a send of encrypted bytes, a read of more of them)
with an internal lock, taken with ``async with``; trio's ``Lock.acquire`` yields to the scheduler even when
the lock is free. That is one more run-loop iteration (an ``epoll_wait``, a task switch) per TLS send and
per TLS read, on top of the one the socket call itself makes: on a kept-alive request through kubeport,
3 of the agent's 7 task steps and 4 of the front door's 9 were these lock yields.

:func:`tls_stream` builds a ``trio.SSLStream`` whose two internal locks are :class:`QuickLock`: a free
lock is taken without yielding; a held one (another task's transport call in progress) is waited for on
the lock's own FIFO queue, as before. Every transport call still is a checkpoint (the socket's
``send_all``/``receive_some`` are), and ``SSLStream._retry`` still starts with a cancellation check, so
cancellation and fairness between tasks are unchanged; only the redundant yield goes. Everything else
(handshake, ALPN, certificates, close) is trio's own code.

The locks are private attributes of trio (0.35: ``_inner_send_lock``, a ``StrictFIFOLock``, and
``_inner_recv_lock``, a ``Lock``). When a trio version lacks them or changed their types, the stream is
left exactly as trio built it (tests/registry/host/test_tls_stream.py checks the swap on this trio).
"""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import TypeVar

import trio

T = TypeVar("T", bound=trio.abc.Stream)


class QuickLock:
    """An async context manager around a trio lock: taken at once, without yielding, when free (and nobody
    waits for it); otherwise ``lock.acquire()`` (cancellation check, FIFO wait)."""

    __slots__ = ("lock",)

    def __init__(self, lock: trio.Lock | trio.StrictFIFOLock) -> None:
        self.lock = lock

    @trio.lowlevel.enable_ki_protection  # as trio's own lock: Ctrl-C never leaves it taken half-way
    async def __aenter__(self) -> None:
        try:
            self.lock.acquire_nowait()  # refuses while another task holds it or waits for it (FIFO kept)
        except trio.WouldBlock:
            await self.lock.acquire()

    @trio.lowlevel.enable_ki_protection
    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.lock.release()

    def locked(self) -> bool:
        return self.lock.locked()


def quicken(stream: trio.SSLStream[T]) -> bool:
    """Swap ``stream``'s internal transport locks for :class:`QuickLock` (before its first use); False when
    this trio's SSLStream has no such locks (the stream then stays as it was)."""
    send_lock = getattr(stream, "_inner_send_lock", None)
    recv_lock = getattr(stream, "_inner_recv_lock", None)
    if not isinstance(send_lock, trio.StrictFIFOLock) or not isinstance(recv_lock, trio.Lock):
        return False
    if send_lock.locked() or recv_lock.locked():
        return False  # in use already: never swap a lock somebody holds
    stream._inner_send_lock = QuickLock(send_lock)  # type: ignore[assignment]
    stream._inner_recv_lock = QuickLock(recv_lock)  # type: ignore[assignment]
    return True


def tls_stream(
    transport: T,
    context: ssl.SSLContext,
    *,
    server_side: bool = False,
    server_hostname: str | bytes | None = None,
    https_compatible: bool = False,
) -> trio.SSLStream[T]:
    """``trio.SSLStream(transport, context, ...)`` with :func:`quicken` applied."""
    stream = trio.SSLStream(
        transport,
        context,
        server_side=server_side,
        server_hostname=server_hostname,
        https_compatible=https_compatible,
    )
    quicken(stream)
    return stream


__all__ = ["QuickLock", "quicken", "tls_stream"]
