"""Routing kubectl requests by URL path: the cluster prefix ``/v1/clusters/<base64url(name)>``.

Pure (no I/O). kubectl's kubeconfig ``server`` is ``https://<front door>/v1/clusters/<name>`` with the
cluster name encoded as base64url without padding, so every valid cluster name is exactly one path segment
and one user certificate serves every cluster (access-design.md §7.2). The front door calls
:func:`split_prefix` on the first request head of a connection to route it; the agent's forwarder checks
that *every* request on a stream starts with :func:`cluster_prefix` of the cluster the stream is bound to.

Invariants:

* ``split_prefix(cluster_prefix(n) + rest) == (n, rest or "/")`` for every name ``n`` and every path
  ``rest`` starting with ``/`` or ``?``.
* The encoding is canonical: padding, characters outside the base64url alphabet, non-zero trailing bits
  (two spellings of one name), an empty name and a name that is not printable UTF-8 are refused with a
  :class:`BadParameter` that says what is wrong. The raw path is compared before any percent-decoding, so
  ``%2F`` or ``%41`` can never form or alter a prefix.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

from registry.core.errors import BadParameter

PREFIX_ROOT: Final = "/v1/clusters/"
MAX_NAME_BYTES: Final = 1024  # cluster names are at most 253 characters; leave room for UTF-8
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


def encode_name(name: str) -> str:
    """base64url of the UTF-8 name, without padding."""
    if not name:
        raise BadParameter("a cluster name must not be empty")
    return base64.urlsafe_b64encode(name.encode("utf-8")).rstrip(b"=").decode("ascii")


def decode_name(segment: str) -> str:
    """The cluster name of one canonical base64url segment (see the module invariants)."""
    if not segment:
        raise BadParameter(f"the path must name a cluster after {PREFIX_ROOT}")
    if len(segment) > MAX_NAME_BYTES * 4 // 3 + 4 or not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        raise BadParameter(f"the cluster segment after {PREFIX_ROOT} is not unpadded base64url: {segment[:80]!r}")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        name = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        raise BadParameter(f"the cluster segment after {PREFIX_ROOT} does not decode: {segment[:80]!r}") from None
    if not name or encode_name(name) != segment:
        raise BadParameter(f"the cluster segment after {PREFIX_ROOT} is not canonical base64url: {segment[:80]!r}")
    if not name.isprintable():
        raise BadParameter(f"the cluster name in the path is not printable: {name[:80]!r}")
    return name


def cluster_prefix(name: str) -> str:
    """``/v1/clusters/<base64url(name)>`` (no trailing slash)."""
    return PREFIX_ROOT + encode_name(name)


def split_prefix(raw_path: bytes | str) -> tuple[str, str]:
    """(cluster name, the rest of the request target) of a raw request target.

    The rest keeps its query string; an empty rest becomes ``/`` (``/v1/clusters/X?x=1`` -> ``/?x=1``).
    Raises :class:`BadParameter` when the target does not start with a well-formed cluster prefix.
    """
    if isinstance(raw_path, bytes):
        try:
            text = raw_path.decode("ascii")
        except UnicodeDecodeError:
            raise BadParameter("the request target is not ASCII") from None
    else:
        text = raw_path
    if not text.startswith(PREFIX_ROOT):
        raise BadParameter(f"the request path must start with {PREFIX_ROOT}<cluster> (got {text[:100]!r})")
    after = text[len(PREFIX_ROOT) :]
    end = len(after)
    for separator in "/?":
        found = after.find(separator)
        if found != -1:
            end = min(end, found)
    name = decode_name(after[:end])
    rest = after[end:]
    if not rest.startswith("/"):
        rest = "/" + rest
    return name, rest
