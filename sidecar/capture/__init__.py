"""sidecar.capture"""
