"""The header rules hold on the upgrade paths too (security-checklist "apply the same rules to the WebSocket,
SPDY and port-forward upgrade paths"; warpgate GHSA-862h-v6cc-9757 forwarded a client identity header on
the websocket path only).

Each attack rides on an exec or port-forward upgrade request (WebSocket and SPDY/3.1, as kubectl sends
them) to a scripted API server that answers 101: a refused one never reaches it, a stripped one reaches it
without the forged header and with exactly our impersonation.
"""

from __future__ import annotations

import h11
import pytest
import trio

from tests.agent.forward.forward_helpers import (
    PREFIX,
    open_client,
)
from tests.agent.forward.test_streams import scripted_world
from tests.agent.forward.upstreams import Scripted, serve_scripted

SPDY = [
    (b"Connection", b"Upgrade"),
    (b"Upgrade", b"SPDY/3.1"),
    (b"X-Stream-Protocol-Version", b"v4.channel.k8s.io"),
]
WEBSOCKET = [
    (b"Connection", b"Upgrade"),
    (b"Upgrade", b"websocket"),
    (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"Sec-WebSocket-Version", b"13"),
    (b"Sec-WebSocket-Protocol", b"v5.channel.k8s.io"),
]
UPGRADES = [
    ("POST", "exec?command=sh&stdin=true", SPDY),
    ("GET", "exec?command=sh&stdin=true", WEBSOCKET),
    ("POST", "portforward", SPDY),
    ("GET", "portforward?ports=80", WEBSOCKET),
]
UPGRADE_IDS = ["spdy-exec", "websocket-exec", "spdy-portforward", "websocket-portforward"]

REFUSED = [
    ("forged Impersonate-Group", [(b"Impersonate-Group", b"system:masters")], 403),
    ("empty Impersonate-Group", [(b"Impersonate-Group", b"")], 403),
    ("Impersonate-Uid", [(b"Impersonate-Uid", b"0")], 403),
    ("Impersonate-Extra-*", [(b"Impersonate-Extra-Scopes", b"admin")], 403),
    ("second Impersonate-User, case variant", [(b"Impersonate-User", b"alice"), (b"IMPERSONATE-USER", b"admin")], 403),
    ("forged Impersonate-User", [(b"impersonate-user", b"admin")], 403),
    # a page of any site, in a browser holding alice's certificate (cross-site WebSocket hijacking)
    ("cross-site Origin", [(b"Origin", b"https://evil.example")], 403),
]
STRIPPED = [
    ("X-Remote-User/Group", [(b"X-Remote-User", b"admin"), (b"X-Remote-Group", b"system:masters")]),
    ("client Authorization", [(b"Authorization", b"Bearer stolen")]),
    ("kubeport internal", [(b"Kubeport-User", b"root"), (b"X-Forwarded-User", b"root")]),
]


@pytest.fixture
async def scripted(nursery: trio.Nursery) -> Scripted:
    return await nursery.start(serve_scripted)


