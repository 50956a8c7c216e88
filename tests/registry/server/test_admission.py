"""The connection-admission policy (sans-IO): budgets, who gets shed, who never does."""

from __future__ import annotations

import pytest

from registry.core.errors import BadParameter
from registry.server.admission import Admission, AdmissionLimits, source_of


def admit_ok(admission: Admission, source: str) -> int:
    decision = admission.admit(source)
    assert decision.conn_id is not None, decision.reason
    return decision.conn_id


def test_per_source_budget_sheds_that_sources_longest_idle_connection() -> None:
    admission = Admission(AdmissionLimits(max_connections=100, max_unauthenticated_per_source=3))
    first = [admit_ok(admission, "10.0.0.1") for _ in range(3)]
    other = admit_ok(admission, "10.0.0.2")
    decision = admission.admit("10.0.0.1")
    assert decision.admitted
    assert decision.shed == (first[0],)  # its own oldest, never another source's connection
    assert other not in decision.shed
    stats = admission.statistics()
    assert stats["unauthenticated"] == 4
    assert stats["shed_total"] == 1
    admission.on_close(first[0])  # the shed connection's task ends later: a no-op
    assert admission.statistics()["unauthenticated"] == 4


def test_authenticated_connections_leave_the_unauthenticated_budgets_and_are_never_shed() -> None:
    admission = Admission(AdmissionLimits(max_connections=4, max_unauthenticated=4, max_unauthenticated_per_source=2))
    agents = [admit_ok(admission, "127.0.0.1") for _ in range(2)]
    for conn in agents:
        admission.on_authenticated(conn)
    # Same source, budget of 2: authenticated ones do not count.
    floods = [admit_ok(admission, "127.0.0.1") for _ in range(2)]
    assert admission.statistics()["authenticated"] == 2
    # All 4 slots used: a new connection sheds an unauthenticated one, never an agent.
    for _ in range(20):
        decision = admission.admit("127.0.0.1")
        assert decision.admitted
        assert not set(decision.shed) & set(agents)
        floods.append(decision.conn_id)  # type: ignore[arg-type]
    assert admission.statistics()["connections"] == 4


def test_busy_connections_are_not_shed_and_refusal_happens_only_without_victims() -> None:
    admission = Admission(AdmissionLimits(max_connections=2))
    a = admit_ok(admission, "10.0.0.1")
    b = admit_ok(admission, "10.0.0.2")
    admission.on_busy(a)
    admission.on_busy(b)
    decision = admission.admit("10.0.0.3")
    assert not decision.admitted
    assert "slot" in decision.reason
    assert admission.statistics()["refused_total"] == 1
    admission.on_idle(b)
    decision = admission.admit("10.0.0.3")
    assert decision.shed == (b,)


def test_longest_idle_goes_first_and_a_served_connection_becomes_the_newest_idle() -> None:
    admission = Admission(AdmissionLimits(max_connections=3))
    a, b, c = (admit_ok(admission, "10.0.0.1") for _ in range(3))
    admission.on_busy(a)
    admission.on_idle(a)  # a just finished a request: b is now the longest idle
    assert admission.admit("10.0.0.9").shed == (b,)
    assert admission.admit("10.0.0.9").shed == (c,)


def test_unauthenticated_budget_keeps_slots_for_authenticated_callers() -> None:
    admission = Admission(AdmissionLimits(max_connections=10, max_unauthenticated=4))
    for i in range(100):
        assert admission.admit(f"10.0.{i}.1").admitted
    stats = admission.statistics()
    assert stats["connections"] == 4
    assert stats["shed_total"] == 96


def test_per_source_refusal_when_all_of_its_connections_are_busy() -> None:
    admission = Admission(AdmissionLimits(max_connections=10, max_unauthenticated_per_source=1))
    a = admit_ok(admission, "10.0.0.1")
    admission.on_busy(a)
    decision = admission.admit("10.0.0.1")
    assert not decision.admitted
    assert "10.0.0.1" in decision.reason
    assert admission.admit("10.0.0.2").admitted  # another source is unaffected


def test_close_is_idempotent_and_unknown_ids_are_ignored() -> None:
    admission = Admission()
    a = admit_ok(admission, "x")
    admission.on_authenticated(a)
    admission.on_authenticated(a)
    admission.on_close(a)
    admission.on_close(a)
    for call in (admission.on_busy, admission.on_idle, admission.on_authenticated, admission.on_close):
        call(12345)
    stats = admission.statistics()
    assert stats["connections"] == 0
    assert stats["unauthenticated"] == 0
    assert stats["sources"] == 0


def test_invariants_hold_under_a_random_workload() -> None:
    import random

    rng = random.Random(7)
    limits = AdmissionLimits(max_connections=20, max_unauthenticated=12, max_unauthenticated_per_source=5)
    admission = Admission(limits)
    live: set[int] = set()
    authenticated: set[int] = set()
    for _ in range(5000):
        op = rng.random()
        if op < 0.5 or not live:
            decision = admission.admit(f"10.0.0.{rng.randrange(6)}")
            live -= set(decision.shed)
            assert not set(decision.shed) & authenticated
            if decision.conn_id is not None:
                live.add(decision.conn_id)
        else:
            conn = rng.choice(sorted(live))
            action = rng.choice(("auth", "busy", "idle", "close"))
            if action == "auth":
                admission.on_authenticated(conn)
                authenticated.add(conn)
            elif action == "busy":
                admission.on_busy(conn)
            elif action == "idle":
                admission.on_idle(conn)
            else:
                admission.on_close(conn)
                live.discard(conn)
                authenticated.discard(conn)
        stats = admission.statistics()
        assert stats["connections"] == len(live) <= limits.max_connections
        assert stats["unauthenticated"] <= 12
        assert stats["authenticated"] == len(authenticated)


@pytest.mark.parametrize(
    ("host", "source"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:db8::ffff:1", "2001:db8::/64"),
        ("[2001:db8:0:1::5]", "2001:db8:0:1::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("/run/some.sock", "/run/some.sock"),
    ],
)
def test_source_of(host: str, source: str) -> None:
    assert source_of(host) == source


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_connections": 0},
        {"max_connections": -1},
        {"max_connections": True},
        {"max_connections": 1.5},
        {"max_unauthenticated": 0},
        {"max_unauthenticated_per_source": -5},
        {"max_unauthenticated_per_source": "64"},
    ],
)
def test_bad_budgets_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(BadParameter):
        AdmissionLimits(**kwargs)  # type: ignore[arg-type]
