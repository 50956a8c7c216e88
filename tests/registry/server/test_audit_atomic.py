"""Every change the API makes is written with its audit event in one commit (issue 11 §3): if the audit
event cannot be written, the change is not made either; a crash keeps both or neither."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from registry.core import codec
from registry.core.errors import KubeportError
from registry.core.identity import CertAuthority, Identity
from registry.core.resources import Resource
from registry.server.authz import Caller
from registry.server.service import AUDIT_KIND, Registry
from registry.store import SQLiteStore
from registry.store._plan import Change
from tests.helpers import cluster_doc, kubeconfig_bytes

ADMIN = Caller(identity=Identity("admin", "admin"))


class AuditFails(SQLiteStore):
    """A store whose disk fails while it writes an audit event (the crash window between a change and its
    event, made deterministic)."""

    failing = False

    def _apply_sync(self, changes: Sequence[Change]) -> None:
        if self.failing and any(c.item.kind == AUDIT_KIND for c in changes):
            raise sqlite3.OperationalError("disk I/O error")
        super()._apply_sync(changes)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[Registry, AuditFails]]:
    store = await AuditFails.open(tmp_path / "r.db")
    assert isinstance(store, AuditFails)
    registry = Registry(store, CertAuthority.generate("c", now=datetime.now(tz=UTC)), cluster_name="c")
    yield registry, store
    await store.aclose()


def _cluster(name: str) -> Resource:
    return codec.resource_from_dict(cluster_doc(name, kubeconfig_bytes(), {"env": "test"}), source="test")


async def _events(store: SQLiteStore) -> list[str]:
    return [f"{r.value['event']} {r.value.get('name')}" for r in await store.list(AUDIT_KIND)]


async def test_create_update_delete_are_audited_in_the_same_commit(env: tuple[Registry, AuditFails]) -> None:
    registry, store = env
    await registry.create(ADMIN, _cluster("a"))
    before = await store.revision()
    await registry.update(ADMIN, _cluster("a"))
    assert await store.revision() == before + 2  # the change and its event: two revisions, one commit
    await registry.delete(ADMIN, "kube_cluster", "a")
    assert await _events(store) == ["kube.create a", "kube.update a", "kube.delete a"]


@pytest.mark.parametrize("action", ["create", "update", "delete"])
async def test_no_change_without_its_audit_event(env: tuple[Registry, AuditFails], action: str) -> None:
    registry, store = env
    await registry.create(ADMIN, _cluster("a"))
    revision = await store.revision()
    store.failing = True
    with pytest.raises(KubeportError, match="disk I/O error"):
        if action == "create":
            await registry.create(ADMIN, _cluster("b"))
        elif action == "update":
            await registry.update(ADMIN, _cluster("a"))
        else:
            await registry.delete(ADMIN, "kube_cluster", "a")
    store.failing = False
    assert await store.revision() == revision
    assert [r.name for r in await store.list("kube_cluster")] == ["a"]
    assert (await store.get("kube_cluster", "a")).revision == 1
    assert await _events(store) == ["kube.create a"]
