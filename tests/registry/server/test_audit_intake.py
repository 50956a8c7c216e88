"""POST /v1/events (``RegistryAPI._post_events`` -> ``Registry.record_agent_events``): one decode of the body
without the nesting walk, flat events only (strings, numbers, booleans, nulls and lists of those, under string
keys), which bounds the nesting instead; every hostile body is a 400 that writes nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from registry.core.errors import BadParameter
from registry.core.identity import CertAuthority, Identity
from registry.server.api import RegistryAPI
from registry.server.authz import Caller
from registry.server.http import Request
from registry.server.service import AUDIT_KIND, Registry
from registry.store import MemoryStore

AGENT = Caller(identity=Identity(name="node-h1", kind="agent", roles=("Kube",), host_id="h1"))


class AgentAPI(RegistryAPI):
    """The routes as the agent h1 reaches them (its certificate's checks are tested elsewhere)."""

    async def _authenticate(self, request: Request) -> Caller:
        return AGENT


def make() -> tuple[AgentAPI, MemoryStore]:
    store = MemoryStore()
    ca = CertAuthority.generate("test", now=datetime.now(tz=UTC))
    return AgentAPI(Registry(store, ca, cluster_name="test")), store


def post(body: bytes) -> Request:
    return Request(
        method="POST",
        target="/v1/events",
        path="/v1/events",
        query={},
        headers=[("content-type", "application/json")],
        body=body,
        client="10.0.0.9:4000",
    )


def event(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "event": "kube.request",
        "user": "alice",
        "roles": ["kube-access", "dev"],
        "path": f"/api/v1/pods/p{n}",
        "status": 200,
        "duration_ms": 1.5,
        "success": True,
        "impersonated_user": None,
        "impersonated_groups": [],
        **extra,
    }


async def test_a_batch_is_stored_flat_with_the_registrys_fields() -> None:
    api, store = make()
    body = {"events": [event(0), event(1, time="1999-01-01T00:00:00Z", reported_by="h9")]}
    response = await api(post(json.dumps(body).encode()))
    assert response.status == 200 and json.loads(response.body)["details"] == {"count": 2}
    rows = [r.value for r in await store.list(AUDIT_KIND)]
    assert [r["path"] for r in rows] == ["/api/v1/pods/p0", "/api/v1/pods/p1"]
    assert all(r["reported_by"] == "h1" and not r["time"].startswith("1999") for r in rows)
    assert rows[0]["roles"] == ["kube-access", "dev"] and rows[0]["impersonated_groups"] == []
    assert "impersonated_user" not in rows[0]  # nulls are left out


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "body",
    [
        # fields that are not flat, at any depth
        '{"events":[{"event":"kube.request","x":{"a":1}}]}',
        '{"events":[{"event":"kube.request","x":[{"a":1}]}]}',
        '{"events":[{"event":"kube.request","x":[[1]]}]}',
        '{"events":[{"event":"kube.request","x":' + nested(40) + "}]}",
        '{"events":[{"event":"kube.request","x":' + nested(5000) + "}]}",
        # the body's other fields are walked for nesting
        '{"events":[],"other":' + nested(40) + "}",
        '{"events":[],"other":' + nested(5000) + "}",
        # the event type must be one of the agents' (and hashable: a list there was a 500)
        '{"events":[{"event":["kube.request"]}]}',
        '{"events":[{"event":{"a":1}}]}',
        '{"events":[{"event":"kube.create"}]}',
        '{"events":["kube.request"]}',
        # not JSON the registry takes
        '{"events":[{"event":"kube.request","status":NaN}]}',
        '{"events":[{"event":"kube.request","n":1e999}]}',
        '{"events":[{"event":"kube.request","a":1,"a":2}]}',
        # the same, hidden in lists or past the first item
        '{"events":[{"event":"kube.request","n":[1,' + nested(900) + "]}]}",
        '{"events":[{"event":"kube.request","n":[1,' + "1" * 5000 + "]}]}",
        '{"events":[{"event":"kube.request","n":[1,-Infinity]}]}',
        '{"events":[{"event":"kube.request","n":[1e999]}]}',
        '{"events":[{"event":"kube.request","n":[{"a":1,"a":2}]}]}',
        '{"events":[],"other":[1,' + '{"a":' * 900 + "1" + "}" * 900 + "]}",
        '{"events":{"event":"kube.request"}}',
        "[]",
        '{"events":[',
        "",
    ],
    ids=[
        "object",
        "list-of-objects",
        "list-of-lists",
        "deep",
        "very-deep",
        "other-deep",
        "other-very-deep",
        "event-list",
        "event-object",
        "event-foreign",
        "event-not-mapping",
        "nan",
        "overflow",
        "duplicate",
        "deep-in-a-list",
        "huge-int-in-a-list",
        "minus-infinity-in-a-list",
        "overflow-in-a-list",
        "duplicate-in-a-list",
        "other-deep-objects",
        "events-not-list",
        "body-not-object",
        "truncated",
        "empty",
    ],
)
async def test_hostile_bodies_are_400_and_write_nothing(body: str) -> None:
    api, store = make()
    good = json.dumps(event(0))
    # a good event first: a bad batch writes nothing at all
    text = body.replace('{"events":[', '{"events":[' + good + ",", 1) if body.startswith('{"events":[{') else body
    with pytest.raises(BadParameter):
        await api(post(text.encode()))
    assert await store.count(AUDIT_KIND) == 0


async def test_huge_and_invalid_utf8_bodies_are_400() -> None:
    api, store = make()
    with pytest.raises(BadParameter):
        await api(post(b'{"events":[{"event":"kube.request","user":"\xff"}]}'))
    with pytest.raises(BadParameter, match="more than 8192 bytes"):
        await api(post(json.dumps({"events": [event(0, note="x" * 9000)]}).encode()))
    assert await store.count(AUDIT_KIND) == 0


@pytest.mark.parametrize(
    "bad",
    [{1: "x"}, {"path": ("a", ["b"])}, {"path": b"raw"}, {"path": {"a"}}, {"n": [float("nan")]}],
    ids=["int-key", "tuple", "bytes", "set", "nan-in-list"],
)
async def test_in_process_callers_get_the_same_checks(bad: dict[Any, Any]) -> None:
    api, store = make()
    with pytest.raises(BadParameter, match="event 1"):
        await api.registry.record_agent_events(AGENT, [event(0), {"event": "kube.request", **bad}])
    assert await store.count(AUDIT_KIND) == 0
