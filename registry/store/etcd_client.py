"""A thin trio-native etcd v3 client over the JSON gateway (``/v3/...``).

KV, lease and txn calls, and watches, go over :mod:`registry.host.http1` (kept-alive HTTP/1.1
connections, answers read by :class:`registry.core.http1.Reader`, one pool per member); all calls given a
test ``transport=`` go through httpx (as do calls to an ``https`` member without a TLS context of ours,
which keep httpx's default trust store).

Why not a library: the maintained Python etcd clients are sync (``etcd3gw``: ``requests`` plus threads, and
it hides a compaction cancel) or asyncio-only (``aetcd``: ``grpc.aio``); ``etcd3`` is unmaintained. The
gateway is plain HTTP/1.1 + JSON, which httpx speaks natively under trio. See
``shared/reference/access-design.md`` §5.

The gateway's quirks, all absorbed here so the store above sees plain Python values:

* keys and values are base64 on the wire (:func:`b64` / :func:`unb64`);
* int64 fields are JSON *strings* (``"revision": "42"``) and proto3 omits every default: an empty range
  has no ``kvs``, a failed txn has no ``succeeded``, a PUT watch event has no ``type``, revision 0 is
  absent (:func:`as_int` and ``.get`` with defaults everywhere);
* an expired or unknown lease answers 200 with no ``TTL`` (or ``-1``): :meth:`EtcdClient.lease_ttl` gives
  None for it;
* transient server errors (``etcdserver: request timed out``, ``leader changed``, ``no leader``, HTTP 503)
  and unreachable members: the request moves on to the next endpoint of the list, with a short backoff,
  until ``retry_for`` seconds have passed.

Invariant (exactly-once writes): a request that may have reached etcd (sent, then the answer was lost or
etcd said "request timed out") is retried only when it is ``idempotent``; otherwise :class:`Ambiguous` is
raised and the caller decides (the store checks whether its write landed). A request that provably never
left (connection refused) is always retried on the next endpoint.

Once a request gives up on a member and moves on, every other request still waiting on that member is given up
on too (cancelled, then retried on the next member or, for a write that may have landed, :class:`Ambiguous`).
Why: a proposal a follower forwarded to a leader that then died is lost, and that follower answers nothing
for it until its own request timeout; the store holds its write lock meanwhile, so without this one lost
proposal stalls every write of the registry for ``request_timeout`` after the election is over.
"""

from __future__ import annotations

import binascii
import logging
import math
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import orjson
import trio

from registry.core.chunked import ChunkedError
from registry.core.errors import BadParameter, Compacted, ConnectionProblem, KubeportError, TooLarge
from registry.host.http1 import Broken, ClosedEarly, Http1Pool, NotSent, StreamedAnswer

log = logging.getLogger(__name__)

# etcd's gRPC codes as the gateway reports them in {"code": N}.
CODE_COMPACTED = 11  # OutOfRange: "mvcc: required revision has been compacted"
# Server messages that mean "this member cannot serve right now; another one (or a retry) will".
_TRANSIENT = (
    "request timed out",
    "leader changed",
    "no leader",
    "not capable",
    "too many requests",
    "raft proposal dropped",
    "server stopped",
    "unhealthy cluster",
)
# Of those, the ones after which a write may still be applied (etcd's client treats them the same way).
_AMBIGUOUS = ("request timed out", "leader changed")
_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
_JSON_HEADER_LIST = (("content-type", "application/json"), ("accept", "application/json"))

MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a hostile or broken endpoint cannot make us buffer without bound


class Ambiguous(ConnectionProblem):
    """A non-idempotent request may or may not have been applied (its answer was lost)."""


class LeaseNotFound(ConnectionProblem):
    """A put named a lease that expired or was revoked."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # "PUT" or "DELETE"
    kv: KeyValue


@dataclass(slots=True)
class TxnResult:
    succeeded: bool
    revision: int  # the header revision: the txn's own revision when it wrote something
    responses: list[dict[str, Any]] = field(default_factory=list)

    def ranges(self) -> list[list[KeyValue]]:
        """The kvs of each ``response_range`` in order, nested txns' ones in place."""
        return _ranges_of(self.responses, depth=0)


