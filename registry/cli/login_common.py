"""What every way of logging in shares: first contact with the registry, and saving the login.

``kubeport login`` (password + code), ``kubeport login --auth=CONNECTOR`` (SSO) and ``kubeport signup`` talk
to the registry *before* the user has a certificate, over TLS that must still be verified:

* with ``--ca-pin`` the CA the registry presents must match it (as agents do);
* else with a saved profile for that registry, the CA must match the pin saved at the first login: a
  changed CA is refused (a different CA is what an impostor presents), with how to proceed if the change
  is real;
* else trust on first use: the CA is accepted and its pin printed, so the user can compare it with the
  admin's ``kpctl status``; it is then saved in the profile and checked from then on.

:func:`first_contact` tries each registry address in order and returns the first that answers.
:func:`save_login` stores the certificate the registry issued for the key generated here (the private
key never leaves this machine) with its profile (``registry.cli.profile``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from registry.cli.profile import KubeportHome, Login, Profile
from registry.client import RegistryClient, fetch_unverified_ca
from registry.core.errors import AccessDenied, BadParameter, ConnectionProblem, KubeportError
from registry.core.identity import ca_pin, check_pin
from registry.core.identity_file import IdentityFile
from registry.core.wire import Ping


@dataclass(frozen=True)
class Contact:
    """A registry reached and verified: where, its CA, the CA's pin and its ping answer."""

    address: str
    registries: tuple[str, ...]
    ca_pems: tuple[bytes, ...]
    ca_pin: str
    ping: Ping

    def client(self) -> RegistryClient:
        """A client without a certificate (public routes only: ping, signup, login), verifying the CA."""
        return RegistryClient(self.address, ca_pems=self.ca_pems)


def split_registries(value: str) -> tuple[str, ...]:
    """``HOST:PORT[,HOST:PORT...]`` as a tuple; empty parts are an error."""
    parts = tuple(part.strip() for part in value.split(","))
    if not value.strip() or any(not part for part in parts):
        raise BadParameter(f"--registry expects HOST:PORT[,HOST:PORT...], got {value!r}")
    return parts


def _matching(ca_pems: Sequence[bytes], pin: str) -> bool:
    for ca in ca_pems:
        try:
            check_pin(ca, pin)
            return True
        except KubeportError:
            continue
    return False


async def first_contact(
    registries: Sequence[str],
    *,
    pin: str | None = None,
    home: KubeportHome | None = None,
    err: TextIO | None = None,
) -> Contact:
    """Reach the first registry of ``registries`` that answers and verify its CA (see the module docstring).

    ``home`` gives the pins saved by earlier logins; ``err`` receives the trust-on-first-use notice."""
    err = err if err is not None else sys.stderr
    known = {p.cluster: p for p in home.profiles()} if home is not None else {}
    problems: list[str] = []
    for address in registries:
        try:
            ca_pems = tuple(await fetch_unverified_ca(address))
        except ConnectionProblem as exc:
            problems.append(exc.message)
            continue
        if not ca_pems:
            problems.append(f"registry at {address} presented no CA")
            continue
        if pin is not None and not _matching(ca_pems, pin):
            raise AccessDenied(
                f"the registry at {address} presents a CA that does not match --ca-pin {pin}: "
                "refusing to send it anything"
            )
        async with RegistryClient(address, ca_pems=ca_pems) as client:
            ping = await client.ping()  # verified TLS from here on
        saved = next((p for p in known.values() if p.cluster == ping["cluster_name"]), None)
        chosen = pin or ca_pin(ca_pems[0])
        if pin is None and saved is not None:
            if not _matching(ca_pems, saved.ca_pin):
                raise AccessDenied(
                    f'the registry at {address} presents a CA for cluster "{ping["cluster_name"]}" that does not '
                    f"match the pin saved at your first login ({saved.ca_pin}). If the CA really changed, check "
                    "the new pin with your admin (kpctl status) and pass it with --ca-pin"
                )
            chosen = saved.ca_pin
        elif pin is None:
            print(
                f'Trusting the CA of cluster "{ping["cluster_name"]}" presented by {address} on first use: '
                f"{chosen}\n  Compare it with the CA pin your admin sees in 'kpctl status'; pass --ca-pin to "
                "verify instead.",
                file=err,
            )
        return Contact(address=address, registries=tuple(registries), ca_pems=ca_pems, ca_pin=chosen, ping=ping)
    raise ConnectionProblem("; ".join(problems) or "no registry address given")


def save_login(
    home: KubeportHome,
    contact: Contact,
    *,
    user: str,
    key_pem: bytes,
    cert_pem: bytes,
    ca_pems: Sequence[bytes],
    auth: str = "local",
) -> Login:
    """Store a login: the key generated here, the certificate the registry issued, its profile (current)."""
    identity = IdentityFile(
        cert_pem=cert_pem, key_pem=key_pem, ca_pems=tuple(ca_pems), registry=",".join(contact.registries)
    )
    profile = Profile(
        cluster=contact.ping["cluster_name"],
        registries=contact.registries,
        user=user,
        ca_pin=contact.ca_pin,
        kube_public_addr=contact.ping.get("kube_public_addr", ""),
        auth=auth,
    )
    return home.save(profile, identity)
