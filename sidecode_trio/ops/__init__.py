"""The operation table: every client operation once, independent of the transport."""

from .operations import Operations, Policy

__all__ = ["Operations", "Policy"]
