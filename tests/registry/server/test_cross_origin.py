"""The registry API refuses a cross-origin request from a browser that holds a kubeport certificate.

A page of another site could otherwise POST a role or a token to the registry as the user (a ``text/plain``
POST needs no CORS preflight, and the API reads JSON whatever the Content-Type). kpctl and the agents (httpx)
send no ``Origin``; the rule is :mod:`registry.core.origin`'s.
"""

from __future__ import annotations

import json

import httpx
import pytest

from registry.core.errors import AccessDenied
from registry.core.origin import check_same_origin
from registry.testing import ADMIN, InProcessRegistry

ROLE = {"kind": "role", "version": "v7", "metadata": {"name": "owned"}, "spec": {"allow": {"rules": []}}}


async def _post(reg: InProcessRegistry, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(transport=reg.transport(ADMIN), base_url="https://registry:3025") as client:
        return await client.post(
            "/v1/resources/role", content=json.dumps(ROLE), headers={"content-type": "text/plain", **headers}
        )


async def _role_names(reg: InProcessRegistry) -> set[str]:
    async with httpx.AsyncClient(transport=reg.transport(ADMIN), base_url="https://registry:3025") as client:
        return {item["metadata"]["name"] for item in (await client.get("/v1/resources/role")).json()["items"]}


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "null", "https://registry:3025.evil", "https://registry:3025@evil"]
)
async def test_a_cross_origin_write_is_refused_and_nothing_is_written(origin: str) -> None:
    async with InProcessRegistry.open() as reg:
        response = await _post(reg, {"origin": origin})
        assert response.status_code == 403
        assert response.json()["kind"] == "Status"
        assert "cross-origin" in response.json()["message"]
        assert "owned" not in await _role_names(reg)


async def test_kpctl_without_origin_and_a_same_origin_request_still_work() -> None:
    async with InProcessRegistry.open() as reg:
        assert (await _post(reg, {})).status_code in (200, 201)
        assert "owned" in await _role_names(reg)
        ROLE["metadata"]["name"] = "owned-2"  # type: ignore[index]
        try:
            assert (await _post(reg, {"origin": "https://registry:3025"})).status_code in (200, 201)
        finally:
            ROLE["metadata"]["name"] = "owned"  # type: ignore[index]


def test_the_rule() -> None:
    check_same_origin([], "front:3026")
    check_same_origin([b"https://front:3026"], b"front:3026")
    check_same_origin(["http://FRONT:3026/"], "front:3026")
    for origins, host in (
        (["https://front:3026", "https://front:3026"], "front:3026"),
        (["https://front:3026"], None),
        (["ws://front:3026"], "front:3026"),
        (["https://front"], "front:3026"),
    ):
        with pytest.raises(AccessDenied):
            check_same_origin(origins, host)
