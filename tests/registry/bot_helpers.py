"""What the bot tests share: seed 004's role (as v7), an in-process registry with a served cluster, and clients
presenting a bot's own certificate."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from registry.client import RegistryClient, bot_join
from registry.core import codec
from registry.core.identity import generate_private_key, load_certificate, make_csr
from registry.core.identity_file import IdentityFile
from registry.server.authz import Caller
from registry.testing import ADDRESS, InProcessRegistry, InProcessTransport, agent_identity
from tests.helpers import SEED_004_EXAMPLE_ROLE, cluster_doc, kubeconfig_bytes

AGENT = agent_identity()

# seed 004's example-role, upgraded to v7 as the codec asks (kind '*' needs v7, verbs spelled out)
EXAMPLE_ROLE = SEED_004_EXAMPLE_ROLE.replace("version: v6", "version: v7") + '        verbs: ["*"]\n'

PROD_ONLY_ROLE = """\
kind: role
version: v7
metadata:
  name: prod-only
spec:
  allow:
    kubernetes_labels:
      env: prod
    kubernetes_groups: [editor]
"""


def der(cert_pem: bytes) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return load_certificate(cert_pem, "certificate").public_bytes(Encoding.DER)


def transport_for(reg: InProcessRegistry) -> Callable[[bytes | None], httpx.AsyncBaseTransport]:
    """The in-process transport presenting ``cert`` (PEM) as the TLS client certificate, as a real handshake
    would (None: no client certificate)."""

    def make(cert: bytes | None) -> httpx.AsyncBaseTransport:
        return InProcessTransport(reg, der(cert) if cert is not None else None)

    return make


async def create_role(reg: InProcessRegistry, text: str) -> None:
    async with reg.client() as admin:
        for doc in codec.parse_documents(text, source="role"):
            await admin.create(doc)


async def serve_cluster(reg: InProcessRegistry, name: str, labels: dict[str, str]) -> None:
    """A kube_cluster and an agent heartbeat for it (what an agent serving it writes)."""
    await reg.registry.create(reg.caller(), codec.resource_from_dict(cluster_doc(name, kubeconfig_bytes(), labels)))
    expires = datetime.fromtimestamp(reg.registry.clock() + 600, tz=UTC).isoformat()
    doc = {
        "kind": "kube_server",
        "version": "v3",
        "metadata": {"name": name, "expires": expires},
        "spec": {
            "host_id": AGENT.host_id,
            "hostname": "agent:3027",
            "version": "1.0",
            "cluster": {"kind": "kube_cluster", "version": "v3", "metadata": {"name": name, "labels": labels}},
        },
    }
    server = codec.resource_from_dict(doc)
    await reg.registry.heartbeat(Caller(identity=AGENT), server)  # type: ignore[arg-type]


async def stop_serving(reg: InProcessRegistry, name: str) -> None:
    assert AGENT.host_id is not None
    await reg.registry.delete_heartbeat(Caller(identity=AGENT), AGENT.host_id, name)


async def add_bot(reg: InProcessRegistry, name: str = "example", roles: tuple[str, ...] = ("example-role",)) -> str:
    """Create the bot through the API; return its join token."""
    async with reg.client() as admin:
        result = await admin.bots_add(name, roles, token_ttl_seconds=3600)
    return str(result["token"])


async def join_bot(reg: InProcessRegistry, token: str, *, ttl_seconds: float | None = None) -> IdentityFile:
    key = generate_private_key()
    result = await bot_join(
        ADDRESS,
        token=token,
        csr_pem=make_csr(key, "bot"),
        ca_pems=[reg.ca.cert_pem],
        ttl_seconds=ttl_seconds,
        transport=reg.transport(None),
    )
    return IdentityFile(
        cert_pem=result["cert_pem"].encode(),
        key_pem=key,
        ca_pems=tuple(p.encode() for p in result["ca_pems"]),
        registry=ADDRESS,
    )


def client_of(reg: InProcessRegistry, identity: IdentityFile) -> RegistryClient:
    return RegistryClient(
        ADDRESS,
        ca_pems=identity.ca_pems,
        cert_pem=identity.cert_pem,
        key_pem=identity.key_pem,
        transport=InProcessTransport(reg, der(identity.cert_pem)),
    )


async def renew_bot(
    reg: InProcessRegistry, identity: IdentityFile, *, ttl_seconds: float | None = None
) -> IdentityFile:
    key = generate_private_key()
    async with client_of(reg, identity) as client:
        result = await client.renew(make_csr(key, "bot"), ttl_seconds=ttl_seconds)
    return IdentityFile(
        cert_pem=result["cert_pem"].encode(),
        key_pem=key,
        ca_pems=tuple(p.encode() for p in result["ca_pems"]),
        registry=ADDRESS,
    )
