"""The front door's audit queue writes what is waiting together: runs of ``Registry.audit`` events as one
``audit_many`` (one store commit), aggregated-failure jobs one by one, in submission order; failures and drops
are counted, never silent."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from registry.core.errors import KubeportError
from registry.frontdoor.serve import AUDIT_BATCH, _Audit, _AuditQueue
from registry.server.authz import Caller


class Sink:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[Any] = []
        self.fail = fail

    async def many(self, events: list[tuple[str, Caller | None, dict[str, Any]]]) -> None:
        await trio.lowlevel.checkpoint()
        if self.fail:
            raise KubeportError("store is down")
        self.calls.append([event for event, _, _ in events])

    def job(self, name: str) -> Any:
        async def write() -> None:
            await trio.lowlevel.checkpoint()
            self.calls.append(name)

        return write


async def run_until_idle(queue: _AuditQueue) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


async def test_queued_events_go_out_as_batches_in_order() -> None:
    sink = Sink()
    queue = _AuditQueue(10_000, sink.many)
    for n in range(3):
        queue.submit(_Audit(f"a{n}", None, {}))
    queue.submit(sink.job("failure-row"))
    for n in range(AUDIT_BATCH + 2):
        queue.submit(_Audit(f"b{n}", None, {}))
    await run_until_idle(queue)
    assert sink.calls[:2] == [["a0", "a1", "a2"], "failure-row"]
    rest = sink.calls[2:]
    assert [len(batch) for batch in rest] == [AUDIT_BATCH - 4, 6]  # at most AUDIT_BATCH jobs per round
    assert [e for batch in rest for e in batch] == [f"b{n}" for n in range(AUDIT_BATCH + 2)]
    assert (queue.written, queue.failed, queue.dropped, queue.batches) == (AUDIT_BATCH + 6, 0, 0, 3)


async def test_a_failed_batch_counts_every_event_and_a_full_queue_counts_drops() -> None:
    sink = Sink(fail=True)
    queue = _AuditQueue(4, sink.many)
    for n in range(6):
        queue.submit(_Audit(f"e{n}", None, {}))
    await run_until_idle(queue)
    assert (queue.written, queue.failed, queue.dropped) == (0, 4, 2)


@pytest.mark.parametrize("count", [1, 7])
async def test_shutdown_writes_what_is_queued(count: int) -> None:
    sink = Sink()
    queue = _AuditQueue(100, sink.many)
    with trio.CancelScope() as scope:
        scope.cancel()
        for n in range(count):
            queue.submit(_Audit(f"e{n}", None, {}))
        await queue.run()
    assert sink.calls == [[f"e{n}" for n in range(count)]]
