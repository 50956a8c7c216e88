"""The controllers a test cluster needs: service accounts and their legacy token secrets.

They react to the store's write events (synchronously, inside the write) and, for the token controller,
after a delay in the fake's own nursery:

- serviceaccount controller: every new namespace gets a ``default`` ServiceAccount;
- token controller: a ``kubernetes.io/service-account-token`` Secret naming an existing ServiceAccount
  gets, ``token_delay`` seconds later (trio.sleep, so MockClock drives it; ``None`` = never),
  ``data.token`` (a fresh token registered with the authenticator), ``data.ca.crt`` (the fake's CA PEM)
  and ``data.namespace``, plus the ``kubernetes.io/service-account.uid`` annotation: one update, so
  resourceVersion bumps and watchers see MODIFIED. A Secret naming a missing ServiceAccount (or another uid)
  is deleted, and deleting a ServiceAccount deletes its token Secrets, as the real controller does;
- ``legacy_sa_secrets`` emulates Kubernetes < 1.24: a new ServiceAccount immediately gets a
  ``<sa>-token-xxxxx`` Secret, listed in ``sa.secrets``.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

import trio

from tests.fakes.kube_authn import Authenticator, new_token
from tests.fakes.kube_discovery import NAMESPACES, SECRETS, SERVICE_ACCOUNTS
from tests.fakes.kube_objects import SA_NAME_ANNOTATION, SA_TOKEN_TYPE, SA_UID_ANNOTATION
from tests.fakes.kube_status import KubeStatusError
from tests.fakes.kube_store import KubeStore, WatchEvent

_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _needs_token(secret: dict[str, Any]) -> bool:
    annotations = secret["metadata"].get("annotations") or {}
    return (
        secret.get("type") == SA_TOKEN_TYPE
        and bool(annotations.get(SA_NAME_ANNOTATION))
        and not (secret.get("data") or {}).get("token")
    )


class Controllers:
    def __init__(
        self,
        store: KubeStore,
        authenticator: Authenticator,
        ca_pem: bytes,
        *,
        token_delay: float | None,
        legacy_sa_secrets: bool,
    ) -> None:
        self._store = store
        self._authn = authenticator
        self._ca_pem = ca_pem
        self._token_delay: float | None = None
        self._delay_changed = trio.Event()
        self.token_delay = token_delay  # validated by the setter
        self.legacy_sa_secrets = legacy_sa_secrets
        self._nursery: trio.Nursery | None = None
        self._pending: list[tuple[str, str, str]] = []  # (namespace, name, uid) of secrets to fill
        self.tokens_issued = 0
        store.add_listener(self._on_event)

    @property
    def token_delay(self) -> float | None:
        return self._token_delay

    @token_delay.setter
    def token_delay(self, value: float | None) -> None:
        if value is not None and value < 0:
            raise ValueError("token_delay must be >= 0 seconds or None (never)")
        self._token_delay = value
        # Fills that were waiting for "never" to end re-read the delay.
        self._delay_changed.set()
        self._delay_changed = trio.Event()

    def attach(self, nursery: trio.Nursery) -> None:
        """Run delayed work in ``nursery`` from now on (secrets created before serving start now)."""
        self._nursery = nursery
        pending, self._pending = self._pending, []
        for item in pending:
            nursery.start_soon(self._fill_later, *item)

    def detach(self) -> None:
        self._nursery = None

    def _on_event(self, event: WatchEvent) -> None:
        obj = event.obj
        meta = obj["metadata"]
        if event.resource is NAMESPACES and event.type == "ADDED":
            self._store.create(SERVICE_ACCOUNTS, meta["name"], {"metadata": {"name": "default"}})
        elif event.resource is SERVICE_ACCOUNTS and event.type == "ADDED" and self.legacy_sa_secrets:
            self._legacy_secret(meta["namespace"], meta["name"])
        elif event.resource is SERVICE_ACCOUNTS and event.type == "DELETED":
            self._delete_tokens_of(meta["namespace"], meta["name"])
        elif event.resource is SECRETS and event.type in ("ADDED", "MODIFIED") and _needs_token(obj):
            item = (meta["namespace"], meta["name"], meta["uid"])
            if event.type == "ADDED" or (event.old is not None and not _needs_token(event.old)):
                if self._nursery is None:
                    self._pending.append(item)
                else:
                    self._nursery.start_soon(self._fill_later, *item)

    def _legacy_secret(self, namespace: str, sa_name: str) -> None:
        suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))
        secret = self._store.create(
            SECRETS,
            namespace,
            {
                "metadata": {"name": f"{sa_name}-token-{suffix}", "annotations": {SA_NAME_ANNOTATION: sa_name}},
                "type": SA_TOKEN_TYPE,
            },
        )
        sa = self._store.get(SERVICE_ACCOUNTS, namespace, sa_name)
        sa["secrets"] = [*(sa.get("secrets") or []), {"name": secret["metadata"]["name"]}]
        self._store.update(SERVICE_ACCOUNTS, namespace, sa_name, sa)

    def _delete_tokens_of(self, namespace: str, sa_name: str) -> None:
        for secret in list(self._store.iter_objects(SECRETS, namespace)):
            annotations = secret["metadata"].get("annotations") or {}
            if secret.get("type") == SA_TOKEN_TYPE and annotations.get(SA_NAME_ANNOTATION) == sa_name:
                self._store.delete(SECRETS, namespace, secret["metadata"]["name"])

    async def _fill_later(self, namespace: str, name: str, uid: str) -> None:
        while self._token_delay is None:
            await self._delay_changed.wait()
        await trio.sleep(self._token_delay)
        self.fill(namespace, name, uid)

    def fill(self, namespace: str, name: str, uid: str) -> None:
        """Populate one token secret now (if it still exists and still needs it)."""
        secret = self._store.peek(SECRETS, namespace, name)
        if secret is None or secret["metadata"]["uid"] != uid or not _needs_token(secret):
            return
        annotations = dict(secret["metadata"].get("annotations") or {})
        sa = self._store.peek(SERVICE_ACCOUNTS, namespace, annotations[SA_NAME_ANNOTATION])
        wanted_uid = annotations.get(SA_UID_ANNOTATION)
        if sa is None or (wanted_uid and wanted_uid != sa["metadata"]["uid"]):
            self._store.delete(SECRETS, namespace, name)
            return
        token = new_token("fake-sa")
        annotations[SA_UID_ANNOTATION] = sa["metadata"]["uid"]
        data = dict(secret.get("data") or {})
        data.update(
            {"token": _b64(token.encode()), "ca.crt": _b64(self._ca_pem), "namespace": _b64(namespace.encode())}
        )
        updated = {**secret, "metadata": {**secret["metadata"], "annotations": annotations}, "data": data}
        try:
            self._store.update(SECRETS, namespace, name, updated)
        except KubeStatusError:
            return  # changed under us; the MODIFIED event will reschedule if it still needs a token
        self._authn.register_secret_token(token, namespace, name)
        self.tokens_issued += 1
