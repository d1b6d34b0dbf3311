"""Limits on what is accepted before (or without) credentials, on every transport.

Which routes are open (the daemon's identity, and pairing, which makes credentials) is said once,
by the operation table's rows (``security=OPEN`` in ``ops/front.py``); the front door hands that
set to the :class:`~.guard.Guard` when it is made (``ops.front.open_routes``), so every transport
asks the guard (``Guard.is_open``) and none keeps a list of its own.
"""

from __future__ import annotations

from typing import Final

#: bytes of a request body accepted before (or without) authentication, on every transport
OPEN_BODY_LIMIT: Final = 16 * 1024
