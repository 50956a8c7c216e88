"""The front door's pure parts: reading the first request head, error answers, routing and agent choice.

FirstHead: a head split anywhere (even byte by byte) is found and every byte is kept; garbage, smuggling
framing, and oversized or unterminated heads are refused with a Status-shaped error. error_response: one
error, one byte string. route/order_agents: visibility judged per heartbeat (static ∪ service ∪ dynamic
labels, deny wins), unknown and hidden clusters alike, and the healthy > unknown > unhealthy order with
shuffling inside a group and only live tunnels.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.core.errors import BadParameter, ConnectionProblem, NotFound
from registry.core.kube_access import cluster_not_found
from registry.core.kube_listing import server_labels
from registry.core.resources import CommandLabel, Health, KubeCluster, KubeServer, Metadata, Role, RoleConditions, User
from registry.frontdoor.head import FirstHead, HeadTooLarge, error_response
from registry.frontdoor.pick import order_agents, route

KUBECTL_HEAD = (
    b"GET /v1/clusters/cHJvZA/api?timeout=32s HTTP/1.1\r\n"
    b"Host: 127.0.0.1:3026\r\n"
    b"User-Agent: kubectl/v1.31.0 (linux/amd64) kubernetes/abc\r\n"
    b"Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json\r\n"
    b"Accept-Encoding: gzip\r\n"
    b"\r\n"
)


# -- FirstHead --------------------------------------------------------------------------------------------


@given(st.lists(st.integers(min_value=1, max_value=len(KUBECTL_HEAD) - 1), max_size=6, unique=True))
def test_a_head_split_anywhere_is_found_and_kept_whole(cuts: list[int]) -> None:
    data = KUBECTL_HEAD + b"NEXT"  # bytes after the head (a pipelined request, a body) are kept too
    bounds = [0, *sorted(cuts), len(data)]
    reader = FirstHead()
    head = None
    for start, end in itertools.pairwise(bounds):
        assert head is None
        head = reader.feed(data[start:end])
    assert head is not None
    assert head.method == b"GET"
    assert head.target == b"/v1/clusters/cHJvZA/api?timeout=32s"
    assert (b"host", b"127.0.0.1:3026") in head.headers
    assert head.raw == data


def test_byte_by_byte() -> None:
    reader = FirstHead()
    heads = [reader.feed(bytes([b])) for b in KUBECTL_HEAD]
    assert heads[:-1] == [None] * (len(KUBECTL_HEAD) - 1)
    assert heads[-1] is not None and heads[-1].raw == KUBECTL_HEAD


@pytest.mark.parametrize(
    ("data", "error"),
    [
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"p" * (70 * 1024) + b"\r\n\r\nbody", HeadTooLarge, id="whole"
        ),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", BadParameter),  # TLS inside TLS
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", BadParameter),  # an h2 preface
        (b"hello world\r\n\r\n", BadParameter),
        (b"GET / HTTP/1.1\r\n\r\n", BadParameter),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", BadParameter),
        (b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", BadParameter),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", BadParameter),
        pytest.param(b"GET /" + b"a" * (70 * 1024) + b" HTTP/1.1\r\n", HeadTooLarge, id="long-target"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * (70 * 1024), HeadTooLarge, id="unterminated"),
    ],
)
def test_hostile_heads_are_refused(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        FirstHead().feed(data)


def test_a_huge_head_is_refused_once_it_passes_the_bound_whatever_the_chunking() -> None:
    reader = FirstHead(max_bytes=1024)
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\n")
    with pytest.raises(HeadTooLarge) as caught:
        for _ in range(1000):
            reader.feed(b"X-Pad: " + b"p" * 50 + b"\r\n")
    assert reader.received <= 2 * 1024
    assert caught.value.code == 431


def test_a_connection_closed_mid_head_is_an_error() -> None:
    reader = FirstHead()
    assert reader.feed(b"GET / HTTP/1.1\r\nHo") is None
    with pytest.raises(BadParameter):
        reader.feed(b"")


def test_the_echoed_complaint_is_short() -> None:
    with pytest.raises(BadParameter) as caught:
        FirstHead().feed(b"\x00" * 60_000 + b"\r\n\r\n")
    assert len(caught.value.message) < 300


def test_error_responses_are_status_json_and_byte_identical() -> None:
    one = error_response(cluster_not_found("prod"))
    assert one == error_response(NotFound('Kubernetes cluster "prod" not found'))
    head, _, body = one.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 404 Not Found"
    assert b"Connection: close" in lines
    assert f"Content-Length: {len(body)}".encode() in lines
    assert json.loads(body) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'Kubernetes cluster "prod" not found',
        "reason": "NotFound",
        "code": 404,
    }
    assert error_response(ConnectionProblem("x")).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert error_response(HeadTooLarge("x")).startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")


# -- route -------------------------------------------------------------------------------------------------

ALICE = User(metadata=Metadata(name="alice"), roles=("dev",), traits={"env": ("dev",)})


def role(allow: dict[str, str | list[str]], deny: dict[str, str | list[str]] | None = None) -> Role:
    return Role(
        metadata=Metadata(name="r"),
        allow=RoleConditions(kubernetes_labels=allow, kubernetes_groups=("viewers",)),
        deny=RoleConditions(kubernetes_labels=deny or {}),
        version="v7",
    )


def cluster(name: str = "prod", labels: dict[str, str] | None = None, dynamic: tuple[str, ...] = ()) -> KubeCluster:
    return KubeCluster(
        metadata=Metadata(name=name, labels=labels or {}),
        dynamic_labels={key: CommandLabel(command=("true",), period="1m") for key in dynamic},
    )


def server(
    host: str,
    name: str = "prod",
    *,
    status: str = "healthy",
    labels: dict[str, str] | None = None,
    results: dict[str, str] | None = None,
    static: dict[str, str] | None = None,
) -> KubeServer:
    copy = cluster(name, static, tuple(results or {})).with_results(results or {})
    return KubeServer(
        metadata=Metadata(name=name, labels=labels or {}),
        host_id=host,
        hostname="agent:3027",
        version="1",
        cluster=copy,
        health=Health(status=status),  # type: ignore[arg-type]
    )


EVERYTHING = role({"*": "*"})


@pytest.mark.parametrize(
    ("roles", "resource", "servers", "visible", "hosts"),
    [
        ([EVERYTHING], None, [], False, []),  # unknown
        ([EVERYTHING], cluster(), [], True, []),  # visible, nobody serves it (503 later)
        ([EVERYTHING], None, [server("a")], True, ["a"]),  # an agent's static cluster: heartbeats only
        ([role({"env": "prod"})], cluster(labels={"env": "dev"}), [server("a")], False, []),  # not selected
        ([role({"env": "dev"})], cluster(labels={"env": "dev"}), [server("a")], True, ["a"]),
        ([role({"*": "*"}, {"env": "dev"})], cluster(labels={"env": "dev"}), [server("a")], False, []),  # deny wins
        ([], cluster(), [server("a")], False, []),  # no roles left (all removed from the user)
        # the registry's current static labels win over an agent's stale copy
        ([role({"env": "prod"})], cluster(labels={"env": "dev"}), [server("a", static={"env": "prod"})], False, []),
        # heartbeat service labels and dynamic results count, per agent
        (
            [role({"region": "eu"})],
            cluster(dynamic=("region",)),
            [server("a", results={"region": "eu"}), server("b", results={"region": "us"})],
            True,
            ["a"],
        ),
        ([role({"tier": "gold"})], cluster(), [server("a", labels={"tier": "gold"}), server("b")], True, ["a"]),
        # a dynamic result wins a conflict with a static label (Teleport's precedence)
        (
            [role({"env": "prod"})],
            cluster(labels={"env": "prod"}, dynamic=("env",)),
            [server("a", results={"env": "staging"})],
            False,
            [],
        ),
        # a template selector: the user's traits
        ([role({"env": "{{external.env}}"})], cluster(labels={"env": "dev"}), [server("a")], True, ["a"]),
        # heartbeats of other clusters do not count
        ([EVERYTHING], None, [server("a", name="other")], False, []),
    ],
)
def test_route(
    roles: list[Role], resource: KubeCluster | None, servers: list[KubeServer], visible: bool, hosts: list[str]
) -> None:
    decided = route("prod", ALICE, roles, resource, servers)
    assert decided.visible is visible
    assert [s.host_id for s in decided.servers] == hosts


def test_server_labels_precedence() -> None:
    labels = server_labels(
        server("a", labels={"k": "service", "s": "1"}, results={"k": "dynamic"}, static={"k": "stale"}),
        cluster(labels={"k": "static", "c": "2"}),
    )
    assert labels == {"k": "dynamic", "s": "1", "c": "2"}


# -- order_agents --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("servers", "live", "groups"),
    [
        ([], {"a"}, []),
        ([server("a")], set(), []),
        ([server("a", status="unhealthy")], {"a"}, [{"a"}]),  # fail open: unhealthy beats none
        (
            [server("u1", status="unknown"), server("h1"), server("x1", status="unhealthy"), server("h2")],
            {"u1", "h1", "x1", "h2"},
            [{"h1", "h2"}, {"u1"}, {"x1"}],
        ),
        ([server("h1"), server("h2"), server("u1", status="unknown")], {"h2", "u1"}, [{"h2"}, {"u1"}]),
        ([server("h1"), server("h1")], {"h1"}, [{"h1"}]),  # one try per host
    ],
)
def test_order_groups_by_health_and_keeps_only_live_tunnels(
    servers: list[KubeServer], live: set[str], groups: list[set[str]]
) -> None:
    for seed in range(20):
        ordered = order_agents(servers, frozenset(live), random.Random(seed))
        assert len(ordered) == len(set(ordered))
        position = 0
        for group in groups:
            assert set(ordered[position : position + len(group)]) == group
            position += len(group)
        assert position == len(ordered)


def test_order_shuffles_within_a_group_and_spreads_load() -> None:
    servers = [server(f"h{i}") for i in range(4)] + [server("u", status="unknown")]
    live = frozenset(s.host_id for s in servers)
    rng = random.Random(7)
    firsts = Counter(order_agents(servers, live, rng)[0] for _ in range(4000))
    assert set(firsts) == {"h0", "h1", "h2", "h3"}  # never the unknown one while a healthy one is live
    assert min(firsts.values()) > 800  # roughly uniform (1000 each expected)
    # injectable randomness: the same seed, the same order
    assert order_agents(servers, live, random.Random(1)) == order_agents(servers, live, random.Random(1))
