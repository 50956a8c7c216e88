"""The agent's forwarder: kubectl requests arriving on tunnel streams, checked and sent to the API server.

* :mod:`agent.forward.decide` — pure per-request steps: cluster prefix, request mapping, header rules,
  role check, upstream headers;
* :mod:`agent.forward.server` — :func:`handle_stream`: the HTTP/1.1 server loop on one stream
  (:mod:`registry.core.http1`), streaming and upgrade splicing;
* :mod:`agent.forward.upstream` — endpoints from kubeconfigs, pooled keep-alive connections to API servers;
* :mod:`agent.forward.h2_core` (sans-IO) and :mod:`agent.forward.upstream_h2` (trio) — watches multiplexed
  on shared HTTP/2 connections to an API server that offers ``h2``;
* :mod:`agent.forward.context` — :class:`ForwardContext` (the seam), :class:`RegistryAccessSource` (users
  and roles from the registry, cached <= 1 s);
* :mod:`agent.forward.audit` — audit events and :class:`AuditBatcher` (non-blocking, batched, counted drops).
"""

from agent.forward.audit import AuditBatcher, AuditEvent
from agent.forward.context import ForwardContext, ForwardLimits, RegistryAccessSource, served_clusters
from agent.forward.server import handle_stream
from agent.forward.upstream import Endpoints, UpstreamError, UpstreamPool

__all__ = [
    "AuditBatcher",
    "AuditEvent",
    "Endpoints",
    "ForwardContext",
    "ForwardLimits",
    "RegistryAccessSource",
    "UpstreamError",
    "UpstreamPool",
    "handle_stream",
    "served_clusters",
]
