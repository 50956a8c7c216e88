"""Local users' signup and login (registry.server.local_auth), through the real API handlers in process.

Time is the registry's injected clock (lockout, TOTP steps, token expiry) and an injected rate clock, so
nothing here sleeps. The TOTP code a test sends is the one an authenticator app shows at that time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import argon2
import pyotp
import pytest
import trio

from registry.client import RegistryClient
from registry.core import codec
from registry.core.errors import AccessDenied, BadParameter, LimitExceeded, NotFound, Unauthenticated
from registry.core.identity import CertAuthority, Identity, generate_private_key, make_csr
from registry.server.authz import Caller
from registry.server.local_auth import (
    CREDENTIALS_KIND,
    MAX_FAILURES,
    SIGNUP_KIND,
    Credentials,
    LocalAuth,
    check_new_password,
    totp_step,
)
from registry.server.ratelimit import Rate
from registry.server.service import Registry
from registry.store import SQLiteStore, _secrets
from registry.testing import InProcessRegistry


def step_now() -> float:
    """A fixed "now" 10 s into a TOTP step, at most 30 s before the real time (certificates are issued at the
    real time, backdated by the CA's clock skew allowance)."""
    t = int(time.time())
    start = t - t % 30
    return float(start + 10 if t % 30 >= 10 else start - 20)


T0 = step_now()
PASSWORD = "correct horse battery staple"
ROLE = {
    "kind": "role",
    "version": "v7",
    "metadata": {"name": "short"},
    "spec": {"options": {"max_session_ttl": "2h"}, "allow": {"kubernetes_labels": {"*": "*"}}},
}


class Clock:
    def __init__(self, now: float | None = None) -> None:
        self.now = step_now() if now is None else now

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    reg: InProcessRegistry
    clock: Clock
    rate_clock: Clock
    auth: LocalAuth

    def public(self) -> RegistryClient:
        return self.reg.client(None)

    def admin(self) -> RegistryClient:
        return self.reg.client()

    def code(self, secret: str, at: float | None = None) -> str:
        return pyotp.TOTP(secret).at(at if at is not None else self.clock.now)

    async def add_user(self, name: str = "alice", roles: tuple[str, ...] = ()) -> None:
        async with self.admin() as client:
            await client.create(
                {"kind": "user", "version": "v2", "metadata": {"name": name}, "spec": {"roles": list(roles)}}
            )

    async def signup(self, name: str = "alice", password: str = PASSWORD) -> str:
        """Create ``name``, sign up with ``password``; the TOTP secret."""
        await self.add_user(name)
        async with self.admin() as admin:
            token = (await admin.create_signup_token(name))["token"]
        async with self.public() as client:
            info = await client.signup_info(token)
            secret = pyotp.parse_uri(info["otpauth_uri"]).secret
            await client.signup(token, password, self.code(secret))
        self.clock.now += 30  # the signup code's step is used: the next login needs the next code
        return str(secret)

    async def login(self, name: str, password: str, code: str, ttl: float | None = None) -> dict[str, object]:
        key = generate_private_key()
        async with self.public() as client:
            return await client.login(name, password, code, make_csr(key, name), ttl)


CHEAP = argon2.PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)


def make_auth(reg: InProcessRegistry, rate_clock: Clock, **kwargs: object) -> LocalAuth:
    auth = LocalAuth(reg.registry, rate_clock=rate_clock, hasher=CHEAP, **kwargs)  # type: ignore[arg-type]
    reg.api.local_auth = auth
    return auth


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with InProcessRegistry.open() as reg:
        clock, rate_clock = Clock(), Clock(0.0)
        reg.registry.clock = clock
        yield Env(reg, clock, rate_clock, make_auth(reg, rate_clock))


async def audit_text(env: Env) -> str:
    records = await env.reg.store.list("audit")
    return json.dumps([r.value for r in records])


# -- pure parts ----------------------------------------------------------------------------------------


def test_totp_accepts_one_step_either_side_and_names_the_step() -> None:
    secret = pyotp.random_base32()
    totp = pyotp.TOTP(secret)
    step = int(T0) // 30
    assert totp_step(secret, totp.at(T0), T0) == step
    assert totp_step(secret, totp.at(T0 - 30), T0) == step - 1
    assert totp_step(secret, totp.at(T0 + 30), T0) == step + 1
    assert totp_step(secret, totp.at(T0 - 90), T0) is None
    for bad in ("", "12345", "1234567", "12345a", "١٢٣٤٥٦", "123 456"):  # Arabic-Indic digits are not ASCII
        assert totp_step(secret, bad, T0) is None


