"""Network addresses the way users type them, and what went wrong when one could not be listened on.

Pure: no sockets. ``parse_hostport`` is kubeport's one host:port parser: it reads the registry's
``--listen`` and ``--public-addr`` values and the agent config's ``kubeport.registry``,
``kubernetes_service.listen_addr`` and ``public_addr``; ``format_hostport`` is its inverse. ``listen_error``
turns the ``OSError`` a listener open raised into one sentence naming the address and the cause, for the seam
that opens listeners (``registry.server.http.serve_http``) to raise as a kubeport error.

Accepted forms: ``HOST:PORT``, ``[IPv6]:PORT``, ``HOST``, ``[IPv6]``, ``:PORT`` and ``PORT``. A missing host
means ``default_host`` (127.0.0.1 for a listener: only this machine can connect unless the user asks for
``0.0.0.0``), and is an error when ``default_host`` is None (an address something dials); a missing port
means ``default_port``. A value made only of digits is a port, never a host name (``--listen 3025`` would
otherwise try to bind the IPv4 address 0.0.11.209). Hosts are IP literals or DNS names; an unbracketed IPv6
address (``a:b:c``) and text after ``]`` (``[::1]x``) are refused, as are spaces, control characters, URLs
and huge values, with a message ``WHAT "VALUE": problem`` that quotes the value, escaped and shortened.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket

from registry.core.errors import BadParameter
from registry.core.validation import quote

_HOST_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?$")
_show = quote  # the value as messages show it: double-quoted, escaped, shortened


def format_hostport(host: str, port: int) -> str:
    """``HOST:PORT``, with an IPv6 host in brackets (the inverse of :func:`parse_hostport`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hostport(
    value: str, *, default_port: int, what: str, default_host: str | None = "127.0.0.1", min_port: int = 0
) -> tuple[str, int]:
    """``value`` as (host, port); the host keeps no brackets. Raises BadParameter naming ``what``.

    ``default_host=None`` makes the host required; ports below ``min_port`` (1 for an address to dial) are
    refused like ports above 65535.
    """
    text = value.strip()
    if not text:
        raise BadParameter(f"{what} must not be empty (expected HOST:PORT, :PORT or PORT)")
    if "://" in text:
        raise BadParameter(f"{what} must be HOST:PORT, not a URL: {_show(value)}")
    if not text.isprintable() or any(ch.isspace() for ch in text):
        raise BadParameter(f"{what} {_show(value)} contains spaces or control characters")
    port_text: str | None = None
    if text.isascii() and text.isdigit():
        host, port_text = "", text
    elif text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise BadParameter(f"{what} {_show(value)}: missing ']'")
        if rest:
            if not rest.startswith(":"):
                raise BadParameter(f"{what} {_show(value)}: unexpected text after ']'")
            port_text = rest[1:]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise BadParameter(f"{what} {_show(value)}: invalid IPv6 address in brackets") from None
    else:
        if text.count(":") > 1:
            raise BadParameter(f"{what} {_show(value)}: put an IPv6 address in brackets, e.g. [::1]:{default_port}")
        host, sep, after = text.partition(":")
        port_text = after if sep else None
        if host and not is_ip(host) and (len(host) > 253 or not _HOST_RE.match(host)):
            raise BadParameter(f"{what} {_show(value)}: invalid host name (expected an IP address or a DNS name)")
    port = default_port
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
            raise BadParameter(f"{what} {_show(value)}: the port must be a number between {min_port} and 65535")
        port = int(port_text)
    if not min_port <= port <= 65535:
        raise BadParameter(f"{what} {_show(value)}: port {port} is out of range {min_port}-65535")
    if not host:
        if default_host is None:
            raise BadParameter(f"{what} {_show(value)}: missing host (expected HOST:PORT)")
        host = default_host
    return host, port


_CAUSES = {
    errno.EADDRINUSE: "the address is already in use (is another kubeport running? stop it or choose another port)",
    errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
    errno.EPERM: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
    errno.EADDRNOTAVAIL: "this host has no such address (use one of its own addresses, or 0.0.0.0 for all)",
}


def listen_error(host: str, port: int, exc: BaseException) -> str:
    """``cannot listen on HOST:PORT: CAUSE`` for an error raised while opening a listener."""
    where = format_hostport(host, port)
    if isinstance(exc, socket.gaierror):
        cause = f"cannot resolve host {host!r} ({exc.strerror or exc})"
    elif isinstance(exc, UnicodeError):
        cause = f"invalid host name {_show(host)}"
    elif isinstance(exc, OSError) and exc.errno in _CAUSES:
        cause = _CAUSES[exc.errno]
    elif isinstance(exc, OSError):
        cause = exc.strerror or str(exc)
    else:
        cause = str(exc)
    return f"cannot listen on {where}: {cause}"


def is_ip(value: str) -> bool:
    """Whether ``value`` is an IPv4 or IPv6 address (not a name)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether ``host`` only reaches this machine: ``localhost`` or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
