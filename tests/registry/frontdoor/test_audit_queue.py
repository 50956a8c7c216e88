"""The front door's audit queue writes what is waiting together: runs of ``Registry.audit`` events as one
``audit_many`` (one store commit), aggregated-failure jobs one by one, in submission order; failures and drops
are counted, never silent."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from registry.core.errors import BadParameter, KubeportError
from registry.frontdoor.serve import AUDIT_BATCH, FrontDoorLimits, _Audit, _AuditQueue
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


async def test_with_a_linger_the_events_of_the_next_connections_share_one_commit(
    mock_clock: trio.testing.MockClock,
) -> None:
    """One store commit costs about the same CPU whatever its size: the first event waits ``linger`` for the
    events that arrive meanwhile, and all go out together; nothing is written before the linger is over."""
    sink = Sink()
    queue = _AuditQueue(100, sink.many, linger=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        queue.submit(_Audit("start-1", None, {}))
        await trio.testing.wait_all_tasks_blocked()
        queue.submit(_Audit("start-2", None, {}))
        queue.submit(_Audit("end-1", None, {}))
        await trio.testing.wait_all_tasks_blocked()
        assert sink.calls == []
        mock_clock.jump(0.05)
        await trio.testing.wait_all_tasks_blocked()
        assert sink.calls == [["start-1", "start-2", "end-1"]]
        assert (queue.written, queue.batches) == (3, 1)
        nursery.cancel_scope.cancel()


async def test_shutdown_during_the_linger_writes_the_held_event() -> None:
    sink = Sink()
    queue = _AuditQueue(100, sink.many, linger=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        queue.submit(_Audit("held", None, {}))
        queue.submit(_Audit("queued", None, {}))
        await trio.testing.wait_all_tasks_blocked()  # the task holds "held" and sleeps
        assert sink.calls == []
        nursery.cancel_scope.cancel()
    assert sink.calls == [["held", "queued"]]
    assert queue.written == 2


@pytest.mark.parametrize("linger", [-1, float("nan"), float("inf"), 11, True, "0.1"])
def test_a_bad_audit_linger_is_refused(linger: Any) -> None:
    with pytest.raises(BadParameter, match="audit_linger"):
        FrontDoorLimits(audit_linger=linger)
