"""The session feed (catch-up, then live, with the direct fan-out) and the session-list feed.

Both are opened synchronously (so a 404/403 comes before a stream's first byte) and closed by
their owner (``with feed:``), which unsubscribes at once rather than when the GC finds it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Iterator
from types import TracebackType
from typing import Final, Protocol

import trio

from ..eventlog.core import Position, StoredEvent
from ..eventlog.log import KEEPALIVE, Replay, SnapshotRead, Subscription
from ..security.auth import Links, Principal
from ..wire.snapshot import SessionInfo
from .items import KEEPALIVE_ITEM, End, Events, KeepAlive, SessionChanged, Sessions, Snapshot

log = logging.getLogger(__name__)

BATCH: Final = 256  # events per item when replaying or draining a burst: one write each
#: not an event: queued to wake the writer after a direct write left something unsent
_WAKE: Final = StoredEvent("", "", 0, 0.0, "", b"")


class Source(Protocol):
    """Where a session feed subscribes (``ops.Operations``: the scope check, then the log)."""

    def snapshot_position(self, who: Principal, session_id: str) -> Position: ...

    def subscribe(
        self, who: Principal, session_id: str, since: Position | None, max_queue: int
    ) -> tuple[Replay | SnapshotRead, Subscription]: ...


class ListSource(Protocol):
    """Where a session-list feed subscribes (``ops.Operations``)."""

    def subscribe_sessions(
        self, who: Principal, max_queue: int
    ) -> tuple[list[SessionInfo], trio.MemoryReceiveChannel[SessionInfo]]: ...


class Direct(Protocol):
    """A transport's synchronous write path, used by the log's publisher while the client's
    writer is idle (nothing queued, nothing unsent): one write per event and client, no task
    switch. ``write`` returns False to have the event queued instead; a write it could only
    partly do it finishes in ``flush`` (the writer's, after :meth:`SessionFeed.wake`)."""

    def write(self, event: StoredEvent) -> bool: ...

    async def flush(self) -> None: ...


class SessionFeed:
    """One client following one session from a position (see the package docstring)."""

    def __init__(
        self,
        catch_up: SnapshotRead | list[StoredEvent],
        sub: Subscription,
        forget: Callable[[], None],
        history: bool,
    ) -> None:
        self._catch_up, self._sub, self._forget = catch_up, sub, forget
        self._history = history
        self._direct: Direct | None = None
        self._idle = False  #: the writer waits on an empty queue with nothing unsent
        self._detached = False

    @classmethod
    def open(
        cls,
        ops: Source,
        links: Links | None,
        who: Principal,
        session_id: str,
        since: Position | None,
        max_queue: int,
        *,
        replay_up_to: int | None = None,
    ) -> SessionFeed:
        """Subscribe ``who`` to ``session_id`` after ``since``; raises (404, 403) at once.

        ``replay_up_to``: a client that gives no position gets the session's events from its
        start while there are at most that many (else a snapshot), marked ``history``.
        ``links``: revoking the principal's device ends the feed (None: the caller's own link
        is registered already)."""
        history = False
        if replay_up_to is not None and since is None:
            current = ops.snapshot_position(who, session_id)
            if current.cursor <= replay_up_to:
                since, history = Position(current.epoch, 0), True
        catch_up, sub = ops.subscribe(who, session_id, since, max_queue)
        forget = links.register(who, sub.end) if links is not None else _nothing
        events = catch_up if isinstance(catch_up, SnapshotRead) else catch_up.events
        return cls(events, sub, forget, history)

    def __enter__(self) -> SessionFeed:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._forget()
        self._sub.close()

    def end(self) -> None:
        """End the live feed from outside (its reader sees :class:`End`)."""
        self._sub.end()

    def detach(self) -> None:
        """No more direct writes from now on (the reader was cancelled and closes the feed
        later). Safe to call from a direct write, inside the log's publisher."""
        self._detached, self._direct = True, None

    # -- catch-up ----------------------------------------------------------------------------

    def catch_up(self, batch: int = BATCH) -> Iterator[Snapshot | Events]:
        """What the client missed: a snapshot, or the events (``batch`` per item; one item for
        a history replay)."""
        if isinstance(self._catch_up, SnapshotRead):
            yield Snapshot(self._catch_up.snapshot, self._catch_up.reason)
            return
        events = self._catch_up
        if self._history:
            yield Events(events, history=True)
            return
        for start in range(0, len(events), batch):
            yield Events(events[start : start + batch])

    # -- live --------------------------------------------------------------------------------

    async def live(
        self, direct: Direct | None = None
    ) -> AsyncGenerator[Events | KeepAlive | End, None]:
        """Live items until :class:`End`: wait for one, then take what is queued with it (a
        burst becomes one write). With ``direct``, events that arrive while this waits are
        written by the publisher through it and never reach this loop."""
        self._direct = None if self._detached else direct
        self._sub.direct = self._offer
        receive = self._sub.receive
        held: list[StoredEvent] = []
        try:
            while True:
                if direct is not None:
                    await direct.flush()  # what a direct write left unsent goes first
                items, ended = _drain(receive, held)
                held = []
                events = [i for i in items if i is not KEEPALIVE and i is not _WAKE]
                keepalive = any(i is KEEPALIVE for i in items)
                if events:
                    yield Events(events, keepalive=keepalive)
                    continue
                if keepalive:
                    yield KEEPALIVE_ITEM
                    continue
                if ended:
                    break  # dropped for lagging, revoked, deleted, or the daemon is stopping
                self._idle = direct is not None
                try:
                    held = [await receive.receive()]
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    held = []  # ended: a last pass sends whatever a direct write left
                finally:
                    self._idle = False
            yield End("lagging" if self._sub.lagged else "closed")
        finally:
            self._sub.direct = None
            self._direct = None

    def wake(self) -> None:
        """A direct write left something unsent: from now on events queue, and the writer
        wakes to :meth:`Direct.flush` it (order is kept)."""
        self._idle = False
        self._sub.offer(_WAKE)  # not idle: queued, and wakes the writer

    def _offer(self, event: StoredEvent) -> bool:
        if not self._idle or event is _WAKE or self._direct is None:
            return False
        try:
            if self._direct.write(event):
                return True
        except Exception:  # the publisher serves every client: one failure must not stop it
            log.exception("a direct write failed; the event is queued instead")
        self._idle = False  # queued: later events queue behind it (order is kept)
        return False


def _drain(
    receive: trio.MemoryReceiveChannel[StoredEvent], items: list[StoredEvent]
) -> tuple[list[StoredEvent], bool]:
    """Everything queued (up to a write's worth) after ``items``; and whether the feed ended."""
    while len(items) < BATCH:
        try:
            items.append(receive.receive_nowait())
        except trio.WouldBlock:
            return items, False
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return items, True
    return items, False


def _nothing() -> None:
    pass


class SessionListFeed:
    """One client following the session list: the list, then each change."""

    def __init__(
        self,
        infos: list[SessionInfo],
        receive: trio.MemoryReceiveChannel[SessionInfo],
        forget: Callable[[], None],
    ) -> None:
        self._infos, self._receive, self._forget = infos, receive, forget

    @classmethod
    def open(
        cls, ops: ListSource, links: Links | None, who: Principal, max_queue: int
    ) -> SessionListFeed:
        """Subscribe ``who`` to the list; raises (403) at once."""
        infos, receive = ops.subscribe_sessions(who, max_queue)
        forget = links.register(who, receive.close) if links is not None else _nothing
        return cls(infos, receive, forget)

    def __enter__(self) -> SessionListFeed:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._forget()
        self._receive.close()

    def detach(self) -> None:
        """Nothing to do: the list is never written directly (see :meth:`SessionFeed.detach`)."""

    def catch_up(self) -> Sessions:
        return Sessions(self._infos)

    async def live(
        self, keepalive: float | None = None
    ) -> AsyncGenerator[list[SessionChanged] | KeepAlive | End, None]:
        """Changes (what is queued together, as one batch) until :class:`End`; a
        :class:`KeepAlive` after ``keepalive`` seconds of silence (None: never)."""
        receive = self._receive
        wait = keepalive if keepalive is not None else float("inf")
        while True:
            first: SessionInfo | None = None
            try:
                with trio.move_on_after(wait):
                    first = await receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                yield End("closed")
                return
            if first is None:
                yield KEEPALIVE_ITEM
                continue
            batch = [SessionChanged(first)]
            while len(batch) < BATCH:
                try:
                    batch.append(SessionChanged(receive.receive_nowait()))
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            yield batch
