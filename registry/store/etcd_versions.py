"""etcd releases with a known fault that touches kubeport's promises, and what to tell the admin about them.

Pure (no I/O). :func:`known_problem` takes the version string an etcd member reports (``/v3/maintenance/status``
``version``, or ``etcd --version``) and answers a one-line warning, or ``None`` when kubeport knows nothing
against that release. The registry logs the warning when it opens an etcd store; the tests use the same table
to pick an etcd binary for the tests that kill members under load.

Why a table at all: etcd 3.5.0 to 3.5.2 can lose writes it acknowledged, or apply them on some members and
not others, when a member is killed (SIGKILL, OOM, power) while writing (etcd-io/etcd#13766, fixed in 3.5.3).
kubeport's rule "nothing acknowledged is lost" cannot hold above such a store, so an admin must hear it.
"""

from __future__ import annotations

import re

# (first, last) affected release, inclusive, and what goes wrong
_KNOWN: tuple[tuple[tuple[int, int, int], tuple[int, int, int], str], ...] = (
    (
        (3, 5, 0),
        (3, 5, 2),
        "can lose acknowledged writes or apply them on some members only when a member is killed while "
        "writing (etcd-io/etcd#13766); upgrade etcd to 3.5.3 or later",
    ),
)

_VERSION = re.compile(r"(\d{1,4})\.(\d{1,4})\.(\d{1,4})")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """The first ``X.Y.Z`` in ``text`` (``"3.5.1"``, ``"etcd Version: 3.4.23\\n..."``), or None."""
    found = _VERSION.search(text[:4096])
    if found is None:
        return None
    major, minor, patch = (int(part) for part in found.groups())
    return major, minor, patch


def known_problem(version: str) -> str | None:
    """A warning for etcd ``version``, or None (an unknown or unparsable version is not a known problem)."""
    parsed = parse_version(version)
    if parsed is None:
        return None
    for first, last, problem in _KNOWN:
        if first <= parsed <= last:
            return f"etcd {'.'.join(map(str, parsed))} {problem}"
    return None
