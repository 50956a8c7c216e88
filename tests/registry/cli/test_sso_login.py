"""``run_sso_login`` (``kubeport login --auth=NAME``) end to end: a real registry, the fake provider, and the
test playing the browser with httpx (it follows the printed URL to the provider, which redirects to the
login's loopback listener)."""

from __future__ import annotations

import argparse
import contextlib
import io
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from registry.cli.login_common import first_contact
from registry.cli.profile import KubeportHome, login_hint
from registry.cli.sso_login import run_sso_login
from registry.client import RegistryClient
from registry.core.errors import AccessDenied, BadParameter, Timeout
from registry.server.serve import RegistryInfo
from tests.fakes.oidc import FakeOIDCProvider
from tests.registry.oidc_helpers import CONNECTOR, set_up, started_provider


@pytest.fixture
async def provider(nursery: trio.Nursery) -> FakeOIDCProvider:
    return await started_provider(nursery)


def args(**extra: Any) -> argparse.Namespace:
    return argparse.Namespace(auth=CONNECTOR, browser="none", **extra)


async def login_with_browser(
    info: RegistryInfo, home: KubeportHome, *, before_callback: Any = None, **extra: Any
) -> tuple[int, str]:
    """Run the login while a task plays the browser; returns (exit code, what the login printed)."""
    contact = await first_contact([info.address], err=io.StringIO())
    send, receive = trio.open_memory_channel[str](1)
    out = io.StringIO()
    result: list[int] = []
    failed: list[Exception] = []

    async def browser() -> None:
        url = await receive.receive()
        async with httpx.AsyncClient() as http:
            first = await http.get(url)  # the provider's 302 to the loopback listener
            callback = first.headers["location"]
            if before_callback is not None:
                await before_callback(http, callback)
            page = await http.get(callback)
        assert page.status_code == 200 and "return to the terminal" in page.text

    async def login() -> None:
        try:
            result.append(await run_sso_login(args(**extra), home, contact, on_url=send.send_nowait, out=out))
        except Exception as exc:  # re-raised below, outside the nursery's exception group
            failed.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(browser)
        nursery.start_soon(login)
    if failed:
        raise failed[0]
    return result[0], out.getvalue()


async def test_sso_login_saves_a_working_login(
    registry: RegistryInfo, provider: FakeOIDCProvider, tmp_path: Path
) -> None:
    await set_up(registry, provider)
    home = KubeportHome(tmp_path / "home")
    code, printed = await login_with_browser(registry, home)
    assert code == 0
    assert "alice@example.com" in printed and "dev" in printed
    login = home.load()
    assert login.profile.user == "alice@example.com" and login.profile.auth == CONNECTOR
    assert login_hint(login.profile).endswith(f"--auth={CONNECTOR}")
    assert login.expires > datetime.now(tz=UTC)
    assert stat.S_IMODE(login.identity_path.stat().st_mode) == 0o600
    # The saved identity works: whoami as the SSO user with its mapped role.
    async with RegistryClient.from_identity(login.identity, registry.address) as me:
        whoami = await me.whoami()
    assert whoami["name"] == "alice@example.com" and whoami["roles"] == ["dev"]
    # The key was generated here: the private key is in the saved identity, never in the registry's audit.
    async with RegistryClient.from_identity_file(registry.admin_identity) as admin:
        assert "PRIVATE KEY" not in str(await admin.events(limit=1000))


async def test_a_callback_with_another_state_is_ignored(
    registry: RegistryInfo, provider: FakeOIDCProvider, tmp_path: Path
) -> None:
    await set_up(registry, provider)

    async def forged_first(http: httpx.AsyncClient, callback: str) -> None:
        port = int(callback.split(":")[2].split("/", maxsplit=1)[0])
        async with await trio.open_tcp_stream("127.0.0.1", port) as raw:  # a huge, hostile request head
            await raw.send_all(b"GET /" + b"A" * 40_000 + b" HTTP/1.1\r\n\r\n")
            with trio.fail_after(10), contextlib.suppress(trio.BrokenResourceError):
                while await raw.receive_some():  # the listener drops it (a close or a reset), never answers
                    pass
        forged = callback.replace("state=", "state=forged")
        assert (await http.get(forged)).status_code == 400  # not this login's: refused, login still waits
        no_path = callback.split("?", maxsplit=1)[0].replace("/callback", "/other")
        assert (await http.get(no_path)).status_code == 400

    code, _ = await login_with_browser(registry, KubeportHome(tmp_path / "home"), before_callback=forged_first)
    assert code == 0


async def test_no_callback_times_out_clearly(
    registry: RegistryInfo, provider: FakeOIDCProvider, tmp_path: Path
) -> None:
    await set_up(registry, provider)
    contact = await first_contact([registry.address], err=io.StringIO())
    home = KubeportHome(tmp_path / "home")
    with pytest.raises(Timeout, match="timed out"):
        await run_sso_login(args(sso_timeout=0.5), home, contact, out=io.StringIO())
    assert home.profiles() == []


async def test_the_provider_refusing_is_reported(
    registry: RegistryInfo, provider: FakeOIDCProvider, tmp_path: Path
) -> None:
    await set_up(registry, provider)
    provider.fault = "deny"
    contact = await first_contact([registry.address], err=io.StringIO())
    home = KubeportHome(tmp_path / "home")

    async def browser(url: str) -> None:
        async with httpx.AsyncClient(follow_redirects=True) as http:
            await http.get(url)

    async with trio.open_nursery() as nursery:
        with pytest.raises(AccessDenied, match="access_denied"):
            await run_sso_login(
                args(), home, contact, on_url=lambda url: nursery.start_soon(browser, url), out=io.StringIO()
            )
    assert home.profiles() == []


async def test_no_roles_is_refused_and_nothing_saved(
    registry: RegistryInfo, provider: FakeOIDCProvider, tmp_path: Path
) -> None:
    provider.claims["groups"] = ["nobody"]
    await set_up(registry, provider)
    home = KubeportHome(tmp_path / "home")
    with pytest.raises(AccessDenied, match="no roles"):
        await login_with_browser(registry, home)
    assert home.profiles() == []


async def test_ttl_is_passed_and_capped(registry: RegistryInfo, provider: FakeOIDCProvider, tmp_path: Path) -> None:
    await set_up(registry, provider)
    home = KubeportHome(tmp_path / "home")
    code, _ = await login_with_browser(registry, home, ttl="2h")
    assert code == 0
    remaining = home.load().expires - datetime.now(tz=UTC)
    assert timedelta(hours=1, minutes=58) < remaining <= timedelta(hours=2)


@pytest.mark.parametrize("ttl", ["soon", [1], "-1h"])
async def test_a_bad_ttl_is_one_clear_error(
    registry: RegistryInfo, provider: FakeOIDCProvider, tmp_path: Path, ttl: object
) -> None:
    await set_up(registry, provider)
    contact = await first_contact([registry.address], err=io.StringIO())
    with pytest.raises(BadParameter):
        await run_sso_login(args(ttl=ttl), KubeportHome(tmp_path / "home"), contact, out=io.StringIO())
