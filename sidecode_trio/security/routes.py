"""Which requests need no credentials: the daemon's identity, and pairing (which makes them).

Every transport that serves the API checks it before authenticating (HTTP's ``before_request``,
WebTransport's requests before the session authenticated); one table, so they cannot disagree.
"""

from __future__ import annotations

from typing import Final

#: ``(method, path)`` of the routes served without credentials
OPEN_ROUTES: Final = frozenset({("GET", "/v1/info"), ("POST", "/v1/pair")})

#: bytes of a request body accepted before (or without) authentication, on every transport
OPEN_BODY_LIMIT: Final = 16 * 1024
