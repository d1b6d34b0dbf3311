"""The event log: replay-or-snapshot rules, durability, restart and retention."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from sidecode_trio.errors import BadRequest, NotFound, StoreError
from sidecode_trio.eventlog.core import (
    Exact,
    NeedSnapshot,
    Position,
    StoredEvent,
    decode_event,
    encode,
    plan_read,
)
from sidecode_trio.eventlog.fold import SessionFold
from sidecode_trio.eventlog.log import EventLog, LogLimits, Replay, SnapshotRead
from sidecode_trio.eventlog.store import SessionRow, SQLiteStore
from sidecode_trio.wire import converter as wire
from sidecode_trio.wire import events as ev
from sidecode_trio.wire.converter import converter, json_bytes
from sidecode_trio.wire.snapshot import Snapshot


def test_plan_read_decisions() -> None:
    # log holds cursors 5..10 of epoch "E"
    assert plan_read("E", 5, 10, Position("E", 10)) == Exact(10)
    assert plan_read("E", 5, 10, Position("E", 4)) == Exact(4)
    assert plan_read("E", 5, 10, Position("E", 3)) == NeedSnapshot("compacted")
    assert plan_read("E", 5, 10, Position("E", 11)) == NeedSnapshot("cursor_ahead")
    assert plan_read("E", 5, 10, Position("other", 7)) == NeedSnapshot("epoch_changed")
    assert plan_read("E", 5, 10, None) == NeedSnapshot("new_client")
    assert plan_read("E", 1, 0, Position("E", 0)) == Exact(0)


def test_position_parsing() -> None:
    assert Position.parse("abc-_:42") == Position("abc-_", 42)
    assert Position.parse("a:b:7") == Position("a:b", 7)
    for bad in ("", "42", "e:", ":4", "e:-1", "e:x", "e:" + "9" * 30):
        with pytest.raises(BadRequest):
            Position.parse(bad)


def _turn(fold_events: list[ev.Event], turn: str, text: str) -> None:
    fold_events += [
        ev.MessageQueued(turn, "hi"),
        ev.TurnStarted(turn, "m"),
        ev.TextDelta("msg", 0, text[:2]),
        ev.TextDelta("msg", 0, text[2:]),
        ev.AssistantText("msg", 0, text),
        ev.TurnCompleted(turn, text, "end_turn", ev.Usage(1, 2), 0.5, 0.5),
    ]


def test_fold_builds_the_transcript() -> None:
    fold = SessionFold("s")
    events: list[ev.Event] = [ev.SessionCreated("/w", "title", None, "default")]
    _turn(events, "t1", "hello")
    events += [
        ev.MessageQueued("t2", "again"),
        ev.TurnStarted("t2"),
        ev.ToolStarted("tool1", "Bash", {"command": "ls"}),
        ev.PermissionRequested("r1", "Bash", {"command": "ls"}, "tool1"),
    ]
    for i, event in enumerate(events):
        fold.apply(event, float(i))
    snap = fold.snapshot("E", len(events))
    assert snap.session.status is ev.SessionStatus.IDLE  # status comes from explicit events only
    assert snap.session.cost_usd == 0.5 and snap.session.turns == 2
    assert [item.TYPE for item in snap.items] == ["user", "assistant", "turn_end", "user", "tool"]
    assert snap.active_turn == "t2" and [p.request_id for p in snap.pending_permissions] == ["r1"]
    assert SessionFold.from_snapshot(snap).snapshot("E", len(events)) == snap


async def _open(path: Path, limits: LogLimits = LogLimits()) -> tuple[SQLiteStore, EventLog]:
    store = SQLiteStore(path)
    log = EventLog(store, limits)
    log.load()
    return store, log


async def test_events_are_durable_before_they_are_delivered(tmp_path: Path) -> None:
    store, log = await _open(tmp_path / "db")
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        epoch = log.create("s")
        _, sub = log.subscribe("s", None, 100)
        cursor = log.append("s", ev.SessionCreated("/w", "t"))
        assert cursor == 1
        delivered = await sub.receive.receive()
        # by the time a subscriber sees it, a fresh reader of the database sees it too
        assert [e.cursor for e in SQLiteStore(tmp_path / "db").events("s", epoch, 0)] == [1]
        assert delivered.cursor == 1 and delivered.epoch == epoch
        assert decode_event(delivered) == ev.SessionCreated("/w", "t")
        nursery.cancel_scope.cancel()
    store.close()


async def test_replay_is_exact_across_a_restart(tmp_path: Path) -> None:
    store, log = await _open(tmp_path / "db")
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        epoch = log.create("s")
        for i in range(50):
            log.append("s", ev.TextDelta("m", 0, f"{i},"))
        await log.flush()
        nursery.cancel_scope.cancel()
    store.close()

    store, log = await _open(tmp_path / "db")
    read = log.read_since("s", Position(epoch, 20))
    assert isinstance(read, Replay)
    assert [e.cursor for e in read.events] == list(range(21, 51))
    assert isinstance(log.read_since("s", Position(epoch, 50)), Replay)
    assert log.read_since("s", Position(epoch, 50)) == Replay([])
    snap = log.read_since("s", None)
    assert isinstance(snap, SnapshotRead) and snap.snapshot.cursor == 50
    assert snap.snapshot.items[0].text == "".join(f"{i}," for i in range(50))  # type: ignore[attr-defined]
    with pytest.raises(NotFound):
        log.read_since("nope", None)
    store.close()


async def test_retention_compacts_into_a_snapshot(tmp_path: Path) -> None:
    limits = LogLimits(tail=10, retain=100)
    store, log = await _open(tmp_path / "db", limits)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        epoch = log.create("s")
        for i in range(300):
            log.append("s", ev.TextDelta("m", 0, "x"))
            if i % 7 == 0:
                await log.flush()
        await log.flush()
        nursery.cancel_scope.cancel()
    assert isinstance(log.read_since("s", Position(epoch, 1)), SnapshotRead)
    recent = log.read_since("s", Position(epoch, 250))
    assert isinstance(recent, Replay) and len(recent.events) == 50
    store.close()
    # after a restart the fold starts from the stored snapshot and stays equal
    before = log.snapshot("s")
    store, log = await _open(tmp_path / "db", limits)
    assert log.snapshot("s") == before
    assert isinstance(log.read_since("s", Position(epoch, 250)), Replay)
    store.close()


async def test_a_lagging_subscriber_is_dropped_and_others_are_not(tmp_path: Path) -> None:
    store, log = await _open(tmp_path / "db")
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        log.create("s")
        _, slow = log.subscribe("s", None, 16)
        _, fast = log.subscribe("s", None, 1000)
        for _ in range(40):
            log.append("s", ev.TextDelta("m", 0, "x"))
        await log.flush()
        assert slow.lagged
        got = [slow.receive.receive_nowait().cursor for _ in range(16)]
        assert got == list(range(1, 17))
        with pytest.raises(trio.EndOfChannel):
            slow.receive.receive_nowait()
        assert [fast.receive.receive_nowait().cursor for _ in range(40)] == list(range(1, 41))
        nursery.cancel_scope.cancel()
    store.close()


async def test_an_ended_feed_still_subscribed_is_dropped_not_a_crash(tmp_path: Path) -> None:
    """``end()`` (a WatchCode retry closing the stream it replaces, a revocation) closes a feed
    at once, but it stays subscribed until its stream's task runs ``close()``, which can be much
    later (that task busy, or blocked writing into a dead socket). An event published meanwhile
    is not for it: the log drops it and goes on (it crashed the writer, and the daemon)."""
    store, log = await _open(tmp_path / "db")
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        log.create("s")
        _, ended = log.subscribe("s", None, 100)
        _, other = log.subscribe("s", None, 100)
        ended.end()
        log.append("s", ev.TextDelta("m", 0, "x"))
        await log.flush()
        assert other.receive.receive_nowait().cursor == 1
        with pytest.raises(trio.EndOfChannel):
            ended.receive.receive_nowait()
        ended.close()  # its stream's task, at last: nothing left to undo
        log.append("s", ev.TextDelta("m", 0, "y"))
        await log.flush()
        assert other.receive.receive_nowait().cursor == 2
        nursery.cancel_scope.cancel()
    store.close()


def test_store_files_are_private(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db")
    assert (tmp_path / "db").stat().st_mode & 0o777 == 0o600
    store.close()


class FlakyStore(SQLiteStore):
    """A store whose disk is full until told otherwise."""

    failing = True

    def commit(
        self,
        new_sessions: Sequence[SessionRow],
        events: Sequence[StoredEvent],
        outputs: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        if self.failing:
            raise StoreError("database or disk is full")
        super().commit(new_sessions, events, outputs)


async def test_a_failing_store_gives_a_clear_error_and_loses_nothing(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "db")
    log = EventLog(store)
    log.load()
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        log.create("s")
        _, sub = log.subscribe("s", None, 100)
        log.append("s", ev.SessionCreated("/w", "t"))
        log.append("s", ev.TextDelta("m", 0, "kept"))
        with pytest.raises(StoreError, match="disk is full"):
            await log.flush(patience=0.3)
        assert log.statistics()["store_error"] is not None
        with pytest.raises(trio.WouldBlock):
            sub.receive.receive_nowait()  # nothing is delivered before it is durable
        store.failing = False  # room again: the writer's retry commits everything
        await log.flush()
        assert log.statistics()["store_error"] is None
        assert [sub.receive.receive_nowait().cursor for _ in range(2)] == [1, 2]
        nursery.cancel_scope.cancel()
    store.close()
    reopened, log = await _open(tmp_path / "db")
    assert log.snapshot("s").items[0].text == "kept"  # type: ignore[attr-defined]
    reopened.close()


async def test_an_inline_commit_wakes_nothing_and_stays_durable_before_delivered(
    tmp_path: Path,
) -> None:
    """The token path (``with log.inline()``, then the commit on leaving) costs no wake-up of
    the writer task; what it delivers is already committed."""
    store, log = await _open(tmp_path / "e.sqlite3")
    log.create("s1")
    log.commit()
    _, sub = log.subscribe("s1", None, 100)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        await trio.testing.wait_all_tasks_blocked()
        woken = log.writer_wakeups
        for n in range(5):
            with log.inline():
                log.append("s1", ev.TextDelta("msg", 0, f"t{n}"))
            delivered = sub.receive.receive_nowait()  # delivered as soon as the block ends
            assert [e.cursor for e in store.events("s1", delivered.epoch, 0)][-1] == (
                delivered.cursor
            )
        await trio.testing.wait_all_tasks_blocked()
        assert log.writer_wakeups == woken
        log.append("s1", ev.TextDelta("msg", 0, "off the token path"))  # the writer commits it
        await log.flush()
        assert log.writer_wakeups == woken + 1
        nursery.cancel_scope.cancel()
    store.close()


async def test_watchers_hear_only_the_types_they_watch(tmp_path: Path) -> None:
    """The notifier's wake-up: a commit of text deltas alone calls no watcher."""
    store, log = await _open(tmp_path / "e.sqlite3")
    log.create("s1")
    heard: list[list[str]] = []
    log.watch(frozenset({"turn.completed"}), lambda events: heard.append([e.type for e in events]))
    with log.inline():
        log.append("s1", ev.TextDelta("msg", 0, "a"))
    assert heard == []
    with log.inline():
        log.append("s1", ev.TextDelta("msg", 0, "b"))
        log.append("s1", ev.TurnCompleted("t1", "ab", "end_turn", ev.Usage(1, 2), 0.5, 0.5))
    assert heard == [["turn.completed"]]
    store.close()


