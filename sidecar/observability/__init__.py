"""sidecar.observability"""
