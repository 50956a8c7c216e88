"""The per-request decision of the forwarder, without I/O: prefix, mapping, role check, header rules.

Pure (no trio, no sockets). :mod:`agent.forward.server` reads a request head with h11, looks up the user's
current roles and the cluster's labels, and hands everything to :func:`decide`, which either returns a
:class:`Decision` (what to send upstream) or raises the :class:`KubeportError` whose ``to_status()`` is the
answer kubectl gets. The order of the checks is fixed and every request on a stream goes through all of
them (first, later kept-alive and upgrade requests alike):

1. :func:`strip_prefix`: the raw request target (bytes as received, before any percent-decoding) must
   start with the stream's own cluster prefix, followed by ``/``, ``?`` or nothing. Anything else is a
   :class:`WrongCluster` (400, and the stream closes): a connection is bound to one cluster and a request
   for another one is refused, never routed.
2. :func:`registry.core.kube_request.parse_request` maps the rest to verb/resource/namespace/name (400 for
   paths that could mean something else once decoded).
3. :func:`registry.core.kube_headers.inspect` applies the header rules (400 for smuggling, 403 for
   refused impersonation headers).
4. :func:`registry.core.kube_access.authorize` with the user's current roles and the cluster's labels,
   then :func:`~registry.core.kube_access.choose_identity` with the client's own ``Impersonate-*`` request.
5. :func:`registry.core.kube_headers.outbound` builds the upstream headers; the client's ``Host`` is
   dropped here (the upstream adapter sets the API server's) and ``Authorization`` never survives step 3.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from registry.core import kube_headers
from registry.core.errors import BadParameter
from registry.core.kube_access import Identity, KubeAccess, authorize, choose_identity
from registry.core.kube_request import KubeRequest, parse_request
from registry.core.kube_route import cluster_prefix
from registry.core.resources import Role, User


class WrongCluster(BadParameter):
    """A request whose path does not carry the stream's cluster prefix (the stream closes after it)."""


@dataclass(frozen=True)
class Target:
    """A request target with the cluster prefix removed: ``path`` (still percent-encoded) and ``query``."""

    path: str
    query: str

    @property
    def raw(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


@dataclass(frozen=True)
class Decision:
    """What to forward: the mapped request, whom to impersonate, and the upstream headers (no Host,
    no Authorization: the upstream adapter adds the cluster's)."""

    target: Target
    request: KubeRequest
    access: KubeAccess
    identity: Identity
    headers: tuple[tuple[bytes, bytes], ...]
    upgrade: bool


def strip_prefix(cluster: str, raw_target: bytes) -> Target:
    """The target after ``cluster_prefix(cluster)``; :class:`WrongCluster` when it is not there."""
    prefix = cluster_prefix(cluster).encode("ascii")
    rest = raw_target[len(prefix) :]
    if not raw_target.startswith(prefix) or (rest and rest[:1] not in (b"/", b"?")):
        shown = raw_target[:120].decode("ascii", "replace")
        raise WrongCluster(
            f'this connection serves Kubernetes cluster "{cluster}": the request path must start with '
            f"{prefix.decode()} (got {shown!r})"
        )
    try:
        text = rest.decode("ascii")
    except UnicodeDecodeError:
        raise BadParameter("the request target is not ASCII") from None
    path, _, query = text.partition("?")
    return Target(path=path or "/", query=query)


def map_request(method: str, target: Target) -> KubeRequest:
    """Step 2 (raises :class:`BadParameter`)."""
    return parse_request(method, target.path, target.query)


def decide(
    *,
    user: User,
    roles: Sequence[Role],
    cluster: str,
    labels: Mapping[str, str],
    target: Target,
    request: KubeRequest,
    inbound: kube_headers.Inbound,
) -> Decision:
    """Steps 4 and 5 for an already mapped request and inspected head (raises a ``KubeportError``)."""
    access = authorize(user, roles, cluster, labels, request)
    identity = choose_identity(access, inbound.requested_user, inbound.requested_groups)
    headers = [(name, value) for name, value in kube_headers.outbound(inbound, identity) if name.lower() != b"host"]
    return Decision(
        target=target,
        request=request,
        access=access,
        identity=identity,
        headers=tuple(headers),
        upgrade=bool(inbound.upgrade),
    )


def inspect_headers(headers: Iterable[tuple[bytes, bytes]]) -> kube_headers.Inbound:
    """Step 3 (raises :class:`BadParameter` or ``AccessDenied``)."""
    return kube_headers.inspect(headers)
