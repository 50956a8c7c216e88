"""The registry's watch and audit log keep no replaced or deleted secret (issue 7, section 8, second item).

Through the service layer over a real SQLite file: a watcher that saw a kubeconfig live (so its encoded line
was cached) and a later ``watch?revision=0&with_secrets=1`` replay after a rotation and deletes; then the
raw database bytes, WAL included.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from registry.core import codec
from registry.core.identity import CertAuthority, Identity
from registry.server.authz import Caller
from registry.server.service import Registry
from registry.store import SQLiteStore
from tests.helpers import cluster_doc, kubeconfig_bytes

ADMIN = Caller(identity=Identity("admin", "admin"))
OLD_KUBECONFIG = kubeconfig_bytes(token="old-bearer-token-rotated-away")
NEW_KUBECONFIG = kubeconfig_bytes(token="new-bearer-token-current")
GONE_KUBECONFIG = kubeconfig_bytes(token="bearer-token-of-a-deleted-cluster")


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    store = await SQLiteStore.open(tmp_path / "registry.db")
    ca = CertAuthority.generate("test-cluster", now=datetime.now(tz=UTC))
    yield Registry(store, ca, cluster_name="test-cluster")
    await store.aclose()


async def replay(registry: Registry, since: int, count: int) -> list[bytes]:
    lines: list[bytes] = []
    with trio.fail_after(5):
        async with registry.store.watch(["kube_cluster"], since=since) as events:
            async for event in events:
                lines.append(registry.event_line(event.type, event.record, with_secrets=True))
                if len(lines) == count:
                    break
    return lines


def cluster(name: str, kubeconfig: bytes) -> Any:
    return codec.resource_from_dict(cluster_doc(name, kubeconfig, {"env": "prod"}))


def secrets_of(kubeconfig: bytes) -> list[bytes]:
    """The kubeconfig as stored (base64), and its bearer token as it appears in base64 at any alignment."""
    token = next(line.split(b": ")[1] for line in kubeconfig.splitlines() if b"token: " in line)
    fragments = [base64.b64encode(kubeconfig)]
    for offset in range(3):  # the token's bytes start at one of three positions within a base64 quantum
        encoded = base64.b64encode(b"\0" * offset + token)
        fragments.append(encoded[4:-4])
    return fragments


def database_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.name.startswith("registry.db"))


async def test_a_replay_with_secrets_shows_only_current_kubeconfigs(registry: Registry, tmp_path: Path) -> None:
    await registry.create(ADMIN, cluster("rotated", OLD_KUBECONFIG))
    await registry.create(ADMIN, cluster("deleted", GONE_KUBECONFIG))
    live = await replay(registry, 0, 2)  # a watcher saw both while current: their lines are cached
    assert base64.b64encode(OLD_KUBECONFIG) in b"".join(live)

    await registry.update(ADMIN, cluster("rotated", NEW_KUBECONFIG))
    await registry.delete(ADMIN, "kube_cluster", "deleted")
    token = await registry.generate_token(ADMIN, roles=("Kube",), ttl=timedelta(hours=1))
    value = str(token["metadata"]["name"])
    await registry.delete(ADMIN, "token", value)

    lines = b"".join(await replay(registry, 0, 4))
    for secret in [*secrets_of(OLD_KUBECONFIG), *secrets_of(GONE_KUBECONFIG)]:
        assert secret not in lines
    assert base64.b64encode(NEW_KUBECONFIG) in lines  # the current version is still served with secrets

    raw = database_bytes(tmp_path)
    assert base64.b64encode(NEW_KUBECONFIG) in raw
    assert any(fragment in raw for fragment in secrets_of(NEW_KUBECONFIG)[1:])  # the search can find a token
    for secret in [*secrets_of(OLD_KUBECONFIG), *secrets_of(GONE_KUBECONFIG), value.encode(), value[4:].encode()]:
        assert secret not in raw
    events, _ = await registry.events(ADMIN, event="token.delete")
    assert events and value not in repr(events)
