"""The forwarder's memoized decisions: a memo never outlives the user and role objects it was made for,
refusals are decided every time, and hostile targets are never kept."""

from __future__ import annotations

import pytest

from agent.forward import decide as decide_module
from agent.forward.decide import DecisionCache, Target, certificate_roles, map_request
from registry.core.errors import AccessDenied, BadParameter
from tests.agent.forward.forward_helpers import CLUSTER, LABELS, PODS_ONLY, role, user

PODS = map_request("GET", Target(path="/api/v1/namespaces/default/pods", query=""))
SECRETS = map_request("GET", Target(path="/api/v1/namespaces/default/secrets", query=""))


async def test_the_same_user_and_roles_reuse_the_decision() -> None:
    cache = DecisionCache()
    alice = user("alice", [PODS_ONLY.name])
    first = cache.authorize(alice, (PODS_ONLY,), CLUSTER, LABELS, PODS)
    again = cache.authorize(alice, (PODS_ONLY,), CLUSTER, dict(LABELS), PODS)
    assert again == first
    assert cache.hits == 1


async def test_a_refreshed_role_is_decided_again() -> None:
    # The access source hands out new objects after each refresh: a role that now denies pods must win.
    cache = DecisionCache()
    alice = user("alice", [PODS_ONLY.name])
    cache.authorize(alice, (PODS_ONLY,), CLUSTER, LABELS, PODS)
    now_denying = role(
        PODS_ONLY.name,
        {"kubernetes_labels": {"*": "*"}, "kubernetes_groups": ["viewers"]},
        deny={"kubernetes_resources": [{"kind": "pod", "namespace": "*", "name": "*", "verbs": ["*"]}]},
    )
    with pytest.raises(AccessDenied):
        cache.authorize(alice, (now_denying,), CLUSTER, LABELS, PODS)
    refreshed_user = user("alice", [])
    with pytest.raises(Exception):  # noqa: B017,PT011  (no roles: hidden cluster or no access at all)
        cache.authorize(refreshed_user, (), CLUSTER, LABELS, PODS)


async def test_other_labels_or_requests_are_decided_on_their_own() -> None:
    cache = DecisionCache()
    alice = user("alice", [PODS_ONLY.name])
    cache.authorize(alice, (PODS_ONLY,), CLUSTER, LABELS, PODS)
    with pytest.raises(AccessDenied):
        cache.authorize(alice, (PODS_ONLY,), CLUSTER, LABELS, SECRETS)
    with pytest.raises(Exception):  # noqa: B017,PT011  (env=dev is not selected: the cluster is hidden)
        cache.authorize(alice, (PODS_ONLY,), CLUSTER, {"env": "dev"}, PODS)
    assert cache.hits == 0


async def test_refusals_are_not_kept_and_the_cache_is_bounded() -> None:
    cache = DecisionCache(size=2)
    alice = user("alice", [PODS_ONLY.name])
    for _ in range(3):
        with pytest.raises(AccessDenied):
            cache.authorize(alice, (PODS_ONLY,), CLUSTER, LABELS, SECRETS)
    assert cache.hits == 0
    for name in ("a", "b", "c"):
        request = map_request("GET", Target(path=f"/api/v1/namespaces/default/pods/{name}", query=""))
        cache.authorize(alice, (PODS_ONLY,), CLUSTER, LABELS, request)
    assert len(cache._entries) == 2


async def test_a_huge_or_malformed_target_is_mapped_but_never_kept() -> None:
    before = decide_module._parse_memo.cache_info().currsize
    huge = Target(path="/api/v1/namespaces/default/pods/" + "x" * 100_000, query="")
    assert map_request("GET", huge).name == "x" * 100_000
    with pytest.raises(BadParameter):
        map_request("GET", Target(path="/api/v1/namespaces/default/nodes/n1", query=""))
    assert decide_module._parse_memo.cache_info().currsize == before


async def test_certificate_roles_are_the_current_roles_the_certificate_named() -> None:
    """A role added to the user after the certificate was signed does not widen it; a role the user lost is
    not kept because the certificate named it (the agent's half of ``authz.effective_roles``)."""
    admin = role("prod-admin", {"kubernetes_labels": {"*": "*"}, "kubernetes_groups": ["system:masters"]})
    held = (PODS_ONLY, admin)
    assert certificate_roles(held, ("pods-only",)) == (PODS_ONLY,)
    assert certificate_roles(held, ("pods-only", "prod-admin", "gone")) == held
    assert certificate_roles((PODS_ONLY,), ("pods-only", "prod-admin")) == (PODS_ONLY,)
    assert certificate_roles(held, ()) == ()
    alice = user("alice", ["pods-only", "prod-admin"])
    cache = DecisionCache()
    with pytest.raises(AccessDenied):
        cache.authorize(alice, certificate_roles(held, ("pods-only",)), CLUSTER, LABELS, SECRETS)
    assert "system:masters" in cache.authorize(alice, held, CLUSTER, LABELS, SECRETS).kube_groups
