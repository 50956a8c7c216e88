"""``python -m tests.fakes.kube_api``: the fake as a standalone process (benchmarks, manual walkthroughs)."""

from __future__ import annotations

import base64
import stat
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import trio
import yaml

from registry.host.tls import client_context

ROOT = Path(__file__).resolve().parents[2]


async def test_standalone_fake_serves_and_writes_an_admin_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kc.yaml"
    argv = [sys.executable, "-m", "tests.fakes.kube_api", "--admin-token", "T", "--write-kubeconfig", str(kubeconfig)]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, argv, cwd=ROOT, stdout=subprocess.PIPE, check=False)
        )
        try:
            assert process.stdout is not None
            line = b""
            with trio.fail_after(20):
                while not line.endswith(b"\n"):
                    chunk = await process.stdout.receive_some(1024)
                    assert chunk, "the fake exited before announcing its address"
                    line += chunk
            url = line.decode().split()[-1]
            assert url.startswith("https://127.0.0.1:")
            assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
            config = yaml.safe_load(kubeconfig.read_text())
            assert config["clusters"][0]["cluster"]["server"] == url
            assert config["users"][0]["user"] == {"token": "T"}
            ca = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])
            async with httpx.AsyncClient(verify=client_context([ca])) as client:
                answer = await client.get(f"{url}/version", headers={"authorization": "Bearer T"})
            assert answer.json()["gitVersion"] == "v1.30.0"
        finally:
            process.terminate()


async def test_bad_arguments_exit_2() -> None:
    argv = [sys.executable, "-m", "tests.fakes.kube_api", "--admin-token", "T", "--token-delay", "-1"]
    result = await trio.run_process(argv, cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 2
    assert b"--token-delay must be a number of seconds >= 0 or 'never'" in result.stderr
