"""A user's logins on this machine: the profile store under ``$KUBEPORT_HOME`` (default ``~/.kubeport``).

``kubeport login`` (password + code, or SSO) saves what it got here; ``kubeport status``, ``kube ls``,
``kube login``, the kubectl credential plugin (``kubeport kube credentials``) and ``logout`` read it.

Layout (one profile per registry cluster; the registry's own data, when it shares ``~/.kubeport`` for a
non-root user, lives beside it and never uses these names)::

    $KUBEPORT_HOME/
      current-profile                      the cluster name of the profile in use (text, one line)
      profiles/<cluster>.yaml              registry addresses, user, CA pin, front door address, how it logged in
      keys/<cluster>/<user>.identity       key + certificate + CA (registry.core.identity_file format)

Invariants:

* Every file is written atomically and 0600, every directory created 0700 (``registry.host.files``); the
  private key is generated on this machine and only ever written here.
* The identity file is written before the profile that names it, so a crash between the two leaves the old
  profile or a complete new one, never a profile pointing at a missing key.
* Reads are bounded (:data:`MAX_PROFILE_BYTES`) and strict: a malformed, huge or foreign file is an error
  naming the file and saying to log in again, never a traceback.
* Names that become path components (cluster, user) are checked against :data:`_SAFE_NAME`, so no profile
  can point outside ``$KUBEPORT_HOME``.
* Expiry is the caller's concern: :meth:`KubeportHome.load` returns an expired login as it is and
  :func:`require_fresh` turns it into the one message every command prints ("run kubeport login").
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from registry.core.errors import BadParameter, TooLarge, Unauthenticated
from registry.core.identity_file import MAX_IDENTITY_FILE_BYTES, IdentityFile
from registry.core.timefmt import format_rfc3339
from registry.core.validation import load_yaml
from registry.host.files import ensure_private_dir, read_limited, write_secret_file

MAX_PROFILE_BYTES = 64 * 1024
PROFILE_VERSION = 1
CURRENT_FILE = "current-profile"
PROFILES_DIR = "profiles"
KEYS_DIR = "keys"

# A cluster or user name as a single path component: no separators, no leading dot, bounded.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_@+-][A-Za-z0-9._@+-]{0,127}$")
_PROFILE_KEYS = frozenset({"version", "cluster", "registry", "user", "ca_pin", "kube_public_addr", "auth"})


class NotLoggedIn(Unauthenticated):
    """No usable login: none saved, or it expired. The message always says what to run."""


def login_hint(profile: Profile | None = None) -> str:
    """The command that logs in again, as precise as what we know."""
    if profile is None:
        return "kubeport login --registry HOST:PORT --user NAME"
    how = f" --auth={profile.auth}" if profile.auth not in ("local", "") else f" --user {profile.user}"
    return f"kubeport login --registry {','.join(profile.registries)}{how}"


def home_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$KUBEPORT_HOME``, else ``~/.kubeport``."""
    env = os.environ if env is None else env
    if env.get("KUBEPORT_HOME"):
        return Path(env["KUBEPORT_HOME"]).expanduser()
    return Path.home() / ".kubeport"


def check_safe_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SAFE_NAME.match(value):
        raise BadParameter(
            f"{what} {value!r} cannot name a profile (letters, digits and ._@+- only, not starting with '.', "
            "at most 128 characters)"
        )
    return value


@dataclass(frozen=True)
class Profile:
    """One login: which registry cluster, as whom, and how to reach it."""

    cluster: str  # the registry's cluster name (from /v1/ping)
    registries: tuple[str, ...]  # host:port of each registry, tried in order
    user: str
    ca_pin: str  # sha256:<hex> of the cluster CA the login trusted
    kube_public_addr: str = ""  # the front door kubeconfigs name; "" when the registry serves none
    auth: str = "local"  # "local" (password + code), an SSO connector name, or "bot"
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)  # unknown keys of newer versions

    def __post_init__(self) -> None:
        check_safe_name(self.cluster, "cluster name")
        check_safe_name(self.user, "user name")
        if not self.registries or not all(isinstance(a, str) and a and "," not in a for a in self.registries):
            raise BadParameter("a profile needs at least one registry address (host:port)")
        if not isinstance(self.ca_pin, str) or not self.ca_pin.startswith("sha256:"):
            raise BadParameter("a profile needs the CA pin (sha256:...)")

    def to_dict(self) -> dict[str, Any]:
        return {
            **dict(self.extra),
            "version": PROFILE_VERSION,
            "cluster": self.cluster,
            "registry": list(self.registries),
            "user": self.user,
            "ca_pin": self.ca_pin,
            "kube_public_addr": self.kube_public_addr,
            "auth": self.auth,
        }

    @classmethod
    def from_dict(cls, data: object, *, source: str) -> Profile:
        if not isinstance(data, dict):
            raise BadParameter(f"{source}: expected a mapping")
        version = data.get("version")
        if version != PROFILE_VERSION:
            raise BadParameter(f"{source}: unsupported profile version {version!r} (expected {PROFILE_VERSION})")
        registry = data.get("registry")
        if isinstance(registry, str):
            registry = [registry]
        if not isinstance(registry, list) or not all(isinstance(a, str) for a in registry):
            raise BadParameter(f"{source}: registry must be a list of host:port")
        strings = {key: data.get(key, "") for key in ("cluster", "user", "ca_pin", "kube_public_addr", "auth")}
        for key, value in strings.items():
            if not isinstance(value, str):
                raise BadParameter(f"{source}: {key} must be a string")
        try:
            return cls(
                cluster=strings["cluster"],
                registries=tuple(registry),
                user=strings["user"],
                ca_pin=strings["ca_pin"],
                kube_public_addr=strings["kube_public_addr"],
                auth=strings["auth"] or "local",
                extra={k: v for k, v in data.items() if k not in _PROFILE_KEYS},
            )
        except BadParameter as exc:
            raise BadParameter(f"{source}: {exc.message}") from exc


