"""agent.access: the agent keeps one tunnel per live front door the registry lists, starts tunnels to new
ones and drops those to front doors that went away; a failed or empty answer drops nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from agent.access import MAX_FRONT_DOORS, TunnelPool, front_doors_from_ping, serve_access
from registry.core.errors import ConnectionProblem


class Dials:
    """A fake network: every dial to an address hangs until cancelled; records dials and cancellations."""

    def __init__(self) -> None:
        self.dialed: list[str] = []
        self.cancelled: list[str] = []

    def to(self, address: str) -> Callable[[], Awaitable[trio.abc.Stream]]:
        async def dial() -> trio.abc.Stream:
            self.dialed.append(address)
            try:
                await trio.sleep_forever()
            finally:
                self.cancelled.append(address)

        return dial


async def no_handler(stream: Any, info: Any) -> None:
    raise AssertionError("no stream expected")


async def test_the_pool_starts_new_tunnels_and_drops_gone_ones(nursery: trio.Nursery) -> None:
    dials = Dials()
    pool = TunnelPool(nursery, dials.to, no_handler)
    await pool.update(("a:3026", "b:3026"))
    await trio.testing.wait_all_tasks_blocked()
    assert pool.addresses == ("a:3026", "b:3026")
    assert sorted(dials.dialed) == ["a:3026", "b:3026"]

    await pool.update(("b:3026", "c:3026"))
    await trio.testing.wait_all_tasks_blocked()
    assert pool.addresses == ("b:3026", "c:3026")
    assert dials.cancelled == ["a:3026"]  # only the tunnel to the front door that went away
    assert dials.dialed.count("b:3026") == 1  # the kept tunnel was not redialed
    stats = pool.statistics()
    assert stats["started_total"] == 3 and stats["dropped_total"] == 1
    assert set(stats["tunnels"]) == {"b:3026", "c:3026"}


class Registry:
    """ping answers from a list (the last one forever)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)

    async def ping(self) -> dict[str, Any]:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]


class Table:
    def served_cluster(self, name: str) -> None:
        return None


async def test_serve_access_follows_the_listed_front_doors(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry(
        {"kube_front_doors": ["a:3026", "b:3026"]},
        ConnectionProblem("every registry is down"),  # keeps both
        {"kube_front_doors": []},  # keeps both: with nowhere else to go, the tunnels keep redialing
        {"kube_front_doors": ["b:3026"]},  # a went away
        {"kube_front_doors": ["b:3026"]},
    )
    dials = Dials()
    seen: list[tuple[str, ...]] = []
    monkeypatch.setattr("agent.access.tunnel_dialer", lambda where, identity: dials.to("somewhere"))
    async with trio.open_nursery() as nursery:
        pool: TunnelPool = await nursery.start(
            lambda task_status: serve_access(
                host_id="h",
                table=Table(),  # type: ignore[arg-type]
                client=lambda: registry,  # type: ignore[arg-type,return-value]
                identity=lambda: None,  # type: ignore[arg-type,return-value]
                refresh_interval=10,
                task_status=task_status,
            )
        )
        await trio.sleep(5)  # halfway between two refreshes (at 0, 10, 20, 30 s)
        for _ in range(4):
            seen.append(pool.addresses)
            await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert seen == [("a:3026", "b:3026"), ("a:3026", "b:3026"), ("a:3026", "b:3026"), ("b:3026",)]


@pytest.mark.parametrize(
    ("ping", "expected"),
    [
        ({"kube_front_doors": ["b:1", "a:1", "a:1"]}, ("a:1", "b:1")),
        ({"kube_public_addr": "old:3026"}, ("old:3026",)),  # a registry from before the list
        ({"kube_public_addr": ""}, ()),
        ({}, ()),
        ({"kube_front_doors": [], "kube_public_addr": "x:1"}, ()),  # the list wins when present
        ({"kube_front_doors": "a:1"}, ()),
        ({"kube_front_doors": {"a": 1}}, ()),
        ({"kube_front_doors": [1, None, ["a:1"], "", "no-port", "a b:1", "https://a:1", "x" * 5000 + ":1", "ok:1"]},
         ("ok:1",)),
    ],
)  # fmt: skip
def test_front_doors_from_a_ping(ping: dict[str, Any], expected: tuple[str, ...]) -> None:
    assert front_doors_from_ping(ping) == expected


def test_a_huge_list_is_capped() -> None:
    doors = front_doors_from_ping({"kube_front_doors": [f"d{i}:1" for i in range(100_000)]})
    assert len(doors) == MAX_FRONT_DOORS


async def test_a_connected_tunnel_is_kept_until_it_goes_down(nursery: trio.Nursery) -> None:
    """A front door missing from the list but still connected keeps its tunnel (its kubectl streams live on)."""
    dials = Dials()
    pool = TunnelPool(nursery, dials.to, no_handler)
    await pool.update(("a:3026",))
    await trio.testing.wait_all_tasks_blocked()
    _, status = pool._tunnels["a:3026"]
    status.connected = True  # as serve_tunnel marks it once the front door's SETTINGS arrived
    await pool.update(("b:3026",))
    await trio.testing.wait_all_tasks_blocked()
    assert pool.addresses == ("a:3026", "b:3026") and dials.cancelled == []
    status.connected = False
    await pool.update(("b:3026",))
    await trio.testing.wait_all_tasks_blocked()
    assert list(pool.addresses) == ["b:3026"] and dials.cancelled == ["a:3026"]
