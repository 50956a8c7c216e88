"""agent.access: the agent finds the front door through the registry and follows it (the rest of the wiring
is covered end to end by tests/integration/test_access_walkthrough.py)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from agent.access import front_door_address, tunnel_dialer
from registry.core.errors import BadParameter, ConnectionProblem


class Registry:
    """A registry whose ping answers from a list, one answer per call (then the last one forever)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.pings = 0

    async def ping(self) -> dict[str, str]:
        self.pings += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return {"kube_public_addr": answer} if answer is not None else {}


async def test_waits_for_a_registry_that_runs_no_front_door_yet(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    registry = Registry(None, ConnectionProblem("registry restarting"), "", "kube.example.com:3026")
    started = trio.current_time()
    address = await front_door_address(lambda: registry, poll_interval=30)  # type: ignore[arg-type,return-value]
    assert address == "kube.example.com:3026"
    assert registry.pings == 4
    assert trio.current_time() - started == pytest.approx(90)  # asked again every 30 s, no busy loop


async def test_the_dialer_asks_where_the_front_door_is_at_every_dial() -> None:
    asked: list[str] = []

    async def address() -> str:
        asked.append("?")
        return "not a host:port:at all"

    dial = tunnel_dialer(address, lambda: None)  # type: ignore[arg-type,return-value]
    for _ in range(2):
        with pytest.raises(BadParameter, match="front door address"):
            await dial()
    assert asked == ["?", "?"]
