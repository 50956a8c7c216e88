"""``--listen`` / ``--public-addr`` parsing and listener error messages (pure)."""

from __future__ import annotations

import errno
import socket

import pytest

from registry.core.errors import BadParameter
from registry.core.netaddr import format_hostport, listen_error, parse_hostport


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3025", ("127.0.0.1", 3025)),  # a bare port, not the IPv4 address 0.0.11.209
        ("0", ("127.0.0.1", 0)),
        (":3025", ("127.0.0.1", 3025)),
        ("0.0.0.0:3025", ("0.0.0.0", 3025)),
        ("registry.example.com:443", ("registry.example.com", 443)),
        ("registry.example.com", ("registry.example.com", 3025)),
        ("[::1]:4000", ("::1", 4000)),
        ("[::]", ("::", 3025)),
        ("  127.0.0.1:3025  ", ("127.0.0.1", 3025)),
        ("65535", ("127.0.0.1", 65535)),
    ],
)
def test_accepted_forms(value: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(value, default_port=3025, what="--listen") == expected


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("65536", "out of range"),
        ("127.0.0.1:99999", "out of range"),
        ("127.0.0.1:123456", "between 0 and 65535"),
        ("127.0.0.1:-1", "between 0 and 65535"),
        ("127.0.0.1:+80", "between 0 and 65535"),
        ("127.0.0.1: 80", "spaces"),
        ("127.0.0.1:٣٠٢٥", "between 0 and 65535"),  # Unicode digits int() would take
        ("127.0.0.1:", "between 0 and 65535"),
        ("::1:3025", "brackets"),
        ("[::1", "missing ']'"),
        ("[::1]x", "unexpected text"),
        ("[not-v6]:1", "invalid IPv6"),
        ("https://host:3025", "not a URL"),
        ("host\n:3025", "control characters"),
        ("host\x00:3025", "control characters"),
        ("ho\x1b[2Jst:1", "control characters"),
        ("ho\u202est:1", "control characters"),
        ("-host:1", "invalid host name"),
        ("ho/st:1", "invalid host name"),
        ("h" * 254 + ":1", "invalid host name"),
        ("h" * 1_000_000, "invalid host name"),
    ],
)
def test_refused_forms(value: str, needle: str) -> None:
    with pytest.raises(BadParameter) as err:
        parse_hostport(value, default_port=3025, what="--listen")
    assert needle in err.value.message
    assert err.value.message.startswith("--listen")
    assert len(err.value.message) < 300  # the offending value is quoted, shortened


@pytest.mark.parametrize(
    ("exc", "needle"),
    [
        (OSError(errno.EADDRINUSE, "Address already in use"), "already in use"),
        (OSError(errno.EACCES, "Permission denied"), "ports below 1024 need root"),
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), "no such address"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "cannot resolve host"),
        (UnicodeError("label too long"), "invalid host name"),
        (OSError(errno.EMFILE, "Too many open files"), "Too many open files"),
    ],
)
def test_listen_error_names_the_address_and_the_cause(exc: BaseException, needle: str) -> None:
    message = listen_error("10.0.0.1", 80, exc)
    assert message.startswith("cannot listen on 10.0.0.1:80: ")
    assert needle in message


def test_listen_error_brackets_ipv6() -> None:
    assert listen_error("::1", 3025, OSError(errno.EADDRINUSE, "x")).startswith("cannot listen on [::1]:3025: ")


@pytest.mark.parametrize(
    ("value", "default_host", "min_port", "expected"),
    [
        ("reg.example.com", None, 1, ("reg.example.com", 3025)),  # an address to dial: the host is required
        ("[::1]:4000", None, 1, ("::1", 4000)),
        (":3027", "0.0.0.0", 0, ("0.0.0.0", 3027)),  # the agent's listen_addr default host
        ("0", "0.0.0.0", 0, ("0.0.0.0", 0)),
        ("reg:65535", None, 1, ("reg", 65535)),
    ],
)
def test_required_host_and_port_floor_accept(
    value: str, default_host: str | None, min_port: int, expected: tuple[str, int]
) -> None:
    assert parse_hostport(value, default_port=3025, what="x", default_host=default_host, min_port=min_port) == expected


@pytest.mark.parametrize(
    ("value", "default_host", "min_port", "message"),
    [
        (":3025", None, 1, 'x ":3025": missing host (expected HOST:PORT)'),
        ("3025", None, 1, 'x "3025": missing host (expected HOST:PORT)'),  # digits are a port, never a host
        ("reg:0", None, 1, 'x "reg:0": port 0 is out of range 1-65535'),
        ("reg:http", None, 1, 'x "reg:http": the port must be a number between 1 and 65535'),
        ("reg:70000", "0.0.0.0", 0, 'x "reg:70000": port 70000 is out of range 0-65535'),
        ("a:b:c", None, 1, 'x "a:b:c": put an IPv6 address in brackets, e.g. [::1]:3025'),
        ("[::1]x", None, 1, "x \"[::1]x\": unexpected text after ']'"),
    ],
)
def test_required_host_and_port_floor_refuse(value: str, default_host: str | None, min_port: int, message: str) -> None:
    with pytest.raises(BadParameter) as err:
        parse_hostport(value, default_port=3025, what="x", default_host=default_host, min_port=min_port)
    assert err.value.message == message


@pytest.mark.parametrize(
    ("host", "port", "text"), [("h", 1, "h:1"), ("::1", 2, "[::1]:2"), ("10.0.0.1", 0, "10.0.0.1:0")]
)
def test_format_hostport_round_trips(host: str, port: int, text: str) -> None:
    assert format_hostport(host, port) == text
    assert parse_hostport(text, default_port=9, what="x") == (host, port)
