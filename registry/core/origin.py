"""Same-origin rule for requests a web browser could send with the user's client certificate.

Pure (no I/O). kubeport has no browser client, but a browser that holds a kubeport client certificate
presents it for any site's page: a page of another site could then open an exec WebSocket through the front
door or POST a role to the registry API as that user (cross-site WebSocket hijacking / CSRF; Teleport
8.3.14). Every browser sends ``Origin`` on WebSocket handshakes and cross-origin writes; kubectl, client-go,
httpx (kpctl, the agent) send none, and the Python Kubernetes client's websocket-client sends the
``scheme://host[:port]`` of the server it dials.

Rule (gorilla/websocket's ``checkSameOrigin``): no ``Origin`` passes; otherwise there must be exactly one,
``http(s)://`` with a ``host[:port]`` equal (ASCII case-insensitively) to the request's ``Host``. ``null``,
another scheme, userinfo, another host or port, or several ``Origin`` headers are cross-origin.
"""

from __future__ import annotations

from collections.abc import Sequence

from registry.core.errors import AccessDenied


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def check_same_origin(origins: Sequence[bytes | str], host: bytes | str | None) -> None:
    """Raise :class:`AccessDenied` (403) unless the request is same-origin or carries no ``Origin``."""
    if not origins:
        return
    origin = _text(origins[0])
    request_host = _text(host or "")
    scheme, sep, rest = origin.partition("://")
    netloc = rest.split("/", 1)[0] if sep and scheme.lower() in ("http", "https") else ""
    if len(origins) == 1 and netloc and request_host and netloc.lower() == request_host.lower():
        return
    raise AccessDenied(
        f"cross-origin requests are refused (Origin {origin[:100]!r} is not this server, {request_host[:100]!r}): "
        "a web page of another site could send them with your client certificate"
    )
