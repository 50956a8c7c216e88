"""The agent's identity: join with a token once, keep the certificate in the data dir, renew it in time.

Files in the agent data dir (0700; files 0600):

    agent.identity   the host certificate, its private key, the CA and the registry address
    host_uuid        the host id the registry assigned at join (kube_servers are keyed by it); stable
                     across restarts and renewals, for information only (the certificate is the truth)

Invariants:
- The private key is generated here and never leaves the host: the registry signs a CSR.
- A restarted agent reuses a valid identity without the token; an expired one needs the token again.
  ``kubeport.registry`` may list several registries sharing one store: the identity keeps the whole list,
  and every call (CA fetch, join, renewal, all later calls) fails over along it. A stored identity for a
  list that shares an address with the configured one is reused (with the configured list).
- The registry assigns the host id: a join never names one (the registry refuses ids already in use, so
  a token holder cannot pose as another agent). Renewal keeps the id; a fresh join gets a new one.
- Every call to the registry goes through ``registry.client`` (CA fetch, join, renewal): one way to talk
  to it, one error mapping.
- With a CA pin the registry's CA is verified before anything is sent to it. Without one, the first
  contact trusts the CA it is shown (and says so in the log); from then on the stored CA is the anchor.
- Renewal replaces the identity file atomically, then swaps the client; a failed renewal is retried and
  never destroys the working identity.
- A first contact with a registry that is down, slow or overloaded (ConnectionProblem, Timeout,
  LimitExceeded) is retried forever with capped, jittered exponential backoff (1s doubling to 30s), saying so
  in the log each time: agents are often started before their registry. Answers that will not change by
  waiting (a bad or expired token, a CA that does not match the pin) end the start at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

import httpx
import trio

from agent.config import AgentConfig
from agent.watcher import Backoff
from registry.client import RegistryClient, fetch_ca, fetch_unverified_ca, join
from registry.core.errors import BadParameter, ConnectionProblem, KubeportError, LimitExceeded, Timeout
from registry.core.identity import generate_private_key, make_csr, needs_renewal
from registry.core.identity_file import IdentityFile
from registry.core.netaddr import format_hostport
from registry.host.files import ensure_private_dir, read_limited, write_secret_file
from registry.host.metrics import CERT_EXPIRY

log = logging.getLogger(__name__)

IDENTITY_FILE = "agent.identity"
HOST_ID_FILE = "host_uuid"
MAX_TOKEN_FILE_BYTES = 4096


def registry_address(config: AgentConfig) -> str:
    """Every configured registry as ``HOST:PORT[,HOST:PORT...]``: RegistryClient (join, renewal, every call)
    fails over along this list, and the identity file keeps it."""
    return ",".join(format_hostport(host, port) for host, port in config.registries)


def _addresses(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def host_id(data_dir: Path) -> str | None:
    """The host id this agent was last assigned (None before its first join)."""
    path = data_dir / HOST_ID_FILE
    if not path.exists():
        return None
    return read_limited(path, limit=256, what="host id file").decode().strip() or None


def join_token(config: AgentConfig) -> str | None:
    if config.token:
        return config.token
    if config.token_file is not None:
        token = read_limited(config.token_file, limit=MAX_TOKEN_FILE_BYTES, what="token file").decode().strip()
        if not token:
            raise BadParameter(f"token file {config.token_file} is empty")
        return token
    return None


async def _trust_on_first_use(
    address: str, backoff: Backoff, transport: httpx.AsyncBaseTransport | None
) -> list[bytes]:
    log.warning(
        "no kubeport.ca_pin configured: trusting the CA the registry at %s presents on first contact "
        "(set ca_pin from 'kpctl status' to verify it)",
        address,
    )
    return await retry_while_unreachable(fetch_unverified_ca, backoff)(address, transport=transport)


P = ParamSpec("P")
T = TypeVar("T")

# What waiting can cure: the registry is down, restarting, slow, or asks callers to slow down.
TRANSIENT = (ConnectionProblem, Timeout, LimitExceeded)


def join_backoff() -> Backoff:
    """First-contact retries: 1s, 2s, 4s ... capped at 30s, each jittered into [c/2, c]."""
    return Backoff(base=1.0, cap=30.0)


def retry_while_unreachable(func: Callable[P, Awaitable[T]], backoff: Backoff) -> Callable[P, Awaitable[T]]:
    """``func``, retried after transient errors (forever, with ``backoff``), each retry logged."""

    async def retrying(*args: P.args, **kwargs: P.kwargs) -> T:
        while True:
            try:
                return await func(*args, **kwargs)
            except TRANSIENT as err:
                delay = backoff.next()
                log.warning("%s; retrying in %.1fs (the agent waits for the registry)", err.message, delay)
                await trio.sleep(delay)

    return retrying


async def obtain_identity(
    config: AgentConfig,
    *,
    now: datetime | None = None,
    backoff: Backoff | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> IdentityFile:
    """The agent's identity: the stored one while valid, else a fresh join with the configured token
    (waiting for an unreachable registry, see the module docstring). Every call goes through
    ``registry.client`` (one error mapping); ``transport`` replaces the network (tests)."""
    backoff = backoff or join_backoff()
    now = now or datetime.now(tz=UTC)
    data_dir = ensure_private_dir(config.data_dir)
    path = data_dir / IDENTITY_FILE
    address = registry_address(config)
    if path.exists():
        stored = IdentityFile.parse(read_limited(path, limit=1 << 20, what="agent identity"), source=str(path))
        ident = stored.identity()
        same_cluster = bool(set(_addresses(stored.registry)) & set(_addresses(address)))
        if ident.expires is not None and ident.expires > now and same_cluster:
            # The configured list is the truth (a registry added to or removed from kubeport.registry).
            return stored if stored.registry == address else replace(stored, registry=address)
        reason = "expired" if ident.expires is not None and ident.expires <= now else "for another registry"
        log.warning("stored agent identity %s is %s: joining again with the token", path, reason)
    token = join_token(config)
    if not token:
        raise BadParameter(
            f"this agent has not joined yet ({path} does not exist) and has no join token: set kubeport.token or "
            "kubeport.token_file (get one with 'kpctl tokens add --type=kube')"
        )
    if config.ca_pins:
        ca_pems = await retry_while_unreachable(fetch_ca, backoff)(address, pins=config.ca_pins, transport=transport)
    else:
        ca_pems = await _trust_on_first_use(address, backoff, transport)
    key = generate_private_key()
    result = await retry_while_unreachable(join, backoff)(
        address,
        token=token,
        nodename=config.nodename,
        csr_pem=make_csr(key, config.nodename),
        ca_pems=ca_pems,
        transport=transport,
    )
    identity = IdentityFile(
        cert_pem=result["cert_pem"].encode(),
        key_pem=key,
        ca_pems=tuple(p.encode() for p in result["ca_pems"]),
        registry=address,
    )
    assigned = str(result["host_id"])
    previous = host_id(data_dir)
    if previous is not None and previous != assigned:
        log.info("the registry assigned a new host id %s (was %s)", assigned, previous)
    write_secret_file(data_dir / HOST_ID_FILE, (assigned + "\n").encode())
    write_secret_file(path, identity.dump())
    log.info("joined the registry at %s as host %s", address, assigned)
    return identity


class ClientHolder:
    """The agent's current RegistryClient; renewal swaps it without interrupting users of the old one."""

    def __init__(self, identity: IdentityFile, path: Path) -> None:
        self.identity = identity
        _note_expiry(identity)
        self.path = path
        self.client = RegistryClient.from_identity(identity)
        self._retired: list[RegistryClient] = []

    async def renew_forever(self, *, check_every: float = 60.0) -> None:
        while True:
            await trio.sleep(check_every)
            if needs_renewal(self.identity.identity(), datetime.now(tz=UTC)):
                try:
                    await self.renew()
                except KubeportError as err:
                    log.warning("renewing the agent certificate failed (will retry): %s", err.message)

    async def renew(self) -> None:
        key = generate_private_key()
        result = await self.client.renew(make_csr(key, self.identity.identity().name))
        fresh = IdentityFile(
            cert_pem=result["cert_pem"].encode(),
            key_pem=key,
            ca_pems=tuple(p.encode() for p in result["ca_pems"]),
            registry=self.identity.registry,
        )
        write_secret_file(self.path, fresh.dump())
        self.identity = fresh
        _note_expiry(fresh)
        self._retired.append(self.client)
        self.client = RegistryClient.from_identity(fresh)
        log.info("renewed the agent certificate (valid until %s)", fresh.identity().expires)

    async def aclose(self) -> None:
        for client in [*self._retired, self.client]:
            await client.aclose()


def _note_expiry(identity: IdentityFile) -> None:
    expires = identity.identity().expires
    if expires is not None:
        CERT_EXPIRY.labels("agent").set(expires.timestamp())
