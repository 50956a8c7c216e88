"""Issue 7 §7 (first bullet): failed joins cannot flood the audit log, and reading the log stays cheap.

Service- and API-level tests call the request handler directly (no sockets) with injected clocks; the
last tests go over mutual TLS with kpctl, as an admin would.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from registry.client import RegistryClient
from registry.core.errors import AccessDenied, BadParameter
from registry.core.identity import CertAuthority, Identity
from registry.server.api import RegistryAPI
from registry.server.authz import Caller
from registry.server.http import Request, Response
from registry.server.ratelimit import Rate
from registry.server.serve import RegistryInfo, serve_audit_flush, serve_registry
from registry.server.service import AUDIT_KIND, Registry
from registry.store import MemoryStore, Record
from tests.helpers import kpctl

ADMIN = Caller(identity=Identity(name="admin", kind="admin", roles=("admin",)))


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SpyStore(MemoryStore):
    """A memory store that records every ``list`` of the audit kind: what was asked, how much came back."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.audit_lists: list[tuple[dict[str, Any], int]] = []

    async def list(self, kind: str, **kwargs: Any) -> list[Record]:  # type: ignore[override]
        records = await super().list(kind, **kwargs)
        if kind == AUDIT_KIND:
            self.audit_lists.append((kwargs, len(records)))
        return records


def make(
    *, clock: Clock, store: MemoryStore | None = None, rates: dict[str, Rate] | None = None, **options: Any
) -> tuple[Registry, RegistryAPI, MemoryStore]:
    store = store if store is not None else MemoryStore(clock=clock)
    ca = CertAuthority.generate("test", now=datetime.fromtimestamp(clock.now, tz=UTC))
    registry = Registry(store, ca, cluster_name="test", clock=clock, **options)
    api = RegistryAPI(registry, rate_limits=rates, rate_clock=clock)
    return registry, api, store


def join_request(client: str, token: str = "no-such-token-value") -> Request:
    body = {"token": token, "nodename": "node", "csr_pem": "x", "host_id": "h1"}
    return Request(
        method="POST",
        target="/v1/join",
        path="/v1/join",
        query={},
        headers=[("content-type", "application/json")],
        body=json.dumps(body).encode(),
        client=client,
    )


def get_request(path: str, client: str = "10.0.0.1:1234") -> Request:
    return Request(method="GET", target=path, path=path, query={}, headers=[], client=client)


async def call(api: RegistryAPI, request: Request) -> int | Response:
    """The response, or the status code of the error the handler raised (the adapter's job to encode)."""
    try:
        return await api(request)
    except AccessDenied:
        return 403


async def audit_rows(store: MemoryStore) -> list[dict[str, Any]]:
    return [r.value for r in await store.list(AUDIT_KIND)]


# -- rate limits and aggregation ------------------------------------------------------------------------


async def test_a_burst_of_failed_joins_gets_429_and_a_bounded_number_of_counted_rows() -> None:
    clock = Clock()
    registry, api, store = make(clock=clock, rates={"join": Rate(per_second=1.0, burst=10)}, audit_window=60)
    outcomes = [await call(api, join_request(f"10.0.0.1:{40000 + i}")) for i in range(500)]
    assert outcomes[:10] == [403] * 10
    throttled = outcomes[10:]
    assert all(isinstance(r, Response) and r.status == 429 for r in throttled)
    first = throttled[0]
    assert isinstance(first, Response)
    headers = dict(first.headers)
    assert int(headers["retry-after"]) >= 1
    status = json.loads(first.body)
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "TooManyRequests", 429)
    assert status["details"]["retryAfterSeconds"] >= 1
    # another source is not throttled by the first one's flood
    assert await call(api, join_request("10.0.0.2:5")) == 403

    rows = [r for r in await audit_rows(store) if r.get("client") == "10.0.0.1"]
    assert len(rows) == 2  # the first bad-token failure and the first throttled one, written at once
    clock.now += 61
    assert await registry.flush_audit() == 2
    rows = [r for r in await audit_rows(store) if r.get("client") == "10.0.0.1"]
    assert len(rows) == 4
    assert all(r["event"] == "instance.join" and r["success"] is False for r in rows)
    assert sum(r["count"] for r in rows) == 500  # every attempt is counted once
    by_reason = {(r["error"], r["count"]) for r in rows}
    assert ("unknown or expired token", 9) in by_reason
    assert ("rate limited", 489) in by_reason
    assert all("no-such-token-value" not in json.dumps(r) for r in rows)  # the token stays masked


