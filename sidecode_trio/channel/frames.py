"""Control-stream framing and messages (pure): length-prefixed JSON, one object per frame.

A frame is a 4-byte big-endian length ``N`` followed by ``N`` bytes of UTF-8 JSON, an object with a
``"type"``. Client messages are frozen attrs classes read through the one converter; server
messages are written by the functions below (event frames splice the envelope the log encoded
once, so a live event is never re-serialised). A payload too large to go inline travels alone on
its own unidirectional stream: ``ref`` (4 bytes, big-endian) then the JSON object until FIN, and the
control stream carries ``{"type": "large", "ref", "size"}`` where it belongs.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from typing import Any, Final

from .. import feed
from ..eventlog.core import StoredEvent
from ..wire import converter as wire

# The client messages are wire classes (wire/control.py); re-exported here as fr.Auth, ...
from ..wire.control import CLIENT_MESSAGES as CLIENT_MESSAGES
from ..wire.control import Auth as Auth
from ..wire.control import ClientMessage as ClientMessage
from ..wire.control import Hello as Hello
from ..wire.control import Request as Request
from ..wire.control import Subscribe as Subscribe
from ..wire.control import Unsubscribe as Unsubscribe

PATH: Final = "/v1/wt"  #: the WebTransport session's path
HEADER: Final = struct.Struct(">I")
REF: Final = struct.Struct(">I")
AUTH_CONTEXT: Final = b"sidecode-trio wt auth v1\n"
NONCE_BYTES: Final = 32
VERSIONS: Final = (1,)


class CloseCode(enum.IntEnum):
    """Application error codes: of a closed session (capsule) or connection (CONNECTION_CLOSE)."""

    NORMAL = 0
    PROTOCOL_ERROR = 0x100  #: framing broken, a frame out of order, too many bad frames
    UNSUPPORTED_VERSION = 0x101  #: no protocol version in common
    FRAME_TOO_LARGE = 0x102  #: a frame longer than ``max_frame``
    UNAUTHORIZED = 0x103  #: authentication failed or did not happen in time
    LAGGING = 0x104  #: the client did not read fast enough; reconnect and resume
    REVOKED = 0x105  #: the device was revoked
    OVERLOADED = 0x106  #: too many requests or subscriptions in flight
    GOING_AWAY = 0x107  #: the daemon is stopping

    @property
    def reason(self) -> str:
        return self.name.lower()


class FrameTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a frame of {size} bytes is over the limit of {limit}")


class FrameDecoder:
    """Bytes in, complete frame payloads out; refuses a frame longer than ``max_frame``."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        view = self._buffer
        start = 0
        while len(view) - start >= HEADER.size:
            (size,) = HEADER.unpack_from(view, start)
            if size > self.max_frame:
                raise FrameTooLarge(size, self.max_frame)
            end = start + HEADER.size + size
            if len(view) < end:
                break
            frames.append(bytes(view[start + HEADER.size : end]))
            start = end
        del view[:start]
        return frames


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def auth_message(nonce: bytes, cert_sha256: bytes, device_id: str) -> bytes:
    """What a device signs to authenticate one connection (domain-separated). A device id with
    a lone surrogate (``"\\ud800"`` is valid JSON) has no UTF-8 form: its bytes are written as is,
    so the link refuses it as an unknown device rather than raising out of the control stream."""
    return AUTH_CONTEXT + nonce + cert_sha256 + device_id.encode("utf-8", "surrogatepass")


# -- server messages -------------------------------------------------------------------------


def _encode(body: dict[str, Any]) -> bytes:
    return wire.json_bytes(body)


def welcome(
    version: str, nonce: str, cert: str, max_frame: int, inline_limit: int, heartbeat: float
) -> bytes:
    return _encode({
        "type": "welcome",
        "protocol": VERSIONS[-1],
        "version": version,
        "nonce": nonce,
        "cert": cert,
        "max_frame": max_frame,
        "inline_limit": inline_limit,
        "heartbeat": heartbeat,
    })  # fmt: skip


def ready(device_id: str | None, name: str, scope: str) -> bytes:
    return _encode({"type": "ready", "device": device_id, "name": name, "scope": scope})


def reply(request_id: int, status: int, body: Any) -> bytes:
    return b'{"type":"reply","id":%d,"status":%d,"body":%s}' % (
        request_id,
        status,
        wire.dumps(body),
    )


def reply_json(request_id: int, status: int, body: bytes) -> bytes:
    """A reply whose body is already JSON (as the HTTP app produced it)."""
    return b'{"type":"reply","id":%d,"status":%d,"body":%s}' % (request_id, status, body)


def error(code: str, message: str, request_id: int | None = None) -> bytes:
    """A protocol error not tied to an HTTP status (bad frame, unknown type, ...)."""
    return _encode({"type": "error", "id": request_id, "code": code, "message": message})


def error_reply(request_id: int, status: int, code: str, message: str) -> bytes:
    return reply(request_id, status, {"error": {"code": code, "message": message}})


def event(sub: int, stored: StoredEvent) -> bytes:
    return b'{"type":"event","sub":%d,"id":"%s:%d","data":%s}' % (
        sub,
        stored.epoch.encode(),
        stored.cursor,
        stored.data,
    )


def snapshot(sub: int, epoch: str, cursor: int, reason: str, snap: Any) -> bytes:
    return b'{"type":"snapshot","sub":%d,"id":"%s:%d","reason":"%s","snapshot":%s}' % (
        sub,
        epoch.encode(),
        cursor,
        reason.encode(),
        wire.dumps(snap),
    )


def sessions(sub: int, infos: Any) -> bytes:
    return b'{"type":"sessions","sub":%d,"sessions":%s}' % (sub, wire.dumps(infos))


def session(sub: int, info: Any) -> bytes:
    return b'{"type":"session","sub":%d,"session":%s}' % (sub, wire.dumps(info))


def feed_frames(sub: int, item: feed.Item | list[feed.SessionChanged]) -> Iterator[bytes]:
    """A feed's item as subscription ``sub``'s frames (keep-alives and the end say nothing:
    the session has its own heartbeat, and how a subscription ends is the link's to say)."""
    if isinstance(item, feed.Events):
        for stored in item.events:
            yield event(sub, stored)
    elif isinstance(item, list):
        for change in item:
            yield session(sub, change.session)
    elif isinstance(item, feed.Snapshot):
        snap = item.snapshot
        yield snapshot(sub, snap.epoch, snap.cursor, item.reason, snap)
    elif isinstance(item, feed.Sessions):
        yield sessions(sub, item.sessions)


def ended(sub: int, reason: str) -> bytes:
    return _encode({"type": "end", "sub": sub, "reason": reason})


def large(ref: int, size: int) -> bytes:
    return b'{"type":"large","ref":%d,"size":%d}' % (ref, size)


def closing(code: CloseCode, message: str) -> bytes:
    """The last frame before the daemon closes the session on purpose."""
    return _encode({"type": "close", "code": int(code), "reason": code.reason, "message": message})
