"""The event log's Trio driver: group commit, then fold, then fan-out.

``append`` is synchronous: it numbers the event and encodes it once. The writer task (owned by the
daemon nursery) commits everything appended since its last wake in one SQLite transaction, inline
on the Trio thread, and only then folds the events into each session's state and hands them to the
subscribers: nothing is delivered before it is durable. A subscriber is a bounded channel; one that
falls behind is closed (dropped), and the client resumes exactly from its ``(epoch, cursor)``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

import attrs
import trio

from ..errors import NotFound, StoreError
from ..wire import converter as wire
from ..wire.events import Event
from ..wire.snapshot import SessionInfo, Snapshot
from .core import Exact, NeedSnapshot, Position, StoredEvent, decode_event, encode, new_epoch
from .core import plan_read as _plan
from .fold import SessionFold
from .store import SessionRow, SQLiteStore

log = logging.getLogger(__name__)

CHECKPOINT_INTERVAL: Final = 1.0  # seconds between PASSIVE WAL checkpoints, off the token path
FLUSH_PATIENCE: Final = 5.0  # seconds a write waits for a failing store before answering 503
RETRY_DELAY: Final = 0.5  # seconds before retrying a failed commit (disk full, read-only)
KEEPALIVE: Final = StoredEvent("", "", 0, 0.0, "", b"")  #: not an event: "say something"


@attrs.frozen
class LogLimits:
    tail: int = 10_000  #: events per session kept in memory for fast replay
    retain: int = 50_000  #: events per session kept on disk; older ones fold into a snapshot


@attrs.frozen
class Replay:
    """Exactly the events the client missed (possibly none)."""

    events: list[StoredEvent]


@attrs.frozen
class SnapshotRead:
    snapshot: Snapshot
    reason: str


class Subscription:
    """A client's live feed of one session: events after ``start`` arrive on ``receive``."""

    def __init__(self, log: EventLog, session_id: str, max_queue: int) -> None:
        self._log = log
        self.session_id = session_id
        self._send, self.receive = trio.open_memory_channel[StoredEvent](max_queue)
        self.lagged = False
        #: if set, tried first: it takes an event (True) by writing it straight to the client's
        #: socket while nothing is queued, sparing a task switch per client (http/direct.py)
        self.direct: Callable[[StoredEvent], bool] | None = None

    def offer(self, event: StoredEvent) -> bool:
        """Queue ``event`` without blocking; on a full queue drop this subscriber."""
        direct = self.direct
        if direct is not None and direct(event):
            return True
        return self.queue(event)

    def queue(self, event: StoredEvent) -> bool:
        """:meth:`offer` without the direct path (the publisher tries that one itself)."""
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.lagged = True
            self._send.close()
            return False
        except trio.BrokenResourceError:
            return False  # the reader went away; close() will unregister us
        except trio.ClosedResourceError:
            return False  # end()ed: its stream's task may run close() much later
        return True

    def end(self) -> None:
        self.direct = None  # nothing reaches the client after its feed ended (e.g. revoked)
        self._send.close()

    def close(self) -> None:
        self._log._unsubscribe(self)
        self.direct = None
        self._send.close()


class _Inline:
    """:meth:`EventLog.inline`'s block: a plain class, not a generator (it runs per delta)."""

    __slots__ = ("_log",)

    def __init__(self, log: EventLog) -> None:
        self._log = log

    def __enter__(self) -> None:
        self._log._inline = True

    def __exit__(self, *exc_info: object) -> None:
        self._log._leave_inline()


class _Session:
    """One session's log: numbering, the in-memory tail, the fold and the subscribers."""

    def __init__(self, row: SessionRow, tail: int) -> None:
        self.id = row.id
        self.epoch = row.epoch
        self.low_water = row.low_water
        self.snapshot_cursor = row.snapshot_cursor
        self.durable = max(row.last, row.snapshot_cursor, row.low_water - 1)
        self.next_cursor = self.durable + 1
        self.tail: deque[StoredEvent] = deque(maxlen=tail)
        self.fold = SessionFold(row.id)
        self.subscribers: set[Subscription] = set()


