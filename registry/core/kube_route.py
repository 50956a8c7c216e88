"""Routing kubectl requests by URL path: which kube cluster a request is for.

Pure (no I/O). kubectl's kubeconfig names the front door as ``https://<public addr>/v1/clusters/<b64>`` where
``<b64>`` is the cluster name encoded as base64url without padding (RFC 4648 §5), so any valid cluster name
is exactly one path segment and one user certificate serves every cluster (access-design.md §7.2). kubectl
appends its API paths to that prefix: ``/v1/clusters/<b64>/api/v1/pods?watch=true``.

Invariants:

* One name, one prefix: :func:`split_prefix` accepts only the canonical encoding :func:`cluster_prefix`
  produces (no padding, no non-zero trailing bits, no percent-encoding), so comparing raw path bytes with
  ``cluster_prefix(name)`` (what the agent does on every request) and decoding agree.
* Work is on the raw request target (bytes as received, before any percent-decoding): what routes a request
  is exactly what the agent checks again.
* The decoded name must be a valid kube cluster name (``^[a-zA-Z0-9._-]+$``, at most 253 characters);
  anything else raises :class:`~registry.core.errors.BadParameter` naming the problem.
"""

from __future__ import annotations

import base64
import binascii
import re

from registry.core.errors import BadParameter

CLUSTERS_PATH = "/v1/clusters/"
MAX_NAME_CHARS = 253
# base64 of 253 bytes without padding is 338 characters.
_MAX_SEGMENT_CHARS = (MAX_NAME_CHARS * 4 + 2) // 3
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_NAME_RE = re.compile(r"^[a-zA-Z0-9._-]+$")  # codec_common.NAME_RE: Teleport's kube cluster name rule
_MAX_SHOWN = 80


def _show(value: str) -> str:
    return repr(value if len(value) <= _MAX_SHOWN else value[:_MAX_SHOWN] + "...")


def _check_name(name: str) -> None:
    if not name or len(name) > MAX_NAME_CHARS or not _NAME_RE.match(name) or name in (".", ".."):
        raise BadParameter(
            f"invalid kube cluster name {_show(name)}: use 1 to {MAX_NAME_CHARS} letters, digits, '.', '_' and '-'"
        )


def encode_cluster(name: str) -> str:
    """The path segment naming cluster ``name`` (base64url of its UTF-8 bytes, no padding)."""
    _check_name(name)
    return base64.urlsafe_b64encode(name.encode("utf-8")).rstrip(b"=").decode("ascii")


def cluster_prefix(name: str) -> str:
    """``/v1/clusters/<b64url(name)>``: the path kubectl's ``server`` URL ends with for cluster ``name``."""
    return CLUSTERS_PATH + encode_cluster(name)


def decode_cluster(segment: str) -> str:
    """The cluster name a path segment encodes; BadParameter unless it is the canonical encoding."""
    if not segment:
        raise BadParameter(f"the path names no kube cluster after {CLUSTERS_PATH}")
    if len(segment) > _MAX_SEGMENT_CHARS or not _SEGMENT_RE.match(segment) or len(segment) % 4 == 1:
        raise BadParameter(
            f"the kube cluster segment {_show(segment)} is not a base64url-encoded cluster name (without padding)"
        )
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        name = raw.decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BadParameter(f"the kube cluster segment {_show(segment)} does not decode to a cluster name") from None
    _check_name(name)
    if encode_cluster(name) != segment:  # non-zero trailing bits: a second spelling of the same name
        raise BadParameter(f"the kube cluster segment {_show(segment)} is not the canonical encoding of {name!r}")
    return name


def split_prefix(raw_path: bytes | str) -> tuple[str, str]:
    """``(cluster name, rest)`` of a raw request target ``/v1/clusters/<b64>[/rest][?query]``.

    ``rest`` keeps the query and always starts with ``/`` (``/v1/clusters/<b64>?x=1`` gives ``/?x=1``).
    Raises BadParameter for a target that is not ASCII, not under ``/v1/clusters/``, or whose cluster
    segment is not a canonical encoding of a valid name.
    """
    if isinstance(raw_path, bytes):
        try:
            text = raw_path.decode("ascii")
        except UnicodeDecodeError:
            raise BadParameter("the request path is not ASCII") from None
    else:
        text = raw_path
        if not text.isascii():
            raise BadParameter("the request path is not ASCII")
    if not text.startswith(CLUSTERS_PATH):
        raise BadParameter(
            f"the request path {_show(text)} does not start with {CLUSTERS_PATH}<cluster>: point kubectl at a "
            "kubeconfig written by kpctl auth sign --format=kubernetes"
        )
    remainder = text[len(CLUSTERS_PATH) :]
    end = len(remainder)
    for separator in ("/", "?"):
        index = remainder.find(separator)
        if index != -1:
            end = min(end, index)
    name = decode_cluster(remainder[:end])
    rest = remainder[end:]
    if not rest.startswith("/"):
        rest = "/" + rest
    return name, rest
