"""What only the etcd backend has: the gateway's quirks, several registries on one prefix, leases, sealing.

The shared suite (test_crud, test_watch, ...) already runs every Store rule against etcd; these tests cover
what it cannot: a real etcd's expired leases, its compaction, a dead endpoint in the list, a write whose
answer was lost, two store objects (two registries) sharing one prefix, and hostile input to the client,
the flags and the key file.
"""

from __future__ import annotations

import base64
import functools
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from registry.cli import kubeport_main
from registry.core.errors import (
    AlreadyExists,
    BadParameter,
    Compacted,
    CompareFailed,
    ConnectionProblem,
    LimitExceeded,
    TooLarge,
)
from registry.core.identity import CertAuthority
from registry.host.cmdline import parse_command_line
from registry.server.serve import issue_server_certificate
from registry.server.store_config import StoreConfig, open_registry_store
from registry.store.etcd import MAX_VALUE_BYTES, EtcdStore, check_prefix, nest_ops
from registry.store.etcd_client import (
    Ambiguous,
    EtcdClient,
    TxnResult,
    as_int,
    decode_kvs,
    parse_endpoints,
    prefix_end,
    put_op,
    range_op,
)
from registry.store.etcd_seal import Sealer, Unsealable, decode_key_file, encode_key_file, generate_key
from tests.fakes.etcd_server import SKIP_REASON, EtcdServer, TLSFiles, find_etcd, free_port, shared_etcd, unique_prefix
from tests.registry.store.store_helpers import START, FakeClock, cluster, revisions, take, wait_until


@pytest.fixture
def etcd() -> EtcdServer:
    return shared_etcd()


@pytest.fixture
async def client(etcd: EtcdServer) -> AsyncIterator[EtcdClient]:
    c = EtcdClient([etcd.url], retry_for=2.0)
    yield c
    await c.aclose()


async def open_pair(etcd: EtcdServer, **options: Any) -> tuple[EtcdStore, EtcdStore]:
    """Two store objects on one prefix with one key: two registries sharing a cluster."""
    key, prefix = generate_key(), unique_prefix()
    a = await EtcdStore.open(etcd.url, key=key, prefix=prefix, **options)
    b = await EtcdStore.open(etcd.url, key=key, prefix=prefix, **options)
    return a, b


# --- the gateway's quirks ----------------------------------------------------------------------------------


async def test_an_expired_or_unknown_lease_answers_without_a_ttl(client: EtcdClient) -> None:
    lease, granted = await client.lease_grant(60)
    assert granted >= 60
    assert 0 < (await client.lease_ttl(lease) or 0) <= 60
    await client.lease_revoke(lease)
    assert await client.lease_ttl(lease) is None  # etcd says 200 with TTL -1, not an error
    assert await client.lease_ttl(lease + 12345) is None
    await client.lease_revoke(lease)  # revoking twice is not an error either


async def test_a_watch_from_a_compacted_revision_is_compacted(client: EtcdClient) -> None:
    key = unique_prefix().encode() + b"k"
    first = await client.put(key, b"1")
    last = await client.put(key, b"2")
    await client.compact(last)
    await client.compact(last)  # already compacted there: nothing to do
    with pytest.raises(Compacted), trio.fail_after(5):
        async with client.watch(key, start_revision=first) as events:
            await anext(events)  # etcd says "created", then cancels with compact_revision
    async with client.watch(key, start_revision=last) as events:
        with trio.fail_after(5):
            _, batch = await anext(events)
    assert [(e.type, e.kv.value, e.kv.mod_revision) for e in batch] == [("PUT", b"2", last)]


async def test_a_dead_first_endpoint_fails_over_to_the_next(etcd: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = EtcdClient([dead, etcd.url], retry_for=5.0)
    try:
        key = unique_prefix().encode() + b"k"
        await client.put(key, b"v")
        kvs, *_ = await client.range(key)
        assert kvs[0].value == b"v"
        assert client.endpoint == etcd.url
        assert client.failovers == 1
    finally:
        await client.aclose()
    store = await EtcdStore.open(f"127.0.0.1:{free_port()},{etcd.endpoint}", key=generate_key(), prefix=unique_prefix())
    async with store, store.watch(["c"], since=0) as events:
        await store.create("c", "a", cluster())
        assert revisions(await take(events, 1)) == [1]


async def test_no_reachable_endpoint_is_a_connection_problem_naming_them() -> None:
    dead = f"127.0.0.1:{free_port()}"
    client = EtcdClient(parse_endpoints(dead, tls=False), retry_for=0.3)
    try:
        with pytest.raises(ConnectionProblem, match=dead):
            await client.range(b"x")
    finally:
        await client.aclose()


def scripted_etcd(*answers: tuple[int, dict[str, Any]]) -> tuple[list[str], httpx.MockTransport]:
    """A transport answering with ``answers`` in turn (then the last one), recording which host was asked."""
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.host)
        status, body = answers[min(len(asked) - 1, len(answers) - 1)]
        return httpx.Response(status, json=body)

    return asked, httpx.MockTransport(answer)


TIMED_OUT = (503, {"error": "etcdserver: request timed out", "code": 14, "message": "etcdserver: request timed out"})
LEADER_CHANGED = (503, {"error": "etcdserver: leader changed", "code": 14, "message": "etcdserver: leader changed"})
NO_LEADER = (503, {"error": "etcdserver: no leader", "code": 14, "message": "etcdserver: no leader"})
OK = (200, {"header": {"revision": "7"}, "succeeded": True})


