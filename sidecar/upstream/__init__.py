"""Upstream: clusters, load balancing, connection pools, connecting."""
