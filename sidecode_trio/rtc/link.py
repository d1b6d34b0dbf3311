"""One open DataChannel link, held until the transport-neutral feed can serve it.

**What a link does today.** The daemon answers offers and opens pinned links (``rendezvous.py``),
but carrying requests over a link waits for the transport-neutral feed and operation table (issue
16): until it lands, a link is *held*, never pretending to serve. Frames are one JSON object per
DataChannel message:

* every ``ping_interval`` seconds the daemon sends ``{"type": "ping", "n": N}``; the device
  answers ``{"type": "pong", "n": N}``. aiortc's ICE consent checks need ~30 s to notice a dead
  path (a phone that left Wi-Fi); after ``ping_misses`` unanswered pings the daemon closes the
  link, so a re-dial is not refused as ``busy`` for half a minute;
* any other frame is answered with ``{"type": "close", "code": "unsupported", "message": ...}``
  and the link is closed: this daemon does not carry requests over WebRTC yet.

:class:`LinkKeeper` is the sans-IO core (what to send, when to close); :func:`hold` drives it.
"""

from __future__ import annotations

import json
from typing import Any, Final, Protocol

import attrs
import trio

CLOSE_GRACE: Final = 2.0  # seconds the device gets to read our close frame and close first
UNSUPPORTED: Final = (
    "this daemon does not carry requests over WebRTC yet (the link's serving lands with the "
    "transport-neutral feed): use a direct address, or update the daemon"
)


class Channel(Protocol):
    async def send(self, message: bytes | str) -> None: ...

    async def receive(self) -> bytes | str: ...


@attrs.frozen
class Closed:
    """Why a held link ended: ``code`` is ``unsupported``, ``timeout`` or ``closed``."""

    code: str
    message: str


class LinkKeeper:
    """Counts pings and pongs; says when a link is dead or must be refused (sans-IO)."""

    def __init__(self, misses: int) -> None:
        self._misses = misses
        self._sent = 0
        self._answered = 0

    def ping(self) -> str | Closed:
        """The next ping frame, or :class:`Closed` when ``misses`` pings went unanswered."""
        if self._sent - self._answered >= self._misses:
            return Closed("timeout", f"{self._misses} pings went unanswered")
        self._sent += 1
        return json.dumps({"type": "ping", "n": self._sent})

    def received(self, frame: bytes | str) -> Closed | None:
        """A frame from the device: a pong is noted; anything else closes the link."""
        message: Any = None
        try:
            message = json.loads(frame)
        except (ValueError, UnicodeDecodeError):
            pass
        if isinstance(message, dict) and message.get("type") == "pong":
            n = message.get("n")
            if isinstance(n, int) and not isinstance(n, bool) and self._answered < n <= self._sent:
                self._answered = n
            return None
        return Closed("unsupported", UNSUPPORTED)

    @property
    def pings(self) -> int:
        return self._sent

    @property
    def pongs(self) -> int:
        return self._answered


def close_frame(closed: Closed) -> str:
    return json.dumps({"type": "close", "code": closed.code, "message": closed.message})


async def hold(channel: Channel, interval: float, misses: int) -> Closed:
    """Hold ``channel`` until it dies, closes, or sends a frame we cannot serve; returns why.
    The caller closes the peer connection afterwards."""
    keeper = LinkKeeper(misses)
    ended: list[Closed] = []
    pings = trio.CancelScope()
    async with trio.open_nursery() as nursery:

        async def pinging() -> None:
            with pings:
                while True:
                    frame = keeper.ping()
                    if isinstance(frame, Closed):  # dead: say so (best effort) and stop
                        ended.append(frame)
                        await channel.send(close_frame(frame))
                        nursery.cancel_scope.cancel()
                        return
                    await channel.send(frame)
                    await trio.sleep(interval)

        nursery.start_soon(pinging)
        while True:
            try:
                frame = await channel.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                ended.append(Closed("closed", "the device closed the link"))
                break
            closed = keeper.received(frame)
            if closed is not None:
                pings.cancel()  # nothing after the close frame
                await channel.send(close_frame(closed))
                ended.append(closed)
                await _drain(channel)
                break
        nursery.cancel_scope.cancel()
    return ended[0]


async def _drain(channel: Channel) -> None:
    """Let the device read the close frame: wait (a little) for it to close the channel, since
    closing the peer connection at once could drop the frame still queued in aiortc."""
    with trio.move_on_after(CLOSE_GRACE):
        while True:
            try:
                await channel.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
