"""The forwarder's TCP dial to an API server, refusing a cloud metadata service as the peer.

A ``kube_cluster``'s kubeconfig names the server; the registry and the agent refuse a literal metadata address
or name at check time (:func:`registry.core.kubeconfig.is_metadata_host`), but a DNS name can still resolve
to one (``169.254.169.254.nip.io``, a record its writer controls). Every kubectl user of the cluster could
then read the agent host's cloud credentials through ``kubectl get --raw``. So the address actually connected
to is checked, before a single byte (not even a TLS hello) is written to it.

Invariant: :func:`open_api_stream` returns only a stream whose peer is not a metadata address; a refused
peer is an :class:`OSError` naming the host and the address (the callers turn OSError into the cluster's
"cannot reach the API server" 502), and its socket is closed.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from registry.core.kubeconfig import is_metadata_host


async def open_api_stream(
    host: str, port: int, *, refused: Callable[[str], bool] = is_metadata_host
) -> trio.SocketStream:
    """``trio.open_tcp_stream(host, port)``, closed again and refused when the peer is ``refused``."""
    tcp = await trio.open_tcp_stream(host, port)
    try:
        peer = str(tcp.socket.getpeername()[0])
    except OSError:
        await trio.aclose_forcefully(tcp)
        raise
    if refused(peer):
        await trio.aclose_forcefully(tcp)
        raise OSError(f"{host} resolves to {peer}, a cloud metadata service: refused")
    return tcp
