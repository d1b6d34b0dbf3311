"""The Remote Control client: thin Trio drivers over :mod:`.api` (httpx for REST,
trio-websocket for the live stream). Every lower-layer failure becomes an
:class:`~..errors.UpstreamError` here (``upstream_unauthorized`` when the login is refused)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import trio
import trio_websocket

from ..errors import UpstreamError
from . import api
from .credentials import Credentials, unauthorized
from .settings import BridgeSettings

log = logging.getLogger(__name__)

Build = Callable[[str, str | None], api.Request]  # (token, organization) -> request
PagedBuild = Callable[[str, str | None, str | None], api.Request]  # ... and after_id


def _page_request(build: PagedBuild, after: str | None, token: str, org: str | None) -> api.Request:
    return build(token, org, after)


class RemoteControlClient:
    """REST calls with a fresh token (one retry after a 401, with a refreshed token)."""

    def __init__(
        self, settings: BridgeSettings, credentials: Credentials, http: httpx.AsyncClient
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self.http = http  # never follows redirects: the token goes to the configured host only
        self.calls = 0

    async def _send(self, request: api.Request) -> httpx.Response:
        self.calls += 1
        try:
            return await self.http.request(
                request.method,
                request.url,
                headers=request.headers,
                params=request.params or None,
                json=request.json,
                timeout=self.settings.http_timeout,
            )
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"cannot reach the Remote Control API: {type(exc).__name__}"
            ) from None

    async def call(self, build: Build) -> Any:
        token = await self.credentials.access_token(self.http)
        response = await self._send(build(token, self.credentials.org))
        if response.status_code == 401:
            token = await self.credentials.after_rejection(self.http, token)
            response = await self._send(build(token, self.credentials.org))
        if response.status_code in (401, 403):
            error = unauthorized(
                f"the Remote Control API refused the Claude login (HTTP {response.status_code})"
            )
            self.credentials.refused(error)
            raise error
        if response.status_code >= 400:
            raise UpstreamError(f"the Remote Control API answered HTTP {response.status_code}")
        self.credentials.accepted()
        if not response.content:
            return None
        try:
            return response.json()
        except (ValueError, RecursionError):  # RecursionError: absurdly deep JSON
            raise UpstreamError("the Remote Control API answered with something not JSON") from None

    async def _pages(self, build: PagedBuild) -> list[Any]:
        items: list[Any] = []
        after: str | None = None
        for _ in range(api.MAX_PAGES):
            body = await self.call(partial(_page_request, build, after))
            try:
                page = api.parse_page(body)
            except api.MalformedUpstream as exc:
                raise UpstreamError(f"the Remote Control API: {exc}") from None
            items += page.items
            if page.next_after is None or page.next_after == after:
                break
            after = page.next_after
        return items

    async def list_sessions(self) -> list[api.RemoteSessionInfo]:
        base = self.settings.api_url
        items = await self._pages(lambda t, o, a: api.list_sessions(base, t, o, a))
        found = (api.parse_session(item) for item in items)
        return [info for info in found if info is not None]

    async def history(self, session_id: str) -> list[dict[str, Any]]:
        base = self.settings.api_url
        return await self._pages(lambda t, o, a: api.history(base, t, o, session_id, a))

    async def post_event(self, session_id: str, event: dict[str, Any]) -> None:
        base = self.settings.api_url
        await self.call(lambda t, o: api.post_events(base, t, o, session_id, [event]))

    @asynccontextmanager
    async def subscribe(
        self, session_id: str, close_timeout: float
    ) -> AsyncIterator[trio_websocket.WebSocketConnection]:
        """The live stream of ``session_id``, open for the ``async with`` body (one retry with
        a refreshed token after a 401); closing waits at most ``close_timeout``."""
        token = await self.credentials.access_token(self.http)
        try:
            async with self._open(session_id, token, close_timeout) as connection:
                yield connection
                return
        except trio_websocket.ConnectionRejected as exc:
            if exc.status_code != 401:
                raise self._rejected(exc.status_code) from None
        token = await self.credentials.after_rejection(self.http, token)
        try:
            async with self._open(session_id, token, close_timeout) as connection:
                yield connection
        except trio_websocket.ConnectionRejected as exc:
            raise self._rejected(exc.status_code) from None

    def _rejected(self, status: int) -> UpstreamError:
        if status in (401, 403):
            error = unauthorized(
                f"the Remote Control stream refused the Claude login (HTTP {status})"
            )
            self.credentials.refused(error)
            return error
        return UpstreamError(f"the Remote Control stream was refused (HTTP {status})")

    @asynccontextmanager
    async def _open(
        self, session_id: str, token: str, close_timeout: float
    ) -> AsyncIterator[trio_websocket.WebSocketConnection]:
        url = api.subscribe_url(self.settings.api_url, session_id, self.credentials.org)
        headers = [(k.encode(), v.encode()) for k, v in api.ws_headers(token)]
        self.calls += 1
        connection: trio_websocket.WebSocketConnection | None = None
        try:
            async with trio_websocket.open_websocket_url(
                url,
                ssl_context=_ssl_context(url),
                extra_headers=headers,
                connect_timeout=self.settings.http_timeout,
                disconnect_timeout=close_timeout,
            ) as connection:
                self.credentials.accepted()
                yield connection
        except (trio_websocket.ConnectionRejected, UpstreamError):
            raise
        except trio_websocket.DisconnectionTimeout:
            pass  # the close handshake got no answer: the socket is gone anyway
        except (trio_websocket.HandshakeError, OSError) as exc:
            if connection is not None:
                return  # the connection broke while closing: it is closed
            raise UpstreamError(
                f"cannot open the Remote Control stream: {type(exc).__name__}"
            ) from None
        finally:
            if connection is not None:
                await _close_tcp(connection)


def _ssl_context(url: str) -> ssl.SSLContext | None:
    return ssl.create_default_context() if url.startswith("wss:") else None


async def _close_tcp(connection: trio_websocket.WebSocketConnection) -> None:
    """Close the connection's TCP stream. trio-websocket 0.12 leaves it open after a close
    the server started (its ``aclose`` returns early once a close reason is set, and its
    reader stops at EOF without closing), which leaks a socket per upstream drop."""
    stream = getattr(connection, "_stream", None)
    if isinstance(stream, trio.abc.AsyncResource):
        await trio.aclose_forcefully(stream)
