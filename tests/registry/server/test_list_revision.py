"""A list's revision never names a write the list missed (the list-then-watch contract agents rely on).

Found through the issue 9 kubectl tests: an agent that listed kube_clusters while a cluster was being created
sometimes never served it. The API read the store revision after the items, so a write landing in between
was covered by the revision but absent from the items, and a watch from that revision skipped it for good.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from registry.core.identity import CertAuthority
from registry.server.api import RegistryAPI
from registry.server.http import Request
from registry.server.service import Registry
from registry.store import MemoryStore, Record
from tests.registry.server.test_audit_flood import _admin


class WriteDuringList(MemoryStore):
    """A store where another writer lands right after ``list`` read its items (before the API answers)."""

    def __init__(self) -> None:
        super().__init__()
        self.written: Record | None = None

    async def list(self, kind: str, **kwargs: Any) -> list[Record]:  # type: ignore[override]
        records = await super().list(kind, **kwargs)
        if kind == "kube_cluster" and self.written is None:
            self.written = await self.create("kube_cluster", "late", {"kind": "kube_cluster"})
        return records


async def test_a_write_during_a_list_is_after_the_lists_revision() -> None:
    store = WriteDuringList()
    registry = Registry(store, CertAuthority.generate("t", now=datetime.now(UTC)), cluster_name="t")
    api = RegistryAPI(registry)
    api._authenticate = lambda request: _admin()  # type: ignore[method-assign]
    path = "/v1/resources/kube_cluster"
    request = Request(method="GET", target=path, path=path, query={}, headers=[], client="10.0.0.1:1")
    request.peer_cert = b"x"
    body = json.loads((await api(request)).body)
    assert store.written is not None
    assert body["items"] == []  # the list did not see the late write...
    assert body["revision"] < store.written.revision  # ...so a watch from its revision must replay it