def test_checkpoints_reuse_one_connection(tmp_path: Path) -> None:
    """One long-lived checkpoint connection, not a new one every second."""
    store = SQLiteStore(tmp_path / "e.sqlite3")
    store.checkpoint()
    first = store._checkpointer
    assert first is not None
    for _ in range(3):
        store.checkpoint()
        assert store._checkpointer is first
    store.close()
    assert store._checkpointer is None


def test_the_fold_keeps_client_ids_but_not_those_of_refused_messages() -> None:
    """What a restarted daemon rebuilds its idempotency from (issue 13, items 2 and 14)."""
    fold = SessionFold("s")
    events: list[ev.Event] = [
        ev.SessionCreated("/w", "t", client_id="c1"),
        ev.MessageQueued("m1", "first", "c1"),
        ev.MessageQueued("m2", "refused", "k2"),
        ev.TurnFailed("m2", "store_unavailable", "never ran"),
        ev.MessageQueued("m3", "no id"),
        ev.MessageQueued("m4", "failed otherwise", "k4"),
        ev.TurnFailed("m4", "cli_exited"),
    ]
    for event in events:
        fold.apply(event, 1.0)
    assert fold.created_client_id == "c1"
    assert fold.message_client_ids() == [("c1", "m1"), ("k4", "m4")]
    again = SessionFold.from_snapshot(fold.snapshot("e", len(events)))
    assert again.message_client_ids() == fold.message_client_ids()
    assert again.created_client_id == "c1"  # kept in the snapshot


