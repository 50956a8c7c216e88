"""A trio stream over a non-blocking ``ssl.SSLSocket``: OpenSSL reads and writes the kernel socket itself.

``trio.SSLStream`` runs OpenSSL against two ``ssl.MemoryBIO`` and shuffles every TLS record between them and
the socket in Python (a retry loop, a lock per transport call, a copy each way). Here OpenSSL owns the socket
(its socket BIO), as in Tornado or asyncio's old selector SSL: each call tries the ``SSLSocket`` operation
first and only on ``SSLWantReadError``/``SSLWantWriteError`` waits with ``trio.lowlevel.wait_readable`` /
``wait_writable``. On the access path that is about half the CPU per TLS round trip and ~6 KiB less memory per
idle connection (no BIO buffers, no SocketStream).

Invariants (the ``trio.abc.Stream`` contract, as ``trio.SSLStream(..., https_compatible=True)`` keeps it):

* Every ``receive_some``/``send_all``/``do_handshake``/``aclose`` call is a checkpoint: a cancellation check
  first, and a schedule point (``cancel_shielded_checkpoint``) when the call did not wait. The
  ``*_unyielding`` variants skip that final schedule point, for relay loops whose next call is one anyway
  (the front door's splice, the tunnel's flush); ``send_now`` is synchronous (no checkpoint at all) and
  returns what the socket did not take, which must be sent next.
* ``receive_some`` tries ``recv`` BEFORE waiting: OpenSSL may hold decrypted bytes (``pending()``) that no
  socket readiness would announce; it waits first only when OpenSSL holds nothing and the last read saw
  the kernel empty (EAGAIN, or with ``full_records`` a short record: the end of the peer's write). With
  ``full_records`` (the tunnel), one call gathers the records that are there, up to ``max_bytes``. It
  answers b"" at the peer's close_notify and at a bare TCP EOF (a ragged EOF is an EOF, as
  ``https_compatible=True``), and b"" again on every later call.
* ``send_all`` retries a write that wanted the socket writable with the same bytes (CPython sets
  ``SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER``; the memoryview's start does not move until OpenSSL took them).
  A ``send_all`` cancelled part-way leaves OpenSSL with a partly written record: the stream is then broken
  (later calls raise ``BrokenResourceError``), as trio's.
* Two concurrent ``receive_some`` (or two concurrent ``send_all``) raise ``trio.BusyResourceError``; one of
  each may run at once (a watch's sender and reader). The handshake runs once, whoever needs it first;
  the others wait for it.
* Errors become ``trio.BrokenResourceError`` chained to the ``ssl.SSLError``/``OSError``; a call on (or
  woken by) a closed stream raises ``trio.ClosedResourceError``.
* A failed handshake leaves OpenSSL's alert (``unknown ca``, ``certificate expired``) on the wire: the socket
  BIO wrote it during the failing call, so the peer reads why, not a bare EOF
  (:func:`registry.host.tls.send_handshake_alert` has nothing to do for this stream).
* ``aclose`` wakes any task waiting on the socket (``notify_closing``: it gets ``ClosedResourceError``),
  sends close_notify best effort (never waits for the peer's), discards what the kernel holds unread (so the
  close is a FIN, not a reset that could overtake our last bytes: the alert of a failed handshake), and
  closes the descriptor; idempotent.
"""

from __future__ import annotations

import _socket
import contextlib
import socket
import ssl
from typing import Any

import trio

DEFAULT_RECEIVE_SIZE = 64 * 1024
_BUSY_POLL = 0.005  # s between retries while the other task waits on the direction we need
_DRAIN_READS = 16  # at most 1 MiB discarded at close; more still arriving may reset, as with any TCP close
_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
_WANT_READ = ssl.SSLWantReadError("wait for the socket to be readable")
_FULL_RECORD = 16 * 1024  # TLS's largest record payload: what OpenSSL writes but for the last of a write


