"""kubeport package."""
