"""sidecar.listener"""