def test_new_password_rules() -> None:
    with pytest.raises(BadParameter, match="too short"):
        check_new_password("short")
    with pytest.raises(BadParameter, match="control characters"):
        check_new_password("long enough pass\x00word")
    with pytest.raises(BadParameter, match="too long"):
        check_new_password("x" * 5000)
    # NFKC: the composed and decomposed forms of "é" are one password.
    assert check_new_password("caf\u00e9 au lait, s'il vous") == check_new_password("cafe\u0301 au lait, s'il vous")


def test_five_failures_in_a_row_lock_for_thirty_minutes() -> None:
    creds = Credentials(password_hash="x")
    for _ in range(MAX_FAILURES - 1):
        creds = creds.after_failure(T0)
        assert not creds.locked(T0)
    creds = creds.after_failure(T0)
    assert creds.locked(T0) and creds.locked(T0 + 1799) and not creds.locked(T0 + 1800)
    assert creds.after_success(None).failures == 0


def test_the_store_keeps_no_old_credentials_or_signup_token_in_history() -> None:
    assert _secrets.has_secrets(CREDENTIALS_KIND) and _secrets.has_secrets(SIGNUP_KIND)
    assert SIGNUP_KIND in _secrets.SECRET_NAMES


# -- signup ------------------------------------------------------------------------------------------


async def test_signup_then_login_gives_a_certificate_for_the_local_key(env: Env) -> None:
    secret = await env.signup()
    answer = await env.login("alice", PASSWORD, env.code(secret))
    ca = CertAuthority.from_pem(env.reg.ca.cert_pem, env.reg.ca.key_pem)
    identity = ca.verify(str(answer["cert_pem"]).encode(), now=datetime.fromtimestamp(env.clock.now, tz=UTC))
    assert identity.name == "alice" and identity.kind == "user"
    expires = datetime.fromisoformat(str(answer["expires"]))
    assert expires - datetime.fromtimestamp(env.clock.now, tz=UTC) == timedelta(hours=12)  # the default


async def test_a_signup_token_works_once_and_for_one_hour(env: Env) -> None:
    await env.add_user("alice")
    await env.add_user("bob")
    async with env.admin() as admin:
        token = (await admin.create_signup_token("alice"))["token"]
        late = (await admin.create_signup_token("bob"))["token"]
    async with env.public() as client:
        secret = pyotp.parse_uri((await client.signup_info(token))["otpauth_uri"]).secret
        await client.signup(token, PASSWORD, env.code(secret))
        with pytest.raises(AccessDenied, match=r"used already|not valid"):
            await client.signup(token, PASSWORD, env.code(secret))
        with pytest.raises(AccessDenied, match="not valid"):
            await client.signup_info(token)
        env.clock.now += 3601
        with pytest.raises(AccessDenied, match="expired"):
            await client.signup_info(late)


async def test_signup_refuses_a_short_password_and_a_wrong_code_and_keeps_the_token(env: Env) -> None:
    await env.add_user("alice")
    async with env.admin() as admin:
        token = (await admin.create_signup_token("alice"))["token"]
    async with env.public() as client:
        secret = pyotp.parse_uri((await client.signup_info(token))["otpauth_uri"]).secret
        with pytest.raises(BadParameter, match="too short"):
            await client.signup(token, "short", env.code(secret))
        with pytest.raises(BadParameter, match="control characters"):
            await client.signup(token, "a long password\x07 with a bell", env.code(secret))
        with pytest.raises(AccessDenied, match="one-time code"):
            await client.signup(token, PASSWORD, "000000" if env.code(secret) != "000000" else "111111")
        await client.signup(token, PASSWORD, env.code(secret))  # the token survived the mistakes


async def test_reset_drops_the_password_and_older_tokens(env: Env) -> None:
    secret = await env.signup()
    async with env.admin() as admin:
        first = (await admin.create_signup_token("alice"))["token"]
        second = (await admin.create_signup_token("alice"))["token"]
    async with env.public() as client:
        with pytest.raises(AccessDenied):
            await client.signup_info(first)
        await client.signup_info(second)
    with pytest.raises(Unauthenticated, match="login failed"):
        await env.login("alice", PASSWORD, env.code(secret))


async def test_a_deleted_user_created_again_does_not_inherit_the_old_password(env: Env) -> None:
    secret = await env.signup()
    async with env.admin() as admin:
        await admin.delete("user", "alice")
    await env.add_user("alice")
    with pytest.raises(Unauthenticated, match="login failed"):
        await env.login("alice", PASSWORD, env.code(secret))


