"""What the user-loop tests share (issue 10 §3): ``kubeport`` run in-process, and a login saved exactly as
``kubeport login`` saves one (a key generated here, a certificate the registry signs, ``save_login``).

``save_user_login`` signs the certificate with the admin's ``sign_user`` (what ``kpctl auth sign`` does), for
tests about what comes after a login; what ends up on disk is the same profile and identity as a real
``kubeport login`` (tests/integration/test_user_walkthrough.py runs the real one).
"""

from __future__ import annotations

import io
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from registry.cli.kubeport_main import build_parser
from registry.cli.login_common import first_contact, save_login
from registry.cli.profile import KubeportHome, Login
from registry.core.identity import generate_private_key, make_csr
from registry.host.cmdline import guarded, parse_command_line
from registry.server.serve import RegistryInfo
from tests.helpers import CliResult
from tests.integration.test_agent_inprocess import admin


async def kubeport(*argv: str, stdin: str = "") -> CliResult:
    """``kubeport ARGV`` through its real parser and error handling, in this trio loop (``stdin`` is what
    the command reads, e.g. a password and a code for ``--password-stdin``)."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                args = parse_command_line(build_parser(), list(argv))
                code = await guarded(args.func, args)
            except SystemExit as exc:  # argparse usage errors
                code = int(exc.code or 0)
    finally:
        sys.stdin = saved
    return CliResult(code, out.getvalue(), err.getvalue())


async def save_user_login(registry: RegistryInfo, home: Path, user: str, *, ttl_seconds: float = 3600) -> Login:
    kphome = KubeportHome(home)
    contact = await first_contact([registry.address], pin=registry.ca_pin, home=kphome, err=io.StringIO())
    key = generate_private_key()
    async with await admin(registry) as client:
        signed = await client.sign_user(user, make_csr(key, user), ttl_seconds)
    return save_login(
        kphome,
        contact,
        user=user,
        key_pem=key,
        cert_pem=signed["cert_pem"].encode(),
        ca_pems=[pem.encode() for pem in signed["ca_pems"]],
    )
