"""The forwarder decides with the certificate's roles that the user still holds, never with more.

The registry API and the front door use :func:`registry.server.authz.effective_roles` (the certificate's roles
the stored user still holds): a role added to the user later does not widen a certificate already issued
(its TTL was capped by the roles it was signed with: ``max_session_ttl``). The front door sends those roles
with the stream (``kubeport-roles``); the agent must not authorize with roles outside them.
"""

from __future__ import annotations

import trio

from tests.agent.forward.forward_helpers import KUBE_ACCESS, PREFIX, open_client, role, world_for
from tests.fakes.kube_api import FakeKube

SECRETS = f"{PREFIX}/api/v1/namespaces/default/secrets"
PODS = f"{PREFIX}/api/v1/namespaces/default/pods"
PROD_ADMIN = role(
    "prod-admin",
    {"kubernetes_labels": {"*": "*"}, "kubernetes_groups": ["system:masters"]},
)
PODS_VIEWER = role(
    "pods-viewer",
    {
        "kubernetes_labels": {"*": "*"},
        "kubernetes_groups": ["viewers"],
        "kubernetes_resources": [{"kind": "pod", "namespace": "*", "name": "*", "verbs": ["list"]}],
    },
)


async def test_a_role_added_after_the_certificate_does_not_widen_it(nursery: trio.Nursery, fake_kube: FakeKube) -> None:
    world = world_for(fake_kube, roles=(PODS_VIEWER, PROD_ADMIN), user_roles=["pods-viewer", "prod-admin"])
    # alice's certificate was signed when she held pods-viewer only; prod-admin was added to her since
    client = await open_client(nursery, world, roles=("pods-viewer",))
    assert (await client.request("GET", PODS)).status == 200
    reply = await client.request("GET", SECRETS)
    assert reply.status == 403, reply.body
    [_, refused] = await world.wait_events(2)
    assert refused["status"] == 403
    assert "system:masters" not in [r.header("impersonate-group") for r in fake_kube.requests]


async def test_a_role_the_user_lost_is_not_kept_by_the_certificate(nursery: trio.Nursery, fake_kube: FakeKube) -> None:
    world = world_for(fake_kube, roles=(KUBE_ACCESS,))
    client = await open_client(nursery, world, roles=("kube-access", "prod-admin"))  # prod-admin: not held
    assert (await client.request("GET", PODS)).status == 200
    assert [r.header_values("impersonate-group") for r in fake_kube.requests][-1] == ["viewers", "system:authenticated"]
