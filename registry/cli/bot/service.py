"""``kubeport bot start``: join once, keep the bot identity in ``storage``, renew it, refresh the outputs.

The loop (tbot's):

1. Start: with a stored identity (``storage/bot.identity``, for one of the configured registries, not
   expired) renew at once (a fresh certificate with the bot's current roles: a role added with
   ``kpctl bots update --add-roles`` arrives with a restart); else join with the onboarding token (the CA is
   pinned with ``ca_pins``, or trusted on first contact with a warning, as the agent does). When the
   registry refuses the stored identity (the bot was removed and added again, or locked) and bot.yaml holds
   a token this machine has not joined with yet (``storage/joined_token.sha256`` keeps the digest of the
   last one), the bot joins with it: the recovery is "new token in bot.yaml, restart", no files to delete.
2. Write every output (:mod:`registry.cli.bot.outputs`) for the clusters the bot may reach now.
3. ``--oneshot`` stops here. The daemon sleeps ``renewal_interval`` (trio time: MockClock-testable), renews,
   rewrites the outputs (clusters that came or went change the contexts), and so on.

Failures (decided by :func:`classify`):

* Transient (connection refused, timeout, 429): the next configured registry address is tried; when none
  answers, the daemon retries with exponential backoff (1s doubling, capped at :data:`MAX_RETRY`), logging
  each attempt, and the outputs keep their last good content. ``--oneshot`` fails at once (exit 1, outputs
  untouched): it is run by something that retries or reports (CI, cron).
* Final (the registry refused the bot: removed, locked by the generation check, token used or unknown,
  CA pin mismatch; or the certificate expired while the registry was unreachable): the bot stops renewing
  and exits 1 with one ``ERROR:`` line saying what happened and what to do, in both modes. Retrying cannot
  cure these, and a bot that keeps going quietly is worse than one that stops loudly; the systemd unit
  restarts it after a minute (``Restart=on-failure``), which is the backoff for an admin's fix.

Invariants: the key is generated here and never leaves the machine; the identity file is replaced
atomically (0600, storage 0700) before any output uses it; the token is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio

from registry.cli.bot.config import BotConfig
from registry.cli.bot.outputs import output_files, select_clusters, write_output
from registry.cli.kpctl.auth import front_door_address
from registry.client import RegistryClient, bot_join, fetch_ca, fetch_unverified_ca
from registry.core.errors import (
    AccessDenied,
    BadParameter,
    ConnectionProblem,
    KubeportError,
    LimitExceeded,
    NotFound,
    Timeout,
    Unauthenticated,
)
from registry.core.identity import generate_private_key, load_certificate, make_csr
from registry.core.identity_file import IdentityFile
from registry.host.files import ensure_private_dir, read_limited, write_secret_file

log = logging.getLogger(__name__)

IDENTITY_FILE = "bot.identity"
USED_TOKEN_FILE = "joined_token.sha256"  # noqa: S105 (a file name) - the digest of the token this machine joined with (single use)
MAX_RETRY = 60.0
TRANSIENT = (ConnectionProblem, Timeout, LimitExceeded)

T = TypeVar("T")
TransportFor = Callable[[bytes | None], httpx.AsyncBaseTransport]
"""Tests: the transport for a client presenting this certificate (PEM; None: no client certificate)."""


class BotStopped(KubeportError):
    """The bot cannot go on (removed, locked, expired...): the message says why and what to do."""


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def classify(err: KubeportError) -> str:
    """``transient`` (wait and retry), or ``final`` (stop: waiting cannot cure it)."""
    return "transient" if isinstance(err, TRANSIENT) else "final"


def retry_delay(failures: int) -> float:
    """Seconds before retry number ``failures`` (1-based): 1, 2, 4, ... capped at :data:`MAX_RETRY`."""
    return float(min(MAX_RETRY, 2 ** max(0, failures - 1)))


@dataclass
class Status:
    """What the bot did, for ``statistics()`` and tests."""

    joins: int = 0
    renewals: int = 0
    writes: int = 0
    failures: int = 0
    last_error: str = ""


class Bot:
    def __init__(self, config: BotConfig, *, transport_for: TransportFor | None = None) -> None:
        self.config = config
        self.transport_for = transport_for
        self.identity: IdentityFile | None = None
        self.status = Status()
        self.renewed = trio.Event()  # set after each successful renewal + write (tests wait on it)

    def statistics(self) -> dict[str, Any]:
        return vars(self.status) | {"expires": self._expires()}

    def _expires(self) -> str | None:
        if self.identity is None:
            return None
        expires = self.identity.identity().expires
        return expires.isoformat() if expires else None

    @property
    def identity_path(self) -> Path:
        return self.config.storage / IDENTITY_FILE

    def _transport(self, cert: bytes | None) -> httpx.AsyncBaseTransport | None:
        return self.transport_for(cert) if self.transport_for is not None else None

    # -- registry calls with failover ----------------------------------------------------------------

    async def _each_registry(self, call: Callable[[str], Awaitable[T]]) -> T:
        """``call(address)`` on the first configured registry that answers (transient errors: the next)."""
        last: KubeportError | None = None
        for address in self.config.registries:
            try:
                return await call(address)
            except TRANSIENT as err:
                log.warning("registry %s: %s", address, err.message)
                last = err
        assert last is not None
        raise last

    def _client(self, identity: IdentityFile, address: str) -> RegistryClient:
        return RegistryClient.from_identity(identity, address, transport=self._transport(identity.cert_pem))

    # -- identity ------------------------------------------------------------------------------------

    def load_stored(self) -> IdentityFile | None:
        path = self.identity_path
        if not path.exists():
            return None
        stored = IdentityFile.parse(read_limited(path, limit=1 << 20, what="bot identity"), source=str(path))
        ident = stored.identity()
        if stored.registry not in self.config.registries:
            log.warning("stored bot identity %s is for another registry (%s): joining again", path, stored.registry)
            return None
        if ident.expires is not None and ident.expires <= datetime.now(tz=UTC):
            if self.token_is_new():
                log.warning("stored bot identity %s expired: joining with the configured token", path)
                return None
            raise BotStopped(
                f"the bot's certificate in {path} expired at {ident.expires.isoformat()} (the bot was stopped or the "
                "registry unreachable for longer than certificate_ttl); it needs a new join token: kpctl bots rm NAME, "
                "kpctl bots add NAME, then put the new token in onboarding.token and start the bot again"
            )
        return stored

    async def join(self) -> IdentityFile:
        config = self.config
        key = generate_private_key()

        async def attempt(address: str) -> IdentityFile:
            if config.ca_pins:
                ca_pems = await fetch_ca(address, pins=config.ca_pins, transport=self._transport(None))
            else:
                log.warning(
                    "no ca_pins configured: trusting the CA the registry at %s presents on first contact "
                    "(set ca_pins from 'kpctl status' to verify it)",
                    address,
                )
                ca_pems = await fetch_unverified_ca(address, transport=self._transport(None))
            result = await bot_join(
                address,
                token=config.token,
                csr_pem=make_csr(key, "bot"),
                ca_pems=ca_pems,
                ttl_seconds=config.certificate_ttl,
                transport=self._transport(None),
            )
            return IdentityFile(
                cert_pem=str(result["cert_pem"]).encode(),
                key_pem=key,
                ca_pems=tuple(str(p).encode() for p in result["ca_pems"]),
                registry=address,
            )

        try:
            identity = await self._each_registry(attempt)
        except (AccessDenied, Unauthenticated) as err:
            raise BotStopped(f"the bot could not join: {err.message}") from None
        self._save(identity)
        write_secret_file(self.config.storage / USED_TOKEN_FILE, (token_digest(config.token) + "\n").encode())
        self.status.joins += 1
        log.info("the bot joined as %s (certificate valid until %s)", identity.identity().name, self._expires())
        return identity

    async def renew(self) -> IdentityFile:
        current = self.identity
        assert current is not None
        key = generate_private_key()

        async def attempt(address: str) -> IdentityFile:
            async with self._client(current, address) as client:
                result = await client.renew(make_csr(key, "bot"), ttl_seconds=self.config.certificate_ttl)
            return IdentityFile(
                cert_pem=str(result["cert_pem"]).encode(),
                key_pem=key,
                ca_pems=tuple(str(p).encode() for p in result["ca_pems"]),
                registry=address,
            )

        try:
            identity = await self._each_registry(attempt)
        except (AccessDenied, Unauthenticated, NotFound) as err:
            raise BotStopped(
                f"the registry refused to renew the bot's certificate: {err.message}. The bot stops renewing (its "
                "outputs stay until their certificate expires); if it was removed on purpose, stop this service"
            ) from None
        self._save(identity)
        self.status.renewals += 1
        log.info("renewed the bot certificate (valid until %s)", self._expires())
        return identity

    def token_is_new(self) -> bool:
        """Whether the configured token is not the one this machine last joined with (its digest is kept in
        storage; the token itself never is)."""
        path = self.config.storage / USED_TOKEN_FILE
        if not path.exists():
            return True
        used = read_limited(path, limit=256, what="used token digest").decode(errors="replace").strip()
        return not hmac.compare_digest(used, token_digest(self.config.token))

    def _save(self, identity: IdentityFile) -> None:
        ensure_private_dir(self.config.storage)
        write_secret_file(self.identity_path, identity.dump())
        self.identity = identity

    # -- outputs -------------------------------------------------------------------------------------

    async def write_outputs(self) -> None:
        identity = self.identity
        assert identity is not None

        async def fetch(address: str) -> tuple[dict[str, Any], str]:
            async with self._client(identity, address) as client:
                return await client.bot_clusters(), address

        try:
            info, address = await self._each_registry(fetch)
        except (AccessDenied, Unauthenticated) as err:
            raise BotStopped(f"the registry refused the bot: {err.message}") from None
        front_door, notes = front_door_address(info, address, None)
        for note in notes:
            log.warning("%s", note)
        reachable = list(info.get("clusters") or [])
        user = identity.identity().name
        for output in self.config.outputs:
            clusters = select_clusters(output, reachable)
            if not clusters:
                wanted = output.cluster or f"kubernetes_labels {dict(output.labels or {})}"
                log.warning(
                    "output %s: no reachable cluster matches %s (served by no agent, or not selected by the bot's "
                    "roles): its kubeconfig.yaml has no context for now",
                    output.destination,
                    wanted,
                )
                if output.cluster:
                    clusters = [output.cluster]  # the context anyway: the front door decides, the cluster may come
            files = output_files(
                clusters,
                kubeport_cluster=str(info.get("cluster_name", "kubeport")),
                user=user,
                front_door=front_door,
                cert_pem=identity.cert_pem,
                key_pem=identity.key_pem,
                ca_pems=identity.ca_pems,
            )
            await trio.to_thread.run_sync(write_output, output, files)
        self.status.writes += 1

    # -- the loop ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Join or renew, then write the outputs once (what ``--oneshot`` does)."""
        check_config_files(self.config)
        stored = self.load_stored()
        if stored is None:
            self.identity = await self.join()
        else:
            self.identity = stored
            try:
                self.identity = await self.renew()
            except BotStopped as err:
                # The admin removed and re-added the bot (or it was locked) and put a new token in bot.yaml:
                # join with it rather than make them delete the storage by hand.
                if not self.token_is_new():
                    raise
                log.warning("%s; joining with the configured token (not used on this machine yet)", err.message)
                self.identity = await self.join()
        await self.write_outputs()

    async def serve(
        self, *, oneshot: bool = False, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await self._start_retrying(oneshot)
        task_status.started()
        if oneshot:
            return
        while True:
            await trio.sleep(self.config.renewal_interval)
            await self._cycle()

    async def _start_retrying(self, oneshot: bool) -> None:
        failures = 0
        while True:
            try:
                await self.start()
                return
            except TRANSIENT as err:
                if oneshot:
                    raise
                failures += 1
                self._failed(err)
                delay = retry_delay(failures)
                log.warning("no registry answered (%s); retrying in %.0fs", err.message, delay)
                await trio.sleep(delay)

    async def _cycle(self) -> None:
        """One renewal and rewrite, retried with backoff while no registry answers; outputs keep their
        last good content meanwhile."""
        failures = 0
        while True:
            try:
                await self._renew_and_write()
                return
            except TRANSIENT as err:
                failures += 1
                self._failed(err)
                current = self.identity.identity().expires if self.identity else None
                if current is not None and current <= datetime.now(tz=UTC):
                    raise BotStopped(
                        f"the bot's certificate expired at {current.isoformat()} while no registry answered "
                        f"({err.message}); it needs a new join token (kpctl bots rm NAME; kpctl bots add NAME)"
                    ) from None
                delay = retry_delay(failures)
                log.warning(
                    "renewing the bot certificate failed (%s); outputs keep their last certificate; retry in %.0fs",
                    err.message,
                    delay,
                )
                await trio.sleep(delay)

    async def _renew_and_write(self) -> None:
        self.identity = await self.renew()
        await self.write_outputs()
        self.renewed.set()
        self.renewed = trio.Event()

    def _failed(self, err: KubeportError) -> None:
        self.status.failures += 1
        self.status.last_error = err.message


def certificate_expiry(cert_pem: bytes) -> datetime:
    """When a certificate expires (for tests and status lines)."""
    return load_certificate(cert_pem, "certificate").not_valid_after_utc


def check_config_files(config: BotConfig) -> None:
    """Refuse a storage or destination path that is a symlink or not a directory, before anything is sent
    (a join spends the single-use token)."""
    paths = [("storage", config.storage)] + [
        (f"outputs[{i}].destination.path", out.destination) for i, out in enumerate(config.outputs)
    ]
    for what, path in paths:
        if path.is_symlink():
            raise BadParameter(f"{what} {path} is a symbolic link: point it at the real directory")
        if path.exists() and not path.is_dir():
            raise BadParameter(f"{what} {path} exists and is not a directory")
