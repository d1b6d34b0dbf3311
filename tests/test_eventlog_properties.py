"""Property: whatever interleaving of appends, disconnects, restarts and compactions happens, a
client that applies replay-or-snapshot ends with the daemon's folded state, seeing no event twice
and skipping none."""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecode_trio.eventlog.core import Position, StoredEvent, decode_event
from sidecode_trio.eventlog.fold import SessionFold
from sidecode_trio.eventlog.log import EventLog, LogLimits, Replay, SnapshotRead, Subscription
from sidecode_trio.eventlog.store import SQLiteStore
from sidecode_trio.wire import events as ev

EVENTS = st.one_of(
    st.builds(ev.TextDelta, st.just("m"), st.integers(0, 2), st.text(min_size=1, max_size=5)),
    st.builds(ev.AssistantText, st.just("m"), st.integers(0, 2), st.text(max_size=5)),
    st.builds(ev.MessageQueued, st.sampled_from(["a", "b", "c"]), st.text(max_size=5)),
    st.builds(ev.TurnStarted, st.sampled_from(["a", "b", "c"])),
    st.builds(ev.TurnCompleted, st.sampled_from(["a", "b", "c"])),
    st.builds(ev.ToolStarted, st.sampled_from(["t1", "t2"]), st.just("Bash"), st.just({})),
    st.builds(ev.ToolFinished, st.sampled_from(["t1", "t2"]), st.booleans(), st.text(max_size=5)),
    st.builds(ev.PermissionRequested, st.sampled_from(["r1", "r2"]), st.just("Bash"), st.just({})),
    st.builds(
        ev.PermissionResolved,
        st.sampled_from(["r1", "r2"]),
        st.sampled_from(list(ev.PermissionOutcome)),
    ),
    st.builds(ev.StatusChanged, st.sampled_from(list(ev.SessionStatus))),
)

STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.lists(EVENTS, min_size=1, max_size=8)),
        st.tuples(st.just("client_reads"), st.integers(0, 2)),
        st.tuples(st.just("client_disconnects"), st.integers(0, 2)),
        st.tuples(st.just("daemon_restarts"), st.none()),
    ),
    max_size=25,
)


class Client:
    """A client as the protocol describes it: apply a snapshot or the replayed events."""

    def __init__(self) -> None:
        self.fold: SessionFold | None = None
        self.position: Position | None = None
        self.connected = False
        self.seen: set[int] = set()

    def apply(self, read: Replay | SnapshotRead) -> None:
        if isinstance(read, SnapshotRead):
            self.fold = SessionFold.from_snapshot(read.snapshot)
            self.position = Position(read.snapshot.epoch, read.snapshot.cursor)
            self.seen = set(range(1, read.snapshot.cursor + 1))
            return
        for stored in read.events:
            self.take(stored)

    def take(self, stored: StoredEvent) -> None:
        assert self.fold is not None and self.position is not None
        assert stored.cursor == self.position.cursor + 1, "gap or duplicate"
        assert stored.cursor not in self.seen
        self.seen.add(stored.cursor)
        self.fold.apply(decode_event(stored), stored.at)
        self.position = Position(stored.epoch, stored.cursor)


async def _run(steps: list[tuple[str, object]], db: Path) -> None:
    limits = LogLimits(tail=5, retain=100)
    clock = iter(range(10**6))
    store = SQLiteStore(db)
    log = EventLog(store, limits, clock=lambda: float(next(clock)))
    log.load()
    clients = [Client() for _ in range(3)]
    subs: dict[int, Subscription] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        if not log.has("s"):
            log.create("s")
            log.append("s", ev.SessionCreated("/w", "t"))
            await log.flush()
        for action, arg in steps:
            if action == "append":
                assert isinstance(arg, list)
                for event in arg:
                    log.append("s", event)
                await log.flush()
            elif action == "client_reads":
                assert isinstance(arg, int)
                client = clients[arg]
                if not client.connected:
                    read, sub = log.subscribe("s", client.position, 10_000)
                    client.apply(read)
                    client.connected = True
                    subs[arg] = sub
                sub = subs[arg]
                while True:
                    try:
                        client.take(sub.receive.receive_nowait())
                    except trio.WouldBlock:
                        break
            elif action == "client_disconnects":
                assert isinstance(arg, int)
                if clients[arg].connected:
                    subs.pop(arg).close()
                    clients[arg].connected = False
            else:  # the daemon restarts: everything in memory is gone
                for i, client in enumerate(clients):
                    if client.connected:
                        subs.pop(i).close()
                        client.connected = False
                nursery.cancel_scope.cancel()
                break
        else:
            nursery.cancel_scope.cancel()
    store.close()
    store = SQLiteStore(db)
    log = EventLog(store, limits)
    log.load()
    final = log.snapshot("s")
    for client in clients:
        read, sub = log.subscribe("s", client.position, 10_000)
        client.apply(read)
        sub.close()
        assert client.fold is not None
        assert client.fold.snapshot(final.epoch, final.cursor) == final
    store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS, more=STEPS)
def test_any_interleaving_converges_to_the_daemon_fold(
    steps: list[tuple[str, object]], more: list[tuple[str, object]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "db"
        trio.run(_run, steps, db)
        trio.run(_run, more, db)  # a second daemon life on the same store