@pytest.mark.parametrize("trouble", [TIMED_OUT, LEADER_CHANGED, NO_LEADER])
async def test_a_transient_etcd_error_moves_a_read_to_the_next_member(trouble: tuple[int, dict[str, Any]]) -> None:
    asked, transport = scripted_etcd(trouble, OK)
    client = EtcdClient(["http://one:2379", "http://two:2379"], transport=transport, retry_for=5)
    kvs, _, _, revision = await client.range(b"k")
    await client.aclose()
    assert (kvs, revision, asked) == ([], 7, ["one", "two"])


@pytest.mark.parametrize("trouble", [TIMED_OUT, LEADER_CHANGED])
async def test_a_write_that_may_have_landed_is_not_sent_twice(trouble: tuple[int, dict[str, Any]]) -> None:
    asked, transport = scripted_etcd(trouble, OK)
    client = EtcdClient(["http://one:2379", "http://two:2379"], transport=transport)
    with pytest.raises(Ambiguous):
        await client.txn([], [put_op(b"k", b"v")])
    await client.aclose()
    assert asked == ["one"]


async def test_a_write_etcd_never_took_is_retried_on_the_next_member() -> None:
    asked, transport = scripted_etcd(NO_LEADER, OK)
    client = EtcdClient(["http://one:2379", "http://two:2379"], transport=transport)
    assert (await client.txn([], [put_op(b"k", b"v")])).succeeded
    await client.aclose()
    assert asked == ["one", "two"]


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ((400, {"error": "etcdserver: too many operations in txn request", "code": 3}), BadParameter),
        ((400, {"error": "etcdserver: mvcc: required revision has been compacted", "code": 11}), Compacted),
        ((200, {"header": {"revision": "nope"}}), ConnectionProblem),
        ((500, {"error": "etcdserver: permission denied", "code": 7}), ConnectionProblem),
    ],
)
async def test_etcd_errors_map_to_kubeport_errors(answer: tuple[int, dict[str, Any]], error: type[Exception]) -> None:
    _, transport = scripted_etcd(answer)
    client = EtcdClient(["http://one:2379"], transport=transport, retry_for=0.2)
    with pytest.raises(error):
        await client.range(b"k")
    await client.aclose()


