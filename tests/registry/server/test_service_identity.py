"""Who the registry believes a caller is, and what it lets callers claim (issue 7, sections 4 and 6).

The service layer (``registry.server.service.Registry``) over an in-memory store, with an injected clock:

* a user certificate is only as good as the stored user behind it (deleted user -> 401, removed role ->
  its grants are gone on the next request), and renewal never pushes a user certificate's expiry later
  than the admin chose, nor past the roles' ``max_session_ttl``;
* kube_server records are written and deleted through one owner check, whatever the route; heartbeats
  name clusters that exist;
* host ids are the registry's: a join cannot take over an id that is in use;
* one join token policy on every route that writes a token.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from registry.core import codec
from registry.core.errors import AccessDenied, BadParameter, KubeportError, NotFound, Unauthenticated
from registry.core.identity import CertAuthority, Identity, generate_private_key, make_csr
from registry.core.resources import KubeServer
from registry.server.authz import Caller
from registry.server.service import Registry, mask_token
from registry.store import MemoryStore
from tests.helpers import cluster_doc, kube_server_doc, kubeconfig_bytes

START = datetime(2030, 1, 1, tzinfo=UTC)
MIN_TOKEN_LENGTH = 16  # the promised minimum (generated tokens have 32 characters)


class Clock:
    def __init__(self) -> None:
        self.now = START.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta.total_seconds()


@pytest.fixture
async def env() -> Any:
    clock = Clock()
    store = MemoryStore(clock=clock)
    ca = CertAuthority.generate("test-cluster", now=START)
    registry = Registry(store, ca, cluster_name="test-cluster", clock=clock)
    yield registry, clock
    await store.aclose()


ADMIN = Caller(identity=Identity("admin", "admin"))


def csr() -> bytes:
    return make_csr(generate_private_key(), "x")


async def put(registry: Registry, doc: dict[str, Any]) -> None:
    resource = codec.resource_from_dict(doc)
    try:
        await registry.create(ADMIN, resource)
    except KubeportError:
        await registry.update(ADMIN, resource)


def role_doc(name: str, *, resources: list[str], verbs: list[str], ttl: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"allow": {"rules": [{"resources": resources, "verbs": verbs}]}}
    if ttl is not None:
        spec["options"] = {"max_session_ttl": ttl}
    return {"kind": "role", "version": "v7", "metadata": {"name": name}, "spec": spec}


def user_doc(name: str, roles: list[str]) -> dict[str, Any]:
    return {"kind": "user", "version": "v2", "metadata": {"name": name}, "spec": {"roles": roles}}


async def setup_user(registry: Registry, roles: dict[str, str | None], user: str = "alice") -> None:
    for name, ttl in roles.items():
        verbs = ["list", "read"] if name == "reader" else ["list", "read", "create", "update", "delete"]
        await put(registry, role_doc(name, resources=["kube_cluster", "user"], verbs=verbs, ttl=ttl))
    await put(registry, user_doc(user, list(roles)))


async def sign(registry: Registry, user: str, ttl: timedelta) -> Identity:
    result = await registry.sign_user(ADMIN, user=user, csr_pem=csr(), ttl=ttl)
    return registry.ca.verify(result["cert_pem"].encode(), now=registry.now())


async def renew(registry: Registry, identity: Identity) -> Identity:
    caller = await registry.caller_for(identity)
    result = await registry.renew(caller, csr())
    return registry.ca.verify(result["cert_pem"].encode(), now=registry.now())


# -- section 4: users ---------------------------------------------------------------------------------------


async def test_a_deleted_user_s_certificate_is_refused_on_the_next_request(env: Any) -> None:
    registry, _ = env
    await setup_user(registry, {"writer": None})
    identity = await sign(registry, "alice", timedelta(hours=1))
    caller = await registry.caller_for(identity)
    assert await registry.list(caller, "kube_cluster") == []

    await registry.delete(ADMIN, "user", "alice")
    with pytest.raises(Unauthenticated, match='user "alice" no longer exists'):
        await registry.caller_for(identity)
    # and it cannot renew its way around it
    with pytest.raises(Unauthenticated):
        await renew(registry, identity)


async def test_a_user_created_again_does_not_revive_roles_it_no_longer_holds(env: Any) -> None:
    registry, _ = env
    await setup_user(registry, {"writer": None})
    identity = await sign(registry, "alice", timedelta(hours=1))
    await registry.delete(ADMIN, "user", "alice")
    await put(registry, user_doc("alice", []))  # same name, no roles
    caller = await registry.caller_for(identity)
    with pytest.raises(AccessDenied):
        await registry.list(caller, "kube_cluster")


async def test_removing_a_role_from_the_user_removes_its_grants_at_once(env: Any) -> None:
    registry, _ = env
    await setup_user(registry, {"reader": None, "writer": None})
    identity = await sign(registry, "alice", timedelta(hours=1))
    cluster = codec.resource_from_dict(cluster_doc("c1", kubeconfig_bytes(), {}))
    await registry.create(await registry.caller_for(identity), cluster)

    await put(registry, user_doc("alice", ["reader"]))
    caller = await registry.caller_for(identity)
    assert [r.name for r in caller.roles] == ["reader"]
    assert caller.identity.roles == ("reader",)  # whoami and renewal see the effective roles
    assert len(await registry.list(caller, "kube_cluster")) == 1
    with pytest.raises(AccessDenied):
        await registry.delete(caller, "kube_cluster", "c1")

    await put(registry, user_doc("alice", []))
    with pytest.raises(AccessDenied):
        await registry.list(await registry.caller_for(identity), "kube_cluster")


async def test_a_role_added_later_does_not_widen_an_issued_certificate(env: Any) -> None:
    registry, _ = env
    await setup_user(registry, {"reader": None})
    identity = await sign(registry, "alice", timedelta(hours=1))
    await put(registry, role_doc("writer", resources=["*"], verbs=["*"]))
    await put(registry, user_doc("alice", ["reader", "writer"]))
    caller = await registry.caller_for(identity)
    assert caller.identity.roles == ("reader",)
    with pytest.raises(AccessDenied):
        await registry.delete(caller, "user", "alice")


async def test_renewal_never_extends_a_user_certificate(env: Any) -> None:
    registry, clock = env
    await setup_user(registry, {"writer": None})
    identity = await sign(registry, "alice", timedelta(hours=1))
    original = identity.expires
    assert original is not None and original <= START + timedelta(hours=1)

    clock.advance(timedelta(minutes=20))
    renewed = await renew(registry, identity)
    assert renewed.expires is not None and renewed.expires <= original

    # chained renewals: each one starts from the previous certificate, none gets past the first expiry
    current = renewed
    for _ in range(5):
        clock.advance(timedelta(minutes=5))
        current = await renew(registry, current)
        assert current.expires is not None and current.expires <= original

    clock.advance(timedelta(hours=1))  # past the first expiry: nothing left to renew
    with pytest.raises(AccessDenied, match="no time left"):
        await renew(registry, current)


async def test_renewal_drops_roles_the_user_lost(env: Any) -> None:
    registry, clock = env
    await setup_user(registry, {"reader": None, "writer": None})
    identity = await sign(registry, "alice", timedelta(hours=2))
    await put(registry, user_doc("alice", ["reader"]))
    clock.advance(timedelta(minutes=1))
    renewed = await renew(registry, identity)
    assert renewed.roles == ("reader",)
    # giving the role back does not bring it back to the renewed certificate
    await put(registry, user_doc("alice", ["reader", "writer"]))
    assert (await registry.caller_for(renewed)).identity.roles == ("reader",)


@pytest.mark.parametrize(
    ("ttl", "cap"),
    [
        ("1h", timedelta(hours=1)),
        ("90m", timedelta(minutes=90)),
        ("0", timedelta(hours=30)),  # zero means "the default", as in Teleport
        (None, timedelta(hours=30)),  # unset: Teleport's default
    ],
)
async def test_max_session_ttl_caps_signing(env: Any, ttl: str | None, cap: timedelta) -> None:
    registry, _ = env
    await setup_user(registry, {"writer": ttl})
    identity = await sign(registry, "alice", timedelta(days=7))
    assert identity.expires is not None and identity.expires <= START + cap
    assert identity.expires >= START + cap - timedelta(seconds=1)


async def test_the_strictest_role_caps_signing_and_renewal(env: Any) -> None:
    registry, clock = env
    await setup_user(registry, {"reader": "2h", "writer": "24h"})
    identity = await sign(registry, "alice", timedelta(hours=12))
    assert identity.expires is not None and identity.expires <= START + timedelta(hours=2)

    # an admin tightening the role afterwards also tightens the next renewal
    await put(registry, role_doc("reader", resources=["kube_cluster"], verbs=["list"], ttl="10m"))
    clock.advance(timedelta(minutes=30))
    renewed = await renew(registry, identity)
    assert renewed.expires is not None
    assert renewed.expires <= START + timedelta(minutes=40)


async def test_a_user_without_roles_still_gets_a_bounded_certificate(env: Any) -> None:
    registry, _ = env
    await put(registry, user_doc("nobody", []))
    identity = await sign(registry, "nobody", timedelta(days=7))
    assert identity.expires is not None and identity.expires <= START + timedelta(hours=30)


# -- section 6: one owner check for kube_server on every route ----------------------------------------------


def agent(host_id: str) -> Caller:
    return Caller(identity=Identity("vm", "agent", roles=("Kube",), host_id=host_id))


def server_of(host_id: str, name: str, clock: Clock) -> KubeServer:
    server = codec.resource_from_dict(kube_server_doc(host_id, name, expires=clock() + 60))
    assert isinstance(server, KubeServer)
    return server


async def test_an_agent_cannot_delete_another_agent_s_heartbeat_through_any_route(env: Any) -> None:
    registry, clock = env
    await registry.create(ADMIN, codec.resource_from_dict(cluster_doc("c1", kubeconfig_bytes(), {})))
    await registry.heartbeat(agent("host-a"), server_of("host-a", "c1", clock))

    for attempt in (
        registry.delete(agent("host-b"), "kube_server", "host-a/c1"),  # the generic route
        registry.delete_heartbeat(agent("host-b"), "host-a", "c1"),  # the heartbeat route
        registry.delete(agent("host-b"), "kube_server", "host-a/c1/../c1"),
    ):
        with pytest.raises(AccessDenied, match="host-a"):
            await attempt
    assert [s["metadata"]["name"] for s in await registry.list(ADMIN, "kube_server")] == ["c1"]

    with pytest.raises(BadParameter):
        await registry.delete(agent("host-a"), "kube_server", "no-slash")
    with pytest.raises(BadParameter, match="heartbeat"):
        await registry.create(agent("host-b"), server_of("host-a", "c1", clock))
    with pytest.raises(BadParameter, match="heartbeat"):
        await registry.update(agent("host-b"), server_of("host-a", "c1", clock))

    await registry.delete(agent("host-a"), "kube_server", "host-a/c1")  # the owner may, on either route
    assert await registry.list(ADMIN, "kube_server") == []


async def test_an_agent_cannot_touch_another_agent_s_description(env: Any) -> None:
    registry, _ = env
    body = {"host_id": "host-a", "static_clusters": ["mine"]}
    await registry.put_agent(agent("host-a"), "host-a", body)
    with pytest.raises(AccessDenied):
        await registry.put_agent(agent("host-b"), "host-a", body)
    with pytest.raises(AccessDenied):
        await registry.delete_agent(agent("host-b"), "host-a")


async def test_heartbeats_name_clusters_that_exist(env: Any) -> None:
    registry, clock = env
    with pytest.raises(NotFound, match="ghost"):
        await registry.heartbeat(agent("host-a"), server_of("host-a", "ghost", clock))

    # a static cluster counts once the agent declared it, and only for that agent
    await registry.put_agent(agent("host-a"), "host-a", {"host_id": "host-a", "static_clusters": ["local"]})
    await registry.heartbeat(agent("host-a"), server_of("host-a", "local", clock))
    with pytest.raises(NotFound):
        await registry.heartbeat(agent("host-b"), server_of("host-b", "local", clock))

    # a registered cluster may be heartbeated; once deleted, it may not
    await registry.create(ADMIN, codec.resource_from_dict(cluster_doc("c1", kubeconfig_bytes(), {})))
    await registry.heartbeat(agent("host-b"), server_of("host-b", "c1", clock))
    await registry.delete(ADMIN, "kube_cluster", "c1")
    with pytest.raises(NotFound):
        await registry.heartbeat(agent("host-b"), server_of("host-b", "c1", clock))


# -- section 6: host ids are the registry's -----------------------------------------------------------------


async def token(registry: Registry) -> str:
    result = await registry.generate_token(ADMIN, roles=("Kube",), ttl=timedelta(hours=1))
    return str(result["metadata"]["name"])


async def join(registry: Registry, value: str, host_id: str | None = None) -> dict[str, Any]:
    return await registry.join(token=value, host_id=host_id, nodename="vm", csr_pem=csr(), client="127.0.0.1")


async def test_the_registry_assigns_host_ids(env: Any) -> None:
    registry, _ = env
    value = await token(registry)
    first, second = await join(registry, value), await join(registry, value)
    assert first["host_id"] != second["host_id"]
    ident = registry.ca.verify(first["cert_pem"].encode(), now=registry.now())
    assert ident.host_id == first["host_id"]


async def test_a_join_cannot_take_over_a_host_id_in_use(env: Any) -> None:
    registry, clock = env
    value = await token(registry)
    victim = (await join(registry, value))["host_id"]
    with pytest.raises(AccessDenied, match="already joined"):
        await join(registry, value, host_id=victim)

    # ids known only from heartbeats or a description (agents that joined before ids were recorded)
    await registry.create(ADMIN, codec.resource_from_dict(cluster_doc("c1", kubeconfig_bytes(), {})))
    await registry.heartbeat(agent("legacy-1"), server_of("legacy-1", "c1", clock))
    await registry.put_agent(agent("legacy-2"), "legacy-2", {"host_id": "legacy-2"})
    for taken in ("legacy-1", "legacy-2"):
        with pytest.raises(AccessDenied, match="host id"):
            await join(registry, value, host_id=taken)

    # an id nobody holds is still accepted once (older agents name their own), then it is taken
    assert (await join(registry, value, host_id="fresh-host"))["host_id"] == "fresh-host"
    with pytest.raises(AccessDenied):
        await join(registry, value, host_id="fresh-host")

    await registry.flush_audit(drain=True)  # refusals from one source are aggregated into counted rows
    page, _ = await registry.events(ADMIN, event="instance.join")
    refusals = [e for e in page if not e["success"]]
    assert sum(e.get("count", 1) for e in refusals) == 4
    assert all(e["error"] == "host id already in use" for e in refusals)
    assert all(value not in str(e) for e in refusals)


async def test_an_agent_keeps_its_host_id_by_renewing(env: Any) -> None:
    registry, clock = env
    joined = await join(registry, await token(registry))
    identity = registry.ca.verify(joined["cert_pem"].encode(), now=registry.now())
    clock.advance(timedelta(hours=20))
    renewed = await renew(registry, identity)
    assert renewed.host_id == joined["host_id"]
    # long after the first certificate would have expired, the id is still reserved
    clock.advance(timedelta(days=3))
    with pytest.raises(AccessDenied):
        await join(registry, await token(registry), host_id=joined["host_id"])


@pytest.mark.parametrize("host_id", ["../etc", "a/b", "", " ", "x" * 129, "é", "-leading"])
async def test_hostile_host_ids_are_refused(env: Any, host_id: str) -> None:
    registry, _ = env
    value = await token(registry)
    if host_id == "":
        assert (await join(registry, value, host_id=None))["host_id"]  # empty means "assign one"
        return
    with pytest.raises(BadParameter, match="host_id"):
        await join(registry, value, host_id=host_id)


# -- section 6: one token policy ----------------------------------------------------------------------------


def token_doc(name: str, expires: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if expires is not None:
        metadata["expires"] = expires
    return {"kind": "token", "version": "v2", "metadata": metadata, "spec": {"roles": ["Kube"]}}


GOOD = "a" * 32
SOON = (START + timedelta(hours=1)).isoformat()


@pytest.mark.parametrize(
    ("name", "expires", "reason"),
    [
        (GOOD, "2099-01-01T00:00:00Z", "at most 30 days"),
        (GOOD, (START + timedelta(days=30, seconds=1)).isoformat(), "at most 30 days"),
        (GOOD, (START - timedelta(seconds=1)).isoformat(), "not in the future"),
        (GOOD, START.isoformat(), "not in the future"),
        (GOOD, "1970-01-01T00:00:00Z", "not in the future"),
        (GOOD, None, "expires is required"),
        ("x", SOON, "at least 16"),
        ("ab", SOON, "at least 16"),
        ("a" * (MIN_TOKEN_LENGTH - 1), SOON, "at least 16"),
        ("a" * 254, SOON, "at most 253"),
        ("a" * 100_000, SOON, "at most 253"),
    ],
)
async def test_the_token_policy_holds_on_every_route(env: Any, name: str, expires: str | None, reason: str) -> None:
    registry, _ = env
    doc = token_doc(name, expires)
    with pytest.raises(BadParameter, match=reason) as create_err:
        await registry.create(ADMIN, codec.resource_from_dict(doc))
    with pytest.raises(BadParameter, match=reason):
        await registry.update(ADMIN, codec.resource_from_dict(doc))
    assert name not in create_err.value.message or len(name) < 2  # a 1-char value is in any text
    assert await registry.list(ADMIN, "token") == []


@pytest.mark.parametrize(
    "name", ["tökentökentökentöken", "../../../../etc/passwd", "a/b" * 8, "tok en" * 4, "\x1b[31m" * 4, "a\x00" * 9]
)
async def test_token_values_that_are_not_plain_text_are_refused(env: Any, name: str) -> None:
    registry, _ = env
    with pytest.raises(BadParameter) as err:
        await registry.create(ADMIN, codec.resource_from_dict(token_doc(name, SOON)))
    assert name not in err.value.message
    with pytest.raises(BadParameter):
        await registry.generate_token(ADMIN, roles=("Kube",), ttl=timedelta(hours=1), value=name)


async def test_generated_and_chosen_tokens_follow_the_same_policy(env: Any) -> None:
    registry, _ = env
    with pytest.raises(BadParameter, match="at least 16"):
        await registry.generate_token(ADMIN, roles=("Kube",), ttl=timedelta(hours=1), value="ab")
    with pytest.raises(BadParameter, match="30 days"):
        await registry.generate_token(ADMIN, roles=("Kube",), ttl=timedelta(days=31))
    with pytest.raises(BadParameter):
        await registry.generate_token(ADMIN, roles=("Kube",), ttl=timedelta(seconds=-5))
    chosen = await registry.generate_token(ADMIN, roles=("Kube",), ttl=timedelta(days=30), value="b" * 16)
    assert chosen["metadata"]["name"] == "b" * 16
    await registry.create(ADMIN, codec.resource_from_dict(token_doc("c" * 16, SOON)))


@pytest.mark.parametrize("value", ["", "a", "ab", "abcd", "abcdefgh", "a" * 15, "é" * 5])
def test_a_short_token_masks_fully(value: str) -> None:
    masked = mask_token(value)
    assert set(masked) == {"*"} and len(masked) >= 8


@pytest.mark.parametrize("length", [16, 17, 24, 32, 64, 256])
def test_a_mask_shows_at_most_an_eighth_of_a_token(length: int) -> None:
    value = "".join(chr(ord("a") + i % 26) for i in range(length))
    masked = mask_token(value)
    shown = len(masked.rstrip("*"))
    assert shown <= min(4, length // 8)
    assert masked.startswith(value[:shown])


async def test_token_listings_and_audit_never_show_a_short_legacy_token(env: Any) -> None:
    registry, clock = env
    # a token written before the policy existed (straight into the store)
    await registry.store.create("token", "ab", token_doc("ab", SOON), expires=clock() + 3600)
    listed = await registry.list(ADMIN, "token")
    assert "ab" not in listed[0]["metadata"]["name"]
    await registry.delete(ADMIN, "token", "ab")
    events, _ = await registry.events(ADMIN, event="token.delete")
    assert events and all(e["name"].strip("*") == "" for e in events)
