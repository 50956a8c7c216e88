"""Local users' own credentials: signup tokens, password + TOTP enrollment, and login to a certificate.

Flow (issue 10 §1, Teleport's local users):

* An admin creates the user (``kpctl users add``), then asks for a signup token (``POST /v1/users/NAME/signup``,
  also what ``kpctl users reset`` does). The token is single use and lives :data:`SIGNUP_TTL`; it carries the
  TOTP secret to enroll, so asking for the signup details twice shows the same secret.
* ``kubeport signup`` reads the details (``POST /v1/signup/info``: user, otpauth URI, password policy), then
  finishes (``POST /v1/signup``) with a password and one code from the new authenticator. The token is
  consumed by one atomic delete, so two concurrent signups cannot both win.
* ``kubeport login`` sends user, password, code and a CSR (``POST /v1/login``) and gets a certificate for the
  key the client generated: :data:`DEFAULT_LOGIN_TTL` unless asked otherwise, capped by the roles'
  ``max_session_ttl`` and by :data:`registry.core.identity.USER_TTL`.

Invariants:

* Secrets never leave here: passwords are hashed with argon2id (argon2-cffi) and never stored, logged or
  audited; the stored hash, the TOTP secret and the failure counters live in the internal kind
  :data:`CREDENTIALS_KIND`, which no API route lists or shows, and the store keeps no old version of it in
  history (``registry.store._secrets``). Signup tokens are record *names* of :data:`SIGNUP_KIND`, masked in
  history the same way as join tokens and in the audit log.
* Passwords are compared in their NFKC form (what a user types on another keyboard or OS may differ in
  composition); control characters are refused at signup; length is bounded both ways.
* A TOTP code is accepted for the current 30 s step or one step either side (clock skew), and never twice:
  the step of the last accepted code is stored, and a code of that step or an earlier one fails (replay).
* :data:`MAX_FAILURES` failures in a row (wrong password or wrong code) lock the user for :data:`LOCKOUT`;
  while locked, every attempt fails, the right password too, with a message naming the lock and its end.
  A success resets the count. Unknown users cost the same argon2 work as known ones, so timing does not
  tell which names exist, and fail with the same message.
* Attempts are rate-limited per user and per source (:data:`DEFAULT_LOGIN_RATES`; 429 with Retry-After);
  every attempt is audited (``user.login``, ``user.signup``), without password, code or token.
* The second factor is on by default; ``second_factor="off"`` (a lab setting, ``--second-factor=off`` on
  ``kubeport start``) makes signup enroll none and login ignore the code; the registry warns at start.
* Deleting a user forgets its credentials and pending signup tokens (:meth:`LocalAuth.forget_user`), so a
  user created again with the same name does not inherit the old password.

Argon2 hashing runs in worker threads, at most :data:`HASH_THREADS` at a time, so a flood of logins costs
bounded CPU and memory and never blocks the event loop. Time comes from the registry's injected clock
(lockout, TOTP, token expiry) and the injected ``rate_clock`` (rate limits), so tests drive both.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import argon2
import pyotp
import trio

from registry.core import codec
from registry.core.errors import (
    AccessDenied,
    AlreadyExists,
    BadParameter,
    CompareFailed,
    LimitExceeded,
    NotFound,
    Unauthenticated,
)
from registry.core.identity import USER_TTL, Identity
from registry.core.resources import User, mask_token, max_session_ttl
from registry.core.timefmt import format_rfc3339
from registry.server import authz
from registry.server.admission import source_of_client
from registry.server.ratelimit import Rate, RateLimiter

if TYPE_CHECKING:
    from registry.server.authz import Caller
    from registry.server.service import Registry

CREDENTIALS_KIND = "local_credentials"  # internal: never listed or shown by any route
SIGNUP_KIND = "signup_token"  # internal: the record name is the token value
SIGNUP_TTL = timedelta(hours=1)
DEFAULT_LOGIN_TTL = timedelta(hours=12)
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024
MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=30)
TOTP_STEP = 30  # seconds (RFC 6238's default, what every authenticator app uses)
TOTP_DIGITS = 6
TOTP_WINDOW = 1  # steps accepted either side of now (clock skew)
HASH_THREADS = 2
MAX_CAS_RETRIES = 8
SecondFactor = Literal["otp", "off"]
SECOND_FACTORS: tuple[str, ...] = ("otp", "off")
SECOND_FACTOR_OFF_WARNING = (
    "second factor is OFF (--second-factor=off): local users log in with a password alone; use this only in a lab"
)
LOGIN_FAILED = "login failed: wrong user name, password or one-time code"
# Per user and per source (token buckets; ``registry.server.ratelimit``). Lockout stops guessing of one
# user after 5 tries; these stop a source from sweeping many users and keep a locked user from costing
# argon2 work at will.
DEFAULT_LOGIN_RATES: dict[str, Rate] = {
    "login-user": Rate(per_second=1 / 6, burst=10),
    "login-source": Rate(per_second=0.5, burst=20),
}


# -- pure parts ------------------------------------------------------------------------------------------


def normalize_password(password: str) -> str:
    """The form passwords are hashed and compared in (NFKC, as NIST SP 800-63B suggests)."""
    return unicodedata.normalize("NFKC", password)


def check_new_password(password: str) -> str:
    """A new password as it will be hashed, or BadParameter saying which rule it breaks (never echoing it)."""
    normalized = normalize_password(password)
    if any(unicodedata.category(ch) == "Cc" for ch in normalized):
        raise BadParameter("the password must not contain control characters")
    if len(normalized) < MIN_PASSWORD_CHARS:
        raise BadParameter(f"the password is too short: use at least {MIN_PASSWORD_CHARS} characters")
    if len(normalized) > MAX_PASSWORD_CHARS:
        raise BadParameter(f"the password is too long: use at most {MAX_PASSWORD_CHARS} characters")
    return normalized


def totp_step(secret: str, code: str, now: float) -> int | None:
    """The time step (``now // 30`` ± :data:`TOTP_WINDOW`) whose code is ``code``, or None.

    Every candidate is compared in constant time, so the answer time does not depend on which one matched."""
    if not secret or len(code) != TOTP_DIGITS or not code.isascii() or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP)
    current = int(now) // TOTP_STEP
    found: int | None = None
    for step in range(current - TOTP_WINDOW, current + TOTP_WINDOW + 1):
        if hmac.compare_digest(totp.generate_otp(step), code) and found is None:
            found = step
    return found


def otpauth_uri(secret: str, user: str, issuer: str) -> str:
    """The ``otpauth://`` URI authenticator apps read (as text or as a QR code)."""
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP).provisioning_uri(name=user, issuer_name=issuer)