@pytest.mark.parametrize(("method", "rest", "upgrade"), UPGRADES, ids=UPGRADE_IDS)
@pytest.mark.parametrize(("forged", "code"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
async def test_an_upgrade_with_a_refused_header_never_reaches_upstream(
    nursery: trio.Nursery,
    scripted: Scripted,
    method: str,
    rest: str,
    upgrade: list[tuple[bytes, bytes]],
    forged: list[tuple[bytes, bytes]],
    code: int,
) -> None:
    world = scripted_world(scripted)
    client = await open_client(nursery, world)
    reply = await client.request(
        method, f"{PREFIX}/api/v1/namespaces/default/pods/web/{rest}", headers=[*upgrade, *forged]
    )
    assert reply.status == code
    assert reply.json()["kind"] == "Status"
    assert not scripted.requests
    [event] = await world.wait_events(1)
    assert event["status"] == code  # the refusal is audited


@pytest.mark.parametrize(("method", "rest", "upgrade"), UPGRADES, ids=UPGRADE_IDS)
@pytest.mark.parametrize("forged", [c[1] for c in STRIPPED], ids=[c[0] for c in STRIPPED])
async def test_an_upgrade_reaches_upstream_without_forged_identity(
    nursery: trio.Nursery,
    scripted: Scripted,
    method: str,
    rest: str,
    upgrade: list[tuple[bytes, bytes]],
    forged: list[tuple[bytes, bytes]],
) -> None:
    world = scripted_world(scripted)
    client = await open_client(nursery, world)
    await client.send_request(
        method, f"{PREFIX}/api/v1/namespaces/default/pods/web/{rest}", headers=[*upgrade, *forged]
    )
    with trio.fail_after(10):
        head = await client.response_head()
    assert head.status_code == 101
    [(_, _, sent)] = scripted.requests
    lowered = [(name.lower(), value) for name, value in sent]
    for name, _ in forged:
        assert name.lower() not in [n for n, v in lowered if n != b"authorization"]
    assert [v for n, v in lowered if n == b"authorization"] == [b"Bearer scripted-token"]
    assert [v for n, v in lowered if n == b"impersonate-user"] == [b"alice"]
    assert [v for n, v in lowered if n == b"impersonate-group"] == [b"viewers", b"editors", b"system:authenticated"]
    assert not [
        n
        for n, _ in lowered
        if n.startswith((b"x-remote-", b"kubeport-", b"x-forwarded-", b"impersonate-u")) and n != b"impersonate-user"
    ]
    await client.stream.aclose()


@pytest.mark.parametrize(
    ("second", "code"),
    [
        ("/v1/clusters/c3RhZ2luZw/api/v1/namespaces/default/pods", 400),  # "staging": another cluster
        (f"{PREFIX}/api/v1/namespaces/default/secrets/token", 403),  # outside alice's pods-only role
        (f"{PREFIX}/api/v1/namespaces/default/pods/other", 404),  # allowed: forwarded as alice, not as the agent
    ],
    ids=["another-cluster", "forbidden-resource", "allowed-resource"],
)
async def test_bytes_pipelined_behind_a_refused_upgrade_are_a_new_checked_request(
    nursery: trio.Nursery, scripted: Scripted, second: str, code: int
) -> None:
    """CVE-2018-1002105's shape: an upgrade the API server refuses, with a second request already sent behind
    it. Those bytes must never be spliced to the API server's connection (which carries the agent's own
    credential): they are a new request, checked and impersonated like the first."""
    world = scripted_world(scripted)
    client = await open_client(nursery, world)
    await client.send_request("GET", f"{PREFIX}/api/v1/namespaces/default/pods/refuse/exec", headers=WEBSOCKET)
    await client.stream.send_all(b"GET " + second.encode() + b" HTTP/1.1\r\nHost: front:3026\r\n\r\n")
    with trio.fail_after(10):
        assert (await client.response_head()).status_code == 400  # the scripted server's refusal
        await client.read_body()
        client.conn.start_next_cycle()
        client.conn.send(h11.Request(method="GET", target=second, headers=[(b"Host", b"front:3026")]))
        client.conn.send(h11.EndOfMessage())
        assert (await client.response_head()).status_code == code
    paths = [path for _, path, _ in scripted.requests]
    assert paths[0] == "/api/v1/namespaces/default/pods/refuse/exec"
    if code == 404:
        assert paths[1:] == ["/api/v1/namespaces/default/pods/other"]
        sent = [(name.lower(), value) for name, value in scripted.requests[1][2]]
        assert [v for n, v in sent if n == b"impersonate-user"] == [b"alice"]
        assert [v for n, v in sent if n == b"authorization"] == [b"Bearer scripted-token"]
    else:
        assert paths[1:] == []
    events = await world.wait_events(2)
    assert [e["status"] for e in events] == [400, code]


async def test_a_same_origin_websocket_exec_is_served(nursery: trio.Nursery, scripted: Scripted) -> None:
    """The Python client (websocket-client) sends ``Origin`` of the server it dials: it must keep working."""
    world = scripted_world(scripted)
    client = await open_client(nursery, world)
    target = f"{PREFIX}/api/v1/namespaces/default/pods/web/exec?command=sh"
    await client.send_request("GET", target, headers=[*WEBSOCKET, (b"Origin", b"https://front:3026")])
    with trio.fail_after(10):
        assert (await client.response_head()).status_code == 101
    await client.stream.aclose()
