"""sidecar.admin"""
