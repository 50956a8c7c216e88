"""Validation of the names and labels a user passes to ``kubeport-get-kubeconfig``, before the cluster is touched.

Invariants: pure and stdlib only apart from the error tree; a bad value raises ``BadParameter`` whose message
names where the value came from (``source``: a flag or an environment variable) and what a valid value
looks like. Patterns are matched with ``fullmatch`` so a trailing newline never slips through.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from registry.core.errors import BadParameter

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # used with fullmatch: "$" would accept "x\n"
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def check_namespace_name(value: str, source: str) -> str:
    if len(value) > 63 or not _DNS_LABEL.fullmatch(value):
        raise BadParameter(
            f"{source} {value!r} is not a valid namespace name: lower-case letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters"
        )
    return value


def check_service_account_name(value: str, source: str) -> str:
    if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        raise BadParameter(
            f"{source} {value!r} is not a valid service account name: lower-case letters, digits, '-' and "
            "'.', starting and ending with a letter or digit, at most 253 characters"
        )
    return value


def check_rbac_name(value: str, source: str) -> str:
    # RBAC object names only have to be valid path segments ("system:foo" is a real ClusterRole name).
    if (
        not value
        or len(value) > 253
        or value in (".", "..")
        or any(c in value for c in "/%")
        or not value.isprintable()
    ):
        raise BadParameter(f"{source} {value!r} is not a valid name: 1..253 printable characters, no '/' or '%'")
    return value


def parse_labels(values: Sequence[str]) -> dict[str, str]:
    """``--labels env=prod,team=a`` (repeatable) as a dict; validation of keys/values is the codec's job."""
    labels: dict[str, str] = {}
    for value in values:
        for item in value.split(","):
            if not item.strip():
                continue
            key, sep, val = item.partition("=")
            if not sep or not key.strip():
                raise BadParameter(f"--labels {value!r}: expected key=value[,key=value...] (bad item {item!r})")
            labels[key.strip()] = val.strip()
    return labels
