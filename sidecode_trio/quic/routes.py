"""Requests over WebTransport, answered by the HTTP API's own route functions.

A ``request`` frame (method, path with query, JSON body) is run through the same view function,
error handlers and body decoding that serve it over HTTP, with the principal the session
authenticated as. So every route, status and error body is the HTTP API's by construction, and
a route added there is served here too. Only the transport steps are skipped (the Host guard and
the per-request credential check: the session authenticated once, and :class:`~.link.Link`
re-reads the device's scope for every request). Event streams are not requests here but
subscriptions (``control.py``).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final
from urllib.parse import urlsplit

from quart import g
from quart_trio import QuartTrio

from ..security.auth import Principal
from ..security.routes import OPEN_ROUTES

log = logging.getLogger(__name__)

__all__ = ["OPEN_ROUTES", "Requests"]

PREFIX: Final = "/v1/"


def _error(status: int, code: str, message: str) -> tuple[int, bytes]:
    body = {"error": {"code": code, "message": message}}
    return status, json.dumps(body, separators=(",", ":")).encode()


class Requests:
    def __init__(self, app: QuartTrio) -> None:
        self._app = app

    async def __call__(
        self,
        who: Principal | None,
        method: str,
        target: str,
        body: dict[str, Any] | None,
        remote: str | None,
    ) -> tuple[int, bytes]:
        """``(status, JSON body bytes)``, exactly as the HTTP API answers the same request."""
        path = urlsplit(target).path
        if not path.startswith(PREFIX):
            return _error(404, "not_found", f"no route {path!r} (the API is under {PREFIX})")
        if path.endswith("/events"):
            return _error(400, "bad_request", f"{path} is an event stream: use 'subscribe'")
        data = b"" if body is None else json.dumps(body).encode()
        context = self._app.test_request_context(
            target,
            method=method.upper(),
            data=data,
            headers={"Content-Type": "application/json"},
            scope_base={"client": (remote or "", 0)},
        )
        async with context:
            if who is not None:
                g.principal = who
            result: Any  # a view's return value, or what an error handler made of its exception
            try:
                result = await self._app.dispatch_request(context)
            except Exception as exc:  # the app's own handlers: SidecodeError, HTTP errors, crashes
                result = await self._app.handle_user_exception(exc)
            response: Any = await self._app.make_response(result)
            payload = await response.get_data(as_text=False)
        if response.mimetype != "application/json":
            payload = json.dumps(payload.decode(errors="replace")).encode()
        return response.status_code, payload or b"null"
