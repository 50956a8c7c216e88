"""TLS for the agent's own calls to a Kubernetes API server: one client ``SSLContext`` per set of TLS material.

Invariants:

* TLS trusts exactly what the kubeconfig says: its CA data when present, the system roots when absent, or
  nothing at all when ``insecure-skip-tls-verify`` is set. Names are checked against SANs only (as Go's
  crypto/tls does). ALPN offers ``http/1.1`` only, except on the contexts of the forwarder's HTTP/2 watch
  connections (``h2`` first). TLS 1.2 at least, no renegotiation.
* Identical TLS material yields the same ``SSLContext`` object: contexts are cached by a digest of their
  inputs (bounded, least recently used first out), so a thousand clusters behind one CA load it once. The
  cache holds the digest, never the key material itself.
* Bad material is a ``BadParameter`` that names the field, never its content.
"""

from __future__ import annotations

import hashlib
import ssl
from collections import OrderedDict
from typing import Final

from registry.core.errors import BadParameter
from registry.core.kubeconfig import KubeTarget
from registry.host.tls import load_cert_chain_from_memory

ALPN_PROTOCOLS: Final = ("http/1.1",)
H2_ALPN_PROTOCOLS: Final = ("h2", "http/1.1")
_CONTEXT_CACHE_SIZE: Final = 256

_CONTEXT_CACHE: OrderedDict[bytes, ssl.SSLContext] = OrderedDict()


def ssl_context_for(target: KubeTarget) -> ssl.SSLContext:
    """The client TLS context for ``target`` (shared with every target that has the same TLS material)."""
    return client_context(target.ca_data, target.insecure, target.client_cert, target.client_key)


def context_cache_size() -> int:
    """How many distinct contexts are cached (for statistics and tests)."""
    return len(_CONTEXT_CACHE)


def client_context(
    ca_data: bytes | None,
    insecure: bool,
    client_cert: bytes | None,
    client_key: bytes | None,
    *,
    alpn: tuple[str, ...] = ALPN_PROTOCOLS,
) -> ssl.SSLContext:
    """The client TLS context for this material (cached; an exec plugin's certificate replaces the
    kubeconfig's own ``client_cert``/``client_key``). ``alpn``: the protocols offered (the forwarder's
    HTTP/2 connections offer ``H2_ALPN_PROTOCOLS``; everything else ``http/1.1`` only)."""
    key = _context_key(ca_data, insecure, client_cert, client_key) + ",".join(alpn).encode()
    context = _CONTEXT_CACHE.get(key)
    if context is not None:
        _CONTEXT_CACHE.move_to_end(key)
        return context
    context = _build_context(ca_data, insecure, client_cert, client_key, alpn)
    _CONTEXT_CACHE[key] = context
    while len(_CONTEXT_CACHE) > _CONTEXT_CACHE_SIZE:
        _CONTEXT_CACHE.popitem(last=False)
    return context


def _context_key(ca_data: bytes | None, insecure: bool, client_cert: bytes | None, client_key: bytes | None) -> bytes:
    # Length-prefixed fields so that no two different inputs can concatenate to the same bytes; the digest
    # (not the key material itself) is what the cache holds on to.
    digest = hashlib.sha256(b"kubeport-kube-tls-v1")
    for part in (ca_data, b"insecure" if insecure else b"verify", client_cert, client_key):
        if part is None:
            digest.update(b"\xff")
        else:
            digest.update(len(part).to_bytes(8, "big") + part)
    return digest.digest()


def _build_context(
    ca_data: bytes | None,
    insecure: bool,
    client_cert: bytes | None,
    client_key: bytes | None,
    alpn: tuple[str, ...] = ALPN_PROTOCOLS,
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(list(alpn))
    context.options |= ssl.OP_NO_RENEGOTIATION
    if insecure:
        context.check_hostname = False  # must go first: CERT_NONE is refused while names are checked
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = True
        # Go (and so kubectl and client-go) ignores the common name; a server cert without SANs must fail
        # here too rather than work with kubeport and nowhere else.
        context.hostname_checks_common_name = False
        if ca_data is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            try:
                context.load_verify_locations(cadata=ca_data.decode("ascii"))
            except (UnicodeDecodeError, ssl.SSLError, ValueError) as exc:
                raise BadParameter(f"certificate-authority-data does not load as PEM certificates: {exc}") from exc
    if (client_cert is None) != (client_key is None):
        raise BadParameter("client-certificate-data and client-key-data must be given together")
    if client_cert is not None and client_key is not None:
        load_cert_chain_from_memory(context, client_cert, client_key, "client")
    return context