async def test_public_routes_and_401s_are_limited_but_authenticated_callers_are_not() -> None:
    clock = Clock()
    _, api, _ = make(clock=clock, rates={"public": Rate(per_second=1.0, burst=3)})
    answers = [await call(api, get_request("/v1/ping")) for _ in range(3)]
    assert all(isinstance(r, Response) and r.status == 200 for r in answers)
    for path in ("/v1/ping", "/v1/ca", "/v1/whoami", "/v1/nope", "/../../etc/passwd", "/v1/events?limit=1"):
        response = await call(api, get_request(path))
        assert isinstance(response, Response) and response.status == 429, path
    clock.now += 1
    response = await call(api, get_request("/v1/ca"))
    assert isinstance(response, Response) and response.status == 200
    # The same source presenting a certificate (the TLS layer verified it) is never throttled.
    with_cert = get_request("/v1/ping")
    with_cert.peer_cert = b"not really a certificate"
    for _ in range(20):
        response = await call(api, with_cert)
        assert isinstance(response, Response) and response.status == 200


async def test_the_flush_loop_writes_closed_windows_and_drains_on_shutdown() -> None:
    clock = Clock()
    registry, _, store = make(clock=clock, audit_window=3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_audit_flush(registry, interval=0.01, task_status=task_status))
        for i in range(25):
            await registry.audit_failure("instance.join", client=f"10.9.9.9:{i}", reason="unknown or expired token")
        assert len(await audit_rows(store)) == 1
        # A window that closes is written by the loop (it ticks every 10 ms): wait for the store's event.
        async with store.watch([AUDIT_KIND]) as events:
            clock.now += 3601
            with trio.fail_after(5):
                await anext(events)
        assert [r["count"] for r in await audit_rows(store)] == [1, 24]
        for i in range(5):
            await registry.audit_failure("instance.join", client=f"10.9.9.9:{i}", reason="unknown or expired token")
        nursery.cancel_scope.cancel()  # the registry stops: the open window is written
    assert [r["count"] for r in await audit_rows(store)] == [1, 24, 5]


async def test_serve_audit_flush_drains_when_cancelled(tmp_path: Path) -> None:
    clock = Clock()
    registry, _, store = make(clock=clock, audit_window=3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_audit_flush(registry, interval=60, task_status=task_status))
        for i in range(10):
            await registry.audit_failure("instance.join", client=f"10.1.1.1:{i}", reason="unknown or expired token")
        nursery.cancel_scope.cancel()
    rows = await audit_rows(store)
    assert [r["count"] for r in rows] == [1, 9]


# -- a bounded log -----------------------------------------------------------------------------------


async def test_the_audit_log_is_capped_keeping_the_newest() -> None:
    clock = Clock()
    registry, _, store = make(clock=clock, max_audit_events=50)
    for i in range(400):
        await registry.audit("kube.create", ADMIN, name=f"c{i}")
    assert await store.count(AUDIT_KIND) <= 50
    names = [r["name"] for r in await audit_rows(store)]
    assert names[-1] == "c399"
    assert names == [f"c{i}" for i in range(400 - len(names), 400)]


async def test_a_larger_cap_is_checked_every_few_writes_and_stays_bounded() -> None:
    clock = Clock()
    registry, _, store = make(clock=clock, max_audit_events=1000)
    for i in range(2500):
        await registry.audit("kube.create", ADMIN, name=f"c{i}")
    # A trim goes down to the cap less its headroom (2%), so the next count is that many writes away.
    assert 1000 - 1000 // 50 <= await store.count(AUDIT_KIND) <= 1000


