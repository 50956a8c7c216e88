"""Watches, in-process under trio's MockClock: timeouts, resuming, selector transitions, expiry, tables."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.fakes.kube_api import FakeKube
from tests.fakes.kube_inproc import body_json, call, read_events

TOKEN = "t"
CM = "/api/v1/namespaces/default/configmaps"


@pytest.fixture
def fake() -> FakeKube:
    return FakeKube(admin_token=TOKEN)


def names(events: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(e["type"], e["object"]["metadata"]["name"]) for e in events]  # type: ignore[index]


async def test_watch_sends_current_state_then_ends_at_timeout_seconds(fake: FakeKube, autojump_clock: object) -> None:
    start = trio.current_time()
    response = await call(fake, "GET", "/api/v1/namespaces?watch=true&timeoutSeconds=30", token=TOKEN)
    assert response.status == 200
    events = await read_events(response)
    assert names(events) == [("ADDED", "default"), ("ADDED", "kube-system")]
    assert trio.current_time() - start == pytest.approx(30)
    assert fake.store.statistics()["watchers"] == 0


async def test_watch_from_a_resource_version_replays_what_happened_since(
    fake: FakeKube,
    autojump_clock: object,
) -> None:
    listed = body_json(await call(fake, "GET", CM, token=TOKEN))
    since = listed["metadata"]["resourceVersion"]
    await call(fake, "POST", CM, token=TOKEN, json_body={"metadata": {"name": "a"}})
    await call(fake, "PUT", f"{CM}/a", token=TOKEN, json_body={"metadata": {"name": "a"}, "data": {"k": "v"}})
    await call(fake, "DELETE", f"{CM}/a", token=TOKEN)
    response = await call(fake, "GET", f"{CM}?watch=1&timeoutSeconds=1&resourceVersion={since}", token=TOKEN)
    events = await read_events(response)
    assert names(events) == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions)
    assert versions[0] > int(since)


async def test_live_events_and_label_selector_transitions(fake: FakeKube, autojump_clock: object) -> None:
    response = await call(fake, "GET", f"{CM}?watch=true&labelSelector=app%3Dweb&timeoutSeconds=60", token=TOKEN)
    merge = {"content-type": "application/merge-patch+json"}

    async def writer() -> None:
        await trio.sleep(1)
        await call(fake, "POST", CM, token=TOKEN, json_body={"metadata": {"name": "c"}})  # not matching yet
        patch: dict[str, Any] = {"metadata": {"labels": {"app": "web"}}}
        await call(fake, "PATCH", f"{CM}/c", token=TOKEN, headers=merge.items(), json_body=patch)
        await call(fake, "PATCH", f"{CM}/c", token=TOKEN, headers=merge.items(), json_body={"data": {"k": "v"}})
        patch = {"metadata": {"labels": {"app": None}}}
        await call(fake, "PATCH", f"{CM}/c", token=TOKEN, headers=merge.items(), json_body=patch)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        events = await read_events(response, limit=3)
    assert names(events) == [("ADDED", "c"), ("MODIFIED", "c"), ("DELETED", "c")]


async def test_too_old_resource_version_is_an_expired_error_event(autojump_clock: object) -> None:
    fake = FakeKube(admin_token=TOKEN, history_limit=5)
    for i in range(10):
        await call(fake, "POST", CM, token=TOKEN, json_body={"metadata": {"name": f"c{i}"}})
    response = await call(fake, "GET", f"{CM}?watch=true&resourceVersion=2", token=TOKEN)
    [event] = await read_events(response)
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410
    assert event["object"]["reason"] == "Expired"
    assert event["object"]["message"].startswith("too old resource version: 2 (")


async def test_table_watch_sends_column_definitions_once(fake: FakeKube, autojump_clock: object) -> None:
    accept = ("accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
    response = await call(fake, "GET", "/api/v1/namespaces?watch=1&timeoutSeconds=1", token=TOKEN, headers=[accept])
    first, second = await read_events(response)
    assert first["object"]["kind"] == "Table"
    assert [c["name"] for c in first["object"]["columnDefinitions"]] == ["Name", "Status", "Age"]
    assert second["object"]["columnDefinitions"] == []
    assert second["object"]["rows"][0]["cells"][:2] == ["kube-system", "Active"]
    assert second["object"]["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


async def test_a_watcher_that_leaves_is_unsubscribed(fake: FakeKube, autojump_clock: object) -> None:
    response = await call(fake, "GET", "/api/v1/namespaces?watch=true", token=TOKEN)
    assert fake.store.statistics()["watchers"] == 1
    await read_events(response, limit=1)  # reads one event, then closes the stream like a client hanging up
    assert fake.store.statistics()["watchers"] == 0


async def test_a_named_watch_sees_only_that_object(fake: FakeKube, autojump_clock: object) -> None:
    target = "/api/v1/watch/namespaces/default/configmaps/only?timeoutSeconds=1"
    for name in ("other", "only"):
        await call(fake, "POST", CM, token=TOKEN, json_body={"metadata": {"name": name}})
    events = await read_events(await call(fake, "GET", target, token=TOKEN))
    assert names(events) == [("ADDED", "only")]
