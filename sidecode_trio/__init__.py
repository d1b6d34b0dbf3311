"""sidecode-trio: drive Claude Code sessions from a phone or a watch.

A Trio daemon that supervises ``claude`` CLI sessions, keeps an epoch+cursor event log of
everything they do in SQLite, and streams it to clients over HTTP/SSE.
"""

__version__ = "0.1.0"
