"""Header rules (registry.core.kube_headers): attack cases from security-checklist.md and more.

Every attack is tried on a plain GET, on a WebSocket upgrade (exec v5.channel.k8s.io) and on a SPDY upgrade,
because the rules must hold on every path (warpgate GHSA-862h-v6cc-9757).
"""

from __future__ import annotations

import re

import pytest

from registry.core.errors import AccessDenied, BadParameter, KubeportError
from registry.core.kube_access import Identity
from registry.core.kube_headers import RawHeader, canonical, inspect, outbound

ALICE = Identity("alice", ("viewers", "system:authenticated"))

PLAIN: list[RawHeader] = [
    (b"host", b"front:3026"),
    (b"user-agent", b"kubectl/v1.33.0"),
    (b"accept", b"application/json"),
]
WEBSOCKET: list[RawHeader] = [
    (b"host", b"front:3026"),
    (b"connection", b"Upgrade"),
    (b"upgrade", b"websocket"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"sec-websocket-version", b"13"),
    (b"sec-websocket-protocol", b"v5.channel.k8s.io"),
    (b"sec-websocket-protocol", b"v4.channel.k8s.io"),
]
SPDY: list[RawHeader] = [
    (b"host", b"front:3026"),
    (b"connection", b"Upgrade"),
    (b"upgrade", b"SPDY/3.1"),
    (b"x-stream-protocol-version", b"v4.channel.k8s.io"),
    (b"x-stream-protocol-version", b"v3.channel.k8s.io"),
]
BASES = {"plain": PLAIN, "websocket": WEBSOCKET, "spdy": SPDY}

FORBIDDEN_UPSTREAM = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-remote-user",
    "x-remote-group",
    "x-remote-extra-scopes",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
    "x-real-ip",
    "kubeport-user",
    "x-kubeport-identity",
    "keep-alive",
    "te",
    "trailer",
    "proxy-connection",
)


def _names(headers: list[tuple[bytes, bytes]]) -> list[str]:
    return [name.decode().lower() for name, _ in headers]


def _assert_only_our_identity(out: list[tuple[bytes, bytes]]) -> None:
    names = _names(out)
    assert [v for n, v in out if n.lower() == b"impersonate-user"] == [b"alice"]
    assert [v for n, v in out if n.lower() == b"impersonate-group"] == [b"viewers", b"system:authenticated"]
    assert not [n for n in names if n.startswith("impersonate-") and n not in ("impersonate-user", "impersonate-group")]
    for name in FORBIDDEN_UPSTREAM:
        assert name not in names, name


# -- headers that must be stripped (the request goes through, with only our identity) ----------------------------

STRIPPED: list[tuple[str, list[RawHeader]]] = [
    ("forged Impersonate-User", [(b"Impersonate-User", b"admin")]),  # refused later by the role engine if asked
    ("forged X-Remote-User", [(b"X-Remote-User", b"admin")]),
    ("forged X-Remote-Group", [(b"X-Remote-Group", b"system:masters")]),
    ("forged X-Remote-Extra", [(b"X-Remote-Extra-Scopes", b"all")]),
    ("client Authorization", [(b"Authorization", b"Bearer stolen")]),
    ("client Authorization, case variant", [(b"aUtHoRiZaTiOn", b"Bearer stolen")]),
    ("duplicate Authorization", [(b"Authorization", b"Bearer a"), (b"authorization", b"Bearer b")]),
    ("Proxy-Authorization", [(b"Proxy-Authorization", b"Basic eA==")]),
    ("Cookie", [(b"Cookie", b"session=1")]),
    ("X-Forwarded-For", [(b"X-Forwarded-For", b"10.0.0.1")]),
    ("X-Forwarded-Host and Proto", [(b"X-Forwarded-Host", b"evil"), (b"X-Forwarded-Proto", b"http")]),
    ("Forwarded", [(b"Forwarded", b"for=1.2.3.4")]),
    ("X-Real-Ip", [(b"X-Real-IP", b"1.2.3.4")]),
    ("kubeport internal header", [(b"Kubeport-User", b"root")]),
    ("kubeport internal header, x- form", [(b"X-Kubeport-Identity", b"root")]),
    ("hop-by-hop Keep-Alive/TE/Trailer", [(b"Keep-Alive", b"timeout=5"), (b"TE", b"trailers"), (b"Trailer", b"x")]),
    ("Proxy-Connection", [(b"Proxy-Connection", b"keep-alive")]),
    ("str pairs as well as bytes", [("Impersonate-Group", "system:masters"), ("X-Remote-User", "admin")]),
]


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize(("extra"), [c[1] for c in STRIPPED], ids=[c[0] for c in STRIPPED])
def test_protected_headers_never_reach_upstream(base: str, extra: list[RawHeader]) -> None:
    inbound = inspect([*BASES[base], *extra])
    out = outbound(inbound, ALICE)
    _assert_only_our_identity(out)
    if base == "plain":
        assert b"connection" not in [n.lower() for n, _ in out]
    else:
        assert (b"Connection", b"Upgrade") in out


