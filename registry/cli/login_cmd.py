"""``kubeport signup`` and ``kubeport login``: a local user sets a password and a one-time code app, then
trades them for a short-lived certificate (issue 10 §1; the registry side is ``registry.server.local_auth``).

    kubeport signup --registry HOST:PORT --token TOKEN [--ca-pin PIN] [--password-stdin]
    kubeport login  --registry HOST:PORT --user NAME [--ca-pin PIN] [--password-stdin] [--ttl 12h] [--auth local]

Invariants:

* The registry is verified before anything secret is sent (``login_common.first_contact``: ``--ca-pin``, the
  pin saved by an earlier login, or trust on first use with the pin printed).
* The key is generated here and never leaves this machine; only a CSR is sent. The login is stored under
  ``$KUBEPORT_HOME`` (0600, atomic) by ``login_common.save_login``.
* Passwords and codes are read from the terminal without echo (getpass), or with ``--password-stdin`` from
  standard input: the password on the first line, the one-time code on the second (signup: the same). They
  are never printed, logged or written anywhere; stdin reads are bounded.
* ``--auth NAME`` other than ``local`` hands over to single sign-on (``registry.cli.sso_login.run_sso_login``);
  a kubeport without it says so in one line.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from typing import TextIO

from registry.cli import sso_login
from registry.cli.kpctl.flags import duration
from registry.cli.login_common import first_contact, save_login, split_registries
from registry.cli.profile import KubeportHome, Profile, check_safe_name
from registry.core.errors import BadParameter, KubeportError
from registry.core.identity import generate_private_key, make_csr
from registry.core.timefmt import format_human
from registry.host.cmdline import add_debug_flag, flag_value, set_command

MAX_STDIN_BYTES = 16 * 1024  # a password line and a code line; anything bigger is not one
MIN_PASSWORD_CHARS = 12  # the registry's rule too (registry.server.local_auth); checked here to ask again early
# argparse %-formats help texts: "%%s" prints as "%s".
STDIN_HELP = (
    "read the secrets from standard input instead of a terminal: the password on the first line, the one-time "
    'code on the second line (e.g. printf \'%%s\\n%%s\\n\' "$PASSWORD" "$CODE" | kubeport COMMAND --password-stdin)'
)

Ask = Callable[[str], str]


class Secrets:
    """Where passwords and codes come from: the terminal (no echo), or lines of standard input."""

    def __init__(self, *, from_stdin: bool, stdin: TextIO | None = None, ask: Ask | None = None) -> None:
        self._lines: list[str] | None = None
        if from_stdin:
            self._lines = read_stdin_lines(stdin if stdin is not None else sys.stdin)
        elif ask is None and not _has_terminal():
            raise BadParameter("no terminal to ask for the password: pass --password-stdin (see --help)")
        self._ask = ask or getpass.getpass

    @property
    def interactive(self) -> bool:
        return self._lines is None

    def next(self, prompt: str, what: str) -> str:
        if self._lines is None:
            return self._ask(prompt)
        if not self._lines:
            raise BadParameter(f"--password-stdin: standard input has no line for the {what}")
        return self._lines.pop(0)


def _has_terminal() -> bool:
    try:
        with open("/dev/tty"):  # getpass reads the terminal, not stdin
            return True
    except OSError:
        return sys.stdin is not None and sys.stdin.isatty()


def read_stdin_lines(stream: TextIO) -> list[str]:
    """Lines of ``stream`` (bounded, strict UTF-8), each without its line ending (other spaces kept)."""
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        raw: bytes = buffer.read(MAX_STDIN_BYTES + 1)
    else:
        raw = stream.read(MAX_STDIN_BYTES + 1).encode("utf-8", "surrogatepass")
    if len(raw) > MAX_STDIN_BYTES:
        raise BadParameter(f"--password-stdin: standard input is larger than {MAX_STDIN_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadParameter("--password-stdin: standard input is not UTF-8 text") from None
    return [line.rstrip("\r") for line in text.split("\n")]


def _registries(args: argparse.Namespace, home: KubeportHome) -> tuple[tuple[str, ...], Profile | None]:
    """``--registry``, else ``$KUBEPORT_REGISTRY``, else the current profile's (logging in again)."""
    current: Profile | None = None
    try:
        current = home.load().profile
    except KubeportError:
        current = None
    value = args.registry or os.environ.get("KUBEPORT_REGISTRY")
    if value:
        return split_registries(value), current
    if current is not None:
        return current.registries, current
    raise BadParameter("no registry address: pass --registry HOST:PORT (or set KUBEPORT_REGISTRY)")


def _stdin_help(command: str) -> str:
    return STDIN_HELP.replace("COMMAND", command)


# -- signup --------------------------------------------------------------------------------------------


def print_qr(uri: str, out: TextIO) -> None:
    """The otpauth URI as a QR code an authenticator app can scan from the terminal."""
    import segno  # only signup needs it; keeps ``kubeport`` start-up light

    segno.make(uri, error="m").terminal(out=out, compact=True)


