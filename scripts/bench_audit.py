"""Audit write throughput (issue 9 §7): agent ``kube.request`` events written one store write per event (the
old path) versus one ``create_many`` per reported batch (``Registry.record_agent_events`` now), on the
durable SQLite store (WAL, ``synchronous=FULL``: one fsync per commit).

    python scripts/bench_audit.py [--events 1000] [--batch 500]

Prints events per second for both, each on a fresh store in a temporary directory on this machine's disk.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Importing benchlib puts the repository root on sys.path, for the registry imports below.
import benchlib  # noqa: F401
import trio

from registry.core.identity import CertAuthority, Identity
from registry.server.authz import Caller
from registry.server.service import AUDIT_KIND, Registry
from registry.store import SQLiteStore

AGENT = Caller(identity=Identity(name="node-h1", kind="agent", roles=("Kube",), host_id="h1"))


def event(n: int) -> dict[str, Any]:
    return {
        "event": "kube.request",
        "user": "alice",
        "cluster": "mycluster",
        "method": "GET",
        "path": f"/api/v1/namespaces/default/pods/web-{n}",
        "verb": "get",
        "resource": "pods",
        "namespace": "default",
        "status": 200,
        "duration_ms": 3,
    }


async def run(directory: Path, events: int, batch: int | None) -> float:
    store = await SQLiteStore.open(directory / "store.db")
    registry = Registry(store, CertAuthority.generate("bench", now=datetime.now(tz=UTC)), cluster_name="bench")
    items = [event(n) for n in range(events)]
    started = time.perf_counter()
    if batch is None:  # the old path: one store write (one commit, one fsync) per event
        for item in items:
            fields = dict(item)
            await registry.audit(fields.pop("event"), None, reported_by="h1", **fields)
    else:
        for start in range(0, events, batch):
            await registry.record_agent_events(AGENT, items[start : start + batch])
    elapsed = time.perf_counter() - started
    assert await store.count(AUDIT_KIND) == events
    await store.aclose()
    return events / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as many:
        single = await run(Path(one), args.events, None)
        batched = await run(Path(many), args.events, args.batch)
    print(f"| audit writes ({args.events} kube.request events, SQLite) | events/s |")
    print("|---|---|")
    print(f"| one store write per event | {single:,.0f} |")
    print(f"| create_many per batch of {args.batch} | {batched:,.0f} |")
    print(f"| ratio | {batched / single:.1f}x |")


if __name__ == "__main__":
    trio.run(main)
