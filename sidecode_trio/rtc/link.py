"""One open DataChannel link, serving the framed protocol (an encoder and a thin driver).

A link carries exactly the WebTransport control stream's protocol (``protocol/PROTOCOL.md``
§10, §13): hello, auth, requests, subscriptions with ``(epoch, cursor)`` resume. The state
machine, the outbox and the session driver are the shared ones (``channel/``), over the same
feed, front door and authentication path as every transport. Only the carriage differs:

* **binary** messages carry the control stream's bytes: length-prefixed JSON frames, split into
  messages of at most ``CHUNK`` bytes (an ordered, reliable channel is a byte stream; a frame may
  span messages). There are no streams of our own on a DataChannel, so no payload is sent as
  ``large``: the ``welcome`` frame's ``inline_limit`` says so;
* **text** messages are the link's keep-alive: every ``ping_interval`` seconds the daemon sends
  ``{"type": "ping", "n": N}`` and the device answers ``{"type": "pong", "n": N}``. aiortc's ICE
  consent checks need ~30 s to notice a dead path (a phone that left Wi-Fi); after
  ``ping_misses`` unanswered pings the daemon sends ``{"type": "close", "code": "timeout"}`` and
  closes the link, so a re-dial is not refused as ``busy`` for half a minute. Any other text
  message is answered with a ``close`` (``bad_frame``) and the link is closed.

The link is pinned to the device key whose signature covered the DTLS fingerprint; ``auth``
signs the welcome's nonce and the daemon's DTLS certificate hash (as WebTransport signs its
certificate's), and the device that authenticates must own the pinned key. Revocation closes
the link (``guard.links`` through the session driver, and the WebRTC task's own cut).

**Back-pressure** is the DataChannel's ``bufferedAmount``: the outbox moves frames to aiortc
only while fewer than ``high_water`` bytes are queued there (woken by ``bufferedamountlow``);
past the outbox's bounds the link is dropped with ``lagging`` and the device resumes exactly.

:class:`LinkKeeper` is the sans-IO keep-alive; :func:`serve` drives one link.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from typing import Any, Final, Protocol

import attrs
import trio

CLOSE_GRACE: Final = 2.0  # seconds the device gets to read our last frames and close first
CHUNK: Final = 16 * 1024  # bytes per DataChannel message (every browser takes 16 KiB messages)
NO_LARGE: Final = 2**31 - 1  # the outbox's inline limit on a DataChannel: nothing goes "large"


class Channel(Protocol):
    """What the driver needs from a DataChannel (``peer.TrioDataChannel``)."""

    on_room: Callable[[], None]

    def send_nowait(self, message: bytes | str) -> None: ...

    def buffered(self) -> int: ...

    async def receive(self) -> bytes | str: ...


class Session(Protocol):
    """The shared session driver (``channel/link.Link``) as this driver uses it (named by
    protocol: the daemon binds it to the operations, which ``rtc/`` does not import)."""

    def start(self, nursery: trio.Nursery) -> None: ...
    def kick(self) -> None: ...
    def data_received(self, data: bytes, ended: bool) -> None: ...
    def peer_closed(self) -> None: ...
    def end(self, message: str) -> None: ...
    def stop(self) -> None: ...


@attrs.frozen
class Closed:
    """Why a link ended: ``code`` is ``closed`` (by the device), ``timeout``, ``bad_frame``,
    ``revoked``, or the name of the framed protocol's close code (``lagging``, ...)."""

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

    def received(self, text: str) -> Closed | None:
        """A text message from the device: a pong is noted; anything else closes the link."""
        message: Any = None
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):  # nested deeper than json.loads recurses
            pass
        if isinstance(message, dict) and message.get("type") == "pong":
            n = message.get("n")
            if isinstance(n, int) and not isinstance(n, bool) and self._answered < n <= self._sent:
                self._answered = n
            return None
        return Closed("bad_frame", "a text message must be a pong; frames go in binary messages")

    @property
    def pings(self) -> int:
        return self._sent

    @property
    def pongs(self) -> int:
        return self._answered


