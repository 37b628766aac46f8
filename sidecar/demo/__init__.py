"""sidecar.demo"""
