"""The forwarder's audit events (agent.forward.audit): built without per-event time formatting or null fields,
and every kind of them is taken whole by the registry's intake (flat fields only), which stores its own time."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from agent.forward.audit import SESSION_END, SESSION_START, request_event, session_event
from registry.core.identity import CertAuthority
from registry.core.identity import Identity as CallerIdentity
from registry.core.kube_access import Identity
from registry.core.kube_request import parse_request
from registry.core.tunnel_info import StreamInfo
from registry.server.authz import Caller
from registry.server.service import AUDIT_KIND, Registry
from registry.store import MemoryStore

NOW = datetime(2026, 12, 3, 16, 51, 27, 123456, tzinfo=UTC)
INFO = StreamInfo(
    cluster="c1", user="alice", roles=("dev",), client_addr="10.0.0.7:5123", cert_expires=NOW + timedelta(hours=1)
)
AS_ALICE = Identity(user="alice", groups=("viewers", "dev"))


def events() -> list[dict[str, object]]:
    get = parse_request("GET", "/api/v1/namespaces/default/pods/web")
    execute = parse_request("POST", "/api/v1/namespaces/default/pods/web/exec")
    common = {"session_id": "s1", "info": INFO, "host": "h1", "now": NOW, "request": execute, "identity": AS_ALICE}
    return [
        request_event(
            info=INFO, host="h1", now=NOW, method="GET", path="/api/v1/namespaces/default/pods/web",
            request=get, roles=("dev",), identity=AS_ALICE, status=200, duration_ms=1.23456,
        ),
        request_event(
            info=INFO, host="h1", now=NOW, method="GET", path="/nope", request=None, roles=(),
            identity=None, status=403, duration_ms=0.5, error="denied",
        ),
        session_event(SESSION_START, protocol="v5.channel.k8s.io", **common),  # type: ignore[arg-type]
        session_event(
            SESSION_END, protocol="v5.channel.k8s.io",
            extra={"exit_code": None, "exit_code_reason": "no status", "bytes_to_client": 7},
            **common,  # type: ignore[arg-type]
        ),
    ]  # fmt: skip


async def test_events_carry_the_time_as_seconds_and_no_nulls() -> None:
    built = events()
    assert all(event["time"] == NOW.timestamp() for event in built)
    refused = built[1]
    assert "impersonated_user" not in refused and refused["impersonated_groups"] == []
    assert built[0]["impersonated_user"] == "alice" and built[0]["roles"] == ["dev"]
    assert all(value is not None for event in built[:3] for value in event.values())


async def test_every_kind_of_event_is_taken_by_the_registry_with_its_own_time() -> None:
    store = MemoryStore()
    ca = CertAuthority.generate("test", now=datetime.now(tz=UTC))
    registry = Registry(store, ca, cluster_name="test", clock=lambda: 1_800_000_000.0)
    agent = Caller(identity=CallerIdentity(name="node-h1", kind="agent", roles=("Kube",), host_id="h1"))
    body = json.loads(json.dumps({"events": events()}))  # as it travels
    assert await registry.record_agent_events(agent, body["events"]) == 4
    rows = [r.value for r in await store.list(AUDIT_KIND)]
    assert [r["event"] for r in rows] == ["kube.request", "kube.request", "session.start", "session.end"]
    assert all(r["time"].startswith("2027-01-15T") and r["reported_by"] == "h1" for r in rows)
    assert rows[0]["impersonated_groups"] == ["viewers", "dev"] and rows[3]["exit_code_reason"] == "no status"
    assert "exit_code" not in rows[3]  # null, so left out