def test_connection_listed_headers_are_removed_too() -> None:
    out = outbound(inspect([*PLAIN, (b"Connection", b"close, X-Custom"), (b"X-Custom", b"1")]), ALICE)
    assert "x-custom" not in _names(out)
    assert "connection" not in _names(out)


# -- refused requests --------------------------------------------------------------------------------------------

REFUSED: list[tuple[str, list[RawHeader], type[Exception], str]] = [
    # Connection smuggling (GHSA-pvxj-25m6-7vqr and relatives)
    ("Connection names Impersonate-User", [(b"Connection", b"Impersonate-User")], BadParameter, "Impersonate-User"),
    ("Connection names impersonate-group, lower", [(b"connection", b"impersonate-group")], BadParameter, ""),
    ("Connection names it among others", [(b"Connection", b"keep-alive, Impersonate-User")], BadParameter, ""),
    ("Connection names it, whitespace", [(b"Connection", b"close ,\t Impersonate-User\t")], BadParameter, ""),
    (
        "Connection names it, second header",
        [(b"Connection", b"close"), (b"Connection", b"IMPERSONATE-USER")],
        BadParameter,
        "",
    ),
    ("Connection names Authorization", [(b"Connection", b"Authorization")], BadParameter, "Authorization"),
    ("Connection names Cookie", [(b"Connection", b"cookie")], BadParameter, ""),
    ("Connection names X-Remote-User", [(b"Connection", b"X-Remote-User")], BadParameter, ""),
    ("Connection names X-Forwarded-For", [(b"Connection", b"X-Forwarded-For")], BadParameter, ""),
    ("Connection names a kubeport header", [(b"Connection", b"Kubeport-User")], BadParameter, ""),
    ("Connection names Content-Length", [(b"Connection", b"Content-Length")], BadParameter, ""),
    ("Connection names Host", [(b"Connection", b"Host")], BadParameter, ""),
    ("Connection with a bad token", [(b"Connection", b"Impersonate-User;x")], BadParameter, ""),
    # impersonation headers Teleport refuses
    (
        "Impersonate-Uid",
        [(b"Impersonate-Uid", b"0")],
        AccessDenied,
        'impersonation request has been denied, unsupported impersonation header "Impersonate-Uid"',
    ),
    ("impersonate-uid lower case", [(b"impersonate-uid", b"0")], AccessDenied, "Impersonate-Uid"),
    ("Impersonate-Extra-", [(b"Impersonate-Extra-Scopes", b"view")], AccessDenied, "Impersonate-Extra-Scopes"),
    ("Impersonate-Extra- percent-encoded key", [(b"Impersonate-Extra-Kubeport.dev%2fx", b"1")], AccessDenied, ""),
    ("unknown Impersonate-*", [(b"Impersonate-Whatever", b"1")], AccessDenied, ""),
    (
        "duplicate Impersonate-User",
        [(b"Impersonate-User", b"alice"), (b"impersonate-user", b"admin")],
        AccessDenied,
        'impersonation request has been denied, user already specified to "alice"',
    ),
    # a browser's request (cross-site WebSocket hijacking with the user's client certificate)
    ("Origin of another site", [(b"Origin", b"https://evil.example")], AccessDenied, "cross-origin"),
    ("Origin null, case variant", [(b"ORIGIN", b"null")], AccessDenied, "cross-origin"),
    ("Origin of another port", [(b"Origin", b"https://front:8443")], AccessDenied, "cross-origin"),
    ("Origin as a prefix of the host", [(b"Origin", b"https://front:3026.evil")], AccessDenied, "cross-origin"),
    ("Origin with userinfo", [(b"Origin", b"https://front:3026@evil")], AccessDenied, "cross-origin"),
    ("Origin not http(s)", [(b"Origin", b"file://front:3026")], AccessDenied, "cross-origin"),
    (
        "two Origin headers",
        [(b"Origin", b"https://front:3026"), (b"Origin", b"https://evil.example")],
        AccessDenied,
        "cross-origin",
    ),
    # malformed heads: obs-fold remnants, injection, non-ASCII
    ("obs-fold remnant in a value", [(b"X-Note", b"a\r\n Impersonate-User: admin")], BadParameter, ""),
    ("bare LF in a value", [(b"X-Note", b"a\nImpersonate-User: admin")], BadParameter, ""),
    ("NUL in a value", [(b"X-Note", b"a\x00b")], BadParameter, ""),
    ("name with leading space (folded)", [(b" Impersonate-User", b"admin")], BadParameter, ""),
    ("name with a colon", [(b"Impersonate-User:", b"admin")], BadParameter, ""),
    ("non-ASCII name", [("Impersonate-Üser", "admin")], BadParameter, ""),
    ("non-ASCII name bytes", [(b"Impersonate-\xc3\x9cser", b"admin")], BadParameter, ""),
    ("Impersonate-Group not UTF-8", [(b"Impersonate-Group", b"\xff\xfe")], BadParameter, ""),
    # framing (request smuggling)
    (
        "Content-Length and Transfer-Encoding",
        [(b"Content-Length", b"4"), (b"Transfer-Encoding", b"chunked")],
        BadParameter,
        "",
    ),
    ("two different Content-Length", [(b"Content-Length", b"4"), (b"Content-Length", b"5")], BadParameter, ""),
    ("comma-joined Content-Length", [(b"Content-Length", b"4, 5")], BadParameter, ""),
    ("Transfer-Encoding other than chunked", [(b"Transfer-Encoding", b"gzip, chunked")], BadParameter, ""),
]


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize(("extra", "error", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_attacks_are_refused(base: str, extra: list[RawHeader], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message) if message else None) as caught:
        inspect([*BASES[base], *extra])
    assert isinstance(caught.value, KubeportError)
    assert caught.value.to_status()["code"] == (403 if error is AccessDenied else 400)


def test_connection_upgrade_names_only_upgrade() -> None:
    """Upgrade smuggling: `Connection: Upgrade, Impersonate-User` is refused like any other listing."""
    with pytest.raises(BadParameter):
        inspect([*WEBSOCKET, (b"Connection", b"Upgrade, Impersonate-User"), (b"Impersonate-User", b"admin")])


# -- what the role engine gets, and what goes upstream ---------------------------------------------------------


def test_client_impersonation_request_is_extracted_for_the_role_engine() -> None:
    inbound = inspect(
        [
            *PLAIN,
            (b"Impersonate-User", b""),  # kubectl --as-group sends an empty user: ignored
            (b"Impersonate-Group", b"viewers"),
            (b"IMPERSONATE-GROUP", b" viewers,system:masters "),  # comma: one group name, as the API reads it
        ]
    )
    assert inbound.requested_user is None
    assert inbound.requested_groups == ("viewers", "viewers,system:masters")
    assert "impersonate-group" not in [n.decode().lower() for n, _ in inbound.kept]


def test_outbound_sets_one_group_header_per_group_and_no_authorization() -> None:
    out = outbound(inspect([*PLAIN, (b"Content-Length", b"2")]), ALICE)
    assert out == [
        (b"host", b"front:3026"),
        (b"user-agent", b"kubectl/v1.33.0"),
        (b"accept", b"application/json"),
        (b"Content-Length", b"2"),
        (b"Impersonate-User", b"alice"),
        (b"Impersonate-Group", b"viewers"),
        (b"Impersonate-Group", b"system:authenticated"),
    ]


def test_websocket_and_spdy_upgrade_headers_survive() -> None:
    ws = outbound(inspect(WEBSOCKET), ALICE)
    assert (b"Upgrade", b"websocket") in ws
    assert [v for n, v in ws if n == b"sec-websocket-protocol"] == [b"v5.channel.k8s.io", b"v4.channel.k8s.io"]
    assert [n for n, _ in ws].count(b"Connection") == 1
    spdy = outbound(inspect(SPDY), ALICE)
    assert (b"Upgrade", b"SPDY/3.1") in spdy
    assert [v for n, v in spdy if n == b"x-stream-protocol-version"] == [b"v4.channel.k8s.io", b"v3.channel.k8s.io"]


def test_upgrade_header_without_connection_upgrade_is_dropped() -> None:
    out = outbound(inspect([*PLAIN, (b"Upgrade", b"websocket")]), ALICE)
    assert "upgrade" not in _names(out)


def test_every_request_on_a_connection_is_checked_alike() -> None:
    """A kept-alive connection: the second head is inspected from scratch (no state carried over)."""
    first = outbound(inspect(PLAIN), ALICE)
    with pytest.raises(BadParameter):
        inspect([*PLAIN, (b"Connection", b"Impersonate-User")])
    second = outbound(inspect([*PLAIN, (b"Impersonate-User", b"admin"), (b"Authorization", b"Bearer x")]), ALICE)
    assert first == second


@pytest.mark.parametrize(
    "identity",
    [
        Identity("alice\r\nX-Remote-User: admin", ("viewers",)),
        Identity("alice", ("viewers\nx",)),
        Identity("", ("viewers",)),
        Identity(" alice", ("viewers",)),
        Identity("alice", ("",)),
    ],
)
def test_an_identity_that_cannot_be_sent_fails_closed(identity: Identity) -> None:
    with pytest.raises(KubeportError) as caught:
        outbound(inspect(PLAIN), identity)
    assert caught.value.to_status()["code"] == 500


def test_fail_closed_assertion_catches_a_tampered_inbound() -> None:
    """If a future change let a protected header into ``kept``, outbound refuses instead of forwarding."""
    inbound = inspect(PLAIN)
    for smuggled in (
        (b"Authorization", b"Bearer x"),
        (b"Impersonate-Group", b"system:masters"),
        (b"X-Remote-User", b"admin"),
        (b"Connection", b"close"),
        (b"TE", b"trailers"),
    ):
        tampered = type(inbound)(
            kept=(*inbound.kept, smuggled),
            upgrade=inbound.upgrade,
            requested_user=None,
            requested_groups=(),
        )
        with pytest.raises(KubeportError, match="refusing to forward"):
            outbound(tampered, ALICE)


def test_non_ascii_values_pass_through_untouched() -> None:
    out = outbound(inspect([*PLAIN, (b"X-Note", b"caf\xc3\xa9 \xff")]), Identity("j\u00fcrgen", ("gr\u00fcn",)))
    assert (b"X-Note", b"caf\xc3\xa9 \xff") in out
    assert (b"Impersonate-User", "j\u00fcrgen".encode()) in out


def test_canonical() -> None:
    assert canonical("impersonate-extra-foo") == "Impersonate-Extra-Foo"
    assert canonical("IMPERSONATE-UID") == "Impersonate-Uid"


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("origin", [b"https://front:3026", b"http://FRONT:3026", b"https://front:3026/"])
def test_a_same_origin_request_passes(base: str, origin: bytes) -> None:
    """The Python client's websocket-client sends ``Origin: scheme://host[:port]`` of the server it dials:
    not a cross-site request (gorilla/websocket's checkSameOrigin rule), so exec keeps working."""
    inbound = inspect([*BASES[base], (b"Origin", origin)])
    assert (b"Origin", origin) in inbound.kept