def _ranges_of(responses: object, *, depth: int) -> list[list[KeyValue]]:
    if not isinstance(responses, list) or depth > 4:
        raise ConnectionProblem("etcd answered a malformed txn")
    out: list[list[KeyValue]] = []
    for response in responses:
        if not isinstance(response, dict):
            raise ConnectionProblem("etcd answered a malformed txn")
        rng = response.get("response_range")
        if isinstance(rng, dict):
            out.append(decode_kvs(rng))
        nested = response.get("response_txn")
        if isinstance(nested, dict):
            out += _ranges_of(nested.get("responses") or [], depth=depth + 1)
    return out


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return binascii.b2a_base64(raw, newline=False).decode("ascii")  # base64.b64encode's own call, one frame less


def unb64(text: object) -> bytes:
    if text is None:
        return b""
    if not isinstance(text, str):
        raise ConnectionProblem(f"etcd answered a non-string where base64 was expected: {text!r:.60}")
    try:
        # strict mode refuses what b64decode(validate=True) refuses (characters outside the alphabet, bad or
        # misplaced padding, non-ASCII text) without its regex pass over the text first
        return binascii.a2b_base64(text, strict_mode=True)
    except ValueError:
        raise ConnectionProblem("etcd answered malformed base64") from None


def as_int(value: object) -> int:
    """An int64 as the gateway sends it: a decimal string, sometimes a number, absent when 0."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ConnectionProblem(f"etcd answered a boolean where an integer was expected: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and len(value) <= 20:
        try:
            return int(value)
        except ValueError:
            pass
    raise ConnectionProblem(f"etcd answered a malformed integer: {value!r:.60}")


def decode_kv(raw: object) -> KeyValue:
    if not isinstance(raw, dict):
        raise ConnectionProblem("etcd answered a malformed key-value")
    return KeyValue(
        key=unb64(raw.get("key")),
        value=unb64(raw.get("value")),
        create_revision=as_int(raw.get("create_revision")),
        mod_revision=as_int(raw.get("mod_revision")),
        version=as_int(raw.get("version")),
        lease=as_int(raw.get("lease")),
    )


def decode_kvs(answer: dict[str, Any]) -> list[KeyValue]:
    kvs = answer.get("kvs") or []  # omitted when empty
    if not isinstance(kvs, list):
        raise ConnectionProblem("etcd answered a malformed range")
    return [decode_kv(kv) for kv in kvs]


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` selecting every key that starts with ``prefix`` (etcd's WithPrefix)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"  # every key


# --- request builders (sans-IO) ----------------------------------------------------------------------------


def put_op(key: bytes, value: bytes, *, lease: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def delete_op(key: bytes, range_end: bytes | None = None) -> dict[str, Any]:
    body = {"key": b64(key)}
    if range_end is not None:
        body["range_end"] = b64(range_end)
    return {"request_delete_range": body}


def range_op(
    key: bytes,
    range_end: bytes | None = None,
    *,
    limit: int = 0,
    descending: bool = False,
    count_only: bool = False,
    revision: int = 0,
) -> dict[str, Any]:
    return {
        "request_range": range_body(
            key, range_end, limit=limit, descending=descending, count_only=count_only, revision=revision
        )
    }


def range_body(
    key: bytes,
    range_end: bytes | None = None,
    *,
    limit: int = 0,
    descending: bool = False,
    count_only: bool = False,
    revision: int = 0,
) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key)}
    if range_end is not None:
        body["range_end"] = b64(range_end)
    if limit:
        body["limit"] = str(limit)
    if descending:
        body["sort_order"] = "DESCEND"
        body["sort_target"] = "KEY"
    if count_only:
        body["count_only"] = True
    if revision:
        body["revision"] = str(revision)
    return body


def compare_mod(key: bytes, mod_revision: int) -> dict[str, Any]:
    """True when ``key``'s mod_revision is ``mod_revision`` (0: the key does not exist)."""
    if mod_revision == 0:
        return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}


