"""registry.core.kube_route (the cluster path prefix) and registry.core.tunnel_info (StreamInfo headers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from registry.core.errors import BadParameter
from registry.core.kube_route import cluster_prefix, decode_name, split_prefix
from registry.core.tunnel_info import StreamInfo

NAMES = ["prod", "a", "ab", "abc", "prod-eu.1_x", "x" * 253, "ünïcödé", "with space", "a/b?c#d"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rest", ["", "/", "/api/v1/pods", "?watch=1", "/api?x=/v1/clusters/b3RoZXI"])
def test_prefix_round_trips(name: str, rest: str) -> None:
    prefix = cluster_prefix(name)
    assert prefix.startswith("/v1/clusters/")
    assert "/" not in prefix.removeprefix("/v1/clusters/")
    expected_rest = rest if rest.startswith("/") else "/" + rest
    assert split_prefix(prefix + rest) == (name, expected_rest)
    assert split_prefix((prefix + rest).encode()) == (name, expected_rest)


@pytest.mark.parametrize(
    "target",
    [
        "/api/v1/pods",
        "/v1/clusters",
        "/v1/clusters/",
        "/v1/clusters//api",
        "/v1/clusters/cHJvZA==/api",  # padding
        "/v1/clusters/cHJvZA%3D%3D/api",  # percent-encoded padding
        "/v1/clusters/cHJv%5A/api",  # percent-encoded letter
        "/v1/clusters/cHJvZA+/api",  # standard base64 alphabet
        "/v1/clusters/YR/api",  # non-canonical trailing bits ("a" is YQ)
        "/v1/clusters/Y/api",  # impossible length
        "/v1/clusters/AA/api",  # decodes to NUL: not printable
        "/v1/clusters/_w/api",  # not UTF-8
        "/V1/clusters/cHJvZA/api",
        "/v1/clusters/" + "QUFB" * 400,  # too long
        b"/v1/clusters/\xff",
    ],
)
def test_malformed_prefixes_are_refused(target: str | bytes) -> None:
    with pytest.raises(BadParameter):
        split_prefix(target)


def test_decode_name_is_strict() -> None:
    assert decode_name("cHJvZA") == "prod"
    with pytest.raises(BadParameter):
        decode_name("")


EXPIRES = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def test_stream_info_round_trips() -> None:
    info = StreamInfo("prod", "alice", ("kube-access", "dev"), "10.0.0.1:5555", EXPIRES)
    headers = info.to_headers()
    assert dict(headers)[b"kubeport-roles"] == b"kube-access,dev"
    assert dict(headers)[b"kubeport-cert-expires"] == b"2030-01-02T03:04:05.678Z"
    assert StreamInfo.from_headers(headers) == info
    assert StreamInfo.from_headers([(n.decode().upper(), v.decode()) for n, v in headers]) == info
    no_roles = StreamInfo("prod", "alice", (), "", EXPIRES)
    assert StreamInfo.from_headers(no_roles.to_headers()) == no_roles
    local = StreamInfo("p", "u", (), "", EXPIRES.astimezone(timezone(timedelta(hours=2))))
    assert local.cert_expires.tzinfo is UTC


def _headers(**changes: bytes | None) -> list[tuple[bytes, bytes]]:
    base = dict(StreamInfo("prod", "alice", ("r",), "1.2.3.4:5", EXPIRES).to_headers())
    for name, value in changes.items():
        key = name.replace("_", "-").encode()
        if value is None:
            base.pop(key)
        else:
            base[key] = value
    return [(b":method", b"CONNECT"), *base.items()]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kubeport_user": None}, "without header"),
        ({"kubeport_cluster": b""}, "must not be empty"),
        ({"kubeport_user": b"ali\x00ce"}, "control characters"),
        ({"kubeport_user": b" alice"}, "blanks"),
        ({"kubeport_user": b"\xff"}, "not UTF-8"),
        ({"kubeport_user": b"a" * 10_000}, "too long"),
        ({"kubeport_roles": b"a,,b"}, "non-empty"),
        ({"kubeport_roles": b"a,\x1bb"}, "control characters"),
        ({"kubeport_roles": b",".join([b"r"] * 300)}, "more than"),
        ({"kubeport_cert_expires": b"tomorrow"}, "RFC 3339"),
        ({"kubeport_cert_expires": b"2030-01-01"}, "RFC 3339"),
        ({"kubeport_cert_expires": b"0001-01-01T00:00:00+01:00"}, "RFC 3339"),
    ],
)
def test_hostile_stream_headers_are_refused(changes: dict[str, bytes | None], message: str) -> None:
    with pytest.raises(BadParameter, match=message):
        StreamInfo.from_headers(_headers(**changes))


def test_a_repeated_stream_header_is_refused() -> None:
    with pytest.raises(BadParameter, match="repeated"):
        StreamInfo.from_headers([*_headers(), (b"kubeport-user", b"admin")])