def test_a_snapshot_keeps_the_client_id_of_a_create_without_a_prompt() -> None:
    """Compaction drops ``session.created``: the stored snapshot must carry its client_id (a
    create without a prompt has no first message to take it from; a later message's id is not
    the create's), through the JSON the store keeps."""
    fold = SessionFold("s")
    for event in (
        ev.SessionCreated("/w", "t", client_id="bare"),
        ev.MessageQueued("m1", "hi", "k1"),
    ):
        fold.apply(event, 1.0)
    stored = wire.structure(json.loads(wire.dumps(fold.snapshot("e", 2))), Snapshot)
    again = SessionFold.from_snapshot(stored)
    assert again.created_client_id == "bare"
    assert again.message_client_ids() == [("k1", "m1")]
    assert again.snapshot("e", 2) == fold.snapshot("e", 2)


@given(
    session_id=st.text(st.characters(blacklist_categories=())),
    message_id=st.text(st.characters(blacklist_categories=())),
    text=st.text(st.characters(blacklist_categories=())),
    index=st.integers(-(10**30), 10**30),
    cursor=st.integers(0, 2**63),
    at=st.floats(allow_nan=True, allow_infinity=True) | st.floats(0, 4e9),
)
def test_a_text_delta_envelope_is_the_same_bytes_on_the_fast_path(
    session_id: str, message_id: str, text: str, index: int, cursor: int, at: float
) -> None:
    """``encode`` formats text deltas directly: byte for byte what the general path writes
    (unicode, lone surrogates, control characters, odd floats)."""
    event = ev.TextDelta(message_id, index, text)
    stored = encode(session_id, "epoch0000000", cursor, at, event)
    envelope = {
        "session_id": session_id,
        "epoch": "epoch0000000",
        "cursor": cursor,
        "at": at,
        "event": converter.unstructure(event, unstructure_as=ev.Event),
    }
    assert stored.data == json_bytes(envelope)
    assert stored.type == "text.delta" and decode_event(stored) == event


