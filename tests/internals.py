"""The library releases kubeport's fast paths were verified against.

A few hot paths use another library's private internals for speed (the tunnel's hand-written DATA frames:
h2's windows). TLS no longer does: ``registry/host/socket_tls.py`` uses only ``ssl`` and trio's public
lowlevel API; nor does the forwarder's verbatim chunked relay (it read h11's body readers and writers; the
forwarder no longer uses h11, see ``registry/core/http1.py``).
Each checks what it touches and falls back to the library's public behaviour when it differs, so a
new release can cost speed, never correctness. Tests of a fast path therefore assert that it is TAKEN only on
the releases listed here (a regression in our own detection fails them) and assert behaviour everywhere; the
fallbacks have their own tests. Add a release here after checking the fast paths against it.
"""

from __future__ import annotations

from importlib.metadata import version

VERIFIED: dict[str, frozenset[str]] = {
    "h2": frozenset({"4.4.1"}),
}


def verified(distribution: str) -> bool:
    """Whether the installed ``distribution`` is a release the fast paths were checked against."""
    return version(distribution) in VERIFIED[distribution]
