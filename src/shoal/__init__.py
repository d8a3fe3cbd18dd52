"""Shoal: a LwM2M device-management server for fish farms."""

__version__ = "0.1.0"
