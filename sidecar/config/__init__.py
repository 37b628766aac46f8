"""sidecar.config"""
