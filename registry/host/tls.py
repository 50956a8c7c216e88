"""TLS contexts for kubeport's mutual TLS (stdlib ``ssl``), and reading the peer's certificate.

Invariants:

* TLS 1.2 or newer only; ALPN is ``http/1.1`` and nothing else. kubectl offers ``h2`` first and our servers
  speak HTTP/1.1 (h11), so they must never select ``h2``.
* Trust comes only from the CA bundle passed in (kept in memory, ``cadata``); the system trust store is
  never loaded, so a public CA cannot vouch for a kubeport peer.
* Clients check the server's name, and only against its DNS/IP SANs: the common-name fallback is off, so a
  certificate without SANs cannot pass as the server by its CN. Callers dial the registry with
  ``server_hostname=REGISTRY_SERVER_NAME`` whatever its address, and only registry certificates carry that
  name (the CA enforces it).
* A private key touches the disk only inside a fresh 0700 directory, for the moment ``load_cert_chain``
  reads it, and is deleted in ``finally`` (see :func:`_load_chain`).
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Sequence
from typing import Any, Literal

import trio

from registry.core.errors import BadParameter
from registry.host.socket_tls import SocketTLSStream

ALPN_PROTOCOLS = ("http/1.1",)

ClientCertPolicy = Literal["required", "optional", "none"]
_VERIFY_MODES: dict[str, ssl.VerifyMode] = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}


def server_context(
    cert_pem: bytes,
    key_pem: bytes,
    ca_pems: Sequence[bytes],
    *,
    client_certs: ClientCertPolicy = "optional",
) -> ssl.SSLContext:
    """A server context presenting ``cert_pem``. Client certificates are verified against ``ca_pems``:
    ``required`` refuses clients without one, ``optional`` lets them in unauthenticated (a certificate that
    IS sent must still verify), ``none`` does not ask for one."""
    if client_certs not in _VERIFY_MODES:
        raise BadParameter(f"client_certs must be required, optional or none, got {client_certs!r}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    load_cert_chain_from_memory(context, cert_pem, key_pem, "server")
    if client_certs != "none":
        _load_cas(context, ca_pems)
    context.verify_mode = _VERIFY_MODES[client_certs]
    return context


def client_context(
    ca_pems: Sequence[bytes], cert_pem: bytes | None = None, key_pem: bytes | None = None
) -> ssl.SSLContext:
    """A client context that verifies the server against ``ca_pems`` and checks its name (pass
    ``server_hostname=REGISTRY_SERVER_NAME`` when dialling the registry); presents ``cert_pem`` if given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname, no system CAs
    _harden(context)
    context.check_hostname = True
    context.hostname_checks_common_name = False
    _load_cas(context, ca_pems)
    if (cert_pem is None) != (key_pem is None):
        raise BadParameter("a client certificate needs its key and a key needs its certificate")
    if cert_pem is not None and key_pem is not None:
        load_cert_chain_from_memory(context, cert_pem, key_pem, "client")
    return context


def insecure_fetch_context() -> ssl.SSLContext:
    """A client context that verifies NOTHING, for first contact when joining with a CA pin.

    Joining starts without any trusted CA. The pin the admin handed out (``sha256:`` of the CA's public key)
    is the trust anchor: the caller fetches the CA over this connection, checks its pin with
    ``check_pin``, and from then on talks only through :func:`client_context` with that CA. So a
    man-in-the-middle can at worst hand over a CA that fails the pin check. Never send anything secret
    (join tokens, keys) over a connection made with this context.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context)
    context.check_hostname = False  # must be turned off before verify_mode can be CERT_NONE
    context.verify_mode = ssl.CERT_NONE
    return context


def peer_certificate_der(stream: trio.SSLStream[Any] | SocketTLSStream) -> bytes | None:
    """The client certificate (DER) the peer presented and the context verified, or None when it sent none.

    Call after the handshake (trio raises NeedHandshakeError before). On a context made with
    ``client_certs="none"`` the server never asks, so this is always None there.
    """
    der = stream.getpeercert(binary_form=True)
    return der if isinstance(der, bytes) and der else None


async def wait_for_input(stream: trio.abc.ReceiveStream) -> bool:
    """Return once ``stream.receive_some`` has something to hand out (bytes, an EOF, an error), parked on the
    socket alone meanwhile (:meth:`SocketTLSStream.wait_readable`); a no-op for any other stream.

    An idle ``kubectl get -w`` holds two readers for hours (kubectl's at the front door, the agent's to the
    API server): waiting here, rather than inside ``receive_some``, keeps no read buffer and no TLS call
    in flight for them. True when it parked (a schedule point: a relay loop's read after it need not be one)."""
    if isinstance(stream, SocketTLSStream):
        return await stream.wait_readable()
    return False


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    # Renegotiation only ever served attacks here; TLS 1.3 has none anyway.
    context.options |= ssl.OP_NO_RENEGOTIATION


def _load_cas(context: ssl.SSLContext, ca_pems: Sequence[bytes]) -> None:
    if isinstance(ca_pems, bytes) or not ca_pems:
        raise BadParameter("at least one CA certificate is needed (a sequence of PEM blobs)")
    try:
        bundle = "\n".join(pem.decode("ascii").strip() for pem in ca_pems) + "\n"
        context.load_verify_locations(cadata=bundle)
    except (UnicodeDecodeError, ssl.SSLError, ValueError) as exc:
        raise BadParameter(f"CA certificates do not load: {exc}") from exc


def load_cert_chain_from_memory(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes, side: str) -> None:
    """Load a certificate and key given as bytes.

    ``SSLContext.load_cert_chain`` only reads files; Python has no in-memory variant. So the PEMs go into a
    file created by ``mkstemp`` (0600) inside a fresh ``mkdtemp`` directory (0700, so no other user can even
    see the name), are loaded, and are removed in ``finally`` whatever happens.
    """
    try:
        directory = tempfile.mkdtemp(prefix="kubeport-tls-")
    except OSError as exc:
        raise BadParameter(f"cannot stage the {side} certificate for TLS: {exc.strerror or exc}") from exc
    path = ""
    try:
        fd, path = tempfile.mkstemp(dir=directory, suffix=".pem")
        with os.fdopen(fd, "wb") as handle:
            handle.write(cert_pem.rstrip(b"\n") + b"\n" + key_pem.rstrip(b"\n") + b"\n")
        context.load_cert_chain(certfile=path)
    except ssl.SSLError as exc:
        raise BadParameter(f"{side} certificate and key do not load (or do not pair): {exc}") from exc
    except OSError as exc:
        raise BadParameter(f"cannot stage the {side} certificate for TLS: {exc.strerror or exc}") from exc
    finally:
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(directory)
