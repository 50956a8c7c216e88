"""Which kube cluster a kubectl request is for: the path prefix of the front door's URLs.

A kubeconfig written by ``kpctl auth sign --format=kubernetes`` names, for every cluster, the server
``https://<front door public addr>`` + :func:`cluster_prefix` (``/v1/clusters/<name as base64url without
padding>``), so one user certificate serves every cluster and no TLS server-name tricks are needed; kubectl
appends its API paths to it. The front door reads the first request's prefix to route the connection; the
agent checks that every request on it carries the same prefix and strips it with :func:`split_prefix`.

Pure. Invariants:

* Any valid cluster name (``^[a-zA-Z0-9._-]+$``, at most 253 characters) is exactly one path segment, and
  ``split_prefix(cluster_prefix(name) + rest) == (name, rest or "/")``.
* Decoding is strict: only the canonical encoding of a valid name is accepted (no padding, no percent
  escapes, no non-canonical trailing bits), so two different prefixes never name the same cluster; anything
  else raises :class:`BadParameter` with a message that shows the offending text escaped and shortened.
"""

from __future__ import annotations

import base64
import binascii
import re

from registry.core.errors import BadParameter
from registry.core.validation import quote

PREFIX = "/v1/clusters/"
MAX_NAME = 253
_NAME_RE = re.compile(r"^[a-zA-Z0-9._-]+$")  # the kube_cluster name rule (codec_common.NAME_RE)
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def encode_name(name: str) -> str:
    """``name`` as base64url without padding (one path segment)."""
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def cluster_prefix(name: str) -> str:
    """``/v1/clusters/<name encoded>``: the path every request to cluster ``name`` starts with."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > MAX_NAME:
        raise BadParameter(f"invalid kube cluster name {quote(str(name))}")
    return PREFIX + encode_name(name)


def _decode_name(segment: str) -> str:
    problem = f"malformed cluster segment {quote(segment)} in the request path (expected {PREFIX}<base64url name>)"
    if not _SEGMENT_RE.match(segment) or len(segment) > (MAX_NAME * 4 + 2) // 3:
        raise BadParameter(problem)
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        name = raw.decode()
    except (binascii.Error, ValueError):
        raise BadParameter(problem) from None
    if encode_name(name) != segment or not _NAME_RE.match(name) or len(name) > MAX_NAME:
        raise BadParameter(problem)
    return name


def split_prefix(raw_path: bytes | str) -> tuple[str, str]:
    """``(cluster name, the rest of the request target)`` of a request target that starts with a
    :func:`cluster_prefix`; the rest keeps its query string and is ``/`` when empty (``/?x`` for ``?x``).

    Raises :class:`BadParameter` when the prefix is missing or malformed.
    """
    if isinstance(raw_path, bytes):
        try:
            path = raw_path.decode("ascii")
        except UnicodeDecodeError:
            raise BadParameter(f"the request path {quote(raw_path.decode('latin-1'))} is not ASCII") from None
    else:
        path = raw_path
    if not path.startswith(PREFIX):
        raise BadParameter(
            f"the request path {quote(path)} does not name a kube cluster: kubeport's kubeconfig servers end in "
            f"{PREFIX}<cluster> (sign a new kubeconfig with kpctl auth sign --format=kubernetes)"
        )
    remainder = path[len(PREFIX) :]
    cut = min((i for i in (remainder.find("/"), remainder.find("?")) if i >= 0), default=len(remainder))
    name = _decode_name(remainder[:cut])
    rest = remainder[cut:]
    if not rest.startswith("/"):
        rest = "/" + rest
    return name, rest
