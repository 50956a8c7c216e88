"""Shared test fakes (the fake Kubernetes API)."""
