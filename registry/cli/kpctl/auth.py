"""kpctl auth sign: an identity file for a user, signed by the registry's CA."""

from __future__ import annotations

import argparse

from registry.cli.kpctl.flags import SubParsers, command, duration, group
from registry.client import RegistryClient
from registry.core.identity import generate_private_key, make_csr
from registry.core.identity_file import IdentityFile
from registry.core.timefmt import format_human
from registry.host.cmdline import resolve_connection
from registry.host.files import write_secret_file


async def cmd_auth_sign(args: argparse.Namespace) -> int:
    ttl = duration(args.ttl, "--ttl")
    conn = resolve_connection(args)
    key = generate_private_key()
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        result = await client.sign_user(args.user, make_csr(key, args.user), ttl.total_seconds())
    identity = IdentityFile(
        cert_pem=result["cert_pem"].encode(),
        key_pem=key,
        ca_pems=tuple(p.encode() for p in result["ca_pems"]),
        registry=conn.address,
    )
    write_secret_file(args.out, identity.dump())
    expires = identity.identity().expires
    # The registry caps the TTL by the roles' max_session_ttl: say when it really expires.
    until = format_human(expires) if expires else "unknown"
    print(f'The identity of user "{args.user}" has been written to {args.out} (valid until {until}).')
    return 0


def add_commands(sub: SubParsers) -> None:
    asub = group(sub, "auth", "issue certificates")
    p = command(asub, "sign", "write an identity file for a user", cmd_auth_sign)
    p.add_argument("--user", required=True, help="an existing user (kpctl create user.yaml)")
    p.add_argument("--out", "-o", required=True, help="where to write the identity file (mode 0600)")
    p.add_argument("--ttl", default="12h", help="validity, a Go duration (default 12h, max 7 days)")