async def cmd_signup(args: argparse.Namespace) -> int:
    home = KubeportHome()
    secrets = Secrets(from_stdin=args.password_stdin)
    registries, _ = _registries(args, home)
    contact = await first_contact(registries, pin=args.ca_pin, home=home)
    async with contact.client() as client:
        info = await client.signup_info(args.token)
        user = str(info["user"])
        print(f'Signing up as user "{user}" on cluster "{contact.ping["cluster_name"]}".')
        password = _new_password(secrets, int(info.get("min_password_length", MIN_PASSWORD_CHARS)))
        code = ""
        if info.get("second_factor") == "otp":
            uri = str(info["otpauth_uri"])
            print("\nAdd this one-time code (TOTP) to your authenticator app: scan the QR code, or enter the URI.\n")
            if secrets.interactive:
                print_qr(uri, sys.stdout)
            print(f"  {uri}\n")
            code = secrets.next("One-time code from the app, to confirm: ", "one-time code").strip()
        await client.signup(args.token, password, code)
    pin = args.ca_pin or contact.ca_pin
    print(f'\nUser "{user}" is signed up. Log in with:\n')
    print(f"  kubeport login --registry {','.join(contact.registries)} --user {user} --ca-pin {pin}")
    return 0


def _new_password(secrets: Secrets, minimum: int) -> str:
    for _ in range(3 if secrets.interactive else 1):
        password = secrets.next(f"New password (at least {minimum} characters): ", "password")
        if len(password) < minimum:
            message = f"the password is too short: use at least {minimum} characters"
            if not secrets.interactive:
                raise BadParameter(message)
            print(message, file=sys.stderr)
            continue
        if secrets.interactive and secrets.next("Repeat the password: ", "password") != password:
            print("the passwords do not match", file=sys.stderr)
            continue
        return password
    raise BadParameter("no password set")


# -- login ---------------------------------------------------------------------------------------------


async def cmd_login(args: argparse.Namespace) -> int:
    home = KubeportHome()
    registries, current = _registries(args, home)
    auth = args.auth or "local"
    ttl = duration(args.ttl, "--ttl") if args.ttl else None
    if auth != "local":
        contact = await first_contact(registries, pin=args.ca_pin, home=home)
        return await sso_login.run_sso_login(args, home, contact)
    user = args.user or (current.user if current is not None else "") or getpass.getuser()
    check_safe_name(user, "--user")
    secrets = Secrets(from_stdin=args.password_stdin)
    contact = await first_contact(registries, pin=args.ca_pin, home=home)
    password = secrets.next(f'Password for "{user}": ', "password")
    if not password:
        raise BadParameter("the password is empty")
    code = ""
    if contact.ping.get("second_factor", "otp") != "off":
        code = secrets.next("One-time code: ", "one-time code").strip()
    key = generate_private_key()
    async with contact.client() as client:
        result = await client.login(
            user, password, code, make_csr(key, user), ttl.total_seconds() if ttl is not None else None
        )
    login = save_login(
        home,
        contact,
        user=user,
        key_pem=key,
        cert_pem=str(result["cert_pem"]).encode(),
        ca_pems=[str(pem).encode() for pem in result["ca_pems"]],
        auth="local",
    )
    roles = ", ".join(str(r) for r in result.get("roles", [])) or "(none)"
    print(f'Logged in as "{user}" on cluster "{login.profile.cluster}" ({contact.address}).')
    print(f"  Roles:       {roles}")
    print(f"  Valid until: {format_human(login.expires)}")
    print(f"  Saved in:    {login.identity_path}")
    print("Next: kubeport kube ls, then kubeport kube login NAME")
    return 0


# -- the commands ----------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument(
        "--registry",
        metavar="HOST:PORT[,HOST:PORT]",
        type=flag_value("--registry"),
        default=argparse.SUPPRESS,
        help="the registry to sign up or log in at (default: $KUBEPORT_REGISTRY, else your current profile's)",
    )
    p.add_argument(
        "--ca-pin",
        metavar="PIN",
        type=flag_value("--ca-pin"),
        help="the registry CA's pin (sha256:...; 'kpctl status' shows it) to verify it on first contact; "
        "without it the pin saved at your first login is checked, or the CA is trusted on first use and its "
        "pin printed",
    )
    p.add_argument("--password-stdin", action="store_true", help=_stdin_help(command))
    add_debug_flag(p)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``signup`` and ``login`` to kubeport's command tree."""
    p = sub.add_parser(
        "signup",
        help="set your password and one-time code app with the token your admin gave you",
        description="Sign up as a local user: choose a password and enroll a one-time code (TOTP) app, with the "
        "single-use token from 'kpctl users add' or 'kpctl users reset'.",
    )
    _common(p, "signup")
    p.add_argument("--token", required=True, type=flag_value("--token"), help="the signup token (single use, 1 h)")
    set_command(p, cmd_signup)

    p = sub.add_parser(
        "login",
        help="log in: password + one-time code (or single sign-on) -> a short-lived certificate",
        description="Log in to a kubeport registry and store a short-lived certificate for a key generated on "
        "this machine under $KUBEPORT_HOME (default ~/.kubeport).",
    )
    _common(p, "login")
    p.add_argument(
        "--user", type=flag_value("--user"), help="your user name (default: your current profile's, else $USER)"
    )
    p.add_argument(
        "--ttl",
        type=flag_value("--ttl"),
        help="how long the certificate lasts, e.g. 8h (default 12h; the registry caps it by your roles' "
        "max_session_ttl)",
    )
    p.add_argument(
        "--auth",
        metavar="NAME",
        type=flag_value("--auth"),
        default="local",
        help="'local' (password + one-time code, the default) or the name of a single sign-on connector",
    )
    sso_login.add_arguments(p)
    set_command(p, cmd_login)
