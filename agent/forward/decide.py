"""The per-request decision of the forwarder, without I/O: prefix, mapping, role check, header rules.

Pure (no trio, no sockets). :mod:`agent.forward.server` reads a request head (:mod:`registry.core.http1`),
looks up the user's current roles and the cluster's labels, and hands everything to :func:`decide`, which
either returns a :class:`Decision` (what to send upstream) or raises the :class:`KubeportError` whose
``to_status()`` is the answer kubectl gets. The order of the checks is fixed and every request on a stream
goes through all of them (first, later kept-alive and upgrade requests alike):

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
   The roles are :func:`certificate_roles`: the user's current roles that the stream's certificate named.
5. :func:`registry.core.kube_headers.outbound` builds the upstream headers; the client's ``Host`` is
   dropped here (the upstream adapter sets the API server's) and ``Authorization`` never survives step 3.

Memoized, never skipped (both pure functions of their inputs; a bounded LRU each): step 2 per (method,
target) for targets up to ``_MEMO_TARGET`` characters, and the allow decision of step 4 in a
:class:`DecisionCache` keyed by the very user and role *objects* the caller passed (checked with ``is``,
so a refreshed user or role, a new object, never meets an old decision), the cluster, its labels and the
mapped request. Refusals are not memoized: they are computed again each time. Per stream, the last
result of step 3 (:class:`HeadMemo`: the same header lines, byte for byte) and of step 5 (``decide(last=)``:
the same inspected head and an equal identity) are reused; steps 1-4 still run for every request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

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
    inbound: kube_headers.Inbound | None = field(default=None, compare=False, repr=False)


@lru_cache(maxsize=1024)
def _prefix(cluster: str) -> bytes:
    # Pure; computed per request otherwise (a stream's cluster never changes; the names are served ones).
    return cluster_prefix(cluster).encode("ascii")


def certificate_roles(roles: Sequence[Role], named: Sequence[str]) -> tuple[Role, ...]:
    """The roles to decide with: the user's current ``roles`` that the certificate ``named`` (the front
    door's effective roles, ``StreamInfo.roles``), as ``registry.server.authz.effective_roles`` decides for
    the registry API and the front door. A role added to the user after the certificate was signed never
    widens it (its TTL was capped by the roles it was signed with); a role the user lost is gone at once.
    Returns ``roles`` itself when nothing is dropped (the decision cache keys on the role objects)."""
    if all(role.name in named for role in roles):
        return tuple(roles)
    return tuple(role for role in roles if role.name in named)


def strip_prefix(cluster: str, raw_target: bytes) -> Target:
    """The target after ``cluster_prefix(cluster)``; :class:`WrongCluster` when it is not there."""
    prefix = _prefix(cluster)
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


_MEMO_TARGET = 1024  # longer targets are mapped each time: a hostile client's huge paths are never kept
_parse_memo = lru_cache(maxsize=2048)(parse_request)


def map_request(method: str, target: Target) -> KubeRequest:
    """Step 2 (raises :class:`BadParameter`, which is never memoized)."""
    if len(target.path) + len(target.query) <= _MEMO_TARGET and len(method) <= 16:
        return _parse_memo(method, target.path, target.query)
    return parse_request(method, target.path, target.query)


class DecisionCache:
    """The last ``size`` allow decisions of :func:`authorize` (module docstring: keyed by object identity
    of the user and roles, which the entry also holds, so an id is never reused while it is a key)."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[object, ...], tuple[User, tuple[Role, ...], KubeAccess]] = OrderedDict()
        self.hits = 0

    def authorize(
        self, user: User, roles: Sequence[Role], cluster: str, labels: Mapping[str, str], request: KubeRequest
    ) -> KubeAccess:
        held = tuple(roles)
        key = (id(user), tuple(id(role) for role in held), cluster, tuple(sorted(labels.items())), request)
        found = self._entries.get(key)
        if found is not None and found[0] is user and all(a is b for a, b in zip(found[1], held, strict=True)):
            self._entries.move_to_end(key)
            self.hits += 1
            return found[2]
        access = authorize(user, held, cluster, labels, request)  # raises on a refusal: nothing kept
        self._entries[key] = (user, held, access)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return access


def decide(
    *,
    user: User,
    roles: Sequence[Role],
    cluster: str,
    labels: Mapping[str, str],
    target: Target,
    request: KubeRequest,
    inbound: kube_headers.Inbound,
    cache: DecisionCache | None = None,
    last: Decision | None = None,
) -> Decision:
    """Steps 4 and 5 for an already mapped request and inspected head (raises a ``KubeportError``).

    ``last``: the previous decision on the same stream. When ``inbound`` is that decision's very object
    (the stream's head inspection was reused: :class:`HeadMemo`) and the identity decided now is equal,
    step 5's headers are its headers (the same pure function of the same inputs); authorization and the
    identity are still decided for this request."""
    if cache is not None:
        access = cache.authorize(user, roles, cluster, labels, request)
    else:
        access = authorize(user, roles, cluster, labels, request)
    identity = choose_identity(access, inbound.requested_user, inbound.requested_groups)
    if last is not None and last.inbound is inbound and last.identity == identity:
        headers = last.headers
    else:
        kept = [(name, value) for name, value in kube_headers.outbound(inbound, identity) if name.lower() != b"host"]
        headers = tuple(kept)
    return Decision(
        target=target,
        request=request,
        access=access,
        identity=identity,
        headers=headers,
        upgrade=bool(inbound.upgrade),
        inbound=inbound,
    )


def inspect_headers(headers: Iterable[tuple[bytes, bytes]]) -> kube_headers.Inbound:
    """Step 3 (raises :class:`BadParameter` or ``AccessDenied``)."""
    return kube_headers.inspect(headers)


class HeadMemo:
    """Step 3 for one stream, remembering its last result: kubectl repeats the very same header lines on
    every request of a kept-alive connection, and :func:`kube_headers.inspect` is a pure function of
    them, so the same lines (compared byte for byte) get the same :class:`~kube_headers.Inbound` object
    back. A refusal is never remembered; one entry per stream (memory bounded by the head size limit)."""

    __slots__ = ("_inbound", "_items", "hits")

    def __init__(self) -> None:
        self._items: list[tuple[bytes, bytes]] | None = None
        self._inbound: kube_headers.Inbound | None = None
        self.hits = 0

    def inspect(self, items: list[tuple[bytes, bytes]]) -> kube_headers.Inbound:
        if self._inbound is not None and items == self._items:
            self.hits += 1
            return self._inbound
        inbound = kube_headers.inspect(items)  # raises: nothing remembered
        self._items, self._inbound = items, inbound
        return inbound
