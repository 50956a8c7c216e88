"""The front door's TLS context issues no session tickets: nothing resumes with it (kubectl's Go client keeps
no session cache, agents pass no session), and issuing tickets was about a third of the server's CPU per
handshake. The rest of a handshake is unchanged: client certificate required, ``http/1.1`` for kubectl."""

from __future__ import annotations

import contextlib
import ssl
from datetime import UTC, datetime

from registry.core.identity import REGISTRY_SERVER_NAME
from registry.frontdoor.serve import frontdoor_server_context
from registry.host.tls import client_context
from tests.registry.frontdoor.frontdoor_helpers import ca, credentials, user


def _pump(source: ssl.MemoryBIO, sink: ssl.MemoryBIO) -> None:
    data = source.read()
    if data:
        sink.write(data)


def _handshake(server_context: ssl.SSLContext) -> ssl.SSLObject:
    """A full TLS 1.3 handshake over memory BIOs, then the server's post-handshake messages delivered to the
    client (where tickets would be); returns the client's side."""
    creds = credentials(user())
    client_ctx = client_context([ca().cert_pem], creds.cert_pem, creds.key_pem)
    client_ctx.set_alpn_protocols(["h2", "http/1.1"])
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_context.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=REGISTRY_SERVER_NAME)
    for _ in range(10):
        for side, out, peer_in in ((client, c_out, s_in), (server, s_out, c_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
            _pump(out, peer_in)
    server.write(b"x")  # anything after the handshake: tickets, if any, go out before it
    _pump(s_out, c_in)
    assert client.read(1) == b"x"
    assert server.version() == "TLSv1.3"
    assert server.selected_alpn_protocol() == "http/1.1"
    assert server.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(creds.cert_pem.decode())
    return client


def test_the_front_door_issues_no_session_tickets() -> None:
    context = frontdoor_server_context(ca(), now=datetime.now(tz=UTC))
    session = _handshake(context).session
    assert session is None or not session.has_ticket


def test_the_check_sees_tickets_where_a_context_issues_them() -> None:
    """The test above could pass vacuously if tickets never reached the client here: with OpenSSL's default
    they do."""
    context = frontdoor_server_context(ca(), now=datetime.now(tz=UTC))
    context.num_tickets = 2
    session = _handshake(context).session
    assert session is not None and session.has_ticket
