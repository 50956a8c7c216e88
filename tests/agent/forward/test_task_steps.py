"""Scheduler passes per kept-alive request: the forwarder's task does not wake more often than it must.

Every pass of trio's scheduler costs Python work (and an ``epoll_wait``) in the agent on every request; the
forwarder's own code must add none beyond the waits it needs. On a tunnel stream over memory streams a
kept-alive GET costs the session task: one wake for the request, one checkpoint of the upstream send, one
wait for the answer's head (the read waits itself: no peek-and-park first, whose read then needed a
checkpoint of its own), and the tunnel's write of the answer (two checkpoints of a memory stream here).
"""

from __future__ import annotations

import collections

import trio
from trio.abc import Instrument

from tests.agent.forward.forward_helpers import PREFIX, open_client, world_for
from tests.fakes.kube_api import FakeKube

REQUESTS = 40


class _Steps(Instrument):
    def __init__(self) -> None:
        self.on = False
        self.steps: collections.Counter[str] = collections.Counter()
        self.spawned = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.on:
            self.steps[task.name] += 1

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        if self.on:
            self.spawned += 1


async def test_a_kept_alive_get_costs_the_session_task_five_scheduler_passes_and_spawns_no_task(
    nursery: trio.Nursery, fake_kube: FakeKube
) -> None:
    world = world_for(fake_kube)
    client = await open_client(nursery, world, tunnel=True)
    path = PREFIX + "/api/v1/namespaces/default/pods"
    for _ in range(3):  # warm: pooled upstream connection, memos, the user's roles
        assert (await client.request("GET", path)).status == 200
    steps = _Steps()
    trio.lowlevel.add_instrument(steps)
    try:
        steps.on = True
        for _ in range(REQUESTS):
            assert (await client.request("GET", path)).status == 200
        steps.on = False
    finally:
        trio.lowlevel.remove_instrument(steps)
    session = sum(n for name, n in steps.steps.items() if name.endswith("_run_handler"))
    assert session <= 5 * REQUESTS, dict(steps.steps)
    assert steps.spawned == 0