@dataclass(frozen=True)
class Credentials:
    """What :data:`CREDENTIALS_KIND` stores for one user."""

    password_hash: str
    totp_secret: str = ""  # "" when enrolled with the second factor off
    failures: int = 0  # failed logins in a row
    locked_until: float = 0.0  # epoch seconds; 0 when not locked
    last_totp_step: int = -1  # the step of the last accepted code (replay guard)

    @classmethod
    def from_value(cls, value: Mapping[str, Any]) -> Credentials:
        try:
            return cls(
                password_hash=str(value["password_hash"]),
                totp_secret=str(value.get("totp_secret", "")),
                failures=int(value.get("failures", 0)),
                locked_until=float(value.get("locked_until", 0.0)),
                last_totp_step=int(value.get("last_totp_step", -1)),
            )
        except (KeyError, TypeError, ValueError):
            # A damaged record is treated as no credentials: the admin resets the user.
            raise NotFound("stored credentials are unreadable") from None

    def to_value(self) -> dict[str, Any]:
        return asdict(self)

    def locked(self, now: float) -> bool:
        return self.locked_until > now

    def after_failure(self, now: float) -> Credentials:
        """One more failure in a row; the :data:`MAX_FAILURES`-th locks the user for :data:`LOCKOUT`."""
        failures = self.failures + 1
        if failures >= MAX_FAILURES:
            return replace(self, failures=0, locked_until=now + LOCKOUT.total_seconds())
        return replace(self, failures=failures)

    def after_success(self, step: int | None) -> Credentials:
        return replace(
            self, failures=0, locked_until=0.0, last_totp_step=step if step is not None else self.last_totp_step
        )


def lock_message(user: str, locked_until: float) -> str:
    until = format_rfc3339(datetime.fromtimestamp(locked_until, tz=UTC))
    return (
        f'user "{user}" is locked until {until} after {MAX_FAILURES} failed logins in a row; try again then, '
        "or ask an admin to reset it (kpctl users reset)"
    )


