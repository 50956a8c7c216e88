"""``kubeport login --auth=NAME``: single sign-on through an OIDC connector (the user's side of the flow).

Steps (the registry's side is ``registry.server.oidc``):

1. Generate the key here (it never leaves this machine) and a CSR for it.
2. Listen on ``127.0.0.1:0`` for the provider's redirect (the callback).
3. Ask the registry to start (connector, the listener's port, the CSR): it answers the provider's
   authorization URL, the ``state`` and the redirect URI it registered for this login.
4. Print the URL and open a browser when there is one (``--browser=none`` or ``KUBEPORT_BROWSER=none``
   never opens one: tests, SSH sessions).
5. Wait for the callback (``--sso-timeout`` seconds, default 180, and never past the login's expiry). A
   callback with another ``state`` is answered 400 and ignored (it is not this login's: a forged or stale
   redirect), so only the provider's redirect for this login is used. The browser gets a small page that
   says to return to the terminal.
6. Send ``state`` and ``code`` to the registry, which exchanges and checks them and signs the CSR; save the
   login with ``save_login(..., auth=NAME)``.

Invariants: the callback listener is bound to 127.0.0.1 only, reads at most :data:`MAX_CALLBACK_BYTES` per
request with a deadline, and is closed when this function returns; the code is never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TextIO
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from labels import LabelError, parse_go_duration
from registry.cli.login_common import Contact, save_login
from registry.cli.profile import KubeportHome
from registry.core.errors import AccessDenied, BadParameter, Timeout
from registry.core.identity import generate_private_key, make_csr

DEFAULT_TIMEOUT = 180.0
MAX_CALLBACK_BYTES = 16 * 1024
CALLBACK_READ_SECONDS = 10.0
_PAGE_OK = (
    b"<!doctype html><html><head><meta charset='utf-8'><title>kubeport login</title></head><body>"
    b"<h1>Login received</h1><p>You can close this window and return to the terminal.</p></body></html>"
)
_PAGE_BAD = (
    b"<!doctype html><html><head><meta charset='utf-8'><title>kubeport login</title></head><body>"
    b"<h1>Not this login</h1><p>This link does not belong to the login waiting in your terminal.</p></body></html>"
)


@dataclass(frozen=True)
class Callback:
    code: str | None
    error: str | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``kubeport login`` that only single sign-on reads (the login command adds them)."""
    parser.add_argument(
        "--browser",
        metavar="none",
        help="with --auth: 'none' prints the login URL without opening a browser (also $KUBEPORT_BROWSER=none)",
    )
    parser.add_argument(
        "--sso-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"with --auth: how long to wait for the browser (default {int(DEFAULT_TIMEOUT)})",
    )


def _ttl_seconds(value: object) -> float | None:
    """``args.ttl`` as the login command may hold it: None, seconds, a timedelta or a Go duration ("12h")."""
    if value is None or value == "":
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return parse_go_duration(value, what="--ttl")
        except LabelError as err:
            raise BadParameter(str(err)) from None
    raise BadParameter(f"--ttl must be a duration such as 12h (got {value!r})")


def _browser_wanted(args: argparse.Namespace) -> bool:
    choice = getattr(args, "browser", None) or os.environ.get("KUBEPORT_BROWSER", "")
    return str(choice).lower() not in ("none", "no", "off", "0")


async def _read_request_target(stream: trio.abc.Stream) -> str | None:
    """The target of one HTTP request on ``stream`` (None for anything that is not a whole GET head)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_CALLBACK_BYTES)
    received = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(4096)
            received += len(data)
            if not data or received > MAX_CALLBACK_BYTES:
                return None
            conn.receive_data(bytes(data))
            continue
        if isinstance(event, h11.Request):
            return event.target.decode("ascii", "replace") if event.method == b"GET" else None
        return None


async def _answer(stream: trio.abc.Stream, status: int, body: bytes) -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")  # h11 answers only a request it has seen
    conn.next_event()
    headers = [
        ("content-type", "text/html; charset=utf-8"),
        ("content-length", str(len(body))),
        ("cache-control", "no-store"),
        ("connection", "close"),
    ]
    data = conn.send(h11.Response(status_code=status, headers=headers))
    data = (data or b"") + (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
    await stream.send_all(data)


async def wait_callback(
    listener: trio.SocketListener,
    *,
    path: str,
    state: str,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> Callback:
    """Serve the loopback listener until a request for ``path`` carries ``state``; answer each request."""
    task_status.started()
    while True:
        stream = await listener.accept()
        async with stream:
            target = None
            with trio.move_on_after(CALLBACK_READ_SECONDS):
                target = await _read_request_target(stream)
            if target is None:
                continue
            parts = urlsplit(target)
            query = parse_qs(parts.query, max_num_fields=16)
            if parts.path != path or query.get("state", [None])[-1] != state:
                await _answer(stream, 400, _PAGE_BAD)
                continue
            await _answer(stream, 200, _PAGE_OK)
            code, error = query.get("code", [None])[-1], query.get("error", [None])[-1]
            return Callback(code=code, error=error)


async def run_sso_login(
    args: argparse.Namespace,
    home: KubeportHome,
    contact: Contact,
    *,
    on_url: Callable[[str], None] | None = None,
    out: TextIO | None = None,
) -> int:
    """Log in through the OIDC connector ``args.auth`` and save the login; 0 on success (module docstring).

    ``on_url`` also receives the URL (tests play the browser with it); ``out`` receives the messages."""
    out = out if out is not None else sys.stderr
    connector = str(args.auth)
    timeout = float(getattr(args, "sso_timeout", None) or DEFAULT_TIMEOUT)
    ttl = _ttl_seconds(getattr(args, "ttl", None))
    key_pem = generate_private_key()
    csr_pem = make_csr(key_pem, "kubeport-sso-login")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    try:
        port = listener.socket.getsockname()[1]
        async with contact.client() as client:
            started = await client.sso_start(connector, redirect_port=port, csr_pem=csr_pem, ttl_seconds=ttl)
            auth_url, state = str(started["auth_url"]), str(started["state"])
            redirect = urlsplit(str(started["redirect_uri"]))
            if redirect.port != port:
                raise BadParameter(f"the registry answered a redirect URI for another port ({redirect.port})")
            print(f"Open this URL in a browser to log in with {connector}:\n  {auth_url}", file=out, flush=True)
            if on_url is not None:
                on_url(auth_url)
            if _browser_wanted(args):
                await trio.to_thread.run_sync(webbrowser.open, auth_url)
            limit = min(timeout, float(started.get("expires_in", timeout)))
            callback: Callback | None = None
            with trio.move_on_after(limit):
                callback = await wait_callback(listener, path=redirect.path or "/", state=state)
            if callback is None:
                raise Timeout(f"single sign-on timed out after {int(limit)}s waiting for the browser; run it again")
            if callback.error is not None or not callback.code:
                shown = (callback.error or "no code")[:64]
                raise AccessDenied(f"the identity provider did not log you in ({shown!r})")
            result = await client.sso_finish(state=state, code=callback.code)
    finally:
        for item in listeners:
            await item.aclose()
    login = save_login(
        home,
        contact,
        user=str(result["user"]),
        key_pem=key_pem,
        cert_pem=str(result["cert_pem"]).encode(),
        ca_pems=[str(pem).encode() for pem in result["ca_pems"]],
        auth=connector,
    )
    roles = ", ".join(str(r) for r in result.get("roles", []))
    print(
        f'Logged in as "{result["user"]}" to cluster "{login.profile.cluster}" with {connector} '
        f"(roles: {roles}; valid until {login.expires.isoformat()})",
        file=out,
    )
    return 0
