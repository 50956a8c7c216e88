"""The front door decides a kubectl connection from the lookup's watch-fed users, roles and clusters (no store
read per connection), and the store's watch is what invalidates them: a deleted user, a role taken from the
user, a deleted role, a role that no longer matches and a deleted cluster are each refused on the very next
connection, with no ``invalidate()`` and no store read in between."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio

from registry.core import codec
from registry.frontdoor.serve import FrontDoor
from registry.server.service import Registry
from tests.registry.frontdoor.frontdoor_helpers import (
    ADMIN,
    Env,
    credentials,
    frontdoor_env,
    read_until_eof,
    request,
    role_doc,
    user,
    user_doc,
)
from tests.registry.frontdoor.test_serve import status_of

DEADLINE = 10


def store_reads(frontdoor: FrontDoor) -> int:
    return int(frontdoor.statistics()["lookup_store_reads"])


async def routed(env: Env) -> None:
    """One connection that the front door routes to the agent (the test plays it and ends the stream)."""
    with trio.fail_after(DEADLINE):
        stream = await env.connect(credentials(user()))
        await stream.send_all(request("dev"))
        opened = await env.hub.opened.receive()
        assert opened.info.user == "alice" and opened.info.roles == ("kube-access",)
        await opened.stream.aclose()
        assert await read_until_eof(stream) == b""


async def refused(env: Env) -> int:
    with trio.fail_after(DEADLINE):
        stream = await env.connect(credentials(user()))
        await stream.send_all(request("dev"))
        code, _ = status_of(await read_until_eof(stream))
        return code


async def test_routed_connections_read_nothing_from_the_store() -> None:
    async with frontdoor_env() as env:
        await env.add_cluster("dev", {"env": "dev"}, agents={"host-a": "healthy"})
        await routed(env)  # add_cluster's invalidate() sends this one's reads to the store
        before = store_reads(env.frontdoor)
        for _ in range(5):
            await routed(env)
        assert store_reads(env.frontdoor) == before
        assert env.frontdoor.statistics()["routed"] == 6


async def _delete_user(registry: Registry) -> None:
    await registry.delete(ADMIN, "user", "alice")


async def _take_the_role(registry: Registry) -> None:
    await registry.update(ADMIN, codec.resource_from_dict(user_doc("alice", [])))


async def _delete_the_role(registry: Registry) -> None:
    await registry.delete(ADMIN, "role", "kube-access")


async def _narrow_the_role(registry: Registry) -> None:
    await registry.update(ADMIN, codec.resource_from_dict(role_doc("kube-access", {"env": "prod"})))


async def _deny_in_the_role(registry: Registry) -> None:
    doc = role_doc("kube-access", {"env": "dev"}, deny={"env": "dev"})
    await registry.update(ADMIN, codec.resource_from_dict(doc))


async def _delete_the_cluster(registry: Registry) -> None:
    await registry.delete(ADMIN, "kube_cluster", "dev")


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (_delete_user, 401),
        (_take_the_role, 404),
        (_delete_the_role, 404),
        (_narrow_the_role, 404),
        (_deny_in_the_role, 404),
        (_delete_the_cluster, 404),
    ],
)
async def test_a_change_is_refused_on_the_very_next_connection(
    change: Callable[[Registry], Awaitable[None]], code: int
) -> None:
    async with frontdoor_env() as env:
        await env.add_cluster("dev", {"env": "dev"}, agents={"host-a": "healthy"})
        await routed(env)
        await routed(env)  # decided from the feed
        before = store_reads(env.frontdoor)
        await change(env.registry)
        assert await refused(env) == code
        assert store_reads(env.frontdoor) == before  # the watch, not a store read, told the front door
        assert env.hub.attempts == ["host-a", "host-a"]


async def test_a_user_created_again_with_the_role_is_served_again() -> None:
    async with frontdoor_env() as env:
        await env.add_cluster("dev", {"env": "dev"}, agents={"host-a": "healthy"})
        await routed(env)
        await _delete_user(env.registry)
        assert await refused(env) == 401
        await env.put(user_doc("alice", ["kube-access"]))
        await routed(env)


async def test_the_stream_carries_only_the_certificate_roles_the_user_still_holds() -> None:
    async with frontdoor_env() as env:
        await env.put(role_doc("other", {"env": "prod"}))
        await env.add_cluster("dev", {"env": "dev"}, agents={"host-a": "healthy"})
        with trio.fail_after(DEADLINE):
            stream = await env.connect(credentials(user(roles=("other", "kube-access"))))
            await stream.send_all(request("dev"))
            opened = await env.hub.opened.receive()
            assert opened.info.roles == ("kube-access",)  # "other" is not the user's (any more)
            await opened.stream.aclose()
            assert await read_until_eof(stream) == b""
        start = (await env.wait_audit("kube.connection.start"))[0]
        assert start["roles"] == ["kube-access"]
