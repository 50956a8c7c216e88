"""The RBAC the minted service account needs, and how what a cluster stores compares to it.

``ROLE_RULES`` are the original script's ClusterRole rules, verbatim. ``analyse_rules`` compares stored rules
by meaning rather than by spelling (reordered rules, wildcards and split rules that grant the same
permissions count as the same). Pure: no I/O, no kubernetes client.

Invariants: a rule restricted to ``resourceNames`` or about ``nonResourceURLs`` never counts as granting a
needed permission; any wildcard or permission outside ``ROLE_RULES`` counts as extra, so an admin's
widening of the role is always reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from registry.mint.shapes import strings_at

RBAC_GROUP = "rbac.authorization.k8s.io"

# The original's ClusterRole rules, verbatim (teleport-behaviour.md §6 step 5).
ROLE_RULES: tuple[dict[str, list[str]], ...] = (
    {"apiGroups": [""], "resources": ["users", "groups", "serviceaccounts"], "verbs": ["impersonate"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
    {
        "apiGroups": ["authorization.k8s.io"],
        "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
        "verbs": ["create"],
    },
)


Permission = tuple[str, str, str]  # (apiGroup, resource, verb)


def _needed() -> tuple[Permission, ...]:
    """The original's permissions one by one, in the original's order (for messages)."""
    return tuple(
        (group, resource, verb)
        for rule in ROLE_RULES
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    )


def _covers(rule: Mapping[str, Any], perm: Permission) -> bool:
    if strings_at(rule, "resourceNames") or strings_at(rule, "nonResourceURLs"):
        return False  # restricted to some names (or not about resources at all): not the blanket grant we need
    group, resource, verb = perm
    return (
        any(g in (group, "*") for g in strings_at(rule, "apiGroups"))
        and any(r in (resource, "*") for r in strings_at(rule, "resources"))
        and any(v in (verb, "*") for v in strings_at(rule, "verbs"))
    )


def _grants_extra(rule: Mapping[str, Any], needed: Sequence[Permission]) -> bool:
    if strings_at(rule, "nonResourceURLs"):
        return True
    for group in strings_at(rule, "apiGroups"):
        for resource in strings_at(rule, "resources"):
            for verb in strings_at(rule, "verbs"):
                if "*" in (group, resource, verb) or (group, resource, verb) not in needed:
                    return True
    return False


def describe_permission(perm: Permission) -> str:
    group, resource, verb = perm
    return f"{verb} {resource}" + (f".{group}" if group else "")


def describe_rule(rule: Mapping[str, Any]) -> str:
    parts = [f"{key}={strings_at(rule, key)}" for key in ("apiGroups", "resources", "verbs") if key in rule]
    parts += [f"{key}={strings_at(rule, key)}" for key in ("resourceNames", "nonResourceURLs") if rule.get(key)]
    return "{" + ", ".join(parts).replace("'", '"') + "}"


@dataclass(frozen=True)
class RuleReport:
    """How stored ClusterRole rules differ from the original's, by meaning (not by spelling)."""

    missing: tuple[Permission, ...]
    extra_rules: tuple[Mapping[str, Any], ...]

    @property
    def same(self) -> bool:
        return not self.missing and not self.extra_rules


def analyse_rules(stored: object) -> RuleReport:
    rules = [r for r in stored if isinstance(r, Mapping)] if isinstance(stored, list) else []
    needed = _needed()
    missing = tuple(p for p in needed if not any(_covers(r, p) for r in rules))
    extra = tuple(r for r in rules if _grants_extra(r, needed))
    return RuleReport(missing=missing, extra_rules=extra)


def service_account_subject(namespace: str, name: str) -> dict[str, str]:
    return {"kind": "ServiceAccount", "name": name, "namespace": namespace}


def describe_subject(subject: object) -> str:
    if not isinstance(subject, Mapping):
        return repr(subject)
    kind = str(subject.get("kind", "?"))
    name = str(subject.get("name", "?"))
    if kind == "ServiceAccount":
        return f"ServiceAccount {subject.get('namespace', '?')}/{name}"
    return f"{kind} {name}"


def is_subject(subject: object, wanted: Mapping[str, str]) -> bool:
    """Whether a stored binding subject is ``wanted`` (extra keys such as ``apiGroup`` do not matter)."""
    return isinstance(subject, Mapping) and all(subject.get(k) == v for k, v in wanted.items())
