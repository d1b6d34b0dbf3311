"""Server-Sent Events encoding (pure): one frame per event, joined per write (a feed's item).

An event frame is ``id: <epoch>:<cursor>``, ``event: <type>``, ``data: <JSON envelope>``; the
``id`` is what a reconnecting ``EventSource`` sends back as ``Last-Event-ID``. JSON never contains
a raw newline, so ``data`` is always one line.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from .. import feed
from ..eventlog.core import StoredEvent
from ..wire import converter as wire
from ..wire.snapshot import SessionInfo, Snapshot

RETRY: Final = b"retry: 2000\n\n"
KEEPALIVE: Final = b": keep-alive\n\n"


def event_frame(stored: StoredEvent) -> bytes:
    return b"id: %s:%d\nevent: %s\ndata: %s\n\n" % (
        stored.epoch.encode(),
        stored.cursor,
        stored.type.encode(),
        stored.data,
    )


def event_frames(events: Iterable[StoredEvent]) -> bytes:
    return b"".join(event_frame(stored) for stored in events)


def snapshot_frame(snapshot: Snapshot, reason: str) -> bytes:
    data = wire.dumps({"reason": reason, "snapshot": wire.unstructure(snapshot)})
    return b"id: %s:%d\nevent: snapshot\ndata: %s\n\n" % (
        snapshot.epoch.encode(),
        snapshot.cursor,
        data,
    )


def sessions_frame(infos: list[SessionInfo]) -> bytes:
    return b"event: sessions\ndata: %s\n\n" % wire.dumps({"sessions": wire.unstructure(infos)})


def session_frame(info: SessionInfo) -> bytes:
    return b"event: session\ndata: %s\n\n" % wire.dumps(info)


def encode(item: feed.Snapshot | feed.Events | feed.KeepAlive | feed.End) -> bytes:
    """A session feed's item in the full view (``End`` says nothing: the stream just ends)."""
    if isinstance(item, feed.Events):
        frames = event_frames(item.events)
        return frames + KEEPALIVE if item.keepalive else frames
    if isinstance(item, feed.Snapshot):
        return snapshot_frame(item.snapshot, item.reason)
    if isinstance(item, feed.KeepAlive):
        return KEEPALIVE
    return b""


def encode_list(
    item: feed.Sessions | list[feed.SessionChanged] | feed.KeepAlive | feed.End,
) -> bytes:
    """A session-list feed's item (``End`` says nothing: the stream just ends)."""
    if isinstance(item, list):
        return b"".join(session_frame(change.session) for change in item)
    if isinstance(item, feed.Sessions):
        return sessions_frame(item.sessions)
    if isinstance(item, feed.KeepAlive):
        return KEEPALIVE
    return b""
