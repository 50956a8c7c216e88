"""Header attacks replayed end to end through the forwarder to the fake API (security-checklist.md cases,
the representative ones of tests/core/test_core_kube_headers.py), each as the first request on a stream
and as a later request on a kept-alive one. Heads are written as raw bytes, so the attack reaches the
forwarder exactly as a hostile client would send it (h11 on the client side would refuse some of them).
"""

from __future__ import annotations

import h11
import pytest
import trio

from tests.agent.forward.forward_helpers import AGENT_TOKEN, PREFIX, Client, open_client, world_for
from tests.fakes.kube_api import FakeKube

PODS = f"{PREFIX}/api/v1/namespaces/default/pods"

# (id, raw header lines, the statuses that count as refused)
REFUSED: list[tuple[str, list[bytes], set[int]]] = [
    ("Connection names Impersonate-User", [b"Connection: Impersonate-User", b"Impersonate-User: admin"], {400}),
    ("Connection names it, whitespace", [b"Connection: close ,\t Impersonate-User\t"], {400}),
    ("Connection names it, second header", [b"Connection: keep-alive", b"Connection: IMPERSONATE-USER"], {400}),
    ("Connection names Authorization", [b"Connection: Authorization"], {400}),
    (
        "Connection: Upgrade plus a protected name",
        [b"Connection: Upgrade, Impersonate-Group", b"Upgrade: websocket"],
        {400},
    ),
    ("Impersonate-Uid", [b"Impersonate-Uid: 0"], {403}),
    ("Impersonate-Extra-*", [b"Impersonate-Extra-Scopes: view"], {403}),
    ("duplicate Impersonate-User", [b"Impersonate-User: alice", b"impersonate-user: admin"], {403}),
    ("forged Impersonate-User", [b"Impersonate-User: admin"], {403}),
    ("forged Impersonate-Group", [b"Impersonate-Group: system:masters"], {403}),
    ("comma-joined groups are one group", [b"Impersonate-Group: viewers,system:masters"], {403}),
    ("bare LF smuggling a header", [b"X-Note: a\nImpersonate-User: admin"], {400, 403}),
    ("Content-Length with Transfer-Encoding", [b"Content-Length: 4", b"Transfer-Encoding: chunked"], {400, 501}),
    ("two Content-Length", [b"Content-Length: 0", b"Content-Length: 5"], {400}),
    ("Transfer-Encoding other than chunked", [b"Transfer-Encoding: gzip, chunked"], {400, 501}),
]

STRIPPED: list[tuple[str, list[bytes]]] = [
    ("client Authorization", [b"Authorization: Bearer stolen"]),
    ("Authorization, case variant", [b"aUtHoRiZaTiOn: Bearer stolen"]),
    ("X-Remote-User and Group", [b"X-Remote-User: admin", b"X-Remote-Group: system:masters"]),
    ("X-Forwarded-*, Forwarded", [b"X-Forwarded-For: 10.0.0.1", b"Forwarded: for=1.2.3.4"]),
    ("kubeport internal headers", [b"Kubeport-User: root", b"X-Kubeport-Identity: root"]),
    ("Cookie and Proxy-Authorization", [b"Cookie: s=1", b"Proxy-Authorization: Basic eA=="]),
    ("hop-by-hop and Connection-listed", [b"Connection: close, X-Custom", b"X-Custom: 1", b"TE: trailers"]),
]

NEVER_UPSTREAM = (
    "x-remote-user",
    "x-remote-group",
    "x-forwarded-for",
    "forwarded",
    "kubeport-user",
    "x-kubeport-identity",
    "cookie",
    "proxy-authorization",
    "x-custom",
    "te",
    "impersonate-uid",
    "impersonate-extra-scopes",
)


async def _raw_request(client: Client, lines: list[bytes]) -> tuple[int, bytes]:
    """Send a GET of the pods with extra raw header ``lines``; return (status, body) of the answer."""
    if client.conn.our_state is h11.DONE and client.conn.their_state is h11.DONE:
        client.conn.start_next_cycle()
    # Move the client's h11 state as if it had sent a plain request; the bytes on the wire are ours.
    client.conn.send(h11.Request(method="GET", target=PODS, headers=[(b"Host", b"front")]))
    client.conn.send(h11.EndOfMessage())
    head = b"GET " + PODS.encode() + b" HTTP/1.1\r\nHost: front:3026\r\n" + b"".join(line + b"\r\n" for line in lines)
    await client.stream.send_all(head + b"\r\n")
    with trio.fail_after(10):
        response = await client.response_head()
        body = await client.read_body()
    return response.status_code, body


def _assert_upstream_clean(fake: FakeKube) -> None:
    for seen in fake.requests:
        assert seen.impersonated_user in (None, "alice"), seen
        assert seen.header_values("authorization") == [f"Bearer {AGENT_TOKEN}"]
        assert seen.header_values("impersonate-user") == ["alice"]
        assert seen.header_values("impersonate-group") == ["viewers", "system:authenticated"]
        for name in NEVER_UPSTREAM:
            assert seen.header(name) is None, (name, seen.headers)


@pytest.mark.parametrize("second", [False, True], ids=["first-request", "kept-alive"])
@pytest.mark.parametrize(("lines", "codes"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
async def test_attacks_are_refused_and_nothing_forged_reaches_upstream(
    nursery: trio.Nursery, fake_kube: FakeKube, lines: list[bytes], codes: set[int], second: bool
) -> None:
    world = world_for(fake_kube)
    client = await open_client(nursery, world)
    if second:
        assert (await client.request("GET", PODS)).status == 200
    fake_kube.clear_requests()
    status, body = await _raw_request(client, lines)
    assert status in codes, body
    assert b'"kind":"Status"' in body
    assert not fake_kube.requests  # refused before anything went upstream
    events = await world.wait_events(2 if second else 1)
    assert events[-1]["status"] == status


@pytest.mark.parametrize("second", [False, True], ids=["first-request", "kept-alive"])
@pytest.mark.parametrize("lines", [c[1] for c in STRIPPED], ids=[c[0] for c in STRIPPED])
async def test_protected_headers_are_stripped_on_every_request(
    nursery: trio.Nursery, fake_kube: FakeKube, lines: list[bytes], second: bool
) -> None:
    world = world_for(fake_kube)
    client = await open_client(nursery, world)
    if second:
        assert (await client.request("GET", PODS)).status == 200
    status, body = await _raw_request(client, lines)
    assert status == 200, body
    assert len(fake_kube.requests) == (2 if second else 1)
    _assert_upstream_clean(fake_kube)


async def test_a_huge_head_is_refused_without_reaching_upstream(nursery: trio.Nursery, fake_kube: FakeKube) -> None:
    world = world_for(fake_kube)
    client = await open_client(nursery, world)
    status, _ = await _raw_request(client, [b"X-Big: " + b"a" * 100_000])
    assert status in (400, 431)
    assert not fake_kube.requests


async def test_obs_fold_never_becomes_a_header(nursery: trio.Nursery, fake_kube: FakeKube) -> None:
    """RFC 9112 §5.2: a server either refuses obs-fold or replaces it with a space. The forwarder refuses
    it (400, the stream closes): the folded text can never turn into an Impersonate-* header upstream."""
    world = world_for(fake_kube)
    client = await open_client(nursery, world)
    status, body = await _raw_request(client, [b"X-Note: a", b" Impersonate-User: admin"])
    assert status == 400
    assert b'"kind":"Status"' in body
    assert not fake_kube.requests