@pytest.mark.parametrize("cap", [0, -1, True, 1.5, "100"])
def test_bad_caps_are_refused(cap: object) -> None:
    with pytest.raises(BadParameter):
        make(clock=Clock(), max_audit_events=cap)


# -- pagination ------------------------------------------------------------------------------------------


async def walk(registry: Registry, *, limit: int, event: str | None = None) -> list[list[dict[str, Any]]]:
    pages = []
    cursor: str | None = None
    for _ in range(10_000):
        items, cursor = await registry.events(ADMIN, limit=limit, event=event, before=cursor)
        pages.append(items)
        if cursor is None:
            return pages
    raise AssertionError("paging did not end")


async def test_pages_come_in_order_without_gap_or_duplicate() -> None:
    clock = Clock()
    registry, _, _ = make(clock=clock)
    for i in range(250):
        await registry.audit("kube.create" if i % 3 else "kube.delete", ADMIN, name=f"c{i:03d}")
    for limit in (1, 7, 40, 100, 250, 1000):
        pages = await walk(registry, limit=limit)
        assert all(len(page) <= limit for page in pages)
        # newest page first, each page oldest first: reading pages backwards is the whole log in order
        names = [e["name"] for page in reversed(pages) for e in page]
        assert names == [f"c{i:03d}" for i in range(250)], limit
        ids = [e["id"] for page in pages for e in page]
        assert len(set(ids)) == 250
    deletes = await walk(registry, limit=9, event="kube.delete")
    names = [e["name"] for page in reversed(deletes) for e in page]
    assert names == [f"c{i:03d}" for i in range(0, 250, 3)]


async def test_events_written_while_paging_do_not_shift_older_pages() -> None:
    clock = Clock()
    registry, _, _ = make(clock=clock)
    for i in range(30):
        await registry.audit("kube.create", ADMIN, name=f"old{i:02d}")
    first, cursor = await registry.events(ADMIN, limit=10)
    for i in range(20):
        await registry.audit("kube.create", ADMIN, name=f"new{i:02d}")
    seen = [e["name"] for e in first]
    while cursor is not None:
        page, cursor = await registry.events(ADMIN, limit=10, before=cursor)
        seen = [e["name"] for e in page] + seen
    assert seen == [f"old{i:02d}" for i in range(30)]


async def test_listing_events_never_reads_the_whole_table() -> None:
    clock = Clock()
    store = SpyStore(clock=clock)
    registry, _, _ = make(clock=clock, store=store, max_audit_events=1_000_000)
    for i in range(5000):
        await registry.audit("kube.create" if i % 1000 else "instance.join", ADMIN, name=f"c{i}")
    store.audit_lists.clear()
    items, cursor = await registry.events(ADMIN, limit=100)
    assert len(items) == 100 and cursor is not None
    assert all(kwargs.get("limit") is not None for kwargs, _ in store.audit_lists)
    assert sum(returned for _, returned in store.audit_lists) == 100
    # A filter that matches little reads a bounded number of rows per page, and says where to go on.
    store.audit_lists.clear()
    items, cursor = await registry.events(ADMIN, limit=100, event="no.such.event")
    assert items == []
    assert all(kwargs.get("limit") is not None for kwargs, _ in store.audit_lists)
    assert sum(returned for _, returned in store.audit_lists) <= 5000
    joins = await walk(registry, limit=2, event="instance.join")
    assert sum(len(p) for p in joins) == 5


@pytest.mark.parametrize(
    "query",
    ["limit=-1", "limit=abc", "limit=1e3", "continue=" + "x" * 300],
)
async def test_bad_event_queries_are_400(query: str) -> None:
    clock = Clock()
    _, api, _ = make(clock=clock)
    request = get_request("/v1/events")
    key, _, value = query.partition("=")
    request.query = {key: [value]}
    request.peer_cert = b"x"
    api._authenticate = lambda request: _admin()  # type: ignore[method-assign]
    with pytest.raises(BadParameter):
        await api(request)


