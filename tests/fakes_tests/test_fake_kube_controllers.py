"""The fake's controllers under MockClock: token secrets, legacy SA secrets, default SAs, cascading deletes,
and the tokens they mint authenticating (and stopping to) as a real cluster's would."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import trio

from tests.fakes.kube_api import FakeKube
from tests.fakes.kube_inproc import body_json, call, read_events

TOKEN = "t"
SA_TOKEN_TYPE = "kubernetes.io/service-account-token"


def token_secret(name: str, sa: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SA_TOKEN_TYPE,
        "metadata": {"name": name, "namespace": "default", "annotations": {"kubernetes.io/service-account.name": sa}},
    }


def service_account(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": "default"}}


def stored_token(fake: FakeKube, secret: str) -> str | None:
    found = fake.get_object("secrets", secret, "default")
    data = (found or {}).get("data") or {}
    return base64.b64decode(data["token"]).decode() if "token" in data else None


async def whoami(fake: FakeKube, token: str) -> tuple[int, Any]:
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    response = await call(
        fake, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", token=token, json_body=review
    )
    return response.status, body_json(response)


async def test_token_secret_is_filled_after_the_delay_with_a_watch_event(autojump_clock: object) -> None:
    fake = FakeKube(admin_token=TOKEN, token_delay=5)
    fake.create_object(service_account("teleport-sa"))
    async with trio.open_nursery() as nursery:
        fake.controllers.attach(nursery)
        since = fake.store.revision
        fake.create_object(token_secret("teleport-sa", "teleport-sa"))
        await trio.sleep(4.9)
        assert stored_token(fake, "teleport-sa") is None
        await trio.sleep(0.2)
        token = stored_token(fake, "teleport-sa")
        assert token is not None
        watch = await call(
            fake,
            "GET",
            f"/api/v1/namespaces/default/secrets?watch=1&resourceVersion={since}&timeoutSeconds=1",
            token=TOKEN,
        )
        events = [(e["type"], e["object"]["metadata"]["name"]) for e in await read_events(watch)]
    assert events == [("ADDED", "teleport-sa"), ("MODIFIED", "teleport-sa")]
    secret = fake.get_object("secrets", "teleport-sa", "default")
    assert secret is not None
    assert base64.b64decode(secret["data"]["ca.crt"]) == fake.ca_pem
    sa = fake.get_object("sa", "teleport-sa", "default")
    assert sa is not None
    assert secret["metadata"]["annotations"]["kubernetes.io/service-account.uid"] == sa["metadata"]["uid"]
    status, review = await whoami(fake, token)
    assert status == 201
    assert review["status"]["userInfo"] == {
        "username": "system:serviceaccount:default:teleport-sa",
        "groups": ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"],
    }


async def test_token_delay_none_never_fills_until_changed(autojump_clock: object) -> None:
    fake = FakeKube(admin_token=TOKEN, token_delay=None)
    fake.create_object(service_account("sa"))
    fake.create_object(token_secret("sa-token", "sa"))
    async with trio.open_nursery() as nursery:
        fake.controllers.attach(nursery)  # secrets created before serving are picked up now
        await trio.sleep(3600)
        assert stored_token(fake, "sa-token") is None
        fake.token_delay = 1
        await trio.sleep(1.1)
        assert stored_token(fake, "sa-token") is not None
        nursery.cancel_scope.cancel()


async def test_legacy_service_accounts_get_a_listed_token_secret(autojump_clock: object) -> None:
    fake = FakeKube(admin_token=TOKEN, legacy_sa_secrets=True)
    async with trio.open_nursery() as nursery:
        fake.controllers.attach(nursery)
        response = await call(
            fake,
            "POST",
            "/api/v1/namespaces/default/serviceaccounts",
            token=TOKEN,
            json_body={"metadata": {"name": "old"}},
        )
        assert response.status == 201
        await trio.sleep(0.1)
    sa = fake.get_object("serviceaccounts", "old", "default")
    assert sa is not None
    [listed] = sa["secrets"]
    assert listed["name"].startswith("old-token-")
    assert len(listed["name"]) == len("old-token-") + 5
    token = stored_token(fake, listed["name"])
    assert token is not None
    assert (await whoami(fake, token))[0] == 201


@pytest.mark.parametrize("revoke", ["delete the secret", "delete the service account", "recreate the service account"])
async def test_secret_tokens_stop_working_when_their_objects_go(revoke: str, autojump_clock: object) -> None:
    fake = FakeKube(admin_token=TOKEN)
    fake.create_object(service_account("sa"))
    async with trio.open_nursery() as nursery:
        fake.controllers.attach(nursery)
        fake.create_object(token_secret("sa-token", "sa"))
        await trio.sleep(0.1)
        token = stored_token(fake, "sa-token")
        assert token is not None
        assert (await whoami(fake, token))[0] == 201
        if revoke == "delete the secret":
            fake.delete_object("secrets", "sa-token", "default")
        else:
            fake.delete_object("sa", "sa", "default")
            assert fake.get_object("secrets", "sa-token", "default") is None  # the controller cleans up
            if revoke == "recreate the service account":
                fake.create_object(service_account("sa"))
        status, answer = await whoami(fake, token)
    assert status == 401
    assert answer["reason"] == "Unauthorized"


async def test_a_secret_for_a_missing_service_account_is_deleted(autojump_clock: object) -> None:
    fake = FakeKube(admin_token=TOKEN)
    async with trio.open_nursery() as nursery:
        fake.controllers.attach(nursery)
        fake.create_object(token_secret("orphan", "nobody"))
        await trio.sleep(0.1)
    assert fake.get_object("secrets", "orphan", "default") is None


async def test_namespaces_get_a_default_service_account_and_delete_their_contents() -> None:
    fake = FakeKube(admin_token=TOKEN)
    created = await call(fake, "POST", "/api/v1/namespaces", token=TOKEN, json_body={"metadata": {"name": "team"}})
    assert body_json(created)["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team"}
    assert fake.get_object("sa", "default", "team") is not None
    fake.create_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "team"}})
    deleted = await call(fake, "DELETE", "/api/v1/namespaces/team", token=TOKEN)
    assert body_json(deleted)["status"] == {"phase": "Terminating"}
    assert fake.list_objects("configmaps", "team") == []
    assert fake.list_objects("sa", "team") == []
    missing = await call(
        fake, "POST", "/api/v1/namespaces/team/configmaps", token=TOKEN, json_body={"metadata": {"name": "c"}}
    )
    assert missing.status == 404


async def test_token_request_mints_a_bound_token(autojump_clock: object) -> None:
    fake = FakeKube(admin_token=TOKEN)
    fake.create_object(service_account("bot"))
    path = "/api/v1/namespaces/default/serviceaccounts/bot/token"
    response = await call(fake, "POST", path, token=TOKEN, json_body={"spec": {"expirationSeconds": 600}})
    assert response.status == 201
    token = body_json(response)["status"]["token"]
    status, review = await whoami(fake, token)
    assert (status, review["status"]["userInfo"]["username"]) == (201, "system:serviceaccount:default:bot")
    fake.delete_object("sa", "bot", "default")
    assert (await whoami(fake, token))[0] == 401
    missing = await call(
        fake, "POST", "/api/v1/namespaces/default/serviceaccounts/ghost/token", token=TOKEN, json_body={}
    )
    assert missing.status == 404
