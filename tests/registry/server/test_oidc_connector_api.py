"""The ``oidc`` connector through kpctl and the API: create/get/rm, the client secret shown only with
``--with-secrets``, kept on an edit that omits it, never in history once replaced, and admin only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry.client import RegistryClient
from registry.core.errors import AccessDenied
from registry.core.identity import Identity
from registry.server.serve import RegistryInfo
from registry.store import MemoryStore
from registry.testing import InProcessRegistry
from tests.helpers import kpctl

SECRET = "client-secret-value-0123456789"
NEW_SECRET = "rotated-secret-value-9876543210"
CONNECTOR = f"""\
kind: oidc
version: v3
metadata:
  name: myoidc
spec:
  issuer_url: https://idp.example.com
  client_id: kubeport
  client_secret: {SECRET}
  redirect_url: http://127.0.0.1/callback
  claims_to_roles:
  - claim: groups
    value: my-group
    roles: [access, kube-access]
"""


async def test_kpctl_create_get_rm_hides_the_secret_unless_asked(registry: RegistryInfo, tmp_path: Path) -> None:
    path = tmp_path / "oidc.yaml"
    path.write_text(CONNECTOR)
    created = await kpctl("create", str(path))
    assert created.code == 0, created.err
    assert 'oidc connector "myoidc" has been created' in created.out
    hidden = await kpctl("get", "oidc/myoidc")
    assert hidden.code == 0 and SECRET not in hidden.out
    assert yaml.safe_load(hidden.out)["spec"]["client_id"] == "kubeport"
    shown = await kpctl("get", "oidc/myoidc", "--with-secrets")
    assert yaml.safe_load(shown.out)["spec"]["client_secret"] == SECRET
    listed = await kpctl("get", "oidc", "--format", "json")
    assert SECRET not in listed.out and json.loads(listed.out)[0]["metadata"]["name"] == "myoidc"
    table = await kpctl("get", "oidc", "--format", "text")
    assert "myoidc" in table.out and "https://idp.example.com" in table.out and "kube-access" in table.out
    # get (secret hidden) -> edit -> create -f keeps the stored secret.
    path.write_text(hidden.out.replace("my-group", "other-group"))
    assert (await kpctl("create", "-f", str(path))).code == 0
    again = yaml.safe_load((await kpctl("get", "oidc/myoidc", "--with-secrets")).out)
    assert again["spec"]["client_secret"] == SECRET
    assert again["spec"]["claims_to_roles"][0]["value"] == "other-group"
    removed = await kpctl("rm", "oidc/myoidc")
    assert removed.code == 0 and "has been deleted" in removed.out
    missing = await kpctl("get", "oidc/myoidc")
    assert missing.code == 1 and missing.err.startswith("ERROR: ")
    audit = await kpctl("get", "events", "--format", "json")
    assert SECRET not in audit.out


async def test_a_malformed_connector_file_is_one_error_line(registry: RegistryInfo, tmp_path: Path) -> None:
    path = tmp_path / "oidc.yaml"
    path.write_text(CONNECTOR.replace("https://idp.example.com", "http://idp.example.com"))
    result = await kpctl("create", str(path))
    assert result.code == 1
    assert result.err.startswith("ERROR: ") and result.err.count("\n") == 1 and "https" in result.err
    assert SECRET not in result.err


def connector_body() -> dict[str, Any]:
    [doc] = list(yaml.safe_load_all(CONNECTOR))
    return dict(doc)


async def test_connectors_are_admin_only_whatever_the_role_says() -> None:
    async with InProcessRegistry.open() as reg:
        admin = reg.client()
        await admin.create(
            {
                "kind": "role",
                "metadata": {"name": "all"},
                "spec": {"allow": {"rules": [{"resources": ["*"], "verbs": ["*"]}]}},
            }
        )
        await admin.create({"kind": "user", "metadata": {"name": "root-ish"}, "spec": {"roles": ["all"]}})
        await admin.create(connector_body())
        user = reg.client(Identity("root-ish", "user", roles=("all",)))
        for call in (
            user.list("oidc"),
            user.get("oidc", "myoidc"),
            user.create({**connector_body(), "metadata": {"name": "mine"}}),
            user.delete("oidc", "myoidc"),
        ):
            with pytest.raises(AccessDenied):
                await call
        assert len((await user.list("role"))[0]) == 1  # the "*" rule still works for everything else
        agent = reg.client(Identity("node", "agent", host_id="h1"))
        with pytest.raises(AccessDenied):
            await agent.list("oidc")


async def test_a_replaced_client_secret_leaves_no_trace_in_history() -> None:
    store = MemoryStore()
    try:
        body = connector_body()
        await store.create("oidc", "myoidc", body)
        body["spec"] = {**body["spec"], "client_secret": NEW_SECRET}
        await store.update("oidc", "myoidc", body)
        async with store.watch(["oidc"], since=0) as events:
            got = [await anext(events), await anext(events)]
        assert SECRET not in repr(got)
        assert got[1].record.value["spec"]["client_secret"] == NEW_SECRET  # the current one is kept
        await store.delete("oidc", "myoidc")
        async with store.watch(["oidc"], since=0) as events:
            got = [await anext(events) for _ in range(3)]
        assert NEW_SECRET not in repr(got) and SECRET not in repr(got)
    finally:
        await store.aclose()


async def test_the_api_never_shows_the_secret_without_with_secrets() -> None:
    async with InProcessRegistry.open() as reg:
        admin: RegistryClient = reg.client()
        created = await admin.create(connector_body())
        assert SECRET not in str(created)
        assert SECRET not in str(await admin.get("oidc", "myoidc"))
        assert SECRET in str(await admin.get("oidc", "myoidc", with_secrets=True))
