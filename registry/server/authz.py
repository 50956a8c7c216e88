"""Who may do what on the registry API: pure decisions, no I/O.

A caller is the identity from its verified client certificate plus, for users, the roles that identity
names (resolved by the caller of these functions). Decisions:

- ``admin`` identities may do everything (the identity file written on first start, like tctl on the
  auth host);
- ``agent`` identities (joined with a ``Kube`` token) may list/read/watch ``kube_cluster`` (with secrets:
  they need the kubeconfig to serve it), read roles and users (for proxy authorization), and write or delete
  only the ``kube_server`` heartbeats of their own host id;
- ``user`` identities act through the ``rules`` of their roles, Teleport style: a deny rule that matches
  wins over any allow rule; ``*`` in resources or verbs matches everything.
- kinds in :data:`~registry.core.resources.ADMIN_ONLY_KINDS` (``oidc`` connectors: they decide who logs in
  as whom with which roles) are the admin identity's alone, whatever a role's rules say;
- ``registry`` identities are never callers (that certificate only serves TLS).

Setting or changing a kube_cluster's ``spec.dynamic_labels`` needs more than writing kube_clusters: those
commands run on every agent that serves the cluster, so it takes a rule on the pseudo-resource
:data:`DYNAMIC_LABELS` (``kube_cluster_dynamic_labels``) with the same verb (``create`` for a new
cluster, ``update`` for a change). The admin identity has it; agents never do; a ``*`` resource rule
includes it (such a role may already write roles and users).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from registry.core.errors import AccessDenied, Unauthenticated
from registry.core.identity import Identity
from registry.core.resources import ADMIN_ONLY_KINDS, Role, Rule, User

VERBS = ("list", "read", "create", "update", "delete")
DYNAMIC_LABELS = "kube_cluster_dynamic_labels"


@dataclass(frozen=True)
class Caller:
    identity: Identity
    roles: tuple[Role, ...] = ()

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def kind(self) -> str:
        return self.identity.kind

    def describe(self) -> str:
        return f'{self.identity.kind} "{self.identity.name}"'


def effective_roles(identity: Identity, user: User) -> tuple[str, ...]:
    """The roles a user certificate grants now: the certificate's roles that the stored user still holds, in
    the certificate's order (``Registry.caller_for`` and the front door decide with exactly these)."""
    held = set(user.roles)
    return tuple(name for name in identity.roles if name in held)


def user_gone(name: str) -> Unauthenticated:
    """The error for a user certificate whose user no longer exists."""
    return Unauthenticated(
        f'user "{name}" no longer exists: its certificate is not accepted any more '
        "(ask an admin to create the user again and sign a new certificate)"
    )


def _rule_matches(rule: Rule, kind: str, verb: str) -> bool:
    return ("*" in rule.resources or kind in rule.resources) and ("*" in rule.verbs or verb in rule.verbs)


def _rules_match(rules: Iterable[Rule], kind: str, verb: str) -> bool:
    return any(_rule_matches(rule, kind, verb) for rule in rules)


# What a joined agent may do, by (kind, verb). Heartbeat ownership is checked separately.
_AGENT_GRANTS = {
    ("kube_cluster", "list"),
    ("kube_cluster", "read"),
    ("kube_server", "list"),
    ("kube_server", "read"),
    ("kube_server", "create"),
    ("kube_server", "update"),
    ("kube_server", "delete"),
    ("role", "list"),
    ("role", "read"),
    ("user", "list"),
    ("user", "read"),
}


def allowed(caller: Caller, kind: str, verb: str) -> bool:
    if caller.kind == "admin":
        return True
    if kind in ADMIN_ONLY_KINDS:  # e.g. oidc connectors: no role rule, not even "*", reaches them
        return False
    if caller.kind == "agent":
        return (kind, verb) in _AGENT_GRANTS
    if caller.kind == "user":
        if any(_rules_match(role.deny.rules, kind, verb) for role in caller.roles):
            return False
        return any(_rules_match(role.allow.rules, kind, verb) for role in caller.roles)
    return False


def check(caller: Caller, kind: str, verb: str) -> None:
    """Raise AccessDenied naming the caller, the verb and the kind unless ``allowed``."""
    if not allowed(caller, kind, verb):
        raise AccessDenied(f"access denied: {caller.describe()} may not {verb} {kind}")


def check_heartbeat_owner(caller: Caller, host_id: str) -> None:
    """Agents may only write and delete the kube_servers of their own host."""
    if caller.kind == "agent" and caller.identity.host_id != host_id:
        raise AccessDenied(
            f"access denied: agent {caller.identity.host_id!r} may not write heartbeats of host {host_id!r}"
        )


def check_admin(caller: Caller, what: str) -> None:
    if caller.kind != "admin":
        raise AccessDenied(f"access denied: only the admin identity may {what}")


def check_dynamic_labels(caller: Caller, verb: str, cluster: str) -> None:
    """Raise AccessDenied unless ``caller`` may ``verb`` (create/update) a kube_cluster's dynamic labels."""
    if not allowed(caller, DYNAMIC_LABELS, verb):
        raise AccessDenied(
            f'access denied: kube_cluster "{cluster}": {caller.describe()} may not set or change '
            "spec.dynamic_labels (their commands run on every agent that serves the cluster); this needs a "
            f"role rule allowing {verb} on {DYNAMIC_LABELS} (or the admin identity), and each agent host "
            "must list the program in kubernetes_service.allowed_label_commands"
        )
