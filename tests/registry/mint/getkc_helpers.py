"""Shared helpers for the get_kubeconfig tests (imported as ``getkc_helpers``: pytest puts this folder on
sys.path).

The script's ``main`` is synchronous (the ``kubernetes`` client, ``time.sleep``): tests run it in a worker
thread with ``trio.to_thread.run_sync`` so the fake Kubernetes API, served in the test's own trio loop,
keeps answering. Output is captured through the ``stdout``/``stderr`` parameters of ``main``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio
import yaml

from registry.mint.cli import main
from tests.fakes.kube_api import FakeKube, RecordedRequest, serve_fake_kube

ADMIN_TOKEN = "admin-token"
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


async def start_fake(
    nursery: trio.Nursery, *, token_delay: float | None = 0.2, legacy_sa_secrets: bool = False
) -> FakeKube:
    """A fake cluster serving over TLS in ``nursery``; the token controller fills secrets after
    ``token_delay`` seconds (None = never)."""
    fake = FakeKube(admin_token=ADMIN_TOKEN, token_delay=token_delay, legacy_sa_secrets=legacy_sa_secrets)
    await nursery.start(serve_fake_kube, fake)
    return fake


def admin_kubeconfig(fake: FakeKube, directory: Path, *, token: str = ADMIN_TOKEN, name: str = "admin.yaml") -> Path:
    """The admin's own kubeconfig (context ``fake``, cluster ``fake-cluster``), written to ``directory``."""
    path = directory / name
    path.write_bytes(fake.kubeconfig_yaml(token))
    return path


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


async def run_getkc(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> Result:
    """Run the script's ``main(argv)`` in a worker thread; ``env`` None means the process environment."""
    out, err = io.StringIO(), io.StringIO()
    code = await trio.to_thread.run_sync(partial(main, list(argv), stdout=out, stderr=err, env=env))
    return Result(code, out.getvalue(), err.getvalue())


def writes(fake: FakeKube) -> list[RecordedRequest]:
    """Every request that could have changed the fake cluster."""
    return [r for r in fake.requests if r.method in WRITE_METHODS]


def load_yaml(path: Path) -> dict[str, object]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded
