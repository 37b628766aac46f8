"""sidecar.tcp"""
