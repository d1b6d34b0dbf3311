"""Request bodies are read only once the request has a limit: small before authentication.

Quart reads a request's body from the server (``handle_messages``) at the same time as the app
handles the request, up to one ``MAX_CONTENT_LENGTH`` for every route; so a client with no
credentials could make the daemon hold a 24 MiB body per request while ``before_request`` was
still refusing it. Here nothing of the body is read until the app's credential check has
:meth:`GatedBody.admit`-ted it, with the open routes' small limit or, after authentication
succeeded, the big one. A request refused without reading its body never has it read (its
connection is closed after the reply: see ``close_after_unread_body`` in ``app.py``).

Requests made inside the process (WebTransport's, through ``test_request_context``) set their
body directly; they are never gated and their size is the frame limit's business.
"""

from __future__ import annotations

from typing import Any

import trio
from quart.wrappers.request import Request
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody, TrioRequest
from werkzeug.exceptions import RequestEntityTooLarge

from ..security.routes import OPEN_BODY_LIMIT

__all__ = ["OPEN_BODY_LIMIT", "GatedBody", "GatedHTTPConnection", "GatedRequest", "admit"]


class GatedBody(TrioBody):
    def __init__(self, expected_content_length: int | None, max_content_length: int | None) -> None:
        super().__init__(expected_content_length, None)  # no limit until admitted
        self._expected = expected_content_length
        self.admitted = trio.Event()

    def admit(self, limit: int) -> None:
        """Let the body be read, up to ``limit`` bytes (a bigger one is 413 for the route)."""
        if self.admitted.is_set():
            return
        self._max_content_length = limit
        if (self._expected is not None and self._expected > limit) or len(self._data) > limit:
            self._must_raise = RequestEntityTooLarge()
            self.set_complete()
        self.admitted.set()


class GatedRequest(TrioRequest):
    body_class = GatedBody


class GatedHTTPConnection(TrioASGIHTTPConnection):
    async def handle_messages(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Request, receive: Any
    ) -> None:
        body = request.body
        if isinstance(body, GatedBody):
            await body.admitted.wait()  # the request's reply ends this task if it never is
        await super().handle_messages(nursery, request, receive)


def admit(request: Request, limit: int) -> None:
    body = request.body
    if isinstance(body, GatedBody):
        body.admit(limit)