async def test_credentials_are_never_listed_or_shown(env: Env) -> None:
    await env.signup()
    async with env.admin() as admin:
        for kind in (CREDENTIALS_KIND, SIGNUP_KIND):
            with pytest.raises(NotFound):
                await admin.list(kind)
            with pytest.raises(NotFound):
                await admin.get(kind, "alice")


# -- login -------------------------------------------------------------------------------------------


async def test_wrong_password_wrong_code_and_replayed_code_fail_alike(env: Env) -> None:
    secret = await env.signup()
    good = env.code(secret)
    with pytest.raises(Unauthenticated, match="login failed"):
        await env.login("alice", "wrong password here", good)
    wrong = "123456" if good != "123456" else "654321"
    with pytest.raises(Unauthenticated, match="login failed"):
        await env.login("alice", PASSWORD, wrong)
    with pytest.raises(Unauthenticated, match="login failed"):
        await env.login("nobody", PASSWORD, good)
    await env.login("alice", PASSWORD, good)
    with pytest.raises(Unauthenticated, match="login failed"):  # the same code again: a replay
        await env.login("alice", PASSWORD, good)
    env.clock.now += 30
    await env.login("alice", PASSWORD, env.code(secret))  # the next step's code works


async def test_lockout_after_five_failures_even_for_the_right_password_until_it_ends(env: Env) -> None:
    secret = await env.signup()
    for attempt in range(1, MAX_FAILURES + 1):
        env.rate_clock.now += 60  # stay under the rate limit: this tests the lockout
        if attempt < MAX_FAILURES:
            with pytest.raises(Unauthenticated):
                await env.login("alice", "not the password", env.code(secret))
        else:
            with pytest.raises(AccessDenied, match=r'user "alice" is locked until .* after 5 failed logins'):
                await env.login("alice", "not the password", env.code(secret))
    env.rate_clock.now += 60
    with pytest.raises(AccessDenied, match="is locked until"):
        await env.login("alice", PASSWORD, env.code(secret))
    env.clock.now += 30 * 60 + 1
    env.rate_clock.now += 60
    await env.login("alice", PASSWORD, env.code(secret))
    events = [r.value for r in await env.reg.store.list("audit") if r.value.get("event") == "user.login"]
    assert [e["success"] for e in events] == [False] * 6 + [True]
    assert {e.get("error") for e in events[:-1]} == {"wrong password", "locked"}


async def test_login_attempts_are_rate_limited_per_user_and_per_source(env: Env) -> None:
    make_auth(
        env.reg,
        env.rate_clock,
        rates={"login-user": Rate(per_second=0.1, burst=2), "login-source": Rate(per_second=0.1, burst=4)},
    )
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await env.login("alice", PASSWORD, "123456")
    with pytest.raises(LimitExceeded, match="retry in"):
        await env.login("alice", PASSWORD, "123456")  # per user (a refused attempt still costs the source)
    with pytest.raises(Unauthenticated):
        await env.login("bob", PASSWORD, "123456")  # another user: the source's fourth
    with pytest.raises(LimitExceeded):
        await env.login("carol", PASSWORD, "123456")  # per source
    env.rate_clock.now += 30
    with pytest.raises(Unauthenticated):
        await env.login("alice", PASSWORD, "123456")  # refilled


async def test_ttl_default_cap_by_roles_and_request(env: Env) -> None:
    async with env.admin() as admin:
        await admin.create(ROLE)
    await env.add_user("bob", ("short",))
    async with env.admin() as admin:
        token = (await admin.create_signup_token("bob"))["token"]
    async with env.public() as client:
        secret = pyotp.parse_uri((await client.signup_info(token))["otpauth_uri"]).secret
        await client.signup(token, PASSWORD, env.code(secret))
    now = datetime.fromtimestamp(env.clock.now, tz=UTC)
    env.clock.now += 30
    answer = await env.login("bob", PASSWORD, env.code(secret))
    assert datetime.fromisoformat(str(answer["expires"])) - now <= timedelta(hours=2, seconds=30)
    assert answer["roles"] == ["short"]
    env.clock.now += 30
    answer = await env.login("bob", PASSWORD, env.code(secret), ttl=600)
    assert datetime.fromisoformat(str(answer["expires"])) - datetime.fromtimestamp(env.clock.now, tz=UTC) == (
        timedelta(minutes=10)
    )


@pytest.mark.parametrize(
    "password",
    ["pässwörd-ünïcödé-🔑", "пароль-очень-длинный", " leading and trailing spaces ", "密码密码密码密码密码密码"],
)
async def test_unicode_passwords_round_trip(env: Env, password: str) -> None:
    secret = await env.signup(password=password)
    await env.login("alice", password, env.code(secret))