class SocketTLSStream(trio.abc.Stream):
    """TLS over a non-blocking ``ssl.SSLSocket`` (see the module docstring). Build with :meth:`wrap`."""

    __slots__ = (
        "_broken",
        "_closed",
        "_drained",
        "_eof",
        "_handshake_lock",
        "_handshook",
        "_receiving",
        "_sending",
        "_sock",
        "full_records",
    )

    def __init__(self, sock: ssl.SSLSocket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._handshake_lock: trio.Lock | None = trio.Lock()  # dropped once the handshake is done
        self._handshook = False
        self._receiving = False
        self._sending = False
        self._closed = False
        self._broken: BaseException | None = None
        self._eof = False
        self._drained = False  # the last read saw nothing more: the next one waits for the socket first
        # The peer writes full TLS records but for the last of each write (OpenSSL does; Go's dynamic record
        # sizing does not): a receive then reads on while records are full and stops at a short one (see
        # _fill). The h2 tunnel sets it (both ends are kubeport); wrong, it costs a scheduler pass, no bytes.
        self.full_records = False

    @classmethod
    def wrap(
        cls,
        transport: trio.SocketStream | trio.socket.SocketType,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> SocketTLSStream:
        """Take over ``transport``'s descriptor (the trio socket is detached and must not be used again) and
        wrap it for TLS; the handshake happens at the first call (or :meth:`do_handshake`). When this
        raises (a ``server_hostname`` that is no host name), the descriptor is closed."""
        trio_sock = transport.socket if isinstance(transport, trio.SocketStream) else transport
        if isinstance(server_hostname, str):
            try:
                # ssl encodes the name only after taking the descriptor over, and a UnicodeError there leaves
                # it to the garbage collector: refuse a name it cannot encode while we still own the socket.
                server_hostname.encode("idna")
                if "\x00" in server_hostname:  # refused later as a TypeError, with the same leak
                    raise ValueError("server_hostname has a NUL byte")
            except ValueError:  # UnicodeError is one
                trio_sock.close()
                raise
        raw = socket.socket(fileno=trio_sock.detach())
        try:
            sock = context.wrap_socket(
                raw, server_side=server_side, server_hostname=server_hostname, do_handshake_on_connect=False
            )
        except BaseException as exc:
            _close_orphan(exc)
            raw.close()
            raise
        return cls(sock)

    # -- state checks --------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this TLS stream was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError("this TLS stream is broken") from self._broken

    def _fail(self, exc: BaseException) -> trio.BrokenResourceError | trio.ClosedResourceError:
        if self._closed:  # closed under us (another task's aclose): say so, not "broken"
            return trio.ClosedResourceError("this TLS stream was closed")
        self._broken = exc
        return trio.BrokenResourceError(f"TLS connection broke: {exc}")

    async def _wait(self, want: BaseException) -> None:
        """Wait until the socket may let the call that raised ``want`` progress.

        A reader that must write (a TLS 1.3 KeyUpdate to answer while the send buffer is full) or a writer
        that must read can find the other task already waiting on that very direction: trio allows one
        waiter per direction, so this one polls instead (rare; the other task's wake-up serves both)."""
        wait = trio.lowlevel.wait_readable if isinstance(want, ssl.SSLWantReadError) else trio.lowlevel.wait_writable
        try:
            await wait(self._sock)
        except trio.BusyResourceError:
            await trio.sleep(_BUSY_POLL)

    # -- handshake -----------------------------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Run the TLS handshake if it has not happened yet (idempotent; a checkpoint either way)."""
        if self._handshook:
            self._check()
            await trio.lowlevel.checkpoint()
            return
        await self._handshake()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def _handshake(self) -> None:
        """Handshake without the final schedule point; returns once it is done (by us or another task)."""
        self._check()
        await trio.lowlevel.checkpoint_if_cancelled()
        lock = self._handshake_lock
        if lock is None:
            return
        async with lock:
            if self._handshook:
                return
            self._check()
            while True:
                try:
                    self._sock.do_handshake()
                    break
                except _WANT as want:
                    await self._wait(want)
                    self._check()
                except (ssl.SSLError, OSError, ValueError) as exc:
                    raise self._fail(exc) from exc
            self._handshook = True
            self._handshake_lock = None

    # -- receive -------------------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data, waited = await self._receive(max_bytes)
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    async def receive_some_unyielding(self, max_bytes: int | None = None) -> bytes:
        """:meth:`receive_some` without its final schedule point when it did not wait: for a relay loop that
        just parked in :meth:`wait_readable` (that was its schedule point). Checks cancellation first."""
        data, _waited = await self._receive(max_bytes)
        return data

    async def _receive(self, max_bytes: int | None) -> tuple[bytes, bool]:
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this TLS stream")
        self._receiving = True
        try:
            if max_bytes is None:
                max_bytes = DEFAULT_RECEIVE_SIZE
            elif max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
            if self._handshook:
                self._check()
                await trio.lowlevel.checkpoint_if_cancelled()
            else:
                await self._handshake()
            if self._eof:
                return b"", False
            waited = False
            if self._drained and not self._sock.pending():
                # The last call saw the kernel empty (or a record that ended the peer's write): wait for the
                # socket rather than try a read that would most likely only say EAGAIN.
                await self._wait(_WANT_READ)
                waited = True
                self._check()
            self._drained = False
            while True:
                try:
                    data = self._sock.recv(max_bytes)
                    break
                except _WANT as want:
                    await self._wait(want)
                    waited = True
                    self._check()
                except (ssl.SSLError, OSError, ValueError) as exc:
                    raise self._fail(exc) from exc
            if not data:
                self._eof = True
            elif self.full_records and len(data) < max_bytes:
                data = self._fill(data, max_bytes)
            return data, waited
        finally:
            self._receiving = False

    def _fill(self, data: bytes, max_bytes: int) -> bytes:
        """``data`` and what more is readable at once, up to ``max_bytes`` (:attr:`full_records` only).

        OpenSSL hands out one TLS record (16 KiB at most) per read; a bulk transfer would cost a call, and
        its consumer a loop, per record. A full record is followed by another read; a short one ended the
        peer's write, so the read stops there and the next call waits for the socket first instead of a
        read that would say EAGAIN (one syscall fewer per message). Stops as well at EAGAIN (the next call
        waits first too), at EOF (the next call answers b"") and at an error (the next call raises it)."""
        parts = [data]
        total = last = len(data)
        sock = self._sock
        while total < max_bytes:
            if last < _FULL_RECORD and not sock.pending():
                self._drained = True
                break
            try:
                more = sock.recv(max_bytes - total)
            except _WANT:
                self._drained = True
                break
            except (ssl.SSLError, OSError, ValueError):
                break
            if not more:
                self._eof = True
                break
            parts.append(more)
            last = len(more)
            total += last
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # -- send ----------------------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not await self._send(data):
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_all_unyielding(self, data: bytes | bytearray | memoryview) -> bool:
        """:meth:`send_all` without its final schedule point: for a relay loop whose next call is one anyway
        (it parks to read more, or checkpoints), and for the tunnel's flush. Checks cancellation first;
        True when it waited for the socket (that was a schedule point)."""
        return await self._send(data)

    def send_now(self, data: bytes | bytearray | memoryview) -> memoryview:
        """Send what the socket takes at once, without waiting and without a checkpoint; returns the rest
        (empty when everything went). A non-empty rest may be a record OpenSSL started: it must be sent
        next, with :meth:`send_all` or :meth:`send_all_unyielding` and nothing else before it (the tunnel's
        flush does that shielded from cancellation). Raises as :meth:`send_all` does."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this TLS stream")
        self._check()
        rest = memoryview(data).cast("B")
        if not self._handshook:
            return rest  # send_all does the handshake first
        while rest:
            try:
                sent = self._sock.send(rest)
            except _WANT:
                return rest
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise self._fail(exc) from exc
            rest = rest[sent:]
        return rest

    async def _send(self, data: bytes | bytearray | memoryview) -> bool:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this TLS stream")
        self._sending = True
        try:
            if self._handshook:
                self._check()
                await trio.lowlevel.checkpoint_if_cancelled()
            else:
                await self._handshake()
            waited = False
            rest = memoryview(data).cast("B")
            while rest:
                try:
                    sent = self._sock.send(rest)
                except _WANT as want:
                    try:
                        await self._wait(want)
                    except trio.Cancelled as exc:
                        # OpenSSL holds part of a record it must finish with these very bytes: the stream
                        # cannot carry anything else correctly.
                        self._broken = exc
                        raise
                    waited = True
                    self._check()
                    continue
                except (ssl.SSLError, OSError, ValueError) as exc:
                    raise self._fail(exc) from exc
                rest = rest[sent:]
            return waited
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this TLS stream")
        self._sending = True
        try:
            self._check()
            await trio.lowlevel.wait_writable(self._sock)
        finally:
            self._sending = False

    async def wait_readable(self) -> bool:
        """Return once :meth:`receive_some` has something to hand out (bytes, an EOF, an error) without
        waiting; parks on the socket alone unless OpenSSL holds decrypted bytes. True when it parked (a
        schedule point). It does not peek at the kernel first: a relay waits here right after it passed
        the last request on, when nothing is there yet (a peek was a wasted syscall per request); when
        bytes are there, the wait returns at the scheduler's next look at the sockets."""
        if self._closed or self._broken is not None or not self._handshook or self._eof or self._sock.pending():
            return False
        await trio.lowlevel.wait_readable(self._sock)
        self._drained = False  # the socket said readable: the next receive reads at once
        return True

    def more_arrived(self) -> bool:
        """True when bytes arrived that :meth:`receive_some` has not handed out: decrypted ones in OpenSSL, or
        any in the kernel's receive buffer (the rest of a TLS record, more records, the peer's EOF).
        Never waits."""
        if self._closed:
            return False
        try:
            if self._sock.pending():
                return True
            # The plain socket's recv: SSLSocket.recv refuses flags. A peek leaves the bytes to OpenSSL.
            _socket.socket.recv(self._sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            return True  # a byte, or b"": the peer's EOF, which receive_some reports at once
        except BlockingIOError:
            return False
        except (OSError, ValueError, ssl.SSLError):
            return True  # an error: receive_some reports it at once

    # -- close ---------------------------------------------------------------------------------------

    def close_now(self) -> None:
        """Close at once, without a TLS goodbye and without a checkpoint: for an idle pooled connection whose
        peer is gone or misbehaved (tasks waiting on it get ClosedResourceError)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            trio.lowlevel.notify_closing(self._sock)
        _drain(self._sock)
        self._sock.close()

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        sock = self._sock
        with contextlib.suppress(OSError):
            trio.lowlevel.notify_closing(sock)  # tasks waiting on it get ClosedResourceError
        if self._handshook and self._broken is None:
            # Sends our close_notify; never waits for the peer's (it would raise SSLWantReadError).
            with contextlib.suppress(ssl.SSLError, OSError, ValueError):
                sock.unwrap()
        _drain(sock)
        sock.close()
        await trio.lowlevel.checkpoint()

    # -- TLS facts -----------------------------------------------------------------------------------

    def getpeercert(self, binary_form: bool = False) -> Any:
        """The peer's certificate (``ssl.SSLSocket.getpeercert``); after the handshake only."""
        if not self._handshook:
            raise trio.NeedHandshakeError("call do_handshake first")
        return self._sock.getpeercert(binary_form)

    def selected_alpn_protocol(self) -> str | None:
        if not self._handshook:
            raise trio.NeedHandshakeError("call do_handshake first")
        return self._sock.selected_alpn_protocol()

    def version(self) -> str | None:
        return self._sock.version() if self._handshook else None

    def cipher(self) -> tuple[str, str, int] | None:
        return self._sock.cipher() if self._handshook else None

    def pending(self) -> int:
        """Decrypted bytes OpenSSL holds for the next :meth:`receive_some`."""
        return 0 if self._closed else self._sock.pending()

    def fileno(self) -> int:
        return self._sock.fileno()

    def getpeername(self) -> Any:
        return self._sock.getpeername()


def _close_orphan(exc: BaseException) -> None:
    """Close the ``ssl.SSLSocket`` a failed ``wrap_socket`` made and dropped, if there is one.

    CPython's ``SSLSocket._create`` takes the descriptor over (``sock.detach()``) before it looks at the
    connection; when the peer reset it in between (an agent dialling a front door that is going away), its
    ``recv(1)`` probe raises ECONNRESET and the new SSLSocket is dropped unclosed: its descriptor stays open
    until the garbage collector finds it (a ResourceWarning). It is still ``self`` in the traceback's frame,
    so close it there; nothing else can reach it (closing it by number later could hit a reused descriptor)."""
    tb = exc.__traceback__
    while tb is not None:
        orphan = tb.tb_frame.f_locals.get("self")
        # The C-level close: the object may be half-built (an interrupt inside _create leaves it without the
        # Python-level socket attributes socket.close needs); a descriptor of -1 is nothing to close.
        if isinstance(orphan, ssl.SSLSocket) and _socket.socket.fileno(orphan) >= 0:
            with contextlib.suppress(OSError):
                _socket.socket.close(orphan)
        tb = tb.tb_next


def _drain(sock: ssl.SSLSocket) -> None:
    """Discard what the kernel holds unread before the descriptor closes (bounded; never waits).

    Closing a TCP socket with unread bytes makes Linux answer with a reset instead of a FIN, and a reset can
    reach the peer before, or instead of, what we sent last: after a failed handshake the records OpenSSL
    left unread (a client's CertificateVerify and Finished, its first request) would turn our alert into
    ``connection reset by peer`` at the client. trio's SSLStream had read them into its MemoryBIO already."""
    for _ in range(_DRAIN_READS):
        try:
            if not _socket.socket.recv(sock, 65536, socket.MSG_DONTWAIT):
                return
        except OSError:  # BlockingIOError: nothing more; anything else: the close is all that is left
            return


__all__ = ["SocketTLSStream"]
