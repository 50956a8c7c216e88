"""Prometheus metrics and health endpoints for every kubeport process (registry + front door, agent).

The metric families are defined here, once per process (Prometheus' model: one exposition per process), and
updated where things happen. They are served, with ``/healthz`` and ``/readyz``, by :func:`serve_metrics` on
a listener of their own (``--metrics-listen HOST:PORT``; off by default), plain HTTP: they hold no secret and
no identity, and a scraper should not need a client certificate. Bind it to loopback or a private network.

* ``/metrics`` — the Prometheus text format (``prometheus-client``'s exposition, never hand-written);
* ``/healthz`` — 200 while the process runs (liveness);
* ``/readyz`` — 200 when the process can do its job, else 503 with the reason: the registry when its store
  answers a read and its CA is loaded, the agent when it holds an identity and its registry connection is
  up. Readiness is checked by a trio task every :data:`READY_INTERVAL` seconds, so the HTTP thread only
  reads a flag and a scrape never touches the store.

Label values are bounded by construction: routes come from the registry's fixed route table, codes are HTTP
codes, clusters are kube_cluster names (validated, at most 253 characters); nothing user-controlled beyond
that becomes a label.

The HTTP side is ``wsgiref`` from the standard library in one daemon thread (a scrape is one short GET), with
``prometheus-client``'s WSGI app for ``/metrics``; it never runs trio code.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import trio
from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

from registry.core.errors import ConnectionProblem
from registry.core.netaddr import format_hostport, parse_hostport

log = logging.getLogger(__name__)

READY_INTERVAL = 2.0
DEFAULT_METRICS_PORT = 9464  # the port OpenTelemetry's Prometheus exporter uses by convention

# -- registry API -------------------------------------------------------------------------------------------

REQUESTS = Counter("kubeport_registry_requests_total", "Registry API requests answered.", ["route", "method", "code"])
REQUEST_SECONDS = Histogram(
    "kubeport_registry_request_duration_seconds",
    "Time to answer a registry API request (to the first byte for watches).",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
WATCH_CLIENTS = Gauge("kubeport_registry_watch_clients", "Open watch streams on the registry API.")
WATCH_EVENTS = Counter("kubeport_registry_watch_events_total", "Watch events sent to watch clients.")
WATCH_LAG = Histogram(
    "kubeport_registry_watch_lag_seconds",
    "Time from the store publishing a live change to its watch line being written to a watch client.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
HEARTBEATS = Counter("kubeport_registry_heartbeats_total", "kube_server heartbeats received, by result.", ["result"])

# -- store ---------------------------------------------------------------------------------------------------

STORE_SECONDS = Histogram(
    "kubeport_store_operation_duration_seconds",
    "Store operations as the registry sees them.",
    ["backend", "op"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5),
)
STORE_ERRORS = Counter("kubeport_store_errors_total", "Store operations that failed.", ["backend", "op"])

# -- access path ---------------------------------------------------------------------------------------------

TUNNELS = Gauge("kubeport_tunnel_connections", "Live reverse-tunnel connections.", ["side"])
TUNNEL_STREAMS = Counter("kubeport_tunnel_streams_total", "Streams opened over reverse tunnels.", ["side"])
FRONTDOOR_SIDE = "frontdoor"  # the ``side`` label values: one process may hold both ends (kubeport start)
AGENT_SIDE = "agent"
PROXIED = Counter(
    "kubeport_proxied_requests_total",
    "Requests the agent forwarder answered (forwarded or refused), by kube_cluster and HTTP code.",
    ["cluster", "code"],
)

# -- agent ---------------------------------------------------------------------------------------------------

AGENT_HEARTBEATS = Counter("kubeport_agent_heartbeats_total", "Heartbeats the agent sent, by result.", ["result"])
LABEL_RUNS = Counter(
    "kubeport_agent_dynamic_label_runs_total",
    "Dynamic-label command runs, by result (ok, failed, refused).",
    ["result"],
)
SERVED_CLUSTERS = Gauge("kubeport_agent_served_clusters", "kube_clusters this agent serves now.")

# -- every process ---------------------------------------------------------------------------------------------

CERT_EXPIRY = Gauge(
    "kubeport_certificate_expiry_timestamp_seconds",
    "When a certificate this process uses expires (unix seconds).",
    ["certificate"],
)

Readiness = Callable[[], Awaitable[str | None]]
"""Checks whether the process is ready: None when it is, else the reason it is not (shown by /readyz)."""


class _State:
    """What the HTTP thread reads: written by the trio side only (a str assignment is atomic)."""

    def __init__(self) -> None:
        self.not_ready: str | None = "starting"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: " + format, *args)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def _app(state: _State) -> Callable[..., Iterable[bytes]]:
    metrics_app = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain"), ("Allow", "GET, HEAD")])
            return [b"only GET\n"]
        if path == "/metrics":
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            reason = state.not_ready
            if reason is None:
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ready\n"]
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [f"not ready: {reason}\n".encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    return app


async def serve_metrics(
    listen: str,
    readiness: Readiness,
    *,
    interval: float = READY_INTERVAL,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /metrics, /healthz and /readyz on ``listen`` until cancelled; ``task_status`` gets the bound
    ``host:port``. ``readiness`` runs every ``interval`` seconds (an exception counts as not ready)."""
    host, port = parse_hostport(listen, default_port=DEFAULT_METRICS_PORT, what="--metrics-listen")
    state = _State()
    try:
        server_class = _Server6 if ":" in host else _Server
        server = make_server(host, port, _app(state), server_class=server_class, handler_class=_QuietHandler)
    except OSError as exc:
        raise ConnectionProblem(f"cannot listen for metrics on {format_hostport(host, port)}: {exc.strerror}") from None
    bound = format_hostport(host, server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    log.info("metrics on http://%s/metrics (and /healthz, /readyz)", bound)
    try:
        task_status.started(bound)
        while True:
            try:
                state.not_ready = await readiness()
            except Exception as exc:
                state.not_ready = f"readiness check failed: {exc}"
            await trio.sleep(interval)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.shutdown)
            server.server_close()
