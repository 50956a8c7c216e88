"""Regression (found by the leader-kill fault test): one request stuck on an etcd member stalled every write.

When the etcd leader dies, a txn a follower forwarded to it is lost and the follower answers nothing for it
until its own timeout, about 5 s; the store holds its write lock meanwhile, so every registry write waited
that long after the election was over (the fault test measured 5.2 s pauses instead of about 1.5 s). Now,
once any request gives up on a member, the requests still waiting on it are given up on too: a read moves to
the next member, a write that may have landed is Ambiguous (the store then checks whether it did).

A scripted two-member etcd (httpx MockTransport) and trio's MockClock: no real time passes.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
import trio.testing

from registry.store.etcd_client import Ambiguous, EtcdClient, put_op

LEADER_CHANGED = {"error": "etcdserver: leader changed", "code": 14, "message": "etcdserver: leader changed"}
OK = {"header": {"revision": "9"}, "succeeded": True}


def stuck_member() -> tuple[list[str], httpx.MockTransport]:
    """Member "one" never answers its first request and says "leader changed" to the next; "two" answers."""
    asked: list[str] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        asked.append(f"{host}{request.url.path}")
        if host == "one" and asked.count(f"{host}{request.url.path}") == 1 and "txn" in request.url.path:
            await trio.sleep_forever()  # the lost proposal
        if host == "one":
            return httpx.Response(503, json=LEADER_CHANGED)
        return httpx.Response(200, json=OK)

    return asked, httpx.MockTransport(answer)


@pytest.mark.parametrize("idempotent", [False, True])
async def test_a_request_stuck_on_a_member_others_left_is_given_up_on(
    idempotent: bool, autojump_clock: trio.testing.MockClock
) -> None:
    asked, transport = stuck_member()
    client = EtcdClient(["http://one:2379", "http://two:2379"], transport=transport, request_timeout=5.0)
    outcome: dict[str, Any] = {}

    async def stuck_write() -> None:
        started = trio.current_time()
        try:
            outcome["result"] = await client.txn([], [put_op(b"k", b"v")], idempotent=idempotent)
        except Ambiguous as exc:
            outcome["error"] = exc
        outcome["took"] = trio.current_time() - started

    # a mock transport has no network timeout: without the fix the write would wait for ever
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stuck_write)
            await trio.sleep(0.5)  # the write is now waiting on member one (MockClock: no real time)
            kvs, *_ = await client.range(b"x")  # one says "leader changed": this read moves to two
            assert kvs == []
    await client.aclose()

    assert outcome["took"] < 1.0, "the stuck request waited for its timeout"
    assert client.abandoned == 1
    if idempotent:
        assert outcome["result"].succeeded and "two/v3/kv/txn" in asked
    else:
        assert isinstance(outcome.get("error"), Ambiguous)  # may have landed: never sent twice
        assert asked.count("two/v3/kv/txn") == 0
