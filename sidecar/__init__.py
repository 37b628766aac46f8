"""sidecar: a pure-Python asyncio L4/L7 sidecar proxy speaking Kubernetes and Istio config."""

__version__ = "0.1.0"