@dataclass(frozen=True)
class Login:
    """A saved profile with its identity (key, certificate, CA)."""

    profile: Profile
    identity: IdentityFile
    identity_path: Path

    @property
    def expires(self) -> datetime:
        expires = self.identity.identity().expires
        assert expires is not None  # always set on an identity read from a certificate
        return expires

    def expired(self, now: datetime) -> bool:
        return now >= self.expires


def require_fresh(login: Login, now: datetime) -> Login:
    """``login`` when its certificate is still valid, else NotLoggedIn saying when it expired and what to run."""
    if login.expired(now):
        raise NotLoggedIn(
            f"your login to {login.profile.cluster} as {login.profile.user} expired at "
            f"{format_rfc3339(login.expires)}: run {login_hint(login.profile)}"
        )
    return login


class KubeportHome:
    """The profile store. Cheap to construct; every method touches the disk."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else home_dir()

    # -- paths ---------------------------------------------------------------------------------------

    def profile_path(self, cluster: str) -> Path:
        return self.root / PROFILES_DIR / f"{check_safe_name(cluster, 'cluster name')}.yaml"

    def identity_path(self, cluster: str, user: str) -> Path:
        return (
            self.root
            / KEYS_DIR
            / check_safe_name(cluster, "cluster name")
            / f"{check_safe_name(user, 'user name')}.identity"
        )

    # -- writing -------------------------------------------------------------------------------------

    def save(self, profile: Profile, identity: IdentityFile, *, make_current: bool = True) -> Login:
        """Store ``identity`` then ``profile`` (atomically, 0600) and make it the current profile."""
        path = self.identity_path(profile.cluster, profile.user)
        ensure_private_dir(path.parent)
        write_secret_file(path, identity.dump())
        ensure_private_dir(self.root / PROFILES_DIR)
        text = yaml.safe_dump(profile.to_dict(), sort_keys=True, default_flow_style=False)
        write_secret_file(self.profile_path(profile.cluster), text.encode())
        if make_current:
            write_secret_file(self.root / CURRENT_FILE, f"{profile.cluster}\n".encode())
        return Login(profile=profile, identity=identity, identity_path=path)

    def remove(self, cluster: str | None = None) -> Profile | None:
        """Forget a login (the current one by default): its key, certificate and profile. Returns the profile
        removed, or None when there was none. Other profiles stay."""
        name = cluster if cluster is not None else self.current_name()
        if name is None:
            return None
        try:
            profile = self._read_profile(name)
        except (BadParameter, TooLarge):
            profile = None
        if profile is not None:
            with contextlib.suppress(FileNotFoundError):
                self.identity_path(profile.cluster, profile.user).unlink()
        with contextlib.suppress(FileNotFoundError):
            self.profile_path(name).unlink()
        if self.current_name() == name:
            with contextlib.suppress(FileNotFoundError):
                (self.root / CURRENT_FILE).unlink()
        return profile

    # -- reading -------------------------------------------------------------------------------------

    def current_name(self) -> str | None:
        path = self.root / CURRENT_FILE
        if not path.exists():
            return None
        text = read_limited(path, limit=256, what="current profile file").decode("utf-8", "replace").strip()
        return check_safe_name(text, f"current profile in {path}") if text else None

    def names(self) -> list[str]:
        directory = self.root / PROFILES_DIR
        if not directory.is_dir():
            return []
        return sorted(p.stem for p in directory.glob("*.yaml") if _SAFE_NAME.match(p.stem))

    def profiles(self) -> Sequence[Profile]:
        return [self._read_profile(name) for name in self.names()]

    def load(self, cluster: str | None = None) -> Login:
        """The login for ``cluster`` (default: the current one), expired or not; NotLoggedIn when none."""
        name = cluster if cluster is not None else self.current_name()
        if name is None:
            raise NotLoggedIn(f"not logged in: run {login_hint()}")
        if not self.profile_path(name).exists():
            raise NotLoggedIn(f"not logged in to {name}: run {login_hint()}")
        profile = self._read_profile(name)
        path = self.identity_path(profile.cluster, profile.user)
        if not path.exists():
            raise NotLoggedIn(f"the login to {name} has no certificate any more: run {login_hint(profile)}")
        data = read_limited(path, limit=MAX_IDENTITY_FILE_BYTES, what="identity file")
        try:
            identity = IdentityFile.parse(data, source=str(path))
        except (BadParameter, TooLarge) as exc:
            raise NotLoggedIn(f"{exc.message}; run {login_hint(profile)}") from exc
        return Login(profile=profile, identity=identity, identity_path=path)

    def _read_profile(self, name: str) -> Profile:
        path = self.profile_path(name)
        data = read_limited(path, limit=MAX_PROFILE_BYTES, what="profile")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadParameter(f"profile {path} is not UTF-8 text; log in again to rewrite it") from None
        documents = load_yaml(text, source=f"profile {path}")
        if len(documents) != 1:
            raise BadParameter(f"profile {path}: expected one YAML document; log in again to rewrite it")
        return Profile.from_dict(documents[0], source=f"profile {path}")