@asynccontextmanager
async def silent_member() -> AsyncIterator[str]:
    """A member that takes connections and requests but never answers; its URL."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    held: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        held.append(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, hold, listeners)
        yield f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        nursery.cancel_scope.cancel()


async def test_the_request_timeout_bounds_a_call_to_a_silent_member() -> None:
    """KV calls go to the transport directly: they still carry the request timeout. A write to a member that
    never answers is Ambiguous once it runs out; a read is retried until retry_for, then a ConnectionProblem."""
    async with silent_member() as silent:
        client = EtcdClient([silent], request_timeout=0.3, retry_for=0.8)
        with trio.fail_after(4):
            with pytest.raises(Ambiguous):
                await client.txn([], [put_op(b"k", b"v")])
            with pytest.raises(ConnectionProblem, match="unreachable"):
                await client.range(b"k")
        await client.aclose()


async def test_a_non_json_answer_is_a_connection_problem() -> None:
    client = EtcdClient(
        ["http://one:2379"], transport=httpx.MockTransport(lambda r: httpx.Response(200, text="<html>")), retry_for=0.2
    )
    with pytest.raises(ConnectionProblem, match="not JSON"):
        await client.range(b"k")
    await client.aclose()


@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2]",  # JSON, not an object
        b'{"header": {"revision": NaN}}',
        b'{"header": {"revision": Infinity}}',
        b'{"kvs": [{"key": "\\ud800"}]}',  # a lone surrogate escape
        b'{"kvs": "\xff\xfe"}',  # not UTF-8
        b"[" * 100_000 + b"]" * 100_000,  # nested far beyond any parser's stack
        b'{"kvs": [{"key": "aw=="}]',  # truncated
    ],
)
async def test_hostile_json_answers_are_connection_problems(body: bytes) -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, content=body))
    client = EtcdClient(["http://one:2379"], transport=transport, retry_for=0.2)
    with pytest.raises(ConnectionProblem, match=r"not JSON|not a JSON object"):
        await client.range(b"k")
    await client.aclose()


async def test_huge_integers_and_duplicate_keys_in_answers_are_refused_or_last_wins() -> None:
    """An integer beyond 64 bits is never taken as a revision; a repeated key counts once (the last)."""
    for digits in (30, 400):  # a float to the parser, or too long for one: never an int
        huge = b'{"kvs": [{"key": "aw==", "mod_revision": ' + b"9" * digits + b"}]}"
        transport = httpx.MockTransport(lambda r, body=huge: httpx.Response(200, content=body))
        client = EtcdClient(["http://one:2379"], transport=transport, retry_for=0.2)
        with pytest.raises(ConnectionProblem, match=r"integer|not JSON"):
            await client.range(b"k")
        await client.aclose()
    twice = b'{"kvs": [{"key": "aw==", "mod_revision": "5", "mod_revision": "7"}], "count": "1"}'
    client = EtcdClient(
        ["http://one:2379"], transport=httpx.MockTransport(lambda r: httpx.Response(200, content=twice))
    )
    kvs, *_ = await client.range(b"k")
    assert [(kv.key, kv.mod_revision) for kv in kvs] == [(b"k", 7)]
    await client.aclose()


def test_omitted_proto3_defaults_and_int64_strings_decode() -> None:
    assert decode_kvs({}) == []  # an empty range has no "kvs"
    (kv,) = decode_kvs({"kvs": [{"key": base64.b64encode(b"k").decode(), "mod_revision": "9007199254740993"}]})
    assert (kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.lease) == (b"k", b"", 9007199254740993, 0, 0)
    assert as_int(None) == 0 and as_int("42") == 42 and as_int(7) == 7
    assert TxnResult(False, 3).ranges() == []


@pytest.mark.parametrize(
    "answer",
    [
        {"kvs": "nope"},
        {"kvs": [{"key": "***"}]},
        {"kvs": [{"key": 5}]},
        # base64 that is not strictly canonical: short or misplaced padding, whitespace, non-ASCII, data after '='
        {"kvs": [{"key": "aw="}]},
        {"kvs": [{"key": "aw"}]},
        {"kvs": [{"key": "=aw="}]},
        {"kvs": [{"key": "aw==aw=="}]},
        {"kvs": [{"key": "a w=="}]},
        {"kvs": [{"key": "aw==\n"}]},
        {"kvs": [{"key": "aé=="}]},
        {"kvs": [{"key": "a" * 4 + "\x00"}]},
        {"kvs": [{"key": "aw==", "value": "-_8="}]},  # the URL-safe alphabet is not etcd's
        {"kvs": [{"key": "aw==", "mod_revision": "1e9"}]},
        {"kvs": [{"key": "aw==", "mod_revision": True}]},
        {"kvs": [{"key": "aw==", "mod_revision": "9" * 400}]},
        {"kvs": [7]},
    ],
)
def test_malformed_gateway_answers_are_connection_problems(answer: dict[str, Any]) -> None:
    with pytest.raises(ConnectionProblem):
        decode_kvs(answer)


async def test_a_write_whose_answer_was_lost_is_not_applied_twice(etcd: EtcdServer) -> None:
    store = await EtcdStore.open(etcd.url, key=generate_key(), prefix=unique_prefix())
    real_txn = store._client.txn
    lost: list[int] = []

    async def txn_losing_the_answer(compare: Any, success: Any, failure: Any = (), **kw: Any) -> TxnResult:
        result = await real_txn(compare, success, failure, **kw)
        if compare and not lost:  # the first guarded write lands, then its answer is "lost"
            lost.append(result.revision)
            raise Ambiguous("etcd: etcdserver: request timed out (the write may have been applied)")
        return result

    async with store:
        store._client.txn = txn_losing_the_answer  # type: ignore[method-assign]
        record = await store.create("c", "a", cluster())  # not AlreadyExists: it was our own write
        assert lost and record.revision == 1
        assert await store.revision() == 1
        assert (await store.get("c", "a")).revision == 1


# --- several registries on one prefix ------------------------------------------------------------------------


async def test_two_registries_see_each_others_writes_in_one_revision_order(etcd: EtcdServer) -> None:
    a, b = await open_pair(etcd)
    async with a, b, a.watch(["c"], since=0) as on_a, b.watch(["c"], since=0) as on_b:

        async def write(store: EtcdStore, side: str) -> None:
            for n in range(10):
                await store.put("c", f"{side}{n}", cluster(n=n))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, a, "a")
            nursery.start_soon(write, b, "b")
        seen_a, seen_b = await take(on_a, 20), await take(on_b, 20)
        assert revisions(seen_a) == revisions(seen_b) == list(range(1, 21))
        assert [e.record.name for e in seen_a] == [e.record.name for e in seen_b]
        assert await a.revision() == await b.revision() == 20


async def test_creates_take_one_round_trip_and_stay_exact_when_another_registry_wrote(etcd: EtcdServer) -> None:
    """A group of creates is planned against the state this registry's last txn left and committed in ONE
    etcd request; when another registry wrote meanwhile (or the name exists), that txn writes nothing, its
    failure branch reads the snapshot, and the retry is planned on it: revisions stay gap-free and
    AlreadyExists is still AlreadyExists."""
    a, b = await open_pair(etcd)
    requests: list[str] = []  # a's etcd requests on the write path: "read" (a snapshot) or "write"
    real_txn = a._client.txn

    async def recording_txn(compare: Any, success: Any, failure: Any = (), **kw: Any) -> TxnResult:
        if compare:
            requests.append("write")
        elif success[:2] == [range_op(a._rev_key), range_op(a._floor_key)]:
            requests.append("read")
        return await real_txn(compare, success, failure, **kw)

    async with a, b:
        a._client.txn = recording_txn  # type: ignore[method-assign]
        await a.create("c", "a1", cluster())
        assert requests == ["read", "write"]  # nothing known yet: read, then write
        requests.clear()
        assert (await a.create("c", "a2", cluster())).revision == 2
        assert requests == ["write"]
        await b.create("c", "b1", cluster())  # the counter moves under a
        requests.clear()
        assert (await a.create("c", "a3", cluster())).revision == 4
        assert requests == ["write", "write"]  # refused, read by its failure branch, then written
        await b.create("c", "taken", cluster(v=1))
        with pytest.raises(AlreadyExists):
            await a.create("c", "taken", cluster(v=2))
        assert (await a.get("c", "taken")).value == cluster(v=1)
        requests.clear()
        assert (await a.create("c", "a4", cluster())).revision == 6
        assert requests in (["write"], ["read", "write"])  # after a refusal: at most the read of old
        assert [r.name for r in await b.list("c")] == ["a1", "a2", "a3", "a4", "b1", "taken"]
        assert await a.revision() == await b.revision() == 6
        # entries a kept for txns etcd refused matched no event (b's values) and are gone with the rest
        assert a._own == {} and a._own_bytes == 0


@pytest.mark.parametrize(("max_txn_ops", "sizes"), [(8, [1, 3, 4, 7]), (128, [1, 62, 63, 64, 300, 2000])])
async def test_create_batches_of_every_size_around_the_one_round_trip_bound(
    etcd: EtcdServer, max_txn_ops: int, sizes: list[int]
) -> None:
    """Batches just within, at and beyond what one flat txn holds (compares, writes and failure reads),
    and ones that need nested txns: each commits whole, after a write that made the store's state known."""
    store = await EtcdStore.open(etcd.url, key=generate_key(), prefix=unique_prefix(), max_txn_ops=max_txn_ops)
    async with store:
        total = 0
        for batch_no, size in enumerate(sizes):
            records = await store.create_many("c", [(f"b{batch_no}-{i:05d}", cluster(i=i)) for i in range(size)])
            assert [r.revision for r in records] == list(range(total + 1, total + size + 1))
            total += size
        assert len(await store.list("c")) == total
        assert await store.revision() == total


