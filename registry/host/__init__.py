"""Host-side helpers: what any kubeport process needs from the host it runs on.

``files`` (secret files: atomic private writes, size-limited reads), ``tls`` (ssl contexts for mutual TLS),
``paths`` (where state lives on a host) and ``cmdline`` (the shared plumbing of every command line: flags
that work in any position, finding the identity and registry address, expected errors as one ``ERROR:``
line, signals and exit codes).

Why a room of its own: the registry server, the registry client, the agent, the mint and every command
line use these, so they cannot live in any one of them, and they do I/O, so they cannot live in the pure
``registry.core``. Their place in the dependency direction: ``labels`` <- ``registry.core`` <-
``registry.host`` <- everything else (store excepted: it needs none of them). They import nothing of ours but
``registry.core`` (and ``labels`` through it), never the client, server, store, mint, cli or agent.
"""
