"""The device side of a DataChannel link (example client, tests, bench): the framed protocol's
:class:`~..channel.client.Carrier` over a pinned link from :func:`~.rendezvous.dial`.

Binary messages carry the control stream's bytes (frames may span messages); text messages are
the keep-alive, answered here (a ``ping`` gets its ``pong``), and the daemon's keep-alive
``close``. Authentication signs the welcome's nonce with the hash of the daemon's DTLS
certificate, whose fingerprint the daemon signed in its answer (checked by ``dial``).
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import trio

from ..channel import frames as fr
from ..channel.client import DeviceSession, SessionClosed
from .link import CHUNK, dtls_sha256
from .rendezvous import Link

__all__ = ["DeviceSession", "LinkCarrier", "SessionClosed", "open_session"]


class LinkCarrier:
    """Control messages over one open link; :meth:`run` reads it (start it in a nursery)."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.cert_sha256 = dtls_sha256(link.connection.remote_fingerprints())
        self.closed: tuple[int, str] | None = None
        self.keepalive_close: dict[str, Any] | None = None  #: the daemon's text ``close``
        self.pings = 0
        self.answer_pings = True  #: off: a device that went silent (tests)
        self._decoder = fr.FrameDecoder(1 << 30)
        self._frames: deque[dict[str, Any]] = deque()
        self._changed = trio.Event()

    def send(self, message: dict[str, Any]) -> None:
        if self.closed is not None:
            raise SessionClosed(*self.closed)
        data = fr.frame(json.dumps(message, separators=(",", ":")).encode())
        for start in range(0, len(data), CHUNK):
            self.link.channel.send_nowait(data[start : start + CHUNK])

    async def receive(self) -> dict[str, Any]:
        while not self._frames:
            if self.closed is not None:
                raise SessionClosed(*self.closed)
            self._changed = trio.Event()
            await self._changed.wait()
        return self._frames.popleft()

    async def run(self) -> None:
        """Read the link until it closes."""
        try:
            while True:
                try:
                    message = await self.link.channel.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    break
                if isinstance(message, str):
                    self._text(message)
                    continue
                for payload in self._decoder.feed(message):
                    frame: dict[str, Any] = json.loads(payload)
                    if frame.get("type") == "close" and self.closed is None:
                        self.closed = (int(frame.get("code", 0)), str(frame.get("reason")))
                    self._frames.append(frame)
                self._changed.set()
        finally:
            if self.closed is None:
                self.closed = (0, "the link closed")
            self._changed.set()

    def _text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            return  # not a keep-alive message: nothing to answer
        if message.get("type") == "ping":
            self.pings += 1
            if self.answer_pings:
                self.link.channel.send_nowait(json.dumps({"type": "pong", "n": message["n"]}))
        elif message.get("type") == "close":
            self.keepalive_close = message

    async def aclose(self) -> None:
        """Close the peer connection (the daemon sees the channel close)."""
        await self.link.connection.aclose()


async def open_session(
    nursery: trio.Nursery, link: Link, client_name: str = "python"
) -> tuple[DeviceSession, LinkCarrier]:
    """Start reading ``link`` and say hello; the session checks that the daemon names the DTLS
    certificate it signed (as WebTransport checks its certificate). Then authenticate."""
    carrier = LinkCarrier(link)
    nursery.start_soon(carrier.run)
    session = DeviceSession(carrier)
    await session.start(nursery, client_name)
    if session.welcome.get("cert") != carrier.cert_sha256.hex():
        await carrier.aclose()
        raise SessionClosed(0, "the daemon names another certificate than the one it signed")
    return session, carrier
