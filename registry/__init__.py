"""kubeport's registry: the control plane (resources, store, mutual-TLS API, kpctl) and the shared kernel
(``registry.core``) that the agent uses too."""

__version__ = "0.1.0"
