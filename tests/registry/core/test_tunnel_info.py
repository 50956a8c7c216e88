"""StreamInfo: the stream identity headers round-trip, and hostile or malformed headers are refused clearly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from registry.core.errors import BadParameter
from registry.core.tunnel_info import MAX_ROLES, StreamInfo, format_expiry, parse_expiry

EXPIRES = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)


def info(**overrides: object) -> StreamInfo:
    fields: dict[str, object] = {
        "cluster": "prod-eu.1",
        "user": "alice@example.com",
        "roles": ("kube-access", "viewer"),
        "client_addr": "[2001:db8::1]:51234",
        "cert_expires": EXPIRES,
    }
    fields.update(overrides)
    return StreamInfo(**fields)  # type: ignore[arg-type]


def headers(**overrides: bytes | None) -> list[tuple[bytes, bytes]]:
    """Good headers with some values replaced (None drops the header)."""
    out = []
    for name, value in info().to_headers():
        key = name.decode().removeprefix("kubeport-").replace("-", "_")
        if key in overrides:
            replaced = overrides[key]
            if replaced is None:
                continue
            value = replaced
        out.append((name, value))
    return out


def test_round_trip_and_wire_shape() -> None:
    original = info()
    wire = original.to_headers()
    assert wire == [
        (b"kubeport-cluster", b"prod-eu.1"),
        (b"kubeport-user", b"alice@example.com"),
        (b"kubeport-roles", b"kube-access,viewer"),
        (b"kubeport-client-addr", b"[2001:db8::1]:51234"),
        (b"kubeport-cert-expires", b"2026-12-03T10:00:00Z"),
    ]
    assert StreamInfo.from_headers(wire) == original
    # pseudo-headers and other headers are ignored; names are case-insensitive; str pairs work too
    mixed = [(b":method", b"CONNECT"), (b"x-other", b"1")] + [(n.upper(), v) for n, v in wire]
    assert StreamInfo.from_headers(mixed) == original
    assert StreamInfo.from_headers([(n.decode(), v.decode()) for n, v in wire]) == original


def test_no_roles_and_empty_client_addr_round_trip() -> None:
    bare = info(roles=(), client_addr="")
    assert StreamInfo.from_headers(bare.to_headers()) == bare


def test_expiry_is_normalised_to_utc_and_keeps_microseconds() -> None:
    cet = timezone(timedelta(hours=1))
    local = info(cert_expires=datetime(2026, 12, 3, 11, 0, 0, 5, tzinfo=cet))
    assert local.cert_expires == datetime(2026, 12, 3, 10, 0, 0, 5, tzinfo=UTC)
    assert local.cert_expires.tzinfo is UTC
    assert format_expiry(local.cert_expires) == "2026-12-03T10:00:00.000005Z"
    assert StreamInfo.from_headers(local.to_headers()) == local
    assert parse_expiry("2026-12-03T10:00:00.5Z") == datetime(2026, 12, 3, 10, 0, 0, 500000, tzinfo=UTC)


@pytest.mark.parametrize("name", ["cluster", "user", "roles", "client_addr", "cert_expires"])
def test_a_missing_header_is_named(name: str) -> None:
    with pytest.raises(BadParameter, match=f"without header.*kubeport-{name.replace('_', '-')}"):
        StreamInfo.from_headers(headers(**{name: None}))


def test_no_headers_at_all() -> None:
    with pytest.raises(BadParameter, match="without header"):
        StreamInfo.from_headers([])


@pytest.mark.parametrize("name", [b"kubeport-user", b"Kubeport-User", b"kubeport-roles", b"kubeport-cluster"])
def test_a_repeated_header_is_refused_even_with_another_case(name: bytes) -> None:
    # A second user header could make two readers disagree about who this is.
    with pytest.raises(BadParameter, match="repeated"):
        StreamInfo.from_headers([*headers(), (name, b"mallory")])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("user", b"x" * 254, "longer than"),
        ("user", b"x" * 10_000_000, "longer than .* bytes"),
        ("cluster", b"c" * 254, "longer than"),
        ("client_addr", b"1" * 301, "longer than"),
        ("roles", b"r," * 200_000, "longer than .* bytes"),
        ("cert_expires", b"2" * 10_000, "longer than"),
    ],
)
def test_huge_values_are_refused(field: str, value: bytes, message: str) -> None:
    with pytest.raises(BadParameter, match=message):
        StreamInfo.from_headers(headers(**{field: value}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user", "alïce".encode()),
        ("user", b"\xff\xfe"),
        ("cluster", "prod\u200b".encode()),
        ("roles", "viewer,аdmin".encode()),  # Cyrillic a
        ("client_addr", "1.2.3.4:5\u00a0".encode()),
        ("cert_expires", "2026-12-03T10:00:00Ｚ".encode()),
    ],
)
def test_non_ascii_is_refused(field: str, value: bytes) -> None:
    with pytest.raises(BadParameter, match="not ASCII"):
        StreamInfo.from_headers(headers(**{field: value}))


@pytest.mark.parametrize(
    "user",
    [
        b"alice,system:masters",  # would split into two Impersonate-User values downstream
        b"alice\r\nimpersonate-group: system:masters",
        b"alice\x00",
        b"alice\t",
        b" alice",
        b"alice bob",
        b"",
        b"system:admin",
        b"..",
        b"alice;x",
    ],
)
def test_hostile_user_names_are_refused(user: bytes) -> None:
    with pytest.raises(BadParameter, match="kubeport-user"):
        StreamInfo.from_headers(headers(user=user))


@pytest.mark.parametrize(
    "roles",
    [b"viewer,", b",viewer", b"viewer,,admin", b"view er", b"viewer\x7f", b"viewer,viewer", b"a/b", b" "],
)
def test_hostile_role_lists_are_refused(roles: bytes) -> None:
    with pytest.raises(BadParameter, match="kubeport-roles"):
        StreamInfo.from_headers(headers(roles=roles))


def test_too_many_roles() -> None:
    just_enough = ",".join(f"r{i}" for i in range(MAX_ROLES)).encode()
    assert len(StreamInfo.from_headers(headers(roles=just_enough)).roles) == MAX_ROLES
    too_many = ",".join(f"r{i}" for i in range(MAX_ROLES + 1)).encode()
    with pytest.raises(BadParameter, match=f"more than {MAX_ROLES} roles"):
        StreamInfo.from_headers(headers(roles=too_many))
    with pytest.raises(BadParameter, match="at most"):
        info(roles=tuple(f"r{i}" for i in range(MAX_ROLES + 1)))


@pytest.mark.parametrize("cluster", [b"", b"a/b", b"prod eu", b"prod\x01", b".", b"a,b", b"%2e%2e", b"x" * 254])
def test_hostile_cluster_names_are_refused(cluster: bytes) -> None:
    with pytest.raises(BadParameter, match="kubeport-cluster"):
        StreamInfo.from_headers(headers(cluster=cluster))


@pytest.mark.parametrize("addr", [b"1.2.3.4:5, 6.7.8.9:10", b"1.2.3.4 :5", b"1.2.3.4:5\r\n", b"\x00"])
def test_hostile_client_addresses_are_refused(addr: bytes) -> None:
    with pytest.raises(BadParameter, match="kubeport-client-addr"):
        StreamInfo.from_headers(headers(client_addr=addr))


@pytest.mark.parametrize(
    "stamp",
    [
        b"",
        b"tomorrow",
        b"2026-12-03",
        b"2026-12-03 10:00:00Z",
        b"2026-12-03T10:00:00",  # no zone: ambiguous
        b"2026-12-03T10:00:00+01:00",  # the contract is UTC
        b"2026-12-03T10:00:00z",
        b"2026-13-03T10:00:00Z",
        b"2026-02-30T10:00:00Z",
        b"2026-12-03T24:00:00Z",
        b"2026-12-03T10:00:61Z",
        b"2026-12-03T10:00:00.1234567Z",
        b"0000-01-01T00:00:00Z",
        b"1767434400",
        b"2026-12-03T10:00:00Z\n",
    ],
)
def test_bad_timestamps_are_refused(stamp: bytes) -> None:
    with pytest.raises(BadParameter, match="kubeport-cert-expires"):
        StreamInfo.from_headers(headers(cert_expires=stamp))


def test_constructor_checks_types() -> None:
    with pytest.raises(BadParameter, match="tuple"):
        info(roles=["viewer"])
    with pytest.raises(BadParameter, match="aware"):
        info(cert_expires=datetime(2026, 1, 1))
    with pytest.raises(BadParameter, match="datetime"):
        info(cert_expires="2026-01-01T00:00:00Z")
    with pytest.raises(BadParameter, match="string"):
        info(user=5)