def close_frame(closed: Closed) -> str:
    return json.dumps({"type": "close", "code": closed.code, "message": closed.message})


def dtls_sha256(fingerprints: list[str]) -> bytes:
    """The SHA-256 of a DTLS certificate, from its SDP fingerprints (``sha-256 AB:CD:...``):
    what ``auth`` signs on a DataChannel, in the place of WebTransport's certificate hash."""
    for fp in fingerprints:
        alg, _, value = fp.partition(" ")
        if alg.lower() == "sha-256":
            return bytes.fromhex(value.replace(":", ""))
    raise ValueError("no sha-256 fingerprint")


class DataChannelTransport:
    """The session driver's :class:`~..channel.link.Transport` over one DataChannel."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self.ended = trio.Event()
        self.graceful = False  #: the driver's last frames are on their way: let them drain
        self.closed: Closed | None = None

    def buffered(self) -> int:
        return self._channel.buffered()

    def write_control(self, data: bytes) -> None:
        if self.ended.is_set():
            return
        for start in range(0, len(data), CHUNK):
            self._channel.send_nowait(data[start : start + CHUNK])

    def open_stream(self) -> int:  # never: the outbox's inline limit is NO_LARGE
        raise AssertionError("a DataChannel link sends no large payloads")

    def write_stream(self, stream_id: int, data: bytes, end: bool) -> None:
        raise AssertionError("a DataChannel link sends no large payloads")

    def write_live(self, data: bytes) -> None:
        self.write_control(data)  # aiortc sends as soon as its loop runs

    def send_datagram(self, data: bytes) -> None:
        pass  # no datagrams: the text ping is the keep-alive

    def close_session(self, code: enum.IntEnum, message: str) -> None:
        self.end(Closed(code.name.lower(), message), graceful=True)

    def close_now(self, code: enum.IntEnum, message: str) -> None:
        self.end(Closed(code.name.lower(), message), graceful=False)

    def end(self, closed: Closed, graceful: bool) -> None:
        """The link ends (the first reason given is kept)."""
        if self.closed is None:
            self.closed, self.graceful = closed, graceful
            self.ended.set()


async def serve(
    channel: Channel,
    make_link: Callable[[DataChannelTransport], Session],
    interval: float,
    misses: int,
) -> Closed:
    """Serve the framed protocol on ``channel`` until the link ends; returns why. ``make_link``
    builds the session driver for this transport. The caller closes the peer connection
    afterwards."""
    keeper = LinkKeeper(misses)
    transport = DataChannelTransport(channel)
    link = make_link(transport)
    channel.on_room = link.kick

    def end(closed: Closed) -> None:
        link.end(closed.message)  # the session reads no more
        channel.send_nowait(close_frame(closed))
        transport.end(closed, graceful=True)

    async with trio.open_nursery() as nursery:
        link.start(nursery)

        async def pinging() -> None:
            while True:
                frame = keeper.ping()
                if isinstance(frame, Closed):
                    end(frame)
                    return
                channel.send_nowait(frame)
                await trio.sleep(interval)

        async def receiving() -> None:
            while True:
                try:
                    message = await channel.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    transport.end(Closed("closed", "the device closed the link"), graceful=False)
                    link.peer_closed()
                    return
                if isinstance(message, str):
                    closed = keeper.received(message)
                    if closed is not None:
                        end(closed)
                        return
                else:
                    link.data_received(message, False)

        nursery.start_soon(pinging)
        nursery.start_soon(receiving)
        await transport.ended.wait()
        if transport.graceful:  # the last frames (a close) should reach the device first
            with trio.move_on_after(CLOSE_GRACE):
                # aiortc says "low" only when crossing the threshold, never "empty": poll
                while channel.buffered():  # noqa: ASYNC110
                    await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert transport.closed is not None
    return transport.closed
