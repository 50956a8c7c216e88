"""The Kubernetes front door: kubectl's TLS endpoint in the registry process, and the front door's side of
the agents' reverse tunnels (DESIGN.md, access-design.md §7)."""
