"""The WebTransport control stream's client messages (PROTOCOL.md, WebTransport section).

A client sends one JSON object per frame, tagged by ``type``; :class:`ClientMessage` is the root
of that tagged union, configured with the others in :func:`.converter.make_converter`.
The framing and the server's messages are ``channel/frames.py``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

import attrs

from . import share_repr


class ClientMessage:
    """Root of the messages a client sends (tagged by ``type``)."""

    TYPE: ClassVar[str] = ""


@attrs.frozen(repr=False)
class Hello(ClientMessage):
    TYPE: ClassVar[str] = "hello"
    versions: list[int]
    client: str = ""


@attrs.frozen(repr=False)
class Auth(ClientMessage):
    TYPE: ClassVar[str] = "auth"
    device: str
    signature: str  #: base64url Ed25519 signature of :func:`auth_message`


@attrs.frozen(repr=False)
class Request(ClientMessage):
    """An HTTP API request: the same method, path and JSON body as over HTTP."""

    TYPE: ClassVar[str] = "request"
    id: int
    method: str
    path: str
    body: dict[str, Any] | None = None


@attrs.frozen(repr=False)
class Subscribe(ClientMessage):
    """Follow an event stream: ``/v1/sessions/{id}/events`` (with ``since``) or ``/v1/events``."""

    TYPE: ClassVar[str] = "subscribe"
    id: int
    path: str
    since: str | None = None  #: ``"<epoch>:<cursor>"``, like SSE's Last-Event-ID


@attrs.frozen(repr=False)
class Unsubscribe(ClientMessage):
    TYPE: ClassVar[str] = "unsubscribe"
    id: int


CLIENT_MESSAGES: Final[dict[str, type[ClientMessage]]] = {
    cls.TYPE: cls for cls in (Hello, Auth, Request, Subscribe, Unsubscribe)
}


share_repr(globals())  # one __repr__ for all, not one compiled per class (see __init__)