class EventLog:
    def __init__(
        self,
        store: SQLiteStore,
        limits: LogLimits = LogLimits(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._limits = limits
        self._clock = clock
        self._sessions: dict[str, _Session] = {}
        self._new_rows: list[SessionRow] = []
        self._pending: list[tuple[StoredEvent, Event]] = []
        self._outputs: list[tuple[str, str, str]] = []  # (session id, key, text) to commit
        self._compact_due: set[str] = set()
        self._wake = trio.Event()
        self._flushed = trio.Event()
        self._listeners: list[Callable[[set[str]], None]] = []
        self._watchers: list[tuple[frozenset[str], Callable[[list[StoredEvent]], None]]] = []
        self._inline = False  #: an inline commit follows the appends: no need to wake the writer
        self._inline_block = _Inline(self)
        self.store_error: str | None = None  #: the last commit failure, until a commit succeeds
        self.commits = 0
        self.writer_wakeups = 0  #: times the writer task woke (the token path should not wake it)

    # -- loading -----------------------------------------------------------------------------

    def load(self) -> list[str]:
        """Read every session from the store and fold its retained events. Returns their ids."""
        for row in self._store.sessions():
            session = _Session(row, self._limits.tail)
            if row.snapshot is not None:
                snap = wire.structure(json.loads(row.snapshot), Snapshot)
                session.fold = SessionFold.from_snapshot(snap)
            for stored in self._store.events(row.id, row.epoch, row.snapshot_cursor):
                session.fold.apply(decode_event(stored), stored.at)
            self._sessions[row.id] = session
        return list(self._sessions)

    # -- writing -----------------------------------------------------------------------------

    def create(self, session_id: str) -> str:
        """Start a new session's log; returns its epoch."""
        if session_id in self._sessions:
            raise ValueError(f"session {session_id} already has a log")
        row = SessionRow(session_id, new_epoch(), 1, self._clock(), 0, 0, None)
        self._sessions[session_id] = _Session(row, self._limits.tail)
        self._new_rows.append(row)
        return row.epoch

    def append(self, session_id: str, event: Event) -> int:
        """Number and encode ``event``; it is committed and delivered by the writer task."""
        session = self._sessions[session_id]
        cursor = session.next_cursor
        session.next_cursor += 1
        stored = encode(session_id, session.epoch, cursor, self._clock(), event)
        self._pending.append((stored, event))
        if not self._inline:
            self._wake.set()
        return cursor

    def put_output(self, session_id: str, key: str, text: str) -> None:
        """Keep a tool's whole output (events carry a bounded part); committed with the next
        batch of events, so it is durable no later than the event that mentions it."""
        self._get(session_id)
        self._outputs.append((session_id, key, text))
        if not self._inline:
            self._wake.set()

    def output(self, session_id: str, key: str) -> str | None:
        self._get(session_id)
        for sid, k, text in reversed(self._outputs):  # not committed yet: still ours to give
            if sid == session_id and k == key:
                return text
        return self._store.output(session_id, key)

    def remove(self, session_id: str) -> None:
        """Forget a session entirely: its stored events, snapshot and outputs (after a flush)."""
        session = self._get(session_id)
        if any(stored.session_id == session_id for stored, _ in self._pending):
            raise StoreError("the session still has events being written; retry", code="busy")
        self._store.remove(session_id)
        for sub in session.subscribers:
            sub.end()
        del self._sessions[session_id]
        self._compact_due.discard(session_id)

    def end_subscriptions(self, session_id: str) -> None:
        """End the live feeds of one session (it was deleted): readers see the channel end."""
        session = self._get(session_id)
        for sub in session.subscribers:
            sub.end()
        session.subscribers.clear()

    def commit(self) -> None:
        """Commit what is pending now, inline (the token path: no hop to the writer task).

        On failure nothing is lost: the events stay pending and the writer task retries."""
        if self.store_error is None:
            self._commit_now()

    def inline(self) -> _Inline:
        """Append inside, then :meth:`commit` inline on leaving, without waking the writer task
        (the token path's one wake-up per delta is its reader's). If the commit cannot happen
        now (a failing store), the writer task is woken to retry."""
        return self._inline_block

    def _leave_inline(self) -> None:
        self._inline = False
        self.commit()
        if self._pending or self._new_rows or self._outputs:
            self._wake.set()

    async def flush(self, patience: float = FLUSH_PATIENCE) -> None:
        """Wait until everything appended before this call is durable.

        While the store is failing (disk full, read-only) the events stay pending and are
        retried; after ``patience`` seconds of that, the caller gets :class:`StoreError` (a
        client sees 503) rather than waiting indefinitely. Nothing is dropped either way."""
        with trio.move_on_after(patience):
            while self._pending or self._new_rows or self._outputs:
                await self._flushed.wait()
            return
        raise StoreError(
            f"the event store is failing ({self.store_error}); accepted and retrying",
            code="store_unavailable",
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task: commit, fold, fan out; and checkpoint the WAL once a second."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._checkpoint_loop)
            task_status.started()
            try:
                while True:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    self.writer_wakeups += 1
                    await self._commit_pending()
                    self._compact_pending()
            finally:
                self._commit_now()  # last chance for events appended during shutdown

    async def _commit_pending(self) -> None:
        while not self._commit_now():  # noqa: ASYNC110 - polling a failing disk, not an event
            await trio.sleep(RETRY_DELAY)

    def _commit_now(self) -> bool:
        if not (self._pending or self._new_rows or self._outputs):
            return True
        rows, batch, outputs = self._new_rows, self._pending, self._outputs
        try:
            self._store.commit(rows, [stored for stored, _ in batch], outputs)
        except StoreError as exc:
            if self.store_error is None:
                log.error("%s; retrying every %.1fs, nothing is lost meanwhile", exc, RETRY_DELAY)
            self.store_error = str(exc)
            return False
        self.store_error = None
        self.commits += 1
        self._new_rows, self._pending, self._outputs = [], [], []
        self._publish(batch)
        if self._compact_due:
            self._wake.set()  # the writer task compacts
        flushed, self._flushed = self._flushed, trio.Event()
        flushed.set()
        return True

    def _publish(self, batch: list[tuple[StoredEvent, Event]]) -> None:
        touched: set[str] = set()
        sessions = self._sessions
        for stored, event in batch:
            session = sessions[stored.session_id]
            session.fold.apply(event, stored.at)
            session.durable = stored.cursor
            session.tail.append(stored)
            touched.add(stored.session_id)
            if subscribers := session.subscribers:
                dropped = None
                for sub in subscribers:  # sub.offer(stored), one call less per event and client
                    direct = sub.direct
                    if (direct is None or not direct(stored)) and not sub.queue(stored):
                        dropped = [*(dropped or ()), sub]
                for sub in dropped or ():
                    subscribers.discard(sub)
        for session_id in touched:  # compacted by the writer task, never inline on a reader
            if self._over_retention(sessions[session_id]):
                self._compact_due.add(session_id)
        for listener in self._listeners:
            listener(touched)
        for types, watcher in self._watchers:
            seen = [stored for stored, _ in batch if stored.type in types]
            if seen:
                watcher(seen)

    def _over_retention(self, session: _Session) -> bool:
        retained = session.durable - session.low_water + 1
        return retained > math.ceil(self._limits.retain * 1.25)

    def _compact_pending(self) -> None:
        while self._compact_due:
            self._compact(self._sessions[self._compact_due.pop()])

    def _compact(self, session: _Session) -> None:
        low_water = session.durable - self._limits.retain + 1
        snap = session.fold.snapshot(session.epoch, session.durable)
        try:
            self._store.compact(session.id, session.durable, wire.dumps(snap), low_water)
        except StoreError as exc:
            log.warning("%s (compaction retried later)", exc)
            return
        session.low_water, session.snapshot_cursor = low_water, session.durable

    async def _checkpoint_loop(self) -> None:
        checkpointed = self.commits
        while True:
            await trio.sleep(CHECKPOINT_INTERVAL)
            if self.commits != checkpointed:  # an idle log costs no thread hop
                checkpointed = self.commits
                await trio.to_thread.run_sync(self._store.checkpoint)

    # -- reading -----------------------------------------------------------------------------

    def ids(self) -> list[str]:
        return list(self._sessions)

    def has(self, session_id: str) -> bool:
        return session_id in self._sessions

    def durable(self, session_id: str, cursor: int) -> bool:
        """Whether the session's event ``cursor`` is committed."""
        return self._get(session_id).durable >= cursor

    def next_commit(self) -> trio.Event:
        """Set after the next successful commit."""
        return self._flushed

    def fold(self, session_id: str) -> SessionFold:
        """The durable folded state (read-only for callers)."""
        return self._get(session_id).fold

    def info(self, session_id: str) -> SessionInfo:
        return self._get(session_id).fold.info()

    def position(self, session_id: str) -> Position:
        session = self._get(session_id)
        return Position(session.epoch, session.durable)

    def snapshot(self, session_id: str) -> Snapshot:
        session = self._get(session_id)
        return session.fold.snapshot(session.epoch, session.durable)

    def read_since(self, session_id: str, since: Position | None) -> Replay | SnapshotRead:
        """Exactly the durable events after ``since``, or a snapshot when that is impossible."""
        session = self._get(session_id)
        plan = _plan(session.epoch, session.low_water, session.durable, since)
        if isinstance(plan, NeedSnapshot):
            return SnapshotRead(self.snapshot(session_id), plan.reason)
        return Replay(list(self._events_after(session, plan)))

    def _events_after(self, session: _Session, plan: Exact) -> Iterable[StoredEvent]:
        if plan.after >= session.durable:
            return []
        tail = session.tail
        if tail and tail[0].cursor <= plan.after + 1:
            skip = plan.after + 1 - tail[0].cursor
            return [tail[i] for i in range(skip, len(tail))]
        return self._store.events(session.id, session.epoch, plan.after)

    def subscribe(
        self, session_id: str, since: Position | None, max_queue: int
    ) -> tuple[Replay | SnapshotRead, Subscription]:
        """Catch-up and live feed, taken atomically: no gap and no duplicate between them."""
        session = self._get(session_id)
        catch_up = self.read_since(session_id, since)
        sub = Subscription(self, session_id, max_queue)
        session.subscribers.add(sub)
        return catch_up, sub

    def subscriber_count(self, session_id: str) -> int:
        """Live feeds of one session (a remote session is followed upstream while > 0)."""
        session = self._sessions.get(session_id)
        return 0 if session is None else len(session.subscribers)

    def keepalive(self) -> None:
        """Offer every live feed a keep-alive marker (cheaper than a timeout per event)."""
        for session in self._sessions.values():
            for sub in [s for s in session.subscribers if not s.offer(KEEPALIVE)]:
                session.subscribers.discard(sub)

    def close_subscriptions(self) -> None:
        """End every live feed (shutdown): readers see the end of their channel."""
        for session in self._sessions.values():
            for sub in session.subscribers:
                sub.end()
            session.subscribers.clear()

    def _unsubscribe(self, sub: Subscription) -> None:
        session = self._sessions.get(sub.session_id)
        if session is not None:
            session.subscribers.discard(sub)

    def on_commit(self, listener: Callable[[set[str]], None]) -> None:
        """Call ``listener(session_ids)`` after each commit that touched those sessions."""
        self._listeners.append(listener)

    def watch(self, types: frozenset[str], watcher: Callable[[list[StoredEvent]], None]) -> None:
        """Call ``watcher(events)`` after each commit holding events of ``types`` (only those)."""
        self._watchers.append((types, watcher))

    def statistics(self) -> dict[str, object]:
        return {
            "sessions": len(self._sessions),
            "commits": self.commits,
            "pending": len(self._pending),
            "subscribers": sum(len(s.subscribers) for s in self._sessions.values()),
            "store_error": self.store_error,
        }

    def _get(self, session_id: str) -> _Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise NotFound(f"unknown session {session_id!r}", code="unknown_session") from None