async def test_compare_and_swap_holds_across_registries(etcd: EtcdServer) -> None:
    a, b = await open_pair(etcd)
    async with a, b:
        created = await a.create("c", "x", cluster(v=1))
        await b.update("c", "x", cluster(v=2), expected_revision=created.revision)
        with pytest.raises(CompareFailed):
            await a.update("c", "x", cluster(v=3), expected_revision=created.revision)
        assert (await a.get("c", "x")).value["spec"] == {"v": 2}


async def test_a_restarted_registry_keeps_data_revision_and_resumes_watches(etcd: EtcdServer) -> None:
    key, prefix = generate_key(), unique_prefix()
    async with await EtcdStore.open(etcd.url, key=key, prefix=prefix) as store:
        for n in range(3):
            await store.put("c", f"n{n}", cluster(n=n))
    async with await EtcdStore.open(etcd.url, key=key, prefix=prefix) as store:
        assert await store.revision() == 3
        assert [r.name for r in await store.list("c")] == ["n0", "n1", "n2"]
        async with store.watch(["c"], since=1) as events:
            await store.delete("c", "n0")
            assert [(e.type, e.record.revision) for e in await take(events, 3)] == [
                ("PUT", 2),
                ("PUT", 3),
                ("DELETE", 4),
            ]


async def test_the_feed_survives_etcd_compaction_past_it(etcd: EtcdServer) -> None:
    a, b = await open_pair(etcd, max_history=5)
    async with a, b, b.watch(["c"]) as on_b:
        seen = []
        for n in range(40):  # a compacts kubeport history, then etcd's, repeatedly
            await a.put("c", "x", cluster(n=n))
            if n % 4 == 3:  # b's feed stays within kubeport's history (5): a feed behind that must relist
                seen += await take(on_b, 4)
        assert revisions(seen) == list(range(1, 41))
        with pytest.raises(Compacted):
            async with b.watch(["c"], since=1):
                pass


