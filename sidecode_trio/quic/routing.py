"""Which HTTP/3 and WebTransport events go where, for one QUIC connection (pure).

A connection carries at most one WebTransport session, opened by ``CONNECT`` with
``:protocol = webtransport`` at :data:`~.frames.PATH`. Its first client-opened bidirectional stream
is the control stream; any other stream the client opens is stopped. Every other request gets a
``404`` (or ``429`` for a second session). Stream data that arrives before its session's
``CONNECT`` (packets can be reordered) waits here, up to ``max_early`` bytes in all.
"""

from __future__ import annotations

from typing import Final

import attrs
from aioquic.h3.events import (
    DatagramReceived,
    DataReceived,
    H3Event,
    HeadersReceived,
    WebTransportStreamDataReceived,
)

MAX_EARLY: Final = 64 * 1024


@attrs.frozen
class Accept:
    session_id: int
    origin: str


@attrs.frozen
class Reject:
    stream_id: int
    status: int


@attrs.frozen
class ControlData:
    data: bytes
    ended: bool


@attrs.frozen
class Datagram:
    data: bytes


@attrs.frozen
class StopStream:
    stream_id: int


@attrs.frozen
class SessionEnded:
    """The client closed the session (FIN on its CONNECT stream, or a close capsule)."""


RouteAction = Accept | Reject | ControlData | Datagram | StopStream | SessionEnded


def _is_client_bidi(stream_id: int) -> bool:
    return stream_id & 0x3 == 0


class SessionRouter:
    def __init__(self, path: str, max_early: int = MAX_EARLY) -> None:
        self._path = path
        self._max_early = max_early
        self.session_id: int | None = None
        self.control_stream: int | None = None
        self._early: list[WebTransportStreamDataReceived] = []
        self._early_bytes = 0
        self.ended = False

    def __repr__(self) -> str:
        return f"<SessionRouter session={self.session_id} control={self.control_stream}>"

    def handle(self, event: H3Event) -> list[RouteAction]:
        if isinstance(event, HeadersReceived):
            return self._headers(event)
        if isinstance(event, WebTransportStreamDataReceived):
            return self._stream(event)
        if isinstance(event, DatagramReceived):
            if self.session_id is not None and event.stream_id == self.session_id:
                return [Datagram(event.data)]
            return []
        if (
            isinstance(event, DataReceived)
            and event.stream_id == self.session_id
            and event.stream_ended
            and not self.ended
        ):
            self.ended = True
            return [SessionEnded()]
        return []

    def _headers(self, event: HeadersReceived) -> list[RouteAction]:
        headers = {name: value for name, value in event.headers}
        method, protocol = headers.get(b":method"), headers.get(b":protocol")
        path = (headers.get(b":path") or b"").split(b"?", 1)[0].decode(errors="replace")
        if method != b"CONNECT" or protocol != b"webtransport" or path != self._path:
            return [Reject(event.stream_id, 404)]
        if self.session_id is not None:
            return [Reject(event.stream_id, 429)]  # one session per connection
        self.session_id = event.stream_id
        origin = (headers.get(b"origin") or b"").decode(errors="replace")
        actions: list[RouteAction] = [Accept(event.stream_id, origin)]
        early, self._early, self._early_bytes = self._early, [], 0
        for held in early:
            actions += self._stream(held)
        return actions

    def _stream(self, event: WebTransportStreamDataReceived) -> list[RouteAction]:
        if self.session_id is None:
            self._early_bytes += len(event.data)
            if self._early_bytes > self._max_early:
                return [StopStream(event.stream_id)]
            self._early.append(event)
            return []
        if event.session_id != self.session_id or not _is_client_bidi(event.stream_id):
            return [StopStream(event.stream_id)]
        if self.control_stream is None:
            self.control_stream = event.stream_id
        if event.stream_id != self.control_stream:
            return [StopStream(event.stream_id)]
        return [ControlData(event.data, event.stream_ended)]
