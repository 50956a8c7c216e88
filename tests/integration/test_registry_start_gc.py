"""``kubeport registry start`` freezes what its start loaded once it serves (gc.freeze), so the registry's
full collections no longer scan it (their pauses were the 100-watcher watch p99's tail)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import trio

from registry.cli import kubeport_main
from registry.host.cmdline import parse_command_line


async def test_registry_start_freezes_the_collector_once_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen = trio.Event()
    serving: list[bool] = []

    def freeze() -> None:  # recorded instead of freezing the test process
        serving.append(any((tmp_path / "d").iterdir()))
        frozen.set()

    monkeypatch.setattr(gc, "freeze", freeze)
    args = parse_command_line(
        kubeport_main.build_parser(),
        [
            "--data-dir",
            str(tmp_path / "d"),
            "registry",
            "start",
            "--listen",
            "127.0.0.1:0",
            "--kube-listen",
            "127.0.0.1:0",
        ],
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(kubeport_main.cmd_registry_start, args)
        with trio.fail_after(30):
            await frozen.wait()
        nursery.cancel_scope.cancel()
    assert serving == [True]  # once, after the start wrote its data dir (the CA, the admin identity)