async def test_a_feed_cut_off_past_compaction_sends_its_watchers_to_relist(etcd: EtcdServer) -> None:
    a, b = await open_pair(etcd, max_history=5)
    real_watch, real_txn = b._client.watch, b._client.txn

    def partitioned(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionProblem("etcd: partitioned (test)")

    async def partitioned_txn(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionProblem("etcd: partitioned (test)")

    async with a, b:
        async with b.watch(["c"]) as on_b:
            b._client.watch, b._client.txn = partitioned, partitioned_txn  # type: ignore[method-assign]
            if b._kick_scope is not None:
                b._kick_scope.cancel()
            for n in range(20):  # a compacts kubeport's history past everything b has seen
                await a.put("c", "x", cluster(n=n))
            b._client.watch, b._client.txn = real_watch, real_txn  # type: ignore[method-assign]
            with pytest.raises(Compacted):
                await take(on_b, 1, timeout=10)
        async with b.watch(["c"]) as again:  # relist, watch again: live from here
            await a.put("c", "y", cluster())
            assert revisions(await take(again, 1)) == [21]


async def test_a_silent_watch_is_noticed_and_the_feed_catches_up(etcd: EtcdServer) -> None:
    a, b = await open_pair(etcd, watchdog_interval=0.1)

    @asynccontextmanager
    async def silent(*args: Any, **kwargs: Any) -> AsyncIterator[AsyncIterator[Any]]:
        async def nothing() -> AsyncIterator[Any]:
            await trio.sleep_forever()  # a member cut off without closing the connection
            yield

        yield nothing()

    async with a, b, b.watch(["c"]) as on_b:
        b._client.watch = silent  # type: ignore[method-assign]
        if b._kick_scope is not None:
            b._kick_scope.cancel()
        for n in range(3):
            await a.put("c", f"x{n}", cluster())
        assert revisions(await take(on_b, 3, timeout=5)) == [1, 2, 3]
        assert b.resyncs >= 1


# --- the feed and this registry's own writes --------------------------------------------------------------


async def _silence_feed(store: EtcdStore) -> Any:
    """Make ``store``'s feed hang on a watch that never sends anything (a member cut off without closing
    the connection), and wait until it does; return the real ``watch`` to put back. From then on writes
    still commit, and none is published."""
    real = store._client.watch
    hanging = trio.Event()

    @asynccontextmanager
    async def silent(*args: Any, **kwargs: Any) -> AsyncIterator[AsyncIterator[Any]]:
        async def nothing() -> AsyncIterator[Any]:
            hanging.set()
            await trio.sleep_forever()
            yield

        yield nothing()

    store._client.watch = silent  # type: ignore[method-assign]
    if store._kick_scope is not None:  # else the feed has yet to start its watch: it starts this one
        store._kick_scope.cancel()
    with trio.fail_after(10):
        await hanging.wait()  # the feed re-read history and now waits on the silent watch
    return real


def _resume_feed(store: EtcdStore, real: Any) -> None:
    store._client.watch = real  # type: ignore[method-assign]
    assert store._kick_scope is not None
    store._kick_scope.cancel()  # the feed re-reads what it missed (range reads), then watches again


def _count_decodes(store: EtcdStore) -> list[int]:
    """A counter of the history entries ``store`` unseals and decodes from etcd."""
    calls = [0]
    real = store._decode_change

    def counting(kv: Any) -> Any:
        calls[0] += 1
        return real(kv)

    store._decode_change = counting  # type: ignore[method-assign]
    return calls


async def _committed(store: EtcdStore, revision: int) -> None:
    """Wait until ``store``'s own txn for ``revision`` came back (its feed may not have published it)."""
    await wait_until(lambda: store._known is not None and store._known[0] >= revision)


# A feed held back for as long as a test needs (no publish deadline, no watchdog kick).
_PATIENT: dict[str, Any] = {"publish_timeout": 60.0, "watchdog_interval": 1000.0}


async def _creates_behind_a_silent_feed(store: EtcdStore, nursery: trio.Nursery, count: int) -> tuple[Any, list[int]]:
    """Silence ``store``'s feed, start ``count`` creates of ``c/x<n>`` in ``nursery`` and wait until etcd
    committed them all: (the real watch, for :func:`_resume_feed`; the decode counter)."""
    real = await _silence_feed(store)
    decodes = _count_decodes(store)
    for n in range(count):
        nursery.start_soon(functools.partial(store.create, "c", f"x{n}", cluster(n=n)))
    await _committed(store, count)
    return real, decodes


def _secret_cluster(kubeconfig: str) -> dict[str, Any]:
    return {"kind": "kube_cluster", "metadata": {"labels": {"env": "prod"}}, "spec": {"kubeconfig": kubeconfig}}


async def test_the_feed_publishes_its_own_writes_as_etcd_holds_them_without_decoding_them_again(
    etcd: EtcdServer,
) -> None:
    """Own writes the feed publishes from memory are the events a replay decoded from etcd gives: updates,
    a secret's redaction by a later write (the entry etcd holds is the redacted one), expiry, deletes."""
    clock = FakeClock()
    options: dict[str, Any] = {"clock": clock, **_PATIENT}
    async with await EtcdStore.open(etcd.url, key=generate_key(), prefix=unique_prefix(), **options) as a:
        await a.create("kube_cluster", "old", _secret_cluster("T0xE"))  # 1, published
        async with a.watch(["c", "kube_cluster"]) as live:
            real = await _silence_feed(a)
            decodes = _count_decodes(a)
            async with trio.open_nursery() as nursery:
                steps: list[Any] = [
                    functools.partial(a.update, "kube_cluster", "old", _secret_cluster("TkVX")),  # 2
                    functools.partial(a.create, "kube_cluster", "k", _secret_cluster("QUFB")),  # 3
                    functools.partial(a.update, "kube_cluster", "k", _secret_cluster("QkJC")),  # 4: redacts 3
                    functools.partial(a.create, "c", "t", cluster(n=1), expires=START + 100),  # 5
                    functools.partial(a.delete, "c", "t"),  # 6
                ]
                for revision, step in enumerate(steps, 2):
                    nursery.start_soon(step)  # each waits for the silent feed: in the background
                    await _committed(a, revision)
                assert sorted(a._own) == [2, 3, 4, 5, 6] and a._revision == 1
                _resume_feed(a, real)
                published = await take(live, 5)
            assert decodes == [0]  # every entry came from memory
            assert a._own == {}
        async with a.watch(["c", "kube_cluster"], since=1) as replay:
            assert await take(replay, 5) == published  # decoded from etcd's history
        assert decodes[0] == 5
        assert "QUFB" not in repr(published)  # revision 3's kubeconfig was superseded: never shown


@pytest.mark.parametrize(
    ("max_entries", "max_bytes", "kept"),
    [(3, 1 << 20, [6, 7, 8]), (100, 1, [])],  # bound by number, or by bytes (here: not even one entry)
)
async def test_own_writes_kept_for_the_feed_stay_bounded_when_it_lags(
    etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch, max_entries: int, max_bytes: int, kept: list[int]
) -> None:
    monkeypatch.setattr("registry.store.etcd._OWN_MAX", max_entries)
    monkeypatch.setattr("registry.store.etcd._OWN_MAX_BYTES", max_bytes)
    async with await EtcdStore.open(etcd.url, key=generate_key(), prefix=unique_prefix(), **_PATIENT) as a:
        async with a.watch(["c"]) as live:
            async with trio.open_nursery() as nursery:
                real, decodes = await _creates_behind_a_silent_feed(a, nursery, 8)
                assert sorted(a._own) == kept  # the newest; the feed decodes the others from etcd
                assert a._own_bytes == sum(len(sealed) for sealed, _ in a._own.values())
                _resume_feed(a, real)
                published = await take(live, 8)
            assert revisions(published) == list(range(1, 9))
            assert decodes == [8 - len(kept)]
            assert a._own == {} and a._own_bytes == 0
        async with a.watch(["c"], since=0) as replay:
            assert await take(replay, 8) == published


async def test_a_writer_whose_feed_fell_behind_compaction_forgets_what_it_kept(etcd: EtcdServer) -> None:
    async with await EtcdStore.open(etcd.url, key=generate_key(), prefix=unique_prefix(), **_PATIENT) as a:
        async with a.watch(["c"]) as live:
            async with trio.open_nursery() as nursery:
                real, decodes = await _creates_behind_a_silent_feed(a, nursery, 10)
                assert len(a._own) == 10
                assert await a.compact(keep=4) == 6  # history up to 6 is gone before the feed saw it
                _resume_feed(a, real)
                with pytest.raises(Compacted):
                    await take(live, 1, timeout=10)  # the watcher must relist
            assert a._own == {} and await a.revision() == 10
            assert decodes == [0]  # 7..10 published from memory
        async with a.watch(["c"]) as again:
            await a.create("c", "y", cluster())
            assert revisions(await take(again, 1)) == [11]
            assert a._own == {}


async def test_one_sweep_removes_more_expired_records_than_one_txn_holds(etcd: EtcdServer) -> None:
    clock = FakeClock()
    async with await EtcdStore.open(etcd.url, key=generate_key(), prefix=unique_prefix(), clock=clock) as store:
        for start in range(0, 150, 50):
            await store.create_many(
                "kube_server", [(f"s{n:03d}", {}) for n in range(start, start + 50)], expires=clock.now + 5
            )
        clock.advance(10)
        assert await store.count("kube_server") == 0
        assert await store.expire() == 150
        assert await store.list("kube_server") == []
        assert await store.revision() == 300


# --- leases ------------------------------------------------------------------------------------------------


async def test_one_lease_per_ttl_bucket_not_per_key(etcd: EtcdServer, client: EtcdClient) -> None:
    clock = FakeClock()
    prefix = unique_prefix()
    async with await EtcdStore.open(etcd.url, key=generate_key(), prefix=prefix, clock=clock, lease_grace=60) as store:
        bucket_start = math.ceil(clock.now / 10) * 10 + 10
        for n in range(30):  # thirty heartbeats ending within one 10 s bucket share one lease
            await store.put("kube_server", f"s{n}", cluster(), expires=bucket_start + 0.5 + n / 10)
        await store.put("kube_server", "later", cluster(), expires=bucket_start + 60)
        await store.put("kube_server", "forever", cluster())
        items = prefix.encode() + b"items/"
        kvs, *_ = await client.range(items, prefix_end(items))
        leases = {kv.key.rsplit(b"/", 1)[-1]: kv.lease for kv in kvs}
        assert len({leases[f"s{n}".encode()] for n in range(30)}) == 1
        assert leases[b"later"] not in (0, leases[b"s0"])
        assert leases[b"forever"] == 0
        ttl = await client.lease_ttl(leases[b"s0"])
        assert ttl is not None and 60 <= ttl <= 10 + 60 + 10  # expiry + grace, rounded up to the bucket


async def test_a_lease_that_ran_out_under_the_cache_is_replaced(etcd: EtcdServer, client: EtcdClient) -> None:
    async with await EtcdStore.open(etcd.url, key=generate_key(), prefix=unique_prefix()) as store:
        expires = time.time() + 600
        await store.put("kube_server", "a", cluster(), expires=expires)
        for lease in list(store._leases.values()):
            await client.lease_revoke(lease)  # as if it expired while cached
        await store.put("kube_server", "b", cluster(), expires=expires)  # "requested lease not found" -> new lease
        assert [r.name for r in await store.list("kube_server")] == ["b"]  # revoking the lease freed "a"


async def test_leases_delete_keys_when_no_registry_sweeps(etcd: EtcdServer, client: EtcdClient) -> None:
    prefix = unique_prefix()
    async with await EtcdStore.open(etcd.url, key=generate_key(), prefix=prefix, lease_bucket=1, lease_grace=1) as s:
        await s.put("kube_server", "gone", cluster(), expires=time.time())
    key = prefix.encode() + b"items/kube_server/gone"
    kvs, *_ = await client.range(key)
    async with client.watch(key, start_revision=kvs[0].mod_revision + 1) as events:  # etcd's DELETE at lease end
        with trio.fail_after(10):
            deleted = False
            while not deleted:
                _, batch = await anext(events)
                deleted = any(e.type == "DELETE" for e in batch)


# --- sealing, prefixes, flags ---------------------------------------------------------------------------------


async def test_values_are_sealed_and_another_key_is_refused(etcd: EtcdServer, client: EtcdClient) -> None:
    key, prefix = generate_key(), unique_prefix()
    async with await EtcdStore.open(etcd.url, key=key, prefix=prefix) as store:
        await store.create("cert_authority", "cluster", {"key_pem": "-----BEGIN PRIVATE KEY----- s3cret"})
    start = prefix.encode()
    kvs, *_ = await client.range(start, prefix_end(start))
    assert kvs and not any(b"s3cret" in kv.value or b"PRIVATE" in kv.value for kv in kvs)
    with pytest.raises(BadParameter, match="another key file"):
        await EtcdStore.open(etcd.url, key=generate_key(), prefix=prefix)
    # a sealed value moved to another key does not open
    sealer = Sealer(key)
    blob = sealer.seal(b"/a", b"x")
    assert sealer.open(b"/a", blob) == b"x"
    for where, tampered in ((b"/b", blob), (b"/a", blob[:-1] + bytes([blob[-1] ^ 1])), (b"/a", b"short")):
        with pytest.raises(Unsealable):
            sealer.open(where, tampered)


async def test_prefixes_keep_clusters_apart(etcd: EtcdServer) -> None:
    key = generate_key()
    async with (
        await EtcdStore.open(etcd.url, key=key, prefix=unique_prefix()) as one,
        await EtcdStore.open(etcd.url, key=key, prefix=unique_prefix()) as two,
    ):
        await one.create("c", "a", cluster())
        assert await two.list("c") == []
        assert await two.revision() == 0


async def test_a_batch_larger_than_one_etcd_txn_goes_nested_and_stays_atomic(etcd: EtcdServer) -> None:
    async with await EtcdStore.open(etcd.url, key=generate_key(), prefix=unique_prefix()) as store:
        await store.create("c", "n0999", {})
        with pytest.raises(AlreadyExists):  # the last name is taken: none of the thousand is written
            await store.create_many("c", [(f"n{n:04d}", {}) for n in range(1000)])
        assert await store.count("c") == 1
        async with store.watch(["c"], since=1) as events:
            created = await store.create_many("c", [(f"m{n:04d}", {}) for n in range(1000)])
            assert [r.revision for r in created] == list(range(2, 1002))
            assert revisions(await take(events, 1000)) == list(range(2, 1002))
        deleted = await store.delete_many("c", [f"m{n:04d}" for n in range(1000)])  # the audit trim's size
        assert len(deleted) == 1000 and await store.count("c") == 1
        with pytest.raises(LimitExceeded, match="max-txn-ops"):
            await store.create_many("c", [(f"x{n:04d}", {}) for n in range(2100)])


async def test_the_largest_value_fits_one_etcd_request_and_expiry_adapts_to_large_values(etcd: EtcdServer) -> None:
    clock = FakeClock()
    async with await EtcdStore.open(etcd.url, key=generate_key(), prefix=unique_prefix(), clock=clock) as store:
        big = {"spec": {"kubeconfig": "x" * (MAX_VALUE_BYTES - 100)}}  # a secret kind: the update rewrites history
        await store.create("kube_cluster", "big", big)
        await store.update("kube_cluster", "big", big)
        assert (await store.get("kube_cluster", "big")).value == big
        with pytest.raises(TooLarge):
            await store.create("kube_cluster", "bigger", {"spec": {"kubeconfig": "x" * MAX_VALUE_BYTES}})
        for n in range(12):  # 12 x 300 KB of DELETE history is more than one etcd request takes
            await store.create("kube_server", f"s{n}", {"blob": "y" * 300_000}, expires=clock.now + 1)
        clock.advance(2)
        assert await store.expire() == 12
        assert await store.count("kube_server") == 0


def test_nesting_respects_the_per_level_limit() -> None:
    ops = [{"n": n} for n in range(4000)]
    nested = nest_ops(ops, 128, what="w")
    assert len(nested) <= 128 and all(len(n["request_txn"]["success"]) <= 128 - len(nested) for n in nested)
    assert [op for n in nested for op in n["request_txn"]["success"]] == ops
    assert nest_ops(ops[:128], 128, what="w") == ops[:128]
    with pytest.raises(LimitExceeded):
        nest_ops([{}] * 4097, 128, what="w")


@pytest.mark.parametrize(
    "spec",
    ["", " ", "a,,b", "host", "host:port", "http://h:1/path", "ftp://h:1", "u:p@h:1", "h:99999", "x" * 5000, 5],
)
def test_bad_endpoint_lists_are_refused(spec: Any) -> None:
    with pytest.raises(BadParameter):
        parse_endpoints(spec, tls=False)


def test_endpoint_lists_become_urls() -> None:
    assert parse_endpoints("a:1, [::1]:2,https://b:3", tls=False) == ["http://a:1", "http://[::1]:2", "https://b:3"]
    assert parse_endpoints("a:1", tls=True) == ["https://a:1"]


@pytest.mark.parametrize("prefix", ["", "a b", "/../x/", "/x\n", "/é/", "/" + "x" * 300, None, 5])
def test_bad_prefixes_are_refused(prefix: Any) -> None:
    with pytest.raises(BadParameter):
        check_prefix(prefix)


def test_prefixes_are_normalised() -> None:
    assert check_prefix("kubeport") == "/kubeport/"
    assert check_prefix("/a/b/") == "/a/b/"


@pytest.mark.parametrize("data", [b"", b"not base64!", base64.b64encode(b"short"), b"\x00" * 10_000])
def test_bad_key_files_are_refused(data: bytes) -> None:
    with pytest.raises(BadParameter, match="etcd key file"):
        decode_key_file(data, where="etcd.key")
    key = generate_key()
    assert decode_key_file(encode_key_file(key), where="etcd.key") == key


@pytest.mark.parametrize(
    "config",
    [
        StoreConfig(store="etcd://"),
        StoreConfig(store="mysql://h:1"),
        StoreConfig(store="sqlite", etcd_prefix="/other/"),
        StoreConfig(store="sqlite", etcd_ca=Path("ca.pem")),
        StoreConfig(store="etcd://h:1", etcd_cert=Path("c.pem")),
        StoreConfig(store="etcd://h:1", etcd_prefix="/bad prefix/"),
    ],
)
def test_bad_store_flags_are_refused_before_anything_opens(config: StoreConfig) -> None:
    with pytest.raises(BadParameter):
        config.check()


async def test_the_key_file_is_created_once_0600_and_removed_when_refused(etcd: EtcdServer, tmp_path: Path) -> None:
    config = StoreConfig(store=f"etcd://{etcd.endpoint}", etcd_prefix=unique_prefix())
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir(mode=0o700)
    second.mkdir(mode=0o700)
    store = await open_registry_store(config, first)
    await store.aclose()
    key_file = first / "etcd.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    written = key_file.read_bytes()
    await (await open_registry_store(config, first)).aclose()
    assert key_file.read_bytes() == written  # reused, never replaced
    with pytest.raises(BadParameter, match=r"copy etcd\.key"):
        await open_registry_store(config, second)
    assert not (second / "etcd.key").exists()
    (second / "etcd.key").write_bytes(written)
    await (await open_registry_store(config, second)).aclose()


async def test_tls_flags_that_do_not_load_are_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    config = StoreConfig(store=f"etcd://127.0.0.1:{free_port()}", etcd_ca=bad)
    with pytest.raises(BadParameter, match="etcd TLS"):
        await open_registry_store(config, tmp_path)
    missing = StoreConfig(store="etcds://127.0.0.1:1", etcd_cert=tmp_path / "no.pem", etcd_key=tmp_path / "no.key")
    with pytest.raises(BadParameter, match="--etcd-cert"):
        await open_registry_store(missing, tmp_path)


async def test_tls_to_etcd_with_a_client_certificate(tmp_path: Path) -> None:
    binary = find_etcd()
    if binary is None:
        pytest.skip(SKIP_REASON)
    now = datetime.now(tz=UTC)
    ca = CertAuthority.generate("etcd-test", now=now)
    files = {"ca.pem": ca.cert_pem}
    for side in ("server", "client"):
        cert, key = issue_server_certificate(ca, ["127.0.0.1"], now=now)
        files[f"{side}.pem"], files[f"{side}-key.pem"] = cert, key
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    tls = TLSFiles(tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server-key.pem")
    server = EtcdServer(binary, tmp_path / "data", tls=tls).start()
    try:
        config = StoreConfig(
            store=f"etcd://{server.endpoint}",
            etcd_ca=tmp_path / "ca.pem",
            etcd_cert=tmp_path / "client.pem",
            etcd_key=tmp_path / "client-key.pem",
        )
        store = await open_registry_store(config, tmp_path)
        async with store:
            await store.create("c", "a", cluster())
            assert [r.name for r in await store.list("c")] == ["a"]
        untrusted = StoreConfig(store=f"etcds://{server.endpoint}")  # the system roots do not know this CA
        with pytest.raises(ConnectionProblem, match="TLS verification failed"), trio.fail_after(5):
            await open_registry_store(untrusted, tmp_path)
    finally:
        server.kill()


def test_put_op_shape() -> None:
    # int64 fields go out as strings; a zero lease is left out as proto3 does
    assert put_op(b"k", b"v", lease=7)["request_put"]["lease"] == "7"
    assert "lease" not in put_op(b"k", b"v")["request_put"]


# --- the command line ----------------------------------------------------------------------------------------


def test_registry_start_reads_the_store_flags() -> None:
    args = parse_command_line(
        kubeport_main.build_parser(),
        ["registry", "start", "--store", "etcd://a:1,b:2", "--etcd-prefix", "/prod/", "--etcd-ca", "~/ca.pem"],
    )
    config = kubeport_main._store_config(args)
    assert (config.etcd_prefix, config.etcd_ca) == ("/prod/", Path("~/ca.pem").expanduser())
    assert config.endpoints() == ["https://a:1", "https://b:2"]  # a CA given: TLS to etcd
    default = kubeport_main._store_config(parse_command_line(kubeport_main.build_parser(), ["registry", "start"]))
    assert default == StoreConfig(store="sqlite")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--store", "mysql://h:1"], "ERROR: --store 'mysql://h:1': use sqlite"),
        (["--etcd-prefix", "/p/"], "ERROR: --etcd-prefix/--etcd-ca/--etcd-cert/--etcd-key need --store etcd://"),
        (["--store", "etcd://h:1", "--etcd-cert", "c.pem"], "ERROR: --etcd-cert and --etcd-key go together"),
        (["--store", "etcd://h:1", "--etcd-prefix", "/a b/"], "ERROR: etcd prefix"),
    ],
)
def test_bad_store_flags_are_one_error_line(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert kubeport_main.main(["registry", "start", "--data-dir", str(tmp_path / "d"), *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "d" / "etcd.key").exists()


@pytest.mark.parametrize("value", ["", " ", "etcd://h:1\x00", "x" * 100_000])
def test_empty_huge_or_control_store_values_are_usage_errors(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_command_line(kubeport_main.build_parser(), ["registry", "start", "--store", value])
    assert exc.value.code == 2
    assert "--store" in capsys.readouterr().err


# --- the test infrastructure -------------------------------------------------------------------------------


def test_a_shared_etcd_that_died_is_replaced_with_a_warning_that_says_why() -> None:
    lost = shared_etcd()
    lost.kill()  # as if the machine had killed it between two tests
    with pytest.warns(UserWarning, match=r"exited with -9; started a new one"):
        fresh = shared_etcd()
    assert fresh is not lost and fresh.alive
    assert httpx.post(f"{fresh.url}/v3/kv/range", json={"key": "AA=="}, timeout=5).status_code == 200
    assert shared_etcd() is fresh  # a healthy one is kept
