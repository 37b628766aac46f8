"""sidecar.http"""
