"""Machine identity (bots): the registry's rules for ``kpctl bots`` and ``kubeport bot start``.

A bot is Teleport's design: a user named ``bot-NAME`` (label ``kubeport.dev/bot: NAME``) holding the bot's
roles, plus a small state record (store kind :data:`BOT_KIND`). Why a user and not a new identity kind:
every access path already resolves a user certificate against the *stored* user and its *current* roles on
every request (``Registry.caller_for`` on the API, the front door's lookup, the agent's access source). A bot
that is a user therefore gets, with no new code on those paths, what a bot needs most:

* ``kpctl bots rm`` deletes the user, so every certificate of the bot stops working on its next request,
  everywhere (API, front door, agent), within seconds, exactly as for a deleted user;
* ``kpctl bots update --set-roles`` removing a role takes its grants away at once (certificate roles are
  intersected with the user's); an added role arrives with the next renewal (which the bot does on start,
  so restarting ``kubeport bot start`` picks it up, as the seed says for tbot);
* Kubernetes sees ``Impersonate-User: bot-NAME`` and the groups of the bot's roles.

What differs from a human user is joining and renewal:

* Joining: ``kpctl bots add`` creates a single-use join token (store kind :data:`BOT_TOKEN_KIND`). Only the
  token's SHA-256 is stored (the value is printed once and never kept); a join deletes the record with a
  compare-and-swap, so of two joins racing with one token exactly one wins. Bot tokens live apart from the
  agents' ``token`` kind, so a bot token can never join an agent and a ``Kube`` token never makes a bot.
* Renewal: a user certificate never outlives the one it replaces; a bot renews indefinitely while it exists,
  each certificate with the short TTL it asks for (default 1 h, at most :data:`MAX_BOT_CERT_TTL`, capped by
  its roles' ``max_session_ttl``), with the bot user's *current* roles.
* Generation (Teleport's generation counter, keyed by certificate serial here): the state record holds the
  serial of the one certificate the bot may renew next. Renewing any other certificate of the bot (an older
  one, i.e. a copy someone stole and renewed, or the original after the thief renewed) *locks* the bot: its
  user is deleted (every certificate of both holders stops at once, on every path) and the record says
  ``locked`` with the reason, audited as ``bot.locked``. ``kpctl bots rm`` then ``kpctl bots add`` recovers.
  Known cost, as in Teleport: a renewal whose answer was lost in transit leaves the bot holding the old
  certificate, and its retry locks the bot. A certificate of an *earlier* bot of the same name (removed and
  added again since; :func:`from_earlier_bot`) is refused without locking the new one.
- Known gap: until it expires (``certificate_ttl``, 1 h by default), such an earlier certificate still
  authenticates as ``bot-NAME`` with the new bot's roles (intersected with the roles it names), as a
  deleted-and-recreated user's old certificate does; renewal is refused, so it dies with its TTL.

Invariants:
- A bot's user and state record are created together (state first, so a user with the bot label but no
  state is refused by renewal and join, never silently treated as a bot).
- The token value never reaches the store, the audit log or a log line (audit shows it masked).
- Bot join, renewal, lock and removal are audited (``bot.join``, ``bot.renew``, ``bot.locked``,
  ``bot.delete``; failed joins aggregated like agent joins).
- Managing bots needs the rights that managing users needs (``user`` create/update/delete/list; ``add``
  also ``token`` create): a bot is a user with roles, no more powerful than one.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from registry.core import codec
from registry.core.errors import (
    AccessDenied,
    AlreadyExists,
    BadParameter,
    CompareFailed,
    NotFound,
    TooLarge,
    Unauthenticated,
)
from registry.core.identity import CLOCK_SKEW, Identity, identity_from_cert
from registry.core.kube_access import cluster_visible
from registry.core.resources import (
    MAX_TOKEN_TTL,
    KubeServer,
    Role,
    User,
    mask_token,
    max_session_ttl,
)
from registry.core.timefmt import format_rfc3339, parse_rfc3339
from registry.server import authz
from registry.server.authz import Caller
from registry.server.http import Request, Response

if TYPE_CHECKING:
    from registry.server.service import Registry

BOT_KIND = "bot"  # the state record of each bot (not a resource: written only here)
BOT_TOKEN_KIND = "bot_token"  # noqa: S105 (a store kind, not a secret); single-use join tokens, keyed by the SHA-256 of the value
BOT_LABEL = "kubeport.dev/bot"
BOT_USER_PREFIX = "bot-"
BOT_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,59}$")  # bot-NAME must fit a certificate CN (64)
DEFAULT_BOT_CERT_TTL = timedelta(hours=1)
MAX_BOT_CERT_TTL = timedelta(hours=24)
MIN_BOT_CERT_TTL = timedelta(minutes=1)
DEFAULT_BOT_TOKEN_TTL = timedelta(hours=1)
MAX_BOT_ROLES = 256


def bot_user(name: str) -> str:
    """The user that speaks for bot ``name`` (Teleport's ``bot-NAME``)."""
    return BOT_USER_PREFIX + name


def check_bot_name(name: object) -> str:
    if not isinstance(name, str) or not BOT_NAME_RE.fullmatch(name):
        shown = repr(name)[:80]
        raise BadParameter(
            f"bot name {shown} is invalid: use 1-60 letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return name


def check_roles(roles: object, what: str = "roles") -> tuple[str, ...]:
    if not isinstance(roles, list | tuple) or not all(isinstance(r, str) and r for r in roles):
        raise BadParameter(f"{what} must be a list of role names")
    if len(roles) > MAX_BOT_ROLES:
        raise BadParameter(f"{what}: at most {MAX_BOT_ROLES} roles (got {len(roles)})")
    return tuple(dict.fromkeys(roles))


def token_key(token: str) -> str:
    """The store key of a bot join token: its SHA-256 (the value itself is never stored)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def bot_ttl(asked: timedelta | None, roles: Sequence[Role]) -> timedelta:
    """A bot certificate's TTL: what the bot asked for (default 1 h), within [1 min, 24 h], capped by the
    strictest ``max_session_ttl`` of its roles."""
    ttl = asked if asked is not None else DEFAULT_BOT_CERT_TTL
    if ttl < MIN_BOT_CERT_TTL or ttl > MAX_BOT_CERT_TTL:
        raise BadParameter(f"bot certificate ttl must be between 1m and 24h (got {ttl})")
    return min(ttl, max_session_ttl(roles))


def from_earlier_bot(identity: Identity, created: str) -> bool:
    """Whether ``identity``'s certificate was issued before the bot record was created (an earlier bot of the
    same name). Certificates start CLOCK_SKEW before their issue and hold whole seconds, so compare the
    creation time truncated to the second, minus the skew: a certificate issued at or after creation is never
    taken for an earlier one, and one issued in an earlier second always is."""
    if identity.not_before is None or not created:
        return False
    born = parse_rfc3339(created).replace(microsecond=0)
    return identity.not_before < born - CLOCK_SKEW


def reachable(user: User, roles: Sequence[Role], servers: Sequence[KubeServer]) -> list[dict[str, Any]]:
    """The clusters some agent serves that ``roles`` select for ``user`` (static ∪ dynamic labels of a
    heartbeat), sorted by name, each once with the labels of the first heartbeat that selects it."""
    found: dict[str, dict[str, str]] = {}
    for server in servers:
        labels = server.all_labels()
        if server.name not in found and cluster_visible(user, roles, labels):
            found[server.name] = labels
    return [{"name": name, "labels": found[name]} for name in sorted(found)]


class BotService:
    """The bot operations of one registry (``Registry.bots``)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @property
    def store(self) -> Any:
        return self.registry.store

    def _stamp(self) -> str:
        return format_rfc3339(self.registry.now(), fraction="micro")

    # -- admin side ---------------------------------------------------------------------------------

    async def _check_roles_exist(self, roles: Sequence[str]) -> None:
        missing = []
        for role in roles:
            try:
                await self.store.get("role", role)
            except NotFound:
                missing.append(role)
        if missing:
            raise NotFound(f"role(s) {', '.join(repr(r) for r in missing)} not found: create them first")

    def _user_doc(self, name: str, roles: Sequence[str], revision: str = "") -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": bot_user(name), "labels": {BOT_LABEL: name}}
        if revision:
            metadata["revision"] = revision
        doc = {"kind": "user", "version": User.VERSION, "metadata": metadata, "spec": {"roles": list(roles)}}
        user = codec.resource_from_dict(doc, source=f'bot "{name}"')
        value = codec.resource_to_dict(user, with_secrets=True)
        value.get("metadata", {}).pop("revision", None)
        return value

    async def add(self, caller: Caller, name: str, roles: Sequence[str], token_ttl: timedelta) -> dict[str, Any]:
        """Create bot ``name`` (its state, its user) and a single-use join token; returns the bot's view plus
        ``token`` and ``token_expires`` (the only time the value is shown)."""
        authz.check(caller, "user", "create")
        authz.check(caller, "token", "create")
        check_bot_name(name)
        roles = check_roles(list(roles))
        if token_ttl <= timedelta(0) or token_ttl > MAX_TOKEN_TTL:
            raise BadParameter(f"token ttl must be between 1s and {MAX_TOKEN_TTL.days} days (got {token_ttl})")
        await self._check_roles_exist(roles)
        user_value = self._user_doc(name, roles)
        now = self.registry.now()
        expires = now + token_ttl
        state = {
            "name": name,
            "user": bot_user(name),
            "created": self._stamp(),
            "token_expires": format_rfc3339(expires, fraction="micro"),
            "generation": 0,
        }
        try:
            await self.store.create(BOT_KIND, name, state)
        except AlreadyExists:
            raise AlreadyExists(f'bot "{name}" already exists (remove it first with kpctl bots rm {name})') from None
        try:
            await self.store.create("user", bot_user(name), user_value)
        except AlreadyExists:
            await self.store.delete(BOT_KIND, name)
            raise AlreadyExists(
                f'a user "{bot_user(name)}" already exists: bot "{name}" would speak as that user; remove it or '
                "pick another bot name"
            ) from None
        token = secrets.token_hex(16)
        await self.store.create(
            BOT_TOKEN_KIND,
            token_key(token),
            {"bot": name, "expires": state["token_expires"]},
            expires=expires.timestamp(),
        )
        await self.registry.audit("bot.create", caller, name=name, roles=list(roles), token=mask_token(token))
        view = await self._view(name)
        view.update({"token": token, "token_expires": state["token_expires"]})
        return view

    async def update(
        self, caller: Caller, name: str, *, add_roles: Sequence[str] = (), set_roles: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Change a bot's roles: ``set_roles`` replaces them, ``add_roles`` appends (both may be given: set,
        then add). Written with the revision read, so a concurrent change is refused, not overwritten."""
        authz.check(caller, "user", "update")
        check_bot_name(name)
        added = check_roles(list(add_roles), "add_roles")
        state = await self._state(name)
        if state.get("locked"):
            raise AccessDenied(f'bot "{name}" is locked ({state["locked"]["reason"]}): remove it and add it again')
        try:
            record = await self.store.get("user", bot_user(name))
        except NotFound:
            raise NotFound(
                f'bot "{name}" has no user "{bot_user(name)}" any more: remove the bot and add it again'
            ) from None
        current = tuple(record.value.get("spec", {}).get("roles") or ())
        roles = check_roles(list(set_roles), "set_roles") if set_roles is not None else current
        roles = tuple(dict.fromkeys([*roles, *added]))
        await self._check_roles_exist(roles)
        await self.store.update("user", bot_user(name), self._user_doc(name, roles), expected_revision=record.revision)
        await self.registry.audit("bot.update", caller, name=name, roles=list(roles))
        return await self._view(name)

    async def list(self, caller: Caller) -> builtins.list[dict[str, Any]]:
        authz.check(caller, "user", "list")
        return [await self._view(record.name, record.value) for record in await self.store.list(BOT_KIND)]

    async def get(self, caller: Caller, name: str) -> dict[str, Any]:
        authz.check(caller, "user", "read")
        await self._state(check_bot_name(name))
        return await self._view(name)

    async def remove(self, caller: Caller, name: str) -> None:
        """Delete the bot: its user first (its certificates stop on their next request), then its state
        and any unused join token."""
        authz.check(caller, "user", "delete")
        check_bot_name(name)
        await self._state(name)
        with contextlib.suppress(NotFound):
            await self.store.delete("user", bot_user(name))
        with contextlib.suppress(NotFound):
            await self.store.delete(BOT_KIND, name)
        for record in await self.store.list(BOT_TOKEN_KIND):
            if record.value.get("bot") == name:
                with contextlib.suppress(NotFound):
                    await self.store.delete(BOT_TOKEN_KIND, record.name)
        await self.registry.audit("bot.delete", caller, name=name)

    async def _state(self, name: str) -> Any:
        try:
            return (await self.store.get(BOT_KIND, name)).value
        except NotFound:
            raise NotFound(f'bot "{name}" not found (see kpctl bots ls)') from None

    async def _view(self, name: str, state: dict[str, Any] | None = None) -> dict[str, Any]:
        """What ``kpctl bots ls`` shows: name, user, roles (from the user, or kept in a lock), status."""
        if state is None:
            state = dict(await self._state(name))
        roles: builtins.list[str] = []
        try:
            user = await self.store.get("user", bot_user(name))
            roles = [str(r) for r in user.value.get("spec", {}).get("roles") or ()]
        except NotFound:
            roles = [str(r) for r in state.get("locked", {}).get("roles", ())]
        if state.get("locked"):
            status = "locked"
        elif state.get("serial"):
            status = "joined"
        else:
            status = "waiting for join"
        view = {
            "name": name,
            "user": bot_user(name),
            "roles": roles,
            "status": status,
            "created": state.get("created"),
            "generation": state.get("generation", 0),
        }
        for key in ("token_expires", "joined", "last_renewed", "expires", "locked"):
            if state.get(key):
                view[key] = state[key]
        return view

    # -- the bot's side ------------------------------------------------------------------------------

    async def _bot_user(self, name: str) -> tuple[User, tuple[Role, ...]]:
        record = await self.store.get("user", bot_user(name))
        user = codec.resource_from_dict(record.value)
        assert isinstance(user, User)
        return user, await self.registry._roles(tuple(user.roles))

    def _sign(self, csr_pem: bytes, user: User, ttl: timedelta) -> tuple[bytes, int, datetime]:
        now = self.registry.now()
        identity = Identity(name=user.name, kind="user", roles=tuple(user.roles))
        cert = self.registry.ca.sign_csr(csr_pem, identity, ttl=ttl, now=now)
        issued = identity_from_cert(cert)
        assert issued.serial is not None
        assert issued.expires is not None
        return cert, issued.serial, issued.expires

    def _answer(self, name: str, cert: bytes, expires: datetime) -> dict[str, Any]:
        return {
            "bot": name,
            "cert_pem": cert.decode(),
            "ca_pems": [self.registry.ca.cert_pem.decode()],
            "expires": format_rfc3339(expires, fraction="micro"),
        }

    async def join(self, *, token: str, csr_pem: bytes, ttl: timedelta | None, client: str) -> dict[str, Any]:
        """Exchange a bot join token (single use) and a CSR for the bot's first certificate."""
        masked = mask_token(token)

        async def refuse(reason: str, message: str) -> AccessDenied:
            await self.registry.audit_failure("bot.join", client=client, reason=reason, token=masked)
            return AccessDenied(message)

        key = token_key(token)
        try:
            record = await self.store.get(BOT_TOKEN_KIND, key)
            # Single use: the join that deletes this revision wins; a racing one finds it gone.
            await self.store.delete(BOT_TOKEN_KIND, key, expected_revision=record.revision)
        except (NotFound, CompareFailed):
            raise await refuse(
                "unknown, used or expired token",
                "the bot can not join: the token is not valid (unknown, already used, or expired; tokens are "
                "single use: ask for a new one with kpctl bots rm NAME and kpctl bots add NAME)",
            ) from None
        name = str(record.value.get("bot", ""))
        try:
            state_record = await self.store.get(BOT_KIND, name)
            user, roles = await self._bot_user(name)
        except NotFound:
            raise await refuse("bot removed", f'the bot can not join: bot "{name}" no longer exists') from None
        if state_record.value.get("locked"):
            raise await refuse("bot locked", f'the bot can not join: bot "{name}" is locked')
        cert, serial, expires = self._sign(csr_pem, user, bot_ttl(ttl, roles))
        state = dict(state_record.value)
        state.update(
            {"serial": str(serial), "generation": 1, "joined": self._stamp(), "expires": format_rfc3339(expires)}
        )
        state.pop("token_expires", None)
        await self.store.update(BOT_KIND, name, state, expected_revision=state_record.revision)
        await self.registry.audit("bot.join", None, name=name, client=client, token=masked, generation=1)
        return self._answer(name, cert, expires)

    async def is_bot(self, identity: Identity) -> str | None:
        """The bot name when ``identity`` is a bot's user certificate (user ``bot-NAME`` for which a bot state
        record exists), else None. The state record decides, not the user's label: ``kpctl users update``
        rewrites a user without its labels, and that must not turn a bot into a user whose certificate can
        no longer be renewed past its expiry. A certificate of anyone else named ``bot-NAME`` fails the
        generation check (its serial is not the bot's), which locks the bot rather than extending it."""
        if identity.kind != "user" or not identity.name.startswith(BOT_USER_PREFIX):
            return None
        name = identity.name[len(BOT_USER_PREFIX) :]
        try:
            await self.store.get(BOT_KIND, name)
        except NotFound:
            return None
        return name

    async def renew(self, caller: Caller, name: str, csr_pem: bytes, ttl: timedelta | None) -> dict[str, Any]:
        """A fresh short-lived certificate for a bot, with its current roles, if the presented certificate
        is the bot's current generation; any other one locks the bot (module docstring)."""
        identity = caller.identity
        try:
            state_record = await self.store.get(BOT_KIND, name)
        except NotFound:
            raise Unauthenticated(f'bot "{name}" no longer exists: its certificates are not accepted') from None
        state = dict(state_record.value)
        if state.get("locked"):
            raise Unauthenticated(f'bot "{name}" is locked ({state["locked"]["reason"]})')
        if not state.get("serial") or from_earlier_bot(identity, str(state.get("created", ""))):
            # A certificate of a bot of this name that was removed (and added again since): no theft of
            # *this* bot, so no lock; the machine must join with the new bot's token.
            raise Unauthenticated(
                f'bot "{name}" was removed and added again since this certificate was issued: join with the new '
                "bot's token (kpctl bots add printed it)"
            )
        if str(identity.serial) != state.get("serial"):
            reason = "a certificate that is not the current generation was renewed"
            await self._lock(name, state, state_record.revision, reason)
            raise Unauthenticated(
                f'bot "{name}" is now locked: it renewed a certificate that is not its latest one (a copy of its '
                "identity may be in someone else's hands); remove the bot and add it again"
            )
        user, roles = await self._bot_user(name)
        cert, serial, expires = self._sign(csr_pem, user, bot_ttl(ttl, roles))
        generation = int(state.get("generation", 0)) + 1
        state.update(
            {
                "serial": str(serial),
                "generation": generation,
                "last_renewed": self._stamp(),
                "expires": format_rfc3339(expires),
            }
        )
        try:
            await self.store.update(BOT_KIND, name, state, expected_revision=state_record.revision)
        except CompareFailed:  # another renewal of the same certificate won the race: one of them is a copy
            fresh = await self.store.get(BOT_KIND, name)
            await self._lock(name, dict(fresh.value), fresh.revision, "two renewals of one certificate raced")
            raise Unauthenticated(f'bot "{name}" is now locked: one certificate was renewed twice') from None
        await self.registry.audit("bot.renew", caller, name=name, generation=generation, roles=list(user.roles))
        return self._answer(name, cert, expires)

    async def _lock(self, name: str, state: dict[str, Any], revision: int, reason: str) -> None:
        """Lock bot ``name``: keep its roles in the state for ``ls``, delete its user (every certificate of
        it stops on every path at once), audit."""
        roles: builtins.list[str] = []
        with contextlib.suppress(NotFound):
            user = await self.store.get("user", bot_user(name))
            roles = [str(r) for r in user.value.get("spec", {}).get("roles") or ()]
            await self.store.delete("user", bot_user(name))
        state["locked"] = {"reason": reason, "time": self._stamp(), "roles": roles}
        with contextlib.suppress(NotFound, CompareFailed):
            await self.store.update(BOT_KIND, name, state, expected_revision=revision)
        await self.registry.audit("bot.locked", None, success=False, name=name, reason=reason)

    async def clusters(self, caller: Caller) -> dict[str, Any]:
        """For a bot (or any user): the clusters it may reach now, with labels, and where kubectl connects.
        A bot's role needs no ``kube_server`` rule for this (it asks only about itself)."""
        if caller.kind != "user":
            raise AccessDenied(f"access denied: {caller.describe()} is not a user or bot")
        record = await self.store.get("user", caller.name)
        user = codec.resource_from_dict(record.value)
        assert isinstance(user, User)
        now = self.registry.now()
        servers: builtins.list[KubeServer] = []
        for item in await self.store.list("kube_server"):
            try:
                server = codec.resource_from_dict(item.value, verify_kubeconfig=False)
            except (BadParameter, TooLarge, ValueError):  # a heartbeat this version cannot read names no cluster
                continue
            if isinstance(server, KubeServer) and (server.metadata.expires is None or server.metadata.expires > now):
                servers.append(server)
        ping = self.registry.ping()
        return {
            "clusters": reachable(user, caller.roles, servers),
            "cluster_name": ping["cluster_name"],
            "kube_public_addr": ping["kube_public_addr"],
        }


# -- HTTP routes (registered by registry.server.api) ------------------------------------------------------
#
#     POST   /v1/bots/join                  public, token-authenticated: token + CSR -> the bot's certificate
#     GET    /v1/bots                       list bots (needs list on user)
#     POST   /v1/bots                       {"name", "roles", "token_ttl_seconds"} -> the bot and its join token
#     GET    /v1/bots/{name}
#     PUT    /v1/bots/{name}                {"add_roles": [...], "set_roles": [...]}
#     DELETE /v1/bots/{name}
#     GET    /v1/bots/self/clusters         the caller's reachable clusters (what a bot's outputs need)
#
# Bots renew on the common route (POST /v1/certs/renew, optional ``ttl_seconds``): Registry.renew hands
# a bot's certificate to :meth:`BotService.renew`.

MAX_SECONDS = 10 * 366 * 24 * 3600


def _object(request: Request) -> dict[str, Any]:
    body = request.json()
    if not isinstance(body, dict):
        raise BadParameter("request body must be a JSON object")
    return body


def body_seconds(body: dict[str, Any], key: str) -> timedelta | None:
    """An optional duration field in seconds: a finite number in (0, ten years], or absent."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_SECONDS:
        raise BadParameter(f"request body field {key!r} must be a number of seconds between 0 and {MAX_SECONDS}")
    return timedelta(seconds=value)


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BadParameter(f"request body field {key!r} must be a non-empty string")
    return value


async def handle_join(service: BotService, request: Request) -> Response:
    body = _object(request)
    unknown = sorted(set(body) - {"token", "csr_pem", "ttl_seconds"})
    if unknown:
        raise BadParameter(f"bot join: unknown field {unknown[0][:64]!r}")
    result = await service.join(
        token=_string(body, "token"),
        csr_pem=_string(body, "csr_pem").encode(),
        ttl=body_seconds(body, "ttl_seconds"),
        client=request.client,
    )
    return Response.json(200, result)


Handler = Callable[[Caller, Request, builtins.list[str]], Awaitable[Response]]


def routes(service: BotService) -> dict[tuple[str, str, int], Handler]:
    """The authenticated bot routes, keyed as ``RegistryAPI`` keys its own: (route, method, segments after)."""

    async def list_bots(caller: Caller, request: Request, rest: builtins.list[str]) -> Response:
        return Response.json(200, {"items": await service.list(caller)})

    async def add(caller: Caller, request: Request, rest: builtins.list[str]) -> Response:
        body = _object(request)
        roles = body.get("roles", [])
        result = await service.add(
            caller,
            check_bot_name(body.get("name")),
            check_roles(roles),
            body_seconds(body, "token_ttl_seconds") or DEFAULT_BOT_TOKEN_TTL,
        )
        return Response.json(201, result)

    async def get(caller: Caller, request: Request, rest: builtins.list[str]) -> Response:
        return Response.json(200, await service.get(caller, rest[0]))

    async def update(caller: Caller, request: Request, rest: builtins.list[str]) -> Response:
        body = _object(request)
        set_roles = body.get("set_roles")
        result = await service.update(
            caller,
            rest[0],
            add_roles=check_roles(body.get("add_roles", []), "add_roles"),
            set_roles=None if set_roles is None else check_roles(set_roles, "set_roles"),
        )
        return Response.json(200, result)

    async def delete(caller: Caller, request: Request, rest: builtins.list[str]) -> Response:
        await service.remove(caller, rest[0])
        return Response.json(200, {"kind": "Status", "status": "Success"})

    async def by_name(caller: Caller, request: Request, rest: builtins.list[str]) -> Response:
        if rest == ["self", "clusters"]:
            return Response.json(200, await service.clusters(caller))
        raise NotFound(f"no route for GET {request.path}")

    return {
        ("bots", "GET", 0): list_bots,
        ("bots", "POST", 0): add,
        ("bots", "GET", 1): get,
        ("bots", "PUT", 1): update,
        ("bots", "DELETE", 1): delete,
        ("bots", "GET", 2): by_name,
    }
