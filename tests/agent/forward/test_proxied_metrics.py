"""kubeport_proxied_requests_total{cluster,code}: one count per request the forwarder answers, forwarded or
refused, labelled by the stream's kube_cluster name and the code the client got (issue 11 §4)."""

from __future__ import annotations

import trio
from prometheus_client import REGISTRY

from tests.agent.forward.forward_helpers import CLUSTER, PODS_ONLY, PREFIX, open_client, world_for
from tests.fakes.kube_api import FakeKube


def _proxied(cluster: str, code: int) -> float:
    return REGISTRY.get_sample_value("kubeport_proxied_requests_total", {"cluster": cluster, "code": str(code)}) or 0.0


async def test_forwarded_and_refused_requests_are_counted_by_cluster_and_code(
    nursery: trio.Nursery, fake_kube: FakeKube
) -> None:
    world = world_for(fake_kube, roles=(PODS_ONLY,))
    before = {code: _proxied(CLUSTER, code) for code in (200, 403, 400)}
    client = await open_client(nursery, world)
    for _ in range(2):
        assert (await client.request("GET", f"{PREFIX}/api/v1/namespaces/default/pods")).status == 200
    assert (await client.request("GET", f"{PREFIX}/api/v1/namespaces/default/secrets/db")).status == 403
    assert _proxied(CLUSTER, 200) == before[200] + 2
    assert _proxied(CLUSTER, 403) == before[403] + 1
    # A request for another cluster's prefix is refused (400) and counted under the stream's cluster: the
    # label never comes from the request line.
    reply = await client.request("GET", "/v1/clusters/c3RhZ2luZw/api/v1/namespaces/default/pods")  # "staging"
    assert reply.status == 400
    assert _proxied(CLUSTER, 400) == before[400] + 1
    assert _proxied("staging", 400) == 0.0
