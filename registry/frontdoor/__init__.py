"""The front door: kubectl's TLS endpoint in the registry process, and the front door's end of the agents'
reverse tunnels.

``tunnels`` (:class:`~registry.frontdoor.tunnels.TunnelHub`: one HTTP/2 client per agent connection, stream
opening by host id); ``serve`` (authentication, routing by path, agent choice, splicing) comes with it.

Why a room of its own: it serves users like the registry server does, but only moves bytes to agents and never
holds a cluster credential. Its place in the dependency direction: it may read the registry's state
(``registry.store``, ``registry.server``), use ``registry.core`` and ``registry.host``; nothing but the
composition root imports it.
"""
