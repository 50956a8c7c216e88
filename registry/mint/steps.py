"""The cluster-side work of the mint, one idempotent step at a time, and the wait for the token.

``Steps`` creates or updates the namespace, the service account, the ClusterRole, the ClusterRoleBinding
and (on Kubernetes >= 1.24) the token secret, through a ``Kube`` adapter, printing ``kind/name created``,
``unchanged`` or ``configured`` like the ``kubectl apply`` the original script runs.

Invariants:

* read first, write only what differs: a second run makes no write and prints the same progress;
* an object a concurrent run created between our read and our create counts as found;
* nothing an admin added is removed silently: a ClusterRole granting more than ``ROLE_RULES`` is kept (with
  a warning; missing rules are added to it) and a ClusterRoleBinding bound to other subjects or another
  role is an error; both are reset only with ``force``;
* ``wait_token`` polls with a deadline on the injected ``clock``/``sleep`` (so tests need not wait) and
  returns only a non-empty token without whitespace and a non-empty CA.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from registry.core.errors import AlreadyExists, BadParameter, NotFound, Timeout
from registry.mint.kube import CLUSTER_ROLE, CLUSTER_ROLE_BINDING, NAMESPACE, SECRET, SERVICE_ACCOUNT, Kind, Kube
from registry.mint.rbac import (
    RBAC_GROUP,
    ROLE_RULES,
    analyse_rules,
    describe_permission,
    describe_rule,
    describe_subject,
    is_subject,
    service_account_subject,
)
from registry.mint.shapes import list_at, mapping_at

TOKEN_SECRET_TYPE = "kubernetes.io/service-account-token"  # noqa: S105 (a Secret type, not a password)
SA_NAME_ANNOTATION = "kubernetes.io/service-account.name"


@dataclass
class Steps:
    """The cluster-side work, step by step. ``say`` prints progress, ``warn`` prints a warning."""

    kube: Kube
    namespace: str
    service_account: str
    role_name: str
    binding_name: str
    force: bool
    say: Callable[[str], None]
    warn: Callable[[str], None]
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    poll_interval: float = 0.1

    def _report(self, kind: Kind, name: str, what: str) -> None:
        self.say(f"{kind.display}/{name} {what}")

    def _ensure(self, kind: Kind, body: dict[str, Any], namespace: str = "") -> tuple[dict[str, Any], bool]:
        """Read; create on 404. Returns (object, created). An object a concurrent run created between our read
        and our create counts as found, so two runs at once both succeed."""
        name = str(body["metadata"]["name"])
        found = self.kube.get(kind, name, namespace)
        if found is not None:
            return found, False
        try:
            return self.kube.create(kind, body, namespace), True
        except AlreadyExists:
            again = self.kube.get(kind, name, namespace)
            if again is None:
                raise
            return again, False

    def ensure_namespace(self) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}}
        _, created = self._ensure(NAMESPACE, body)
        self._report(NAMESPACE, self.namespace, "created" if created else "unchanged")

    def ensure_service_account(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": self.service_account, "namespace": self.namespace},
        }
        _, created = self._ensure(SERVICE_ACCOUNT, body, self.namespace)
        self._report(SERVICE_ACCOUNT, self.service_account, "created" if created else "unchanged")

    def ensure_cluster_role(self) -> None:
        body = {
            "apiVersion": f"{RBAC_GROUP}/v1",
            "kind": "ClusterRole",
            "metadata": {"name": self.role_name},
            "rules": [dict(r) for r in ROLE_RULES],
        }
        obj, created = self._ensure(CLUSTER_ROLE, body)
        if created:
            self._report(CLUSTER_ROLE, self.role_name, "created")
            return
        report = analyse_rules(obj.get("rules"))
        if report.same:
            self._report(CLUSTER_ROLE, self.role_name, "unchanged")
            return
        stored_rules = [r for r in list_at(obj, "rules") if isinstance(r, Mapping)]
        if report.extra_rules and not self.force:
            extras = "; ".join(describe_rule(r) for r in report.extra_rules)
            self.warn(
                f'ClusterRole "{self.role_name}" grants more than kubeport needs (an admin edited it?): {extras}. '
                "Left as it is; run with --force to reset it to the minimal rules"
            )
            if not report.missing:
                self._report(CLUSTER_ROLE, self.role_name, "unchanged")
                return
            # Add what is missing and keep the admin's additions: shrinking is --force's job.
            new_rules = stored_rules + [dict(r) for r in ROLE_RULES]
        else:
            new_rules = [dict(r) for r in ROLE_RULES]
        if report.missing:
            missing = ", ".join(describe_permission(p) for p in report.missing)
            self.say(f'ClusterRole "{self.role_name}" lacked: {missing}')
        obj["rules"] = new_rules
        self.kube.replace(CLUSTER_ROLE, obj)
        self._report(CLUSTER_ROLE, self.role_name, "configured")

    def ensure_binding(self) -> None:
        subject = service_account_subject(self.namespace, self.service_account)
        role_ref = {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": self.role_name}
        body = {
            "apiVersion": f"{RBAC_GROUP}/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": self.binding_name},
            "roleRef": role_ref,
            "subjects": [subject],
        }
        obj, created = self._ensure(CLUSTER_ROLE_BINDING, body)
        if created:
            self._report(CLUSTER_ROLE_BINDING, self.binding_name, "created")
            return
        stored_ref = mapping_at(obj, "roleRef")
        if stored_ref.get("kind") != "ClusterRole" or stored_ref.get("name") != self.role_name:
            if not self.force:
                raise AlreadyExists(
                    f'ClusterRoleBinding "{self.binding_name}" refers to {stored_ref.get("kind", "?")} '
                    f'"{stored_ref.get("name", "?")}", not ClusterRole "{self.role_name}"; pass --force to recreate '
                    "it, or choose another --binding-name"
                )
            # roleRef is immutable in Kubernetes: replace the binding by deleting and creating it.
            self.kube.delete(CLUSTER_ROLE_BINDING, self.binding_name)
            self.kube.create(CLUSTER_ROLE_BINDING, body)
            self._report(CLUSTER_ROLE_BINDING, self.binding_name, "configured")
            return
        subjects = list_at(obj, "subjects")
        others = [s for s in subjects if not is_subject(s, subject)]
        ours = len(others) < len(subjects)
        if ours and not others:
            self._report(CLUSTER_ROLE_BINDING, self.binding_name, "unchanged")
            return
        if others and not self.force:
            names = ", ".join(describe_subject(s) for s in others)
            if ours:
                self.warn(
                    f'ClusterRoleBinding "{self.binding_name}" also binds {names}; left as it is '
                    "(run with --force to bind only the kubeport service account)"
                )
                self._report(CLUSTER_ROLE_BINDING, self.binding_name, "unchanged")
                return
            raise AlreadyExists(
                f'ClusterRoleBinding "{self.binding_name}" is bound to {names}, not to ServiceAccount '
                f"{self.namespace}/{self.service_account}; rebinding it would revoke that access. Pass --force to "
                "rebind it, or choose another --binding-name"
            )
        obj["subjects"] = [subject]
        self.kube.replace(CLUSTER_ROLE_BINDING, obj)
        self._report(CLUSTER_ROLE_BINDING, self.binding_name, "configured")

    def token_secret_name(self) -> str:
        """The SA's auto-created token secret (Kubernetes < 1.24), else our own ``<sa>`` secret (created if
        needed). Only token secrets count: OpenShift lists dockercfg secrets in ``.secrets`` too."""
        # Read the SA again: before 1.24 the token controller adds .secrets just after the SA is created.
        service_account = self.kube.get(SERVICE_ACCOUNT, self.service_account, self.namespace) or {}
        for ref in list_at(service_account, "secrets"):
            name = ref.get("name") if isinstance(ref, Mapping) else None
            if isinstance(name, str) and name:
                secret = self.kube.get(SECRET, name, self.namespace)
                if secret is not None and secret.get("type") == TOKEN_SECRET_TYPE:
                    return name
        name = self.service_account
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": TOKEN_SECRET_TYPE,
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "annotations": {SA_NAME_ANNOTATION: self.service_account},
            },
        }
        obj, created = self._ensure(SECRET, body, self.namespace)
        annotations = mapping_at(mapping_at(obj, "metadata"), "annotations")
        if obj.get("type") != TOKEN_SECRET_TYPE or annotations.get(SA_NAME_ANNOTATION) != self.service_account:
            raise AlreadyExists(
                f'secret {self.namespace}/{name} already exists but is not a service-account token for "{name}" '
                f"(type {obj.get('type') or 'Opaque'!s}); delete it or choose another --service-account"
            )
        self._report(SECRET, name, "created" if created else "unchanged")
        return name

    def wait_token(self, secret_name: str, wait: float) -> tuple[str, str]:
        """Poll until the token controller filled ``token`` and ``ca.crt``; returns (token, ca base64)."""
        deadline = self.clock() + wait
        announced = False
        interval = self.poll_interval
        while True:
            secret = self.kube.get(SECRET, secret_name, self.namespace)
            if secret is None:
                raise NotFound(f"secret {self.namespace}/{secret_name} disappeared while waiting for its token")
            filled = _filled(secret)
            if filled is not None:
                return filled
            if not announced:
                self.say(f"Waiting for the token controller to fill secret {self.namespace}/{secret_name}...")
                announced = True
            left = deadline - self.clock()
            if left <= 0:
                raise Timeout(
                    f"the token controller did not fill secret {self.namespace}/{secret_name} within {wait:g}s "
                    "(data.token or data.ca.crt is still empty); is kube-controller-manager running? "
                    "Run again, or pass a longer --wait"
                )
            self.sleep(min(interval, left))
            interval = min(interval * 2, 1.0)


def _filled(secret: Mapping[str, Any]) -> tuple[str, str] | None:
    data = mapping_at(secret, "data")
    token_b64, ca_b64 = data.get("token"), data.get("ca.crt")
    if not isinstance(token_b64, str) or not token_b64 or not isinstance(ca_b64, str) or not ca_b64:
        return None
    try:
        token = base64.b64decode(token_b64, validate=True).decode("ascii").strip()
        ca = base64.b64decode(ca_b64, validate=True)
    except (binascii.Error, UnicodeDecodeError):
        raise BadParameter(
            f"secret {mapping_at(secret, 'metadata').get('name')!s} holds a token or ca.crt that is not valid base64"
        ) from None
    if not token or not ca.strip():
        return None
    if any(c.isspace() for c in token):
        raise BadParameter("the service-account token contains whitespace; refusing to write it")
    return token, base64.b64encode(ca).decode()