def _str_field(body: Mapping[str, Any], key: str, *, limit: int, required: bool = True) -> str:
    value = body.get(key, "" if not required else None)
    if not isinstance(value, str) or (required and not value):
        raise BadParameter(f"request body field {key!r} must be a non-empty string")
    if len(value) > limit:
        raise BadParameter(f"request body field {key!r} is longer than {limit} characters")
    return value


# -- the service -----------------------------------------------------------------------------------------


class LocalAuth:
    """Signup and login of local users, over the registry's store, CA and audit log (module docstring)."""

    def __init__(
        self,
        registry: Registry,
        *,
        second_factor: str = "otp",
        rates: Mapping[str, Rate] | None = None,
        rate_clock: Callable[[], float] = time.monotonic,
        hasher: argon2.PasswordHasher | None = None,
    ) -> None:
        if second_factor not in SECOND_FACTORS:
            raise BadParameter(f"second factor must be one of {', '.join(SECOND_FACTORS)} (got {second_factor!r})")
        self.registry = registry
        self.second_factor = second_factor
        self.limiter = RateLimiter(DEFAULT_LOGIN_RATES if rates is None else rates, clock=rate_clock)
        self.hasher = hasher or argon2.PasswordHasher()
        self._hash_limiter = trio.CapacityLimiter(HASH_THREADS)
        self._dummy_hash: str | None = None
        registry.on_user_deleted.append(self.forget_user)
        registry.second_factor = second_factor

    @property
    def otp_required(self) -> bool:
        return self.second_factor != "off"

    def _now(self) -> float:
        return float(self.registry.clock())

    # -- hashing (in threads) ------------------------------------------------------------------------

    async def _hash(self, password: str) -> str:
        return await trio.to_thread.run_sync(self.hasher.hash, password, limiter=self._hash_limiter)

    async def _verify(self, password_hash: str, password: str) -> bool:
        def verify() -> bool:
            try:
                return self.hasher.verify(password_hash, password)
            except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
                return False

        return await trio.to_thread.run_sync(verify, limiter=self._hash_limiter)

    async def _burn(self, password: str) -> None:
        """The argon2 work of a verification, for a user without credentials (timing must not tell)."""
        if self._dummy_hash is None:
            self._dummy_hash = await self._hash(secrets.token_urlsafe(16))
        await self._verify(self._dummy_hash, password)

    # -- signup tokens -------------------------------------------------------------------------------

    async def create_signup_token(self, caller: Caller, user: str) -> dict[str, Any]:
        """A new single-use signup token for an existing user (``kpctl users add`` / ``reset``): the
        user's earlier tokens and current credentials are dropped, so only the newest token works."""
        authz.check(caller, "user", "update")
        try:
            await self.registry.store.get("user", user)
        except NotFound:
            raise NotFound(f'user "{user}" not found; create it first with kpctl users add') from None
        await self.forget_user(user)
        token = secrets.token_hex(16)
        expires = self._now() + SIGNUP_TTL.total_seconds()
        value = {
            "user": user,
            "totp_secret": pyotp.random_base32() if self.otp_required else "",
            "expires": expires,
        }
        await self.registry.store.create(SIGNUP_KIND, token, value, expires=expires)
        await self.registry.audit("user.signup_token.create", caller, name=user, token=mask_token(token))
        return {"token": token, "user": user, "expires": _rfc3339(expires)}

    async def forget_user(self, user: str) -> None:
        """Drop ``user``'s credentials and pending signup tokens (reset, delete)."""
        with contextlib.suppress(NotFound):
            await self.registry.store.delete(CREDENTIALS_KIND, user)
        for record in await self.registry.store.list(SIGNUP_KIND):
            if record.value.get("user") == user:
                with contextlib.suppress(NotFound):
                    await self.registry.store.delete(SIGNUP_KIND, record.name)

    async def _signup_record(self, token: str, client: str) -> tuple[dict[str, Any], int]:
        try:
            record = await self.registry.store.get(SIGNUP_KIND, token)
        except NotFound:
            record = None
        if record is None or float(record.value.get("expires", 0)) <= self._now():
            await self.registry.audit_failure(
                "user.signup", client=client, reason="unknown, used or expired signup token", token=mask_token(token)
            )
            raise AccessDenied(
                "the signup token is not valid: it was used already, expired (tokens last 1 hour) or never existed; "
                "ask an admin for a new one (kpctl users reset NAME)"
            )
        return dict(record.value), record.revision

    async def signup_info(self, body: Mapping[str, Any], client: str) -> dict[str, Any]:
        """What ``kubeport signup`` shows before asking for a password: the user and what to enroll."""
        token = _str_field(body, "token", limit=256)
        value, _ = await self._signup_record(token, client)
        user = str(value["user"])
        answer: dict[str, Any] = {
            "user": user,
            "min_password_length": MIN_PASSWORD_CHARS,
            "second_factor": "otp" if value.get("totp_secret") else "off",
            "expires": _rfc3339(float(value["expires"])),
        }
        if value.get("totp_secret"):
            answer["otpauth_uri"] = otpauth_uri(
                str(value["totp_secret"]), user, f"kubeport {self.registry.cluster_name}"
            )
        return answer

    async def signup(self, body: Mapping[str, Any], client: str) -> dict[str, Any]:
        """Set the password and enroll the second factor with a confirmed code; consume the token."""
        token = _str_field(body, "token", limit=256)
        password = _str_field(body, "password", limit=4 * MAX_PASSWORD_CHARS)
        code = _str_field(body, "totp_code", limit=64, required=False)
        value, revision = await self._signup_record(token, client)
        user = str(value["user"])
        normalized = check_new_password(password)
        secret = str(value.get("totp_secret") or "")
        step: int | None = None
        if secret:
            step = totp_step(secret, code, self._now())
            if step is None:
                await self.registry.audit(
                    "user.signup", None, success=False, name=user, client=client, error="wrong code"
                )
                raise AccessDenied(
                    "the one-time code is not right: enter the code your authenticator app shows now for "
                    f'"kubeport {self.registry.cluster_name}" (check that this machine\'s clock is right)'
                )
        password_hash = await self._hash(normalized)
        try:  # single use: the first signup to delete this revision of the token wins
            await self.registry.store.delete(SIGNUP_KIND, token, expected_revision=revision)
        except (NotFound, CompareFailed):
            raise AccessDenied("the signup token is not valid: it was used already") from None
        creds = Credentials(password_hash=password_hash, totp_secret=secret).after_success(step)
        await self.registry.store.put(CREDENTIALS_KIND, user, creds.to_value())
        await self.registry.audit("user.signup", None, name=user, client=client, second_factor=bool(secret))
        return {"user": user, "second_factor": "otp" if secret else "off"}

    # -- login ---------------------------------------------------------------------------------------

    def _throttle(self, user: str, client: str) -> None:
        source = source_of_client(client)
        wait = max(self.limiter.check("login-source", source), self.limiter.check("login-user", user))
        if wait > 0:
            seconds = max(1, int(wait + 0.999))
            raise LimitExceeded(f"too many login attempts for this user or from {source}: retry in {seconds}s")

    async def _credentials(self, user: str) -> tuple[Credentials, int] | None:
        try:
            record = await self.registry.store.get(CREDENTIALS_KIND, user)
            return Credentials.from_value(record.value), record.revision
        except NotFound:
            return None

    async def _record_failure(self, user: str) -> Credentials | None:
        """Count one failure for ``user`` (compare-and-swap, retried); the new state, or None if gone."""
        for _ in range(MAX_CAS_RETRIES):
            found = await self._credentials(user)
            if found is None:
                return None
            creds, revision = found
            updated = creds.after_failure(self._now())
            try:
                await self.registry.store.update(CREDENTIALS_KIND, user, updated.to_value(), expected_revision=revision)
                return updated
            except CompareFailed:
                continue
            except NotFound:
                return None
        raise LimitExceeded(f'too many concurrent logins for user "{user}": retry')

    async def _record_success(self, user: str, step: int | None) -> None:
        """Reset the failure count and store the code's step, refusing a code whose step a concurrent login
        just used (the replay guard holds under races too)."""
        for _ in range(MAX_CAS_RETRIES):
            found = await self._credentials(user)
            if found is None:
                raise Unauthenticated(LOGIN_FAILED)
            creds, revision = found
            if step is not None and step <= creds.last_totp_step:
                raise Unauthenticated(LOGIN_FAILED)
            try:
                await self.registry.store.update(
                    CREDENTIALS_KIND, user, creds.after_success(step).to_value(), expected_revision=revision
                )
                return
            except CompareFailed:
                continue
        raise LimitExceeded(f'too many concurrent logins for user "{user}": retry')

    async def _fail(self, user: str, client: str, reason: str, *, count: bool) -> NoReturn:
        """Audit a failed attempt, count it when it is the user's fault, and raise the one message."""
        creds = await self._record_failure(user) if count else None
        await self.registry.audit(
            "user.login", None, success=False, name=user, client=client, method="local", error=reason
        )
        if creds is not None and creds.locked(self._now()):
            raise AccessDenied(lock_message(user, creds.locked_until))
        raise Unauthenticated(LOGIN_FAILED)

    async def login(self, body: Mapping[str, Any], client: str, ttl: timedelta | None) -> dict[str, Any]:
        """Password (+ code) + CSR -> a user certificate (module docstring for every rule)."""
        user = _str_field(body, "user", limit=128)
        password = _str_field(body, "password", limit=4 * MAX_PASSWORD_CHARS)
        code = _str_field(body, "totp_code", limit=64, required=False)
        csr_pem = _str_field(body, "csr_pem", limit=64 * 1024).encode()
        try:
            self._throttle(user, client)
        except LimitExceeded:
            await self.registry.audit_failure("user.login", client=client, reason="rate limited", name=user)
            raise
        now = self._now()
        found = await self._credentials(user)
        if found is None:
            await self._burn(password)
            await self._fail(user, client, "unknown user or not signed up", count=False)
        creds, _ = found
        if creds.locked(now):
            await self.registry.audit(
                "user.login", None, success=False, name=user, client=client, method="local", error="locked"
            )
            raise AccessDenied(lock_message(user, creds.locked_until))
        password_ok = await self._verify(creds.password_hash, normalize_password(password))
        step: int | None = None
        code_ok = True
        if self.otp_required:
            if not creds.totp_secret:
                await self.registry.audit(
                    "user.login",
                    None,
                    success=False,
                    name=user,
                    client=client,
                    method="local",
                    error="no second factor enrolled",
                )
                raise AccessDenied(
                    f'user "{user}" has no second factor enrolled and this registry requires one: ask an admin for '
                    "a new signup (kpctl users reset)"
                )
            step = totp_step(creds.totp_secret, code, now)
            code_ok = step is not None and step > creds.last_totp_step
        if not password_ok:
            await self._fail(user, client, "wrong password", count=True)
        if not code_ok:
            reason = "reused one-time code" if step is not None else "wrong one-time code"
            await self._fail(user, client, reason, count=True)
        try:
            record = await self.registry.store.get("user", user)
        except NotFound:
            await self._fail(user, client, "user deleted", count=False)
        model = codec.resource_from_dict(record.value)
        assert isinstance(model, User)
        roles = await self.registry.roles_of(tuple(model.roles))
        wanted = ttl if ttl is not None else DEFAULT_LOGIN_TTL
        granted = min(wanted, max_session_ttl(roles), USER_TTL)
        start = self.registry.now()
        identity = Identity(name=user, kind="user", roles=tuple(model.roles))
        # Signed before the code is marked used: a malformed CSR must not burn the user's code.
        cert = self.registry.ca.sign_csr(csr_pem, identity, ttl=granted, now=start)
        expires = min(start + granted, self.registry.ca.expires)
        await self._record_success(user, step)
        if self.hasher.check_needs_rehash(creds.password_hash):
            await self._rehash(user, normalize_password(password))
        await self.registry.audit(
            "user.login", None, name=user, client=client, method="local", roles=list(model.roles), ttl=str(granted)
        )
        return {
            "cert_pem": cert.decode(),
            "ca_pems": [self.registry.ca.cert_pem.decode()],
            "expires": format_rfc3339(expires, fraction="micro"),
            "roles": list(model.roles),
        }

    async def _rehash(self, user: str, password: str) -> None:
        """Upgrade a hash made with older argon2 parameters (best effort: a race just keeps the old one)."""
        found = await self._credentials(user)
        if found is None:
            return
        creds, revision = found
        new_hash = await self._hash(password)
        with contextlib.suppress(CompareFailed, NotFound, AlreadyExists):
            await self.registry.store.update(
                CREDENTIALS_KIND, user, replace(creds, password_hash=new_hash).to_value(), expected_revision=revision
            )


def _rfc3339(epoch: float) -> str:
    return format_rfc3339(datetime.fromtimestamp(epoch, tz=UTC), fraction="micro")
