"""Bots on the registry side (registry.server.bots), through the real API handlers (InProcessRegistry):
add/update/ls/rm, the single-use join, indefinite short-TTL renewal, the generation lock, audit, and hostile
bodies on every bot route."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import trio

from registry.client import RegistryClient, join
from registry.core.errors import AccessDenied, AlreadyExists, BadParameter, NotFound, Unauthenticated
from registry.core.identity import Identity, generate_private_key, make_csr
from registry.server.bots import BOT_TOKEN_KIND, bot_ttl, check_bot_name, token_key
from registry.testing import ADDRESS, InProcessRegistry
from tests.registry.bot_helpers import (
    EXAMPLE_ROLE,
    PROD_ONLY_ROLE,
    add_bot,
    client_of,
    create_role,
    join_bot,
    renew_bot,
    serve_cluster,
)


@pytest.fixture
async def reg() -> AsyncIterator[InProcessRegistry]:
    async with InProcessRegistry.open() as reg:
        await create_role(reg, EXAMPLE_ROLE)
        await create_role(reg, PROD_ONLY_ROLE)
        yield reg


async def events(reg: InProcessRegistry, name: str, *, success: bool = True) -> list[dict[str, object]]:
    async with reg.client() as admin:
        return [e for e in await admin.events(limit=1000, event=name) if e["success"] is success]


async def test_a_bot_is_the_user_bot_name_with_its_roles_and_joins_once(reg: InProcessRegistry) -> None:
    token = await add_bot(reg)
    async with reg.client() as admin:
        user = await admin.get("user", "bot-example")
        assert user["spec"]["roles"] == ["example-role"]
        [listed] = await admin.bots_list()
    assert listed["status"] == "waiting for join"
    assert "token" not in listed  # shown once, by add only

    identity = await join_bot(reg, token)
    me = identity.identity()
    assert (me.name, me.kind, me.roles) == ("bot-example", "user", ("example-role",))
    async with client_of(reg, identity) as bot:
        assert (await bot.whoami())["name"] == "bot-example"

    # The token is single use: a second join with it is refused, whoever tries.
    with pytest.raises(AccessDenied, match="not valid"):
        await join_bot(reg, token)
    # Only its hash was ever stored.
    assert not [r for r in await reg.store.list(BOT_TOKEN_KIND) if token in str(r.value) or r.name == token]
    async with reg.client() as admin:
        [listed] = await admin.bots_list()
    assert listed["status"] == "joined"
    assert [e["name"] for e in await events(reg, "bot.join")] == ["example"]


async def test_two_joins_racing_with_one_token_only_one_wins(reg: InProcessRegistry) -> None:
    token = await add_bot(reg)
    outcomes: list[str] = []

    async def attempt() -> None:
        try:
            await join_bot(reg, token)
            outcomes.append("joined")
        except AccessDenied:
            outcomes.append("refused")

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(attempt)
    assert sorted(outcomes) == ["joined", "refused", "refused", "refused", "refused"]


async def test_an_agent_token_never_makes_a_bot_and_a_bot_token_never_joins_an_agent(reg: InProcessRegistry) -> None:
    async with reg.client() as admin:
        kube_token = (await admin.generate_token(roles=["Kube"]))["metadata"]["name"]
    with pytest.raises(AccessDenied):
        await join_bot(reg, kube_token)
    bot_token = await add_bot(reg)
    csr = make_csr(generate_private_key(), "n")
    with pytest.raises(AccessDenied):
        await join(
            ADDRESS,
            token=bot_token,
            nodename="n",
            csr_pem=csr,
            ca_pems=[reg.ca.cert_pem],
            transport=reg.transport(None),
        )


async def test_bot_renewal_goes_on_indefinitely_with_the_short_ttl(reg: InProcessRegistry) -> None:
    """Unlike a user certificate (never later than the one it replaces), each bot renewal gets a fresh TTL: the
    registry's clock moves 50 minutes between renewals, five times, far past the first certificate's hour."""
    start = reg.registry.clock()
    offset = [0.0]
    reg.registry.clock = lambda: start + offset[0]
    identity = await join_bot(reg, await add_bot(reg), ttl_seconds=600)
    first = identity.identity().expires
    assert first is not None
    identity = await renew_bot(reg, identity, ttl_seconds=3600)
    second = identity.identity().expires
    assert second is not None
    assert second > first  # a user renewal could never do this
    for step in range(1, 6):
        offset[0] = step * 3000.0
        identity = await renew_bot(reg, identity, ttl_seconds=3600)
        now = datetime.fromtimestamp(reg.registry.clock(), tz=UTC)
        expires = identity.identity().expires
        assert expires is not None
        assert timedelta(minutes=59) <= expires - now <= timedelta(hours=1)
    assert expires - datetime.fromtimestamp(start, tz=UTC) > timedelta(hours=5)
    assert [e["generation"] for e in await events(reg, "bot.renew")] == [2, 3, 4, 5, 6, 7]


async def test_update_add_roles_arrives_with_the_next_renewal_and_set_roles_removes_at_once(
    reg: InProcessRegistry,
) -> None:
    identity = await join_bot(reg, await add_bot(reg))
    async with reg.client() as admin:
        updated = await admin.bots_update("example", add_roles=["prod-only"])
    assert updated["roles"] == ["example-role", "prod-only"]
    identity = await renew_bot(reg, identity)
    assert identity.identity().roles == ("example-role", "prod-only")

    async with reg.client() as admin:
        await admin.bots_update("example", set_roles=["prod-only"])
    async with client_of(reg, identity) as bot:  # the certificate still names both; only prod-only counts
        assert (await bot.whoami())["roles"] == ["prod-only"]
    async with reg.client() as admin:
        with pytest.raises(NotFound, match="no-such-role"):
            await admin.bots_update("example", add_roles=["no-such-role"])


async def test_rm_stops_the_bot_certificates_on_their_next_request(reg: InProcessRegistry) -> None:
    identity = await join_bot(reg, await add_bot(reg))
    async with reg.client() as admin:
        await admin.bots_rm("example")
        assert await admin.bots_list() == []
        with pytest.raises(NotFound):
            await admin.get("user", "bot-example")
    async with client_of(reg, identity) as bot:
        with pytest.raises(Unauthenticated):
            await bot.whoami()
        with pytest.raises(Unauthenticated):
            await bot.renew(b"csr")
    assert [e["name"] for e in await events(reg, "bot.delete")] == ["example"]


async def test_renewing_a_stale_certificate_locks_the_bot(reg: InProcessRegistry) -> None:
    """Teleport's generation check: a copy of the identity renewed by someone else and the original both
    renewing means one of them renews a certificate that is not the latest: the bot is locked."""
    original = await join_bot(reg, await add_bot(reg))
    stolen = original  # a copy of the files
    thief = await renew_bot(reg, stolen)  # the thief renews first: generation 2
    with pytest.raises(Unauthenticated, match="locked"):
        await renew_bot(reg, original)  # the real bot's renewal reveals the copy
    # Both holders are out, everywhere (the user is gone), and ls says why.
    async with client_of(reg, thief) as bot:
        with pytest.raises(Unauthenticated):
            await bot.whoami()
    async with reg.client() as admin:
        [listed] = await admin.bots_list()
    assert listed["status"] == "locked"
    assert listed["roles"] == ["example-role"]
    assert [e["name"] for e in await events(reg, "bot.locked", success=False)] == ["example"]
    # Recovery: rm + add.
    async with reg.client() as admin:
        await admin.bots_rm("example")
    await join_bot(reg, await add_bot(reg))


async def test_bot_clusters_lists_what_its_roles_select_without_a_kube_server_rule(reg: InProcessRegistry) -> None:
    await serve_cluster(reg, "prod-1", {"env": "prod"})
    await serve_cluster(reg, "dev-1", {"env": "dev"})
    identity = await join_bot(reg, await add_bot(reg, roles=("prod-only",)))
    async with client_of(reg, identity) as bot:
        info = await bot.bot_clusters()
        with pytest.raises(AccessDenied):  # its role has no rules: it may not list kube_servers in general
            await bot.list("kube_server")
    assert [c["name"] for c in info["clusters"]] == ["prod-1"]
    assert info["clusters"][0]["labels"]["env"] == "prod"
    assert info["cluster_name"] == "test-cluster"


async def test_admin_side_errors(reg: InProcessRegistry) -> None:
    async with reg.client() as admin:
        await admin.bots_add("example", ["example-role"], token_ttl_seconds=60)
        with pytest.raises(AlreadyExists):
            await admin.bots_add("example", ["example-role"], token_ttl_seconds=60)
        with pytest.raises(NotFound, match="ghost"):
            await admin.bots_add("other", ["ghost"], token_ttl_seconds=60)
        assert [b["name"] for b in await admin.bots_list()] == ["example"]  # nothing half-made
        with pytest.raises(NotFound):
            await admin.bots_rm("nobody")
        with pytest.raises(BadParameter):
            await admin.bots_add("example", ["example-role"], token_ttl_seconds=40 * 24 * 3600)
    # A user who may not create users may not create bots either.
    user = Identity(name="mallory", kind="user", roles=("example-role",))
    async with reg.client(user) as mallory:
        with pytest.raises((AccessDenied, Unauthenticated)):
            await mallory.bots_add("evil", ["example-role"], token_ttl_seconds=60)


@pytest.mark.parametrize(
    "name",
    ["", "-x", "a" * 61, "a/b", "a b", "é", "bot\n", "../x"],
)
def test_bad_bot_names_are_refused(name: str) -> None:
    with pytest.raises(BadParameter, match="bot name"):
        check_bot_name(name)


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"{}",
        b'{"token": 5, "csr_pem": "x"}',
        b'{"token": "t", "csr_pem": "x", "extra": 1}',
        b'{"token": "t", "csr_pem": "x", "ttl_seconds": "1h"}',
        b'{"token": "t", "csr_pem": "x", "ttl_seconds": 1e300}',
        b'{"token": "' + b"A" * 100_000 + b'", "csr_pem": "x"}',
        b"not json",
        b'{"token": "\\ud800", "csr_pem": "x"}',
    ],
)
async def test_hostile_join_bodies_get_a_status_never_a_500(reg: InProcessRegistry, body: bytes) -> None:
    async with RegistryClient(ADDRESS, ca_pems=[reg.ca.cert_pem], transport=reg.transport(None)) as anon:
        response = await anon._http.post("/v1/bots/join", content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    assert response.json()["kind"] == "Status"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/bots", b'{"name": "x", "roles": "example-role"}'),
        ("POST", "/v1/bots", b'{"name": 7, "roles": []}'),
        ("POST", "/v1/bots", b'{"name": "x", "roles": [1]}'),
        ("POST", "/v1/bots", b'{"name": "x", "roles": ["example-role"], "token_ttl_seconds": -1}'),
        ("PUT", "/v1/bots/example", b'{"add_roles": "x"}'),
        ("PUT", "/v1/bots/example", b'{"set_roles": [null]}'),
        ("GET", "/v1/bots/a/b", b""),
        ("DELETE", "/v1/bots/" + "a" * 300, b""),
    ],
)
async def test_hostile_admin_bodies_get_a_status(reg: InProcessRegistry, method: str, path: str, body: bytes) -> None:
    await add_bot(reg)
    async with reg.client() as admin:
        response = await admin._http.request(method, path, content=body or None)
    assert 400 <= response.status_code < 500
    assert response.json()["kind"] == "Status"


async def test_failed_joins_are_audited_without_the_token(reg: InProcessRegistry) -> None:
    secret = "f" * 32
    with pytest.raises(AccessDenied):
        await join_bot(reg, secret)
    await reg.registry.flush_audit(drain=True)
    rows = await events(reg, "bot.join", success=False)
    assert rows
    assert secret not in str(rows)
    assert token_key(secret) not in str(rows)


def test_bot_ttl_bounds() -> None:
    assert bot_ttl(None, ()) == timedelta(hours=1)
    with pytest.raises(BadParameter):
        bot_ttl(timedelta(days=2), ())
    with pytest.raises(BadParameter):
        bot_ttl(timedelta(seconds=5), ())


async def test_editing_the_bot_user_with_kpctl_users_keeps_it_a_bot(reg: InProcessRegistry) -> None:
    """``kpctl users update`` rewrites the user without its labels: renewal must still follow the bot rules."""
    identity = await join_bot(reg, await add_bot(reg), ttl_seconds=600)
    async with reg.client() as admin:
        user = await admin.get("user", "bot-example")
        user["metadata"].pop("labels", None)
        await admin.update(user)
    renewed = await renew_bot(reg, identity, ttl_seconds=3600)
    first, second = identity.identity().expires, renewed.identity().expires
    assert first is not None
    assert second is not None
    assert second > first


async def test_a_certificate_of_an_earlier_bot_of_the_same_name_does_not_lock_the_new_one(
    reg: InProcessRegistry,
) -> None:
    start = reg.registry.clock()
    offset = [0.0]
    reg.registry.clock = lambda: start + offset[0]
    old = await join_bot(reg, await add_bot(reg))
    async with reg.client() as admin:
        await admin.bots_rm("example")
    offset[0] = 5.0
    new_token = await add_bot(reg)
    # Before the new bot joined, and after: the old machine's renewal is refused, and nothing gets locked.
    with pytest.raises(Unauthenticated, match="removed and added again"):
        await renew_bot(reg, old)
    new = await join_bot(reg, new_token)
    with pytest.raises(Unauthenticated, match="removed and added again"):
        await renew_bot(reg, old)
    await renew_bot(reg, new)
    async with reg.client() as admin:
        [listed] = await admin.bots_list()
    assert listed["status"] == "joined"
    assert await events(reg, "bot.locked", success=False) == []
