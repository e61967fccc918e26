"""Integrations of kernelscale with other libraries."""
