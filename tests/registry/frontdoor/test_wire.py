"""The two pure codecs the front door shares with the agent: the cluster path prefix and the stream's info.

kube_route: every valid name round-trips through exactly one prefix; hostile targets (padding, a second
spelling, percent-encoding, non-ASCII, absolute form, huge segments, invalid names) are refused.
tunnel_info: StreamInfo round-trips through its headers; missing, repeated, oversized and smuggling values
are refused with a message naming the header.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.core.errors import BadParameter
from registry.core.kube_route import cluster_prefix, decode_cluster, encode_cluster, split_prefix
from registry.core.tunnel_info import StreamInfo

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", min_size=1, max_size=253)


@given(NAMES.filter(lambda n: n not in (".", "..")), st.sampled_from(["", "/", "/api", "/api/v1/pods?watch=1", "?x"]))
def test_every_valid_name_round_trips_through_its_prefix(name: str, rest: str) -> None:
    prefix = cluster_prefix(name)
    assert prefix.startswith("/v1/clusters/")
    assert "=" not in prefix and "/" not in prefix[len("/v1/clusters/") :]
    got_name, got_rest = split_prefix((prefix + rest).encode())
    assert got_name == name
    assert got_rest == (rest if rest.startswith("/") else "/" + rest)
    assert split_prefix(prefix + rest) == (got_name, got_rest)  # str and bytes alike


def test_examples() -> None:
    assert cluster_prefix("prod") == "/v1/clusters/cHJvZA"
    assert split_prefix(b"/v1/clusters/cHJvZA/api/v1/namespaces/default/pods?limit=500") == (
        "prod",
        "/api/v1/namespaces/default/pods?limit=500",
    )
    assert split_prefix(b"/v1/clusters/cHJvZA") == ("prod", "/")
    assert split_prefix(b"/v1/clusters/cHJvZA?timeout=32s") == ("prod", "/?timeout=32s")


LONG = encode_cluster("a" * 253)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (b"/api/v1/pods", "does not start with /v1/clusters/"),
        (b"/", "does not start"),
        (b"*", "does not start"),
        (b"https://frontdoor:3026/v1/clusters/cHJvZA/api", "does not start"),  # absolute form
        (b"/V1/clusters/cHJvZA/api", "does not start"),
        (b"/v1/clusters/", "names no kube cluster"),
        (b"/v1/clusters//api", "names no kube cluster"),
        (b"/v1/clusters/cHJvZA==/api", "not a base64url"),  # padding
        (b"/v1/clusters/cHJvZB/api", "not the canonical encoding"),  # same bytes, other trailing bits
        (b"/v1/clusters/cHJvZ%41/api", "not a base64url"),  # percent-encoding is not decoded
        (b"/v1/clusters/cHJv+A/api", "not a base64url"),  # the standard alphabet is not base64url
        (b"/v1/clusters/a/api", "not a base64url"),  # one character cannot be base64
        (b"/v1/clusters/" + base64.urlsafe_b64encode(b"a/b").rstrip(b"=") + b"/api", "invalid kube cluster name"),
        (b"/v1/clusters/" + base64.urlsafe_b64encode(b"..").rstrip(b"=") + b"/api", "invalid kube cluster name"),
        (b"/v1/clusters/" + base64.urlsafe_b64encode("pröd".encode()).rstrip(b"="), "invalid kube cluster name"),
        (b"/v1/clusters/" + base64.urlsafe_b64encode(b"\xff\xfe").rstrip(b"="), "does not decode"),
        (b"/v1/clusters/" + base64.urlsafe_b64encode(b"a" * 254).rstrip(b"="), "not a base64url"),
        (b"/v1/clusters/" + LONG.encode() + b"AAAA", "not a base64url"),
        (b"/v1/clusters/" + b"A" * 1_000_000, "not a base64url"),
        ("/v1/clusters/cHJvZA/ä".encode(), "not ASCII"),
    ],
)
def test_hostile_targets_are_refused(target: bytes, message: str) -> None:
    with pytest.raises(BadParameter, match=message):
        split_prefix(target)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a b", "a\nb", "x" * 254, "ünïcode"])
def test_invalid_names_have_no_prefix(name: str) -> None:
    with pytest.raises(BadParameter, match="invalid kube cluster name"):
        cluster_prefix(name)


def test_the_longest_name_fits_one_segment() -> None:
    assert decode_cluster(LONG) == "a" * 253


# -- StreamInfo ---------------------------------------------------------------------------------------------

EXPIRES = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


def info(**changes: object) -> StreamInfo:
    fields: dict[str, object] = {
        "cluster": "prod-eu",
        "user": "alice@example.com",
        "roles": ("kube-access", "viewer"),
        "client_addr": "10.0.0.7:51234",
        "cert_expires": EXPIRES,
    }
    fields.update(changes)
    return StreamInfo(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        info(),
        info(roles=()),
        info(client_addr="[::1]:443"),
        info(cert_expires=EXPIRES + timedelta(microseconds=120)),
        info(cert_expires=datetime(2031, 5, 6, 9, 8, 9, tzinfo=timezone(timedelta(hours=2)))),
    ],
)
def test_stream_info_round_trips_through_its_headers(value: StreamInfo) -> None:
    headers = value.to_headers()
    assert [name for name, _ in headers] == [
        b"kubeport-cluster",
        b"kubeport-user",
        b"kubeport-roles",
        b"kubeport-client-addr",
        b"kubeport-cert-expires",
    ]
    assert StreamInfo.from_headers(headers) == value
    # h2 hands headers over with pseudo-headers first, sometimes as str: both are fine
    mixed = [(":method", "CONNECT"), (":protocol", "kubeport-http1")] + [(n.decode(), v.decode()) for n, v in headers]
    assert StreamInfo.from_headers(mixed) == value


def test_stream_info_wire_format() -> None:
    assert dict(info().to_headers()) == {
        b"kubeport-cluster": b"prod-eu",
        b"kubeport-user": b"alice@example.com",
        b"kubeport-roles": b"kube-access,viewer",
        b"kubeport-client-addr": b"10.0.0.7:51234",
        b"kubeport-cert-expires": b"2031-05-06T07:08:09Z",
    }


def headers_with(name: bytes, value: bytes | None, *, extra: list[tuple[bytes, bytes]] | None = None) -> list:
    headers = [(n, v) for n, v in info().to_headers() if n != name]
    if value is not None:
        headers.append((name, value))
    return headers + (extra or [])


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        (headers_with(b"kubeport-user", None), "kubeport-user"),
        ([], "kubeport-cluster"),
        (headers_with(b"kubeport-user", b"bob", extra=[(b"kubeport-user", b"alice")]), "kubeport-user"),
        (headers_with(b"kubeport-user", b"bob", extra=[(b"Kubeport-User", b"alice")]), "kubeport-user"),
        (headers_with(b"kubeport-user", b"alice\r\nx-evil: 1"), "kubeport-user"),
        (headers_with(b"kubeport-user", b""), "kubeport-user"),
        (headers_with(b"kubeport-user", "älice".encode()), "kubeport-user"),
        (headers_with(b"kubeport-cluster", b"a/b"), "kubeport-cluster"),
        (headers_with(b"kubeport-cluster", b"x" * 9000), "kubeport-cluster"),
        (headers_with(b"kubeport-roles", b"a,,b"), "kubeport-roles"),
        (headers_with(b"kubeport-roles", b"a,a"), "kubeport-roles"),
        (headers_with(b"kubeport-roles", b"a, b"), "kubeport-roles"),
        (headers_with(b"kubeport-roles", b",".join([b"r%d" % i for i in range(300)])), "kubeport-roles"),
        (headers_with(b"kubeport-client-addr", b"1.2.3.4:5 x"), "kubeport-client-addr"),
        (headers_with(b"kubeport-cert-expires", b"2031-05-06T07:08:09+00:00"), "kubeport-cert-expires"),
        (headers_with(b"kubeport-cert-expires", b"2031-05-06"), "kubeport-cert-expires"),
        (headers_with(b"kubeport-cert-expires", b"2031-13-40T07:08:09Z"), "kubeport-cert-expires"),
        (headers_with(b"kubeport-cert-expires", b"tomorrow"), "kubeport-cert-expires"),
    ],
)
def test_hostile_stream_headers_are_refused(headers: list, named: str) -> None:
    """Every refusal is a BadParameter naming the header at fault (the wording is tunnel_info's own, tested in
    tests/registry/core/test_tunnel_info.py)."""
    with pytest.raises(BadParameter) as caught:
        StreamInfo.from_headers(headers)
    assert named in caught.value.message


def test_stream_info_refuses_a_naive_expiry() -> None:
    with pytest.raises(BadParameter, match="kubeport-cert-expires"):
        info(cert_expires=datetime(2031, 1, 1))
