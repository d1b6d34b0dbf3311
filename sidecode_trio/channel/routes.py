"""Requests over WebTransport: dispatched into the operation table (``ops/front.py``).

A ``request`` frame (method, path with query, JSON body) is answered by the same table, body
decoding and error renderer that serve it over HTTP, with the principal the session
authenticated as. So every route, status and error body is the HTTP API's by construction, and
a route added to the table is served here too. Only the transport steps are skipped (the Host
guard and the per-request credential check: the session authenticated once, and
:class:`~.link.Link` re-reads the device's scope for every request). Event streams are not
requests here but subscriptions (``control.py``).
"""

from __future__ import annotations

from typing import Any, Protocol

from ..security.auth import Principal


class Requests(Protocol):
    """What a link dispatches a request into (:meth:`~..ops.front.Front.dispatch`)."""

    async def __call__(
        self,
        who: Principal | None,
        method: str,
        target: str,
        body: Any,
        remote: str | None,
    ) -> tuple[int, bytes]: ...
