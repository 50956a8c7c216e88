"""``session.end`` carries the exit code of an exec (issue 9 §7): real kubectl through kubeport (registry,
front door, agent tunnel) to the fake Kubernetes API, then ``kpctl get events``.

* kubectl 1.30+ speaks WebSocket (``v5.channel.k8s.io``): the agent reads the exit status off the error
  channel passively, so ``true`` ends with ``exit_code: 0`` and a failing command with its code;
* kubectl 1.27 speaks SPDY/3.1 (``v4.channel.k8s.io``): the agent reads the error stream the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client import REGISTRY

from tests.fakes.kube_api import FakeKube
from tests.fakes.kubectl import kubectl_version, minor
from tests.helpers import kpctl
from tests.integration.access_setup import (
    AccessRegistry,
    access_registry,  # noqa: F401  (fixture)
    start_access,
)
from tests.integration.test_access_kubectl import grant_viewers, kubectl, routed
from tests.integration.test_agent_inprocess import wait_for


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _session_ends() -> list[dict[str, Any]]:
    result = await kpctl("get", "events", "--event", "session.end", "--format", "json", "--limit", "1000")
    assert result.code == 0, result.err
    events: list[dict[str, Any]] = json.loads(result.out)
    return events


@pytest.mark.parametrize("version", ["1.33", "1.30", "1.27"])
async def test_session_end_has_the_exit_code(
    access_registry: AccessRegistry,  # noqa: F811
    fake_kube: FakeKube,
    nursery: trio.Nursery,
    tmp_path: Path,
    version: str,
) -> None:
    binary = kubectl_version(version)
    grant_viewers(fake_kube)
    fake_kube.add_pod("web")
    access = await start_access(access_registry, fake_kube, nursery, tmp_path)
    await routed(access, binary)
    upgrades = _sample("kubeport_proxied_requests_total", cluster=access.cluster, code="101")
    streams = _sample("kubeport_tunnel_streams_total", side="frontdoor")
    code, _, err = await kubectl(access, binary, ["exec", "web", "--", "true"])
    assert code == 0, err
    code, out, err = await kubectl(access, binary, ["exec", "web", "--", "sh", "-c", "echo out; exit 7"])
    assert (code, out) == (7, b"out\n"), err

    async def both() -> list[dict[str, Any]] | None:
        ends = [e for e in await _session_ends() if e.get("session_kind") == "exec"]
        return ends if len(ends) >= 2 else None

    ends = await wait_for(both, what="two session.end events")
    ends.sort(key=lambda e: e["time"])
    protocol = "websocket" if minor(version) >= 30 else "SPDY/3.1"
    assert [e["protocol"] for e in ends] == [protocol, protocol]
    assert [e["exit_code"] for e in ends] == [0, 7]
    assert all("exit_code_reason" not in e for e in ends)
    # the same path in /metrics: two upgrades answered 101 for this cluster, each over a tunnel stream
    assert _sample("kubeport_proxied_requests_total", cluster=access.cluster, code="101") == upgrades + 2
    assert _sample("kubeport_tunnel_streams_total", side="frontdoor") >= streams + 2
    assert _sample("kubeport_tunnel_connections", side="frontdoor") >= 1
    assert _sample("kubeport_tunnel_connections", side="agent") >= 1