# --- the client ----------------------------------------------------------------------------------------------


def parse_endpoints(spec: str, *, tls: bool) -> list[str]:
    """``HOST:PORT[,HOST:PORT...]`` (or full ``http(s)://`` URLs) as base URLs; BadParameter when malformed."""
    if not isinstance(spec, str) or not spec.strip():
        raise BadParameter("etcd endpoints: give HOST:PORT[,HOST:PORT...]")
    if len(spec) > 4096:
        raise BadParameter("etcd endpoints: the list is too long")
    out: list[str] = []
    for raw in spec.split(","):
        part = raw.strip()
        if not part:
            raise BadParameter(f"etcd endpoints {spec!r:.100}: empty entry")
        url = part if "://" in part else f"{'https' if tls else 'http'}://{part}"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise BadParameter(f"etcd endpoint {part!r:.100} is not HOST:PORT") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
            raise BadParameter(f"etcd endpoint {part!r:.100} is not HOST:PORT")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
            raise BadParameter(f"etcd endpoint {part!r:.100} is not HOST:PORT")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        out.append(f"{parts.scheme}://{host}:{port}")
    if len(out) > 32:
        raise BadParameter("etcd endpoints: at most 32")
    return out


class EtcdClient:
    """etcd v3 over the JSON gateway; every call may fail over across ``endpoints``."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        tls: ssl.SSLContext | None = None,
        request_timeout: float = 5.0,
        retry_for: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,  # tests: a scripted etcd
    ) -> None:
        if not endpoints:
            raise BadParameter("etcd: no endpoint given")
        self.endpoints = list(endpoints)
        self._current = 0
        self._retry_for = retry_for
        # One transport (connection pool) for both paths: KV calls hand their requests straight to it
        # (:meth:`_post`); watches stream through the client. Given a transport, the client reads no proxy
        # from the environment: etcd is dialed directly, as every other kubeport client does (trust_env=False).
        self._direct = transport is None  # KV calls over registry.host.http1 (see _post)
        self._pools: dict[int, Http1Pool | None] = {}
        self._tls = tls
        self._request_timeout = request_timeout
        self._transport = transport or httpx.AsyncHTTPTransport(
            verify=tls if tls is not None else True,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(request_timeout), transport=self._transport)
        self._timeouts = {"timeout": httpx.Timeout(request_timeout).as_dict()}
        self._urls: dict[str, httpx.URL] = {}
        self.failovers = 0
        self.abandoned = 0  # requests given up on because another one moved off their member
        self._in_flight: dict[int, set[trio.CancelScope]] = {}

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            pools, self._pools = list(self._pools.values()), {}
            for pool in pools:
                if pool is not None:
                    await pool.aclose()
            await self._http.aclose()

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._current]

    def _next_endpoint(self, failed: int) -> None:
        if self._current == failed and len(self.endpoints) > 1:
            self._current = (failed + 1) % len(self.endpoints)
            self.failovers += 1
            log.warning("etcd: %s failed, moving to %s", self.endpoints[failed], self.endpoint)
            for scope in self._in_flight.pop(failed, set()):  # see the module docstring
                self.abandoned += 1
                scope.cancel()

    def _pool(self, index: int) -> Http1Pool | None:
        """Member ``index``'s keep-alive pool; None when its calls go through httpx (an https member without
        a TLS context of ours: httpx's default trust store, which this client does not rebuild)."""
        if index not in self._pools:
            parts = urlsplit(self.endpoints[index])
            pool = None
            if parts.hostname and parts.port and (parts.scheme == "http" or self._tls is not None):
                pool = Http1Pool(
                    parts.hostname,
                    parts.port,
                    tls=self._tls if parts.scheme == "https" else None,
                    timeout=self._request_timeout,
                    max_connections=32,
                    max_idle=16,
                    max_body=MAX_ANSWER_BYTES,
                )
            self._pools[index] = pool
        return self._pools[index]

    async def _post(self, index: int, path: str, body: dict[str, Any]) -> tuple[int, bytes] | None:
        """POST to member ``index``: (status, body); None when another request gave up on that member meanwhile.

        Against a real member the request goes over :mod:`registry.host.http1` (one send and one answer on a
        kept-alive connection: httpx's and httpcore's layers cost about as much CPU as the rest of an etcd round
        trip); its NotSent and Broken say whether the request may have left. With a test transport it goes to the
        transport itself, with the timeouts in the request's extensions, as httpx's client would put them."""
        content = _dumps(body)
        pool = self._pool(index) if self._direct else None
        with trio.CancelScope() as scope:
            waiting = self._in_flight.setdefault(index, set())
            waiting.add(scope)
            try:
                if pool is not None:
                    answer = await pool.request("POST", path, body=content, headers=_JSON_HEADER_LIST)
                    return answer.status, answer.body
                url = f"{self.endpoints[index]}{path}"
                target = self._urls.get(url)
                if target is None:
                    target = self._urls[url] = httpx.URL(url)  # a few (member, path) pairs
                request = httpx.Request(
                    "POST", target, content=content, headers=_JSON_HEADERS, extensions=self._timeouts
                )
                response = await self._transport.handle_async_request(request)
                try:
                    raw = await response.aread()
                finally:
                    await response.aclose()
                return response.status_code, raw
            finally:
                waiting.discard(scope)
        return None

    async def call(self, path: str, body: dict[str, Any], *, idempotent: bool = True) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>``: the decoded answer, retried and failed over as the module says."""
        deadline = trio.current_time() + self._retry_for
        delay = 0.05
        last = "no attempt"
        while True:
            index = self._current
            try:
                response = await self._post(index, f"/v3/{path}", body)
                if response is None:
                    last = f"{self.endpoints[index]} was given up on while this request waited"
                    if not idempotent:
                        raise Ambiguous(f"etcd at {self.endpoints[index]}: no answer (the write may have been applied)")
                    if trio.current_time() > deadline:
                        raise ConnectionProblem(f"etcd is unreachable ({', '.join(self.endpoints)}): {last}")
                    continue  # the member was already left: straight to the current one
                status, raw = response
                answer = _decode_answer(raw)
                if status == 200:
                    return answer
                message, code = _error_of(answer, status)
                error = _map_error(message, code)
                if not _is_transient(message, status):
                    raise error
                last = message
                if not idempotent and any(text in message for text in _AMBIGUOUS):
                    raise Ambiguous(f"etcd at {self.endpoints[index]}: {message} (the write may have been applied)")
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, NotSent) as exc:
                if _is_verification_failure(exc):  # retrying cannot make a certificate trusted
                    raise ConnectionProblem(
                        f"etcd at {self.endpoints[index]}: TLS verification failed: {exc}"
                    ) from None
                last = f"{type(exc).__name__}: {exc}"  # never left this process: safe to send again
            except (httpx.HTTPError, Broken) as exc:
                last = f"{type(exc).__name__}: {exc}"
                if not idempotent:
                    raise Ambiguous(
                        f"etcd at {self.endpoints[index]}: {last} (the write may have been applied)"
                    ) from None
            self._next_endpoint(index)
            if trio.current_time() + delay > deadline:
                raise ConnectionProblem(f"etcd is unreachable ({', '.join(self.endpoints)}): {last}")
            await trio.sleep(delay)  # backoff between attempts (not a wait for a condition)
            delay = min(delay * 2, 1.0)

    # --- KV ---------------------------------------------------------------------------------------------

    async def range(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        limit: int = 0,
        descending: bool = False,
        count_only: bool = False,
        revision: int = 0,
    ) -> tuple[list[KeyValue], int, bool, int]:
        """(kvs, count, more, header revision)."""
        answer = await self.call(
            "kv/range",
            range_body(key, range_end, limit=limit, descending=descending, count_only=count_only, revision=revision),
        )
        return (
            decode_kvs(answer),
            as_int(answer.get("count")),
            bool(answer.get("more", False)),
            _header_revision(answer),
        )

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        body = put_op(key, value, lease=lease)["request_put"]
        answer = await self.call("kv/put", body, idempotent=True)  # a repeated put leaves the same value
        return _header_revision(answer)

    async def txn(
        self,
        compare: Sequence[dict[str, Any]],
        success: Sequence[dict[str, Any]],
        failure: Sequence[dict[str, Any]] = (),
        *,
        idempotent: bool = False,
    ) -> TxnResult:
        body: dict[str, Any] = {"compare": list(compare), "success": list(success), "failure": list(failure)}
        answer = await self.call("kv/txn", body, idempotent=idempotent)
        responses = answer.get("responses") or []
        if not isinstance(responses, list):
            raise ConnectionProblem("etcd answered a malformed txn")
        return TxnResult(bool(answer.get("succeeded", False)), _header_revision(answer), responses)

    async def compact(self, revision: int) -> None:
        """Drop etcd's MVCC history up to ``revision`` (already compacted there: nothing to do)."""
        with suppress(Compacted):
            await self.call("kv/compaction", {"revision": str(revision)})

    # --- leases -----------------------------------------------------------------------------------------

    async def lease_grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (id, granted TTL in seconds; etcd may raise a tiny TTL to its minimum)."""
        answer = await self.call("lease/grant", {"TTL": str(ttl)}, idempotent=True)
        lease_id = as_int(answer.get("ID"))
        if lease_id == 0 or answer.get("error"):
            raise ConnectionProblem(f"etcd refused a lease: {answer.get('error') or 'no ID'}")
        return lease_id, as_int(answer.get("TTL"))

    async def lease_ttl(self, lease_id: int) -> int | None:
        """Seconds left on a lease, or None when it expired or never existed.

        The quirk: etcd answers 200 for an unknown lease, with ``TTL`` omitted or ``-1`` instead of an error.
        """
        answer = await self.call("lease/timetolive", {"ID": str(lease_id)})
        ttl = as_int(answer.get("TTL"))
        return ttl if ttl > 0 else None

    async def lease_revoke(self, lease_id: int) -> None:
        try:
            await self.call("lease/revoke", {"ID": str(lease_id)})
        except KubeportError as exc:
            if "not found" not in str(exc):
                raise

    # --- watch ------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def watch(
        self, key: bytes, range_end: bytes | None = None, *, start_revision: int = 0
    ) -> AsyncIterator[AsyncIterator[tuple[int, list[WatchEvent]]]]:
        """A watch stream: yields (header revision, events) per message, from ``start_revision``.

        Entering fails with ConnectionProblem when the member cannot be reached. Iteration raises Compacted
        when ``start_revision`` was compacted away (etcd first answers ``created``, then ``canceled`` with
        ``compact_revision``), and ConnectionProblem when the stream breaks; the caller resumes from the last
        revision it saw (or re-reads, after Compacted).
        """
        body: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        if start_revision:
            body["start_revision"] = str(start_revision)
        index = self._current
        pool = self._pool(index) if self._direct else None
        if pool is not None:
            async with self._watch_direct(pool, index, body) as direct:
                yield direct
            return
        url = f"{self.endpoints[index]}/v3/watch"
        try:
            async with self._http.stream(
                "POST", url, json={"create_request": body}, timeout=httpx.Timeout(5.0, read=None)
            ) as response:
                if response.status_code != 200:
                    raw = await response.aread()
                    message, code = _error_of(_loads(raw[:MAX_ANSWER_BYTES]), response.status_code)
                    raise _map_error(message, code)
                lines = cast(AsyncGenerator[str, None], response.aiter_lines())  # a generator: closed by aclosing
                async with aclosing(lines), _started_watch(lines) as events:
                    yield events
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            self._next_endpoint(index)
            raise ConnectionProblem(f"etcd watch at {self.endpoints[index]}: {exc}") from None
        except httpx.HTTPError as exc:
            self._next_endpoint(index)
            raise ConnectionProblem(
                f"etcd watch at {self.endpoints[index]} broke: {type(exc).__name__}: {exc}"
            ) from None

    @asynccontextmanager
    async def _watch_direct(
        self, pool: Http1Pool, index: int, body: dict[str, Any]
    ) -> AsyncIterator[AsyncIterator[tuple[int, list[WatchEvent]]]]:
        """:meth:`watch` over a connection of its own (registry.host.http1): the same answers and errors as the
        httpx path, without its per-line chain of generators (the feed reads every write of the cluster)."""
        member = self.endpoints[index]
        content = _dumps({"create_request": body})
        try:
            head, streamed = await pool.open_stream("POST", "/v3/watch", body=content, headers=_JSON_HEADER_LIST)
        except NotSent as exc:
            self._next_endpoint(index)
            raise ConnectionProblem(f"etcd watch at {member}: {exc}") from None
        except Broken as exc:
            self._next_endpoint(index)
            raise ConnectionProblem(f"etcd watch at {member} broke: {type(exc.cause).__name__}: {exc}") from None
        if streamed is None:
            if head.status == 200:
                raise ConnectionProblem(f"etcd watch at {member} answered without chunked framing")
            message, code = _error_of(_loads(head.body), head.status)
            raise _map_error(message, code)
        try:
            async with aclosing(_stream_lines(streamed)) as lines, _started_watch(lines) as events:
                yield events
        except _WatchBroken as exc:
            self._next_endpoint(index)  # as the httpx path does for a stream that broke
            raise ConnectionProblem(f"etcd watch at {member} broke: {exc.message}") from None
        finally:
            await streamed.aclose()


class _WatchBroken(ConnectionProblem):
    """The watch connection broke (not etcd ending the stream): move off the member."""


async def _stream_lines(streamed: StreamedAnswer) -> AsyncGenerator[str, None]:
    """The watch body's lines (bounded: a line longer than MAX_ANSWER_BYTES is refused), as httpx's
    ``aiter_lines`` gives them (UTF-8, undecodable bytes replaced)."""
    buf = bytearray()
    while True:
        try:
            data = await streamed.receive()
        except ChunkedError as exc:
            raise _WatchBroken(exc.message) from None
        except (ClosedEarly, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
            raise _WatchBroken(f"{type(exc).__name__}: {exc}") from None
        if not data:
            if buf:
                yield buf.decode("utf-8", "replace")
            return
        scan = len(buf)
        buf += data
        while (end := buf.find(b"\n", scan)) >= 0:
            yield buf[:end].decode("utf-8", "replace")
            del buf[: end + 1]
            scan = 0
        if len(buf) > MAX_ANSWER_BYTES:
            raise ConnectionProblem("etcd sent an oversized watch message")


async def _next_result(lines: AsyncIterator[str]) -> dict[str, Any]:
    while True:
        try:
            line = await anext(lines)
        except StopAsyncIteration:
            raise ConnectionProblem("etcd ended the watch stream") from None
        if len(line) > MAX_ANSWER_BYTES:
            raise ConnectionProblem("etcd sent an oversized watch message")
        if not line.strip():
            continue
        message = _loads(line.encode())
        if "error" in message:
            error = message["error"]
            text, code = _error_of(error if isinstance(error, dict) else {}, 500)
            raise _map_error(text, code)
        result = message.get("result")
        if not isinstance(result, dict):
            raise ConnectionProblem("etcd sent a malformed watch message")
        return result


def _check_watch_result(result: dict[str, Any]) -> None:
    if result.get("canceled", False):
        compact = as_int(result.get("compact_revision"))
        if compact:
            raise Compacted(f"etcd history before revision {compact} was compacted: relist and watch again")
        reason = result.get("cancel_reason") or "canceled by etcd"
        raise ConnectionProblem(f"etcd watch ended: {str(reason)[:200]}")


@asynccontextmanager
async def _started_watch(lines: AsyncIterator[str]) -> AsyncIterator[AsyncIterator[tuple[int, list[WatchEvent]]]]:
    """The events of a watch whose answer is ``lines``, once etcd confirmed it was created (its first result)."""
    first = await _next_result(lines)
    _check_watch_result(first)
    if not first.get("created", False):
        raise ConnectionProblem("etcd watch did not start")
    async with aclosing(_watch_events(lines, first)) as events:
        yield events


async def _watch_events(
    lines: AsyncIterator[str], first: dict[str, Any]
) -> AsyncGenerator[tuple[int, list[WatchEvent]], None]:
    result = first
    while True:
        events = result.get("events") or []
        if events:
            if not isinstance(events, list):
                raise ConnectionProblem("etcd sent malformed watch events")
            decoded = [
                WatchEvent("DELETE" if e.get("type") == "DELETE" else "PUT", decode_kv(e.get("kv")))  # PUT omitted
                for e in events
                if isinstance(e, dict)
            ]
            yield _header_revision(result), decoded
        result = await _next_result(lines)
        _check_watch_result(result)


def _is_verification_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):  # httpx wraps httpcore, which wraps ssl; NotSent holds its cause
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.cause if isinstance(seen, NotSent) else (seen.__cause__ or seen.__context__)
    return False


def _dumps(body: dict[str, Any]) -> bytes:
    """A request body as compact JSON. orjson: the gateway's bodies are all base64 text, small ints and
    flags, which it writes as json.dumps does (UTF-8 instead of ``\\u`` escapes, which etcd reads alike)."""
    return orjson.dumps(body)


def _loads(raw: bytes) -> dict[str, Any]:
    """A gateway answer. orjson is stricter than json where it differs (NaN, Infinity, lone surrogates and
    invalid UTF-8 are refused; integers beyond 64 bits come back as floats, which :func:`as_int` refuses),
    and bounds nesting itself."""
    try:
        answer = orjson.loads(raw) if raw else {}
    except (ValueError, RecursionError):
        raise ConnectionProblem("etcd answered something that is not JSON") from None
    if not isinstance(answer, dict):
        raise ConnectionProblem("etcd answered something that is not a JSON object")
    return answer


def _decode_answer(content: bytes) -> dict[str, Any]:
    if len(content) > MAX_ANSWER_BYTES:
        raise ConnectionProblem("etcd answered more than the size limit")
    return _loads(content)


def _header_revision(answer: dict[str, Any]) -> int:
    header = answer.get("header") or {}
    return as_int(header.get("revision")) if isinstance(header, dict) else 0


def _error_of(answer: dict[str, Any], status: int) -> tuple[str, int]:
    message = answer.get("message") or answer.get("error") or f"HTTP {status}"
    code = answer.get("code")
    return str(message)[:500], code if isinstance(code, int) and not isinstance(code, bool) else 0


def _is_transient(message: str, status: int) -> bool:
    return status in (502, 503, 504) or any(text in message for text in _TRANSIENT)


def _map_error(message: str, code: int) -> KubeportError:
    # Code 11 (OutOfRange) also means "future revision": only the message tells compaction apart.
    if "compacted" in message:
        return Compacted(f"etcd: {message}")
    if "request is too large" in message or "larger than max" in message:  # etcd's check, or gRPC's
        return TooLarge(f"etcd refused the request as too large (its --max-request-bytes): {message}")
    if "lease not found" in message:
        return LeaseNotFound(f"etcd: {message}")
    if code == 3 or "invalid" in message:
        return BadParameter(f"etcd refused the request: {message}")
    return ConnectionProblem(f"etcd: {message}")


def ceil_seconds(value: float) -> int:
    return max(1, math.ceil(value))