async def test_hostile_login_bodies_are_refused_with_a_status(env: Env) -> None:
    async with env.public() as client:
        for body in (
            {"user": "alice"},
            {"user": "alice", "password": 5, "csr_pem": "x"},
            {"user": "a" * 1000, "password": "p", "csr_pem": "x"},
            {"user": "alice", "password": "p" * 10_000, "csr_pem": "x"},
            {"user": "alice", "password": "p", "csr_pem": "x", "ttl_seconds": -1},
            {"user": "alice", "password": "p", "csr_pem": "x", "ttl_seconds": "1e309"},
        ):
            with pytest.raises(BadParameter):
                await client._request("POST", "/v1/login", body=body)
        with pytest.raises(BadParameter):
            await client._request("POST", "/v1/login", body=["not", "an", "object"])


async def test_a_malformed_csr_does_not_burn_the_code(env: Env) -> None:
    secret = await env.signup()
    async with env.public() as client:
        with pytest.raises(BadParameter):
            await client.login("alice", PASSWORD, env.code(secret), b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n")
    await env.login("alice", PASSWORD, env.code(secret))


async def test_second_factor_off_needs_no_code(env: Env) -> None:
    make_auth(env.reg, env.rate_clock, second_factor="off")
    await env.add_user("alice")
    async with env.admin() as admin:
        token = (await admin.create_signup_token("alice"))["token"]
        assert (await admin.ping())["second_factor"] == "off"
    async with env.public() as client:
        info = await client.signup_info(token)
        assert info["second_factor"] == "off" and "otpauth_uri" not in info
        await client.signup(token, PASSWORD, "")
    await env.login("alice", PASSWORD, "")


async def test_no_secret_reaches_the_audit_log_or_the_logs(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await env.add_user("alice")
    async with env.admin() as admin:
        token = (await admin.create_signup_token("alice"))["token"]
    async with env.public() as client:
        secret = pyotp.parse_uri((await client.signup_info(token))["otpauth_uri"]).secret
        code = env.code(secret)
        await client.signup(token, PASSWORD, code)
    env.clock.now += 30
    with pytest.raises(Unauthenticated):
        await env.login("alice", "the wrong password x", env.code(secret))
    await env.login("alice", PASSWORD, env.code(secret))
    audit = await audit_text(env)
    assert '"user.login"' in audit and '"user.signup"' in audit
    creds = (await env.reg.store.get(CREDENTIALS_KIND, "alice")).value
    for needle in (PASSWORD, "the wrong password x", token, secret, str(creds["password_hash"]), code):
        assert needle not in audit
        assert needle not in caplog.text


def database_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.name.startswith("registry.db"))


async def test_history_and_the_database_file_keep_no_superseded_hash_secret_or_token(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "registry.db")
    try:
        clock = Clock()
        registry = Registry(store, CertAuthority.generate("c", now=datetime.now(tz=UTC)), cluster_name="c", clock=clock)
        auth = LocalAuth(registry, hasher=CHEAP, rate_clock=Clock(0.0))
        admin = Caller(identity=Identity(name="admin", kind="admin", roles=("admin",)))
        await registry.create(
            admin, codec.resource_from_dict({"kind": "user", "version": "v2", "metadata": {"name": "alice"}})
        )
        old: list[str] = []
        for _ in range(2):  # sign up, then reset and sign up again
            token = (await auth.create_signup_token(admin, "alice"))["token"]
            info = await auth.signup_info({"token": token}, "127.0.0.1:1")
            secret = str(pyotp.parse_uri(info["otpauth_uri"]).secret)
            await auth.signup(
                {"token": token, "password": PASSWORD, "totp_code": pyotp.TOTP(secret).at(clock.now)}, "127.0.0.1:1"
            )
            clock.now += 30
            creds = (await store.get(CREDENTIALS_KIND, "alice")).value
            old += [token, secret, str(creds["password_hash"])]
        current_record = await store.get(CREDENTIALS_KIND, "alice")
        current = current_record.value
        superseded = [s for s in old if s not in (current["password_hash"], current["totp_secret"])]
        history: list[str] = []
        with trio.fail_after(5):
            async with store.watch([CREDENTIALS_KIND, SIGNUP_KIND], since=0) as events:
                async for event in events:
                    history.append(json.dumps([event.record.name, event.record.value]))
                    if event.record.revision >= current_record.revision:  # the last change of these kinds
                        break
        data = database_bytes(tmp_path)
        for value in superseded:
            assert not any(value in line for line in history), value
            assert value.encode() not in data, value
    finally:
        await store.aclose()
