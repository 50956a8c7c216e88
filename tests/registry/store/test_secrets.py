"""History keeps no secret that was replaced or deleted (issue 7, section 8, second item).

A kube_cluster's ``spec.kubeconfig`` and a token's name (its value) stay only as long as the version holding
them is current: a watch from revision 0 and the raw database file (main file and WAL) show neither a
rotated or deleted kubeconfig nor a deleted or expired token, while resume semantics stay intact.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from registry.store import SQLiteStore
from registry.store._common import BaseStore
from tests.registry.store.store_helpers import BACKENDS, START, FakeClock, open_backend, revisions, take

OLD = "T0xELWt1YmVjb25maWctc2VjcmV0LW9uZQ=="  # the rotated-away kubeconfig
NEW = "TkVXLWt1YmVjb25maWctc2VjcmV0LXR3bw=="
GONE = "R09ORS1rdWJlY29uZmlnLWRlbGV0ZWQ="  # the kubeconfig of a deleted cluster
TOKEN = "0123456789abcdef0123456789abcdef"
EXPIRED_TOKEN = "fedcba9876543210fedcba9876543210"
OLD_SECRETS = (OLD, GONE, TOKEN, EXPIRED_TOKEN, TOKEN[4:], EXPIRED_TOKEN[4:])


def kube_cluster(name: str, kubeconfig: str) -> dict[str, Any]:
    metadata = {"name": name, "labels": {"env": "prod"}}
    return {"kind": "kube_cluster", "metadata": metadata, "spec": {"kubeconfig": kubeconfig}}


def token(name: str) -> dict[str, Any]:
    return {"kind": "token", "metadata": {"name": name}, "spec": {"roles": ["Kube"]}}


async def rotate_and_delete(store: BaseStore, clock: FakeClock) -> None:
    await store.create("kube_cluster", "rotated", kube_cluster("rotated", OLD))  # 1
    await store.create("kube_cluster", "deleted", kube_cluster("deleted", GONE))  # 2
    await store.create("token", TOKEN, token(TOKEN), expires=START + 3600)  # 3
    await store.create("token", EXPIRED_TOKEN, token(EXPIRED_TOKEN), expires=START + 10)  # 4
    await store.update("kube_cluster", "rotated", kube_cluster("rotated", NEW))  # 5
    await store.delete("kube_cluster", "deleted")  # 6
    await store.delete("token", TOKEN)  # 7
    clock.advance(60)
    assert await store.expire() == 1  # 8


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_replay_from_revision_0_shows_no_replaced_or_deleted_secret(backend: str, tmp_path: Path) -> None:
    clock = FakeClock()
    store = await open_backend(backend, tmp_path, clock=clock)
    try:
        await rotate_and_delete(store, clock)
        async with store.watch(["kube_cluster", "token"], since=0) as events:
            got = await take(events, 8)
        assert revisions(got) == list(range(1, 9))  # no gap, no duplicate, nothing renumbered
        assert [(e.type, e.record.kind) for e in got] == [
            ("PUT", "kube_cluster"),
            ("PUT", "kube_cluster"),
            ("PUT", "token"),
            ("PUT", "token"),
            ("PUT", "kube_cluster"),
            ("DELETE", "kube_cluster"),
            ("DELETE", "token"),
            ("DELETE", "token"),
        ]
        text = repr([(e.record.name, e.record.value) for e in got])
        for secret in OLD_SECRETS:
            assert secret not in text
        # the current version keeps its secret (an agent replaying history gets today's kubeconfig) ...
        assert got[4].record.value["spec"]["kubeconfig"] == NEW
        assert (await store.get("kube_cluster", "rotated")).value["spec"]["kubeconfig"] == NEW
        # ... and everything but the secret survives: labels, names of non-secret kinds, expiry
        assert got[0].record.name == "rotated" and got[0].record.value["metadata"]["labels"] == {"env": "prod"}
        assert "kubeconfig" not in got[0].record.value["spec"]
        assert got[6].record.name.strip("*") == TOKEN[:4] and got[6].record.expires == START + 3600
    finally:
        await store.aclose()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_live_delete_event_carries_no_secret(backend: str, tmp_path: Path) -> None:
    clock = FakeClock()
    store = await open_backend(backend, tmp_path, clock=clock)
    try:
        await store.create("kube_cluster", "c", kube_cluster("c", GONE))
        await store.create("token", TOKEN, token(TOKEN), expires=START + 3600)
        async with store.watch(["kube_cluster", "token"]) as events:
            deleted = await store.delete("kube_cluster", "c")
            await store.delete("token", TOKEN)
            got = await take(events, 2)
        assert "kubeconfig" not in deleted.value["spec"]
        assert all(secret not in repr(got) for secret in OLD_SECRETS)
        assert await store.list("token") == []  # the real record is gone, not a masked one
        # a token of the same value can be created again
        await store.create("token", TOKEN, token(TOKEN), expires=START + 3600)
    finally:
        await store.aclose()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_put_over_an_expired_secret_redacts_it(backend: str, tmp_path: Path) -> None:
    clock = FakeClock()
    store = await open_backend(backend, tmp_path, clock=clock)
    try:
        await store.create("kube_cluster", "c", kube_cluster("c", OLD), expires=START + 5)
        clock.advance(10)
        await store.put("kube_cluster", "c", kube_cluster("c", NEW))  # DELETE (expired) + PUT
        async with store.watch(["kube_cluster"], since=0) as events:
            got = await take(events, 3)
        assert [e.type for e in got] == ["PUT", "DELETE", "PUT"]
        assert OLD not in repr(got) and got[2].record.value["spec"]["kubeconfig"] == NEW
    finally:
        await store.aclose()


def file_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name.startswith(db.name))


async def test_the_database_file_and_its_wal_keep_no_old_secret(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "registry.db"
    store = await SQLiteStore.open(path, clock=clock)
    try:
        await rotate_and_delete(store, clock)
        # checked while the store is open (the WAL is live) and after it closed
        raw = file_bytes(path)
        assert NEW.encode() in raw  # the test can see secrets at all
        for secret in OLD_SECRETS:
            assert secret.encode() not in raw, secret
    finally:
        await store.aclose()
    raw = file_bytes(path)
    for secret in OLD_SECRETS:
        assert secret.encode() not in raw, secret


async def test_many_rotations_leave_only_the_current_kubeconfig(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    store = await SQLiteStore.open(path)
    try:
        # large values go to overflow pages, which are freed (and must be zeroed) on every rotation
        values = [f"secret-{i:03d}-" + "x" * 6000 for i in range(20)]
        for value in values:
            await store.put("kube_cluster", "big", kube_cluster("big", value))
            await store.put("kube_server", "h/big", {"metadata": {"labels": {}}})  # noise without secrets
        raw = file_bytes(path)
        assert values[-1][:11].encode() in raw
        for value in values[:-1]:
            assert value[:11].encode() not in raw
    finally:
        await store.aclose()


async def test_a_store_written_before_redaction_is_scrubbed_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    store = await SQLiteStore.open(path)
    await store.create("kube_cluster", "c", kube_cluster("c", NEW))
    await store.create("kube_cluster", "gone", kube_cluster("gone", GONE))
    await store.delete("kube_cluster", "gone")
    await store.aclose()
    # Put the history back the way schema 1 kept it: the deleted kubeconfig and a deleted token in plain text.
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE events SET value = ? WHERE revision = 2", (json_of(kube_cluster("gone", GONE)),))
        conn.execute("UPDATE events SET value = ? WHERE revision = 3", (json_of(kube_cluster("gone", GONE)),))
        conn.execute(
            "INSERT INTO events VALUES (4, 'DELETE', 'token', ?, ?, 4, NULL, '{}')", (TOKEN, json_of(token(TOKEN)))
        )
        conn.execute("UPDATE meta SET value = 4 WHERE key = 'revision'")
        conn.execute("UPDATE meta SET value = 1 WHERE key = 'schema_version'")
    conn.close()
    assert GONE.encode() in file_bytes(path)

    store = await SQLiteStore.open(path)
    try:
        async with store.watch(["kube_cluster", "token"], since=0) as events:
            got = await take(events, 4)
        assert all(secret not in repr(got) for secret in OLD_SECRETS)
        assert got[0].record.value["spec"]["kubeconfig"] == NEW  # the live version keeps it
    finally:
        await store.aclose()
    raw = file_bytes(path)
    assert GONE.encode() not in raw and TOKEN.encode() not in raw


def json_of(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
