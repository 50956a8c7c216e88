"""Sans-IO cores of issue 7 §7: the per-source token buckets and the failure aggregator (injected clocks)."""

from __future__ import annotations

import math
import random

import pytest

from registry.core.errors import BadParameter
from registry.server.aggregate import MANY_SOURCES, FailureAggregator
from registry.server.ratelimit import Rate, RateLimiter


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- token buckets ------------------------------------------------------------------------------------


def test_burst_then_steady_rate_per_source() -> None:
    clock = Clock()
    limiter = RateLimiter({"join": Rate(per_second=2.0, burst=5)}, clock=clock)
    assert [limiter.check("join", "10.0.0.1") for _ in range(5)] == [0.0] * 5
    wait = limiter.check("join", "10.0.0.1")
    assert wait == pytest.approx(0.5)
    # another source has its own bucket
    assert limiter.check("join", "10.0.0.2") == 0.0
    clock.now += 0.5
    assert limiter.check("join", "10.0.0.1") == 0.0
    assert limiter.check("join", "10.0.0.1") > 0
    # a long pause refills to the burst, never beyond
    clock.now += 3600
    assert [limiter.check("join", "10.0.0.1") for _ in range(6)].count(0.0) == 5
    stats = limiter.statistics()
    assert stats["limited_total"] == 3
    assert stats["buckets"] == 2


def test_unconfigured_route_classes_are_not_limited() -> None:
    limiter = RateLimiter({"join": Rate(1.0, 1)}, clock=Clock())
    assert all(limiter.check("public", "x") == 0.0 for _ in range(1000))


def test_a_clock_running_backwards_adds_no_tokens() -> None:
    clock = Clock()
    limiter = RateLimiter({"join": Rate(1.0, 1)}, clock=clock)
    assert limiter.check("join", "a") == 0.0
    clock.now -= 1000
    assert limiter.check("join", "a") > 0
    clock.now += 1000  # back to where it was: still no full second has passed
    assert limiter.check("join", "a") > 0
    clock.now += 1
    assert limiter.check("join", "a") == 0.0


def test_memory_is_bounded_by_max_keys() -> None:
    limiter = RateLimiter({"join": Rate(1.0, 1)}, clock=Clock(), max_keys=100)
    for i in range(10_000):
        limiter.check("join", f"10.{i // 256}.{i % 256}.1")
    stats = limiter.statistics()
    assert stats["buckets"] == 100
    assert stats["evicted_total"] == 9_900


def test_sustained_rate_matches_configuration() -> None:
    clock = Clock()
    limiter = RateLimiter({"join": Rate(per_second=5.0, burst=10)}, clock=clock)
    allowed = 0
    for _ in range(100 * 164):  # 164 requests a second for 100 seconds (the flood)
        clock.now += 1 / 164
        allowed += limiter.check("join", "attacker") == 0.0
    assert 10 + 5 * 100 - 2 <= allowed <= 10 + 5 * 100 + 1


@pytest.mark.parametrize(
    ("per_second", "burst"),
    [(0, 1), (-1, 1), (math.nan, 1), (math.inf, 1), (True, 1), (1, 0), (1, 1.5), (1, True), ("1", 1)],
)
def test_bad_rates_are_refused(per_second: object, burst: object) -> None:
    with pytest.raises(BadParameter):
        Rate(per_second, burst)  # type: ignore[arg-type]


# -- failure aggregation ------------------------------------------------------------------------------


def test_first_failure_is_written_at_once_then_one_counted_row_per_window() -> None:
    clock = Clock()
    agg = FailureAggregator(clock=clock, window=60)
    rows = agg.record("instance.join", "10.0.0.1", "bad token", {"nodename": "n1"})
    assert [(r.count, r.fields["nodename"]) for r in rows] == [(1, "n1")]
    for i in range(57):
        clock.now += 1
        assert agg.record("instance.join", "10.0.0.1", "bad token", {"nodename": f"m{i}"}) == []
    assert agg.due() == []  # window still open
    clock.now += 3  # 60 s after the first failure
    (row,) = agg.due()
    assert row.count == 57
    assert row.fields["nodename"] == "m0"  # what the first failure counted in this row said
    assert row.last - row.first == 56
    # the group stays hot for one more window; a quiet window forgets it
    clock.now += 60
    assert agg.due() == []
    assert agg.statistics()["groups"] == 0
    assert len(agg.record("instance.join", "10.0.0.1", "bad token")) == 1  # quiet again: immediate row


def test_a_sustained_flood_writes_one_row_per_window() -> None:
    clock = Clock()
    agg = FailureAggregator(clock=clock, window=10)
    rows = []
    failures = 0
    for _ in range(164 * 100):  # 164/s for 100 s
        clock.now += 1 / 164
        rows += agg.record("instance.join", "attacker", "bad token")
        failures += 1
        rows += agg.due()
    rows += agg.drain()
    assert len(rows) <= 100 // 10 + 2
    assert sum(r.count for r in rows) == failures  # nothing lost, nothing counted twice


def test_groups_are_kept_apart_and_drain_loses_nothing() -> None:
    clock = Clock()
    agg = FailureAggregator(clock=clock, window=60)
    rng = random.Random(3)
    total = 0
    rows = []
    for _ in range(2000):
        clock.now += rng.random()
        rows += agg.record("instance.join", f"10.0.0.{rng.randrange(5)}", rng.choice(["expired", "role"]))
        total += 1
        if rng.random() < 0.05:
            rows += agg.due()
    rows += agg.drain()
    assert sum(r.count for r in rows) == total
    assert agg.statistics()["groups"] == 0
    assert agg.drain() == []
    by_group: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        by_group.setdefault((r.source, r.reason), []).append(r.first)
    assert all(firsts == sorted(firsts) for firsts in by_group.values())


def test_a_window_closed_but_not_collected_is_written_by_the_next_failure() -> None:
    clock = Clock()
    agg = FailureAggregator(clock=clock, window=5)
    agg.record("e", "s", "r")
    agg.record("e", "s", "r")
    clock.now += 10
    rows = agg.record("e", "s", "r")  # due() never ran
    assert [r.count for r in rows] == [1]  # the closed window's count; this failure opens the next one
    clock.now += 10
    assert [r.count for r in agg.due()] == [1]


def test_many_sources_beyond_max_keys_share_one_group() -> None:
    clock = Clock()
    agg = FailureAggregator(clock=clock, window=60, max_keys=10)
    rows = []
    for i in range(1000):
        rows += agg.record("instance.join", f"2001:db8:{i:x}::/64", "bad token")
    rows += agg.drain()
    assert agg.statistics()["groups"] == 0
    assert sum(r.count for r in rows) == 1000
    assert len(rows) <= 12
    assert any(r.source == MANY_SOURCES for r in rows)


@pytest.mark.parametrize("window", [0, -1, math.nan, math.inf, True, "60"])
def test_bad_windows_are_refused(window: object) -> None:
    with pytest.raises(BadParameter):
        FailureAggregator(clock=Clock(), window=window)  # type: ignore[arg-type]
