"""Run a registry: open the data dir, bootstrap the CA and admin identity, serve the mutual-TLS API.

Data dir layout (created 0700; every file with secrets 0600):

    registry.db        the SQLite store: resources, heartbeats, tokens, audit events and the cluster CA
    admin.identity     the admin identity file (client cert + key + CA + the registry address)
    ca.pin             the cluster CA's pin (public): this data dir has had a CA
    etcd.key           with ``--store etcd://``: the key sealing everything in etcd (store_config.py)

Invariants:
- The first start creates the CA (kept in the store, so registry replicas sharing a store share it) and
  the admin identity; later starts reuse both. The admin identity is re-issued when it passed half of its
  lifetime, when it belongs to another CA, or when the registry address changed (so ``kpctl`` on this host
  always finds a working identity and address in it).
- A store that lost its CA (an empty or truncated ``registry.db``) next to an ``admin.identity`` or
  ``ca.pin`` never gets a new CA: the start is refused with how to restore, and no file is overwritten.
- The server certificate is issued per start (never written to disk) and always carries the fixed name
  ``registry.kubeport.local`` that clients verify, so the registry can be reached at any address.
- Connections without a client certificate are cheap to open, so they get a short deadline and their own
  budgets (:data:`REGISTRY_HTTP_LIMITS`): idle ones are shed before an agent or admin is ever refused.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio

from registry.core.errors import AlreadyExists, BadParameter, KubeportError, NotFound
from registry.core.identity import (
    ADMIN_TTL,
    REGISTRY_SERVER_NAME,
    REGISTRY_TTL,
    CertAuthority,
    Identity,
    generate_private_key,
    needs_renewal,
    public_key_pem,
)
from registry.core.identity_file import IdentityFile
from registry.core.netaddr import format_hostport, is_ip, is_loopback, parse_hostport
from registry.host.files import ensure_private_dir, write_secret_file
from registry.host.metrics import CERT_EXPIRY, serve_metrics
from registry.host.paths import ADMIN_IDENTITY, CA_PIN_FILE, STORE_FILE
from registry.host.tls import server_context
from registry.server.api import RegistryAPI
from registry.server.http import HTTPLimits, ServerInfo, serve_http
from registry.server.local_auth import SECOND_FACTOR_OFF_WARNING, LocalAuth
from registry.server.metrics_store import instrumented
from registry.server.ratelimit import Rate
from registry.server.service import AUDIT_WINDOW, MAX_AUDIT_EVENTS, Registry
from registry.server.store_config import StoreConfig, open_registry_store
from registry.store import Store, serve_expiry

log = logging.getLogger(__name__)

DEFAULT_PORT = 3025
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
CA_KIND = "cert_authority"

# The registry's connection limits (issue 7 §5). Every client is a program that sends its request right
# after the TLS handshake, so 5 s from accept to the end of the first request head is generous even on a
# loaded host. Unauthenticated connections (ping, ca, join, and anyone without a certificate) may hold at
# most half of the slots and 64 from one source; authenticated ones are never shed. The per-source budget
# counts only unauthenticated connections, so agents and kpctl sharing 127.0.0.1 are not limited by it.
REGISTRY_HTTP_LIMITS = HTTPLimits(
    handshake_timeout=5.0,
    unauthenticated_idle_timeout=10.0,
    max_connections=2048,
    max_unauthenticated=1024,
    max_unauthenticated_per_source=64,
)


@dataclass(frozen=True)
class RegistryInfo:
    address: str  # host:port clients should use
    data_dir: Path
    admin_identity: Path
    ca_pin: str
    cluster_name: str
    kube_address: str = ""  # where kubectl reaches the front door ("" without one)
    metrics_address: str = ""  # where /metrics, /healthz and /readyz are served ("" when off)


# A service run inside the registry process beside the API (the Kubernetes front door): started once the API
# listens and before the registry reports itself started, with the service and the cluster CA. The registry
# server never imports what runs here; the composition root passes it in.
Companion = Callable[[Registry, CertAuthority, "trio.TaskStatus[None]"], Awaitable[None]]


def _earlier_cluster_files(data_dir: Path | None) -> list[str]:
    """The files in ``data_dir`` that only a registry that already had a CA writes."""
    if data_dir is None:
        return []
    return [name for name in (ADMIN_IDENTITY, CA_PIN_FILE) if (data_dir / name).exists()]


async def load_or_create_ca(
    store: Store, cluster_name: str, now: datetime, *, data_dir: Path | None = None, store_name: str | None = None
) -> CertAuthority:
    """The cluster CA from the store; a new one only for a store and data dir that never had one.

    A store without a CA next to an ``admin.identity`` or ``ca.pin`` means the store was lost (emptied,
    truncated, replaced): starting fresh would mint a new CA and lock out every agent and identity, so that
    is refused with what to do instead, and nothing in the data dir is touched.
    """
    try:
        record = await store.get(CA_KIND, "cluster")
    except NotFound:
        earlier = _earlier_cluster_files(data_dir)
        if earlier:
            assert data_dir is not None
            lost, backup = (store_name, store_name) if store_name else (STORE_FILE, data_dir / STORE_FILE)
            raise BadParameter(
                f"the store has no cluster CA, but {data_dir} holds {' and '.join(earlier)} from a registry that "
                f"had one: {lost} was emptied, truncated or replaced. Refusing to create a new CA (every "
                f"agent and identity would be locked out). Restore {backup} from a backup; to "
                f"really start a new cluster here, move {' and '.join(earlier)} out of {data_dir} first"
            ) from None
        ca = CertAuthority.generate(cluster_name, now=now)
        value = {"cert_pem": ca.cert_pem.decode(), "key_pem": ca.key_pem.decode()}
        try:
            await store.create(CA_KIND, "cluster", value)
            log.info("created the cluster CA for %r (pin %s)", cluster_name, ca.pin)
            return ca
        except AlreadyExists:  # another replica won the race: use its CA
            record = await store.get(CA_KIND, "cluster")
    return CertAuthority.from_pem(record.value["cert_pem"].encode(), record.value["key_pem"].encode())


def issue_server_certificate(
    ca: CertAuthority, hosts: Sequence[str], *, now: datetime, ttl: timedelta = REGISTRY_TTL
) -> tuple[bytes, bytes]:
    """(certificate, key) for a TLS server of the registry process (the API, the front door): kind
    ``registry`` with the fixed name every client verifies, ``localhost``, 127.0.0.1, ::1 and each of
    ``hosts`` (names and addresses; wildcards skipped). A fresh key per call, never written to disk."""
    names = [REGISTRY_SERVER_NAME, "localhost"]
    ips = ["127.0.0.1", "::1"]
    for host in hosts:
        if host in ("", "0.0.0.0", "::"):
            continue
        if is_ip(host):
            ips.append(host)
        else:
            names.append(host.lower())
    key = generate_private_key()
    cert = ca.issue(
        public_key_pem(key),
        Identity(name=REGISTRY_SERVER_NAME, kind="registry"),
        ttl=ttl,
        now=now,
        dns_names=sorted(set(names)),
        ip_addresses=sorted(set(ips)),
    )
    return cert, key


def _record_ca_pin(data_dir: Path, ca: CertAuthority) -> None:
    path = data_dir / CA_PIN_FILE
    try:
        if path.read_text().strip() == ca.pin:
            return
    except OSError:
        pass
    write_secret_file(path, f"{ca.pin}\n".encode())


def ensure_admin_identity(path: Path, ca: CertAuthority, address: str, now: datetime) -> None:
    """Reuse a valid admin identity for this CA and address; otherwise write a fresh one (0600)."""
    if path.exists():
        try:
            current = IdentityFile.parse(path.read_bytes(), source=str(path))
            identity = ca.verify(current.cert_pem, now=now)
            if identity.kind == "admin" and current.registry == address and not needs_renewal(identity, now):
                return
        except Exception as exc:  # unreadable, foreign or expired: replace it, say why
            log.warning("replacing admin identity %s: %s", path, exc)
    key = generate_private_key()
    cert = ca.issue(public_key_pem(key), Identity(name="admin", kind="admin", roles=("admin",)), ttl=ADMIN_TTL, now=now)
    write_secret_file(path, IdentityFile(cert_pem=cert, key_pem=key, ca_pems=(ca.cert_pem,), registry=address).dump())


def advertised_address(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return format_hostport(host, port)


async def _registry_readiness(store: Store, companions_up: Callable[[], bool] = lambda: True) -> str | None:
    """Ready when the store answers a real read of the CA record (the CA is then loadable too) and every
    companion (the Kubernetes front door) listens: before that, kubectl and agents would be refused."""
    if not companions_up():
        return "the Kubernetes front door is not listening yet"
    try:
        with trio.fail_after(5):
            await store.get(CA_KIND, "cluster")
    except trio.TooSlowError:
        return "the store did not answer within 5 s"
    except KubeportError as exc:
        return f"the store cannot read the cluster CA: {exc.message}"
    return None


async def serve_registry(
    *,
    data_dir: Path,
    listen: str = DEFAULT_LISTEN,
    cluster_name: str | None = None,
    public_addrs: tuple[str, ...] = (),
    store: Store | None = None,
    store_config: StoreConfig | None = None,
    bookmark_interval: float = 10.0,
    expiry_interval: float = 1.0,
    http_limits: HTTPLimits = REGISTRY_HTTP_LIMITS,
    rate_limits: Mapping[str, Rate] | None = None,
    max_audit_events: int = MAX_AUDIT_EVENTS,
    audit_window: float = AUDIT_WINDOW,
    companions: Sequence[Companion] = (),
    metrics_listen: str | None = None,
    second_factor: str = "otp",
    task_status: trio.TaskStatus[RegistryInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the registry until cancelled; ``task_status`` gets where it listens and the admin identity.

    ``http_limits`` sets the connection deadlines and budgets (default :data:`REGISTRY_HTTP_LIMITS`),
    ``rate_limits`` the per-source limits of requests without a certificate (default
    ``registry.server.api.DEFAULT_RATE_LIMITS``), ``max_audit_events`` and ``audit_window`` the audit log's
    cap and the window over which repeated failures share one row. ``companions`` run beside the API in
    the same nursery (the composition root passes the Kubernetes front door). ``metrics_listen`` serves
    /metrics, /healthz and /readyz there (``registry.host.metrics``; off when None), and times every store
    operation. ``second_factor`` is ``"otp"`` (local users log in with password + one-time code) or ``"off"``
    (password only: labs; the start logs a warning).
    """
    host, port = parse_hostport(listen, default_port=DEFAULT_PORT, what="--listen")
    data_dir = ensure_private_dir(data_dir)
    own_store = store is None
    if store is None:
        store = await open_registry_store(store_config or StoreConfig(), data_dir)
    try:
        now = datetime.now(tz=UTC)
        if metrics_listen is not None:
            store = instrumented(store)
        ca = await load_or_create_ca(
            store,
            cluster_name or socket.gethostname() or "kubeport",
            now,
            data_dir=data_dir,
            store_name=store_config.describe() if store_config is not None else None,
        )
        CERT_EXPIRY.labels("cluster_ca").set(ca.expires.timestamp())
        _record_ca_pin(data_dir, ca)
        registry = Registry(
            store, ca, cluster_name=ca.cluster_name, max_audit_events=max_audit_events, audit_window=audit_window
        )
        extra_names = [parse_hostport(a, default_port=port, what="--public-addr")[0] for a in public_addrs]
        server_cert, server_key = issue_server_certificate(ca, [host, *extra_names], now=now)
        CERT_EXPIRY.labels("registry_server").set((now + REGISTRY_TTL).timestamp())
        ssl_context = server_context(server_cert, server_key, [ca.cert_pem], client_certs="optional")
        local_auth = LocalAuth(registry, second_factor=second_factor)
        if not local_auth.otp_required:
            log.warning(SECOND_FACTOR_OFF_WARNING)
        api = RegistryAPI(registry, bookmark_interval=bookmark_interval, rate_limits=rate_limits, local_auth=local_auth)
        async with trio.open_nursery() as nursery:
            # Before the API answers: a first ping already lists the other registries' front doors.
            await nursery.start(registry.front_doors.serve)
            info: ServerInfo = await nursery.start(
                lambda task_status: serve_http(
                    api, host=host, port=port, ssl_context=ssl_context, limits=http_limits, task_status=task_status
                )
            )
            address = public_addrs[0] if public_addrs else advertised_address(host, info.port)
            registry.public_addr = public_addrs[0] if public_addrs else ""
            registry.loopback_only = is_loopback(host)
            identity_path = data_dir / ADMIN_IDENTITY
            ensure_admin_identity(identity_path, ca, address, now)
            metrics_address = ""
            companions_up = [not companions]
            if metrics_listen is not None:
                checked_store = store
                metrics_address = await nursery.start(
                    serve_metrics, metrics_listen, lambda: _registry_readiness(checked_store, lambda: companions_up[0])
                )
            nursery.start_soon(lambda: serve_expiry(store, interval=expiry_interval))
            await nursery.start(serve_audit_flush, registry)
            nursery.start_soon(_renew_admin_identity, identity_path, ca, address)
            for companion in companions:
                await nursery.start(companion, registry, ca)
            companions_up[0] = True
            log.info("registry %r listening on %s", ca.cluster_name, address)
            task_status.started(
                RegistryInfo(
                    address=address,
                    data_dir=data_dir,
                    admin_identity=identity_path,
                    ca_pin=ca.pin,
                    cluster_name=ca.cluster_name,
                    kube_address=registry.kube_public_addr,
                    metrics_address=metrics_address,
                )
            )
    finally:
        if own_store:
            with trio.CancelScope(shield=True):
                await store.aclose()


async def serve_audit_flush(
    registry: Registry, *, interval: float = 1.0, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Write aggregated failure rows as their windows close; on shutdown write every pending one.

    This is what makes the aggregation lose nothing on a graceful stop (``registry.server.service``).
    """
    task_status.started()
    try:
        while True:
            await trio.sleep(interval)
            try:
                await registry.flush_audit()
            except KubeportError as exc:
                log.warning("writing aggregated audit events failed (retried in %ss): %s", interval, exc)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            try:
                written = await registry.flush_audit(drain=True)
            except KubeportError as exc:
                log.warning("writing the pending aggregated audit events at shutdown failed: %s", exc)
            else:
                if written:
                    log.info("wrote %d pending aggregated audit events", written)


async def _renew_admin_identity(path: Path, ca: CertAuthority, address: str) -> None:
    """Keep the admin identity on this host usable for as long as the registry runs."""
    while True:
        await trio.sleep(3600)
        await trio.to_thread.run_sync(ensure_admin_identity, path, ca, address, datetime.now(tz=UTC))
