"""Server-Sent Events encoding (pure): one frame per event, joined per write.

An event frame is ``id: <epoch>:<cursor>``, ``event: <type>``, ``data: <JSON envelope>``; the
``id`` is what a reconnecting ``EventSource`` sends back as ``Last-Event-ID``. JSON never contains
a raw newline, so ``data`` is always one line.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Final, TypeVar

import trio

from ..eventlog.core import StoredEvent
from ..wire import converter as wire
from ..wire.snapshot import SessionInfo, Snapshot

T = TypeVar("T")

RETRY: Final = b"retry: 2000\n\n"
KEEPALIVE: Final = b": keep-alive\n\n"
REPLAY_CHUNK: Final = 256  # frames per write when replaying: one write each would cost 40x more


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


async def live(
    receive: trio.MemoryReceiveChannel[T],
    encode: Callable[[T], bytes],
    keepalive: float | None,
    marker: object = None,
) -> AsyncGenerator[bytes, None]:
    """Live frames: wait for one, then take everything already queued and send it as one write.

    This opportunistic batching costs nothing while the client keeps up and turns a burst into
    one write (per-write overhead dominates the SSE path: ``reference/sse-fanout.md``). A feed
    whose producer sends ``marker`` now and then for keep-alives passes ``keepalive=None`` and
    waits without a timeout (no cancel scope per event); others get a comment after
    ``keepalive`` seconds of silence.
    """
    while True:
        try:
            if keepalive is None:
                first = await receive.receive()
            else:
                with trio.move_on_after(keepalive) as quiet:
                    first = await receive.receive()
                if quiet.cancelled_caught:
                    yield KEEPALIVE
                    continue
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return  # dropped for lagging, revoked, or the daemon is stopping: clients reconnect
        frames = [KEEPALIVE if first is marker else encode(first)]
        while len(frames) < REPLAY_CHUNK:
            try:
                item = receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            frames.append(KEEPALIVE if item is marker else encode(item))
        chunk = b"".join(frames)
        if chunk:  # a projection (the watch view) may have nothing to say about some events
            yield chunk