def test_a_one_event_commit_is_one_statement_and_durable(tmp_path: Path) -> None:
    """The token path's usual commit (one event) runs one INSERT, its own transaction: no
    BEGIN or COMMIT from Python; it is on disk for another connection when commit() returns,
    and a failing one leaves nothing half done (the next commit works)."""
    store = SQLiteStore(tmp_path / "e.sqlite3")
    store.commit([SessionRow("s", "ep", 1, 0.0, 0, 0, None)], [])
    ran: list[str] = []
    store._db.set_trace_callback(ran.append)
    event = StoredEvent("s", "ep", 1, 1.0, "text.delta", b"{}")
    store.commit([], [event])
    store._db.set_trace_callback(None)
    assert [statement.split()[0] for statement in ran] == ["INSERT"]
    other = sqlite3.connect(tmp_path / "e.sqlite3")
    assert other.execute("SELECT cursor, data FROM events").fetchall() == [(1, b"{}")]
    store._db.execute("PRAGMA query_only = ON")
    with pytest.raises(StoreError, match="readonly"):
        store.commit([], [StoredEvent("s", "ep", 2, 1.0, "text.delta", b"{}")])
    store._db.execute("PRAGMA query_only = OFF")
    assert not store._db.in_transaction
    store.commit([], [StoredEvent("s", "ep", 2, 1.0, "text.delta", b"[]")])
    assert other.execute("SELECT cursor FROM events").fetchall() == [(1,), (2,)]
    other.close()
    store.close()