async def _admin() -> Caller:
    return ADMIN


async def test_odd_cursors_page_sanely() -> None:
    clock = Clock()
    registry, _, _ = make(clock=clock)
    for i in range(5):
        await registry.audit("kube.create", ADMIN, name=f"c{i}")
    for cursor in ("", "0", "~", "\U0010ffff", "zzzzzzzzzzzzzzzzzzzz", "../../", "%00"):
        items, _ = await registry.events(ADMIN, limit=100, before=cursor or None)
        assert len(items) in (0, 5), cursor
    items, more = await registry.events(ADMIN, limit=0)
    assert len(items) == 5 and more is None  # 0: the largest page


# -- over the wire ---------------------------------------------------------------------------------------


async def start_registry(nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RegistryInfo:
    data_dir = tmp_path / "data"
    info: RegistryInfo = await nursery.start(
        lambda task_status: serve_registry(
            data_dir=data_dir,
            listen="127.0.0.1:0",
            store=MemoryStore(),
            rate_limits={"join": Rate(per_second=0.01, burst=3), "public": Rate(per_second=0.01, burst=50)},
            task_status=task_status,
        )
    )
    monkeypatch.setenv("KUBEPORT_DATA_DIR", str(data_dir))
    return info


async def test_throttled_joins_over_tls_get_429_with_retry_after(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = await start_registry(nursery, tmp_path, monkeypatch)
    async with RegistryClient.from_identity_file(info.admin_identity) as admin:
        ca_pems = [p.encode() for p in (await _ca(admin))]
    from registry.host.tls import client_context

    codes = []
    async with httpx.AsyncClient(
        base_url=f"https://{info.address}", verify=client_context(ca_pems), trust_env=False
    ) as anonymous:
        for _ in range(10):
            response = await anonymous.post(
                "/v1/join",
                json={"token": "bad-token-123", "nodename": "n", "csr_pem": "x"},
                extensions={"sni_hostname": "registry.kubeport.local"},
            )
            codes.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) >= 1
                assert response.json()["reason"] == "TooManyRequests"
    assert codes[:3] == [403] * 3
    assert codes[3:] == [429] * 7
    r = await kpctl("get", "events", "--event", "instance.join", "--format", "json")
    assert r.code == 0, r.err
    rows = json.loads(r.out)
    assert len(rows) == 2  # one per (source, reason) so far; the counts follow when the window closes
    r = await kpctl("get", "events", "--event", "instance.join", "--format", "text")
    assert "rate limited" in r.out


async def _ca(client: RegistryClient) -> list[str]:
    result = await client._request("GET", "/v1/ca")
    return list(result["ca_pems"])


async def test_kpctl_pages_through_events(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await start_registry(nursery, tmp_path, monkeypatch)
    r = await kpctl("get", "events", "--format", "json")
    assert r.code == 0 and json.loads(r.out) == [] and "--continue" not in r.err
    async with RegistryClient.from_identity_file(tmp_path / "data" / "admin.identity") as admin:
        for _ in range(25):
            await admin.generate_token(roles=["Kube"], ttl_seconds=600)
    seen: list[str] = []
    argv = ["get", "events", "--limit", "10", "--format", "json"]
    pages = 0
    while True:
        r = await kpctl(*argv)
        assert r.code == 0, r.err
        page = json.loads(r.out)
        seen = [e["id"] for e in page] + seen
        pages += 1
        match = re.search(r"--continue (\S+)", r.err)
        if match is None:
            break
        argv = ["get", "events", "--limit", "10", "--format", "json", "--continue", match.group(1)]
    assert pages == 3
    assert len(seen) == len(set(seen)) == 25
    assert seen == sorted(seen)
    for bad in ("0", "-3", "1001"):
        r = await kpctl("get", "events", "--limit", bad)
        assert r.code == 1 and r.err.startswith("ERROR: ") and "--limit" in r.err
