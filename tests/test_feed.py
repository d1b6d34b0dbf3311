"""The feed (sidecode_trio/feed) on its own: an event log, no transport, no daemon.

Each transport's tests (test_direct_sse, test_watchcode, test_quic) cover the feed through its
encoder; these pin the rules every transport now shares: order across the direct path and the
queue, the lag policy, revocation, and the history replay of a client without a position.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from sidecode_trio.eventlog.core import Position, StoredEvent
from sidecode_trio.eventlog.log import EventLog, Replay, SnapshotRead, Subscription
from sidecode_trio.eventlog.store import SQLiteStore
from sidecode_trio.feed import End, Events, KeepAlive, SessionFeed, Snapshot
from sidecode_trio.security.auth import Links, Principal
from sidecode_trio.security.devices import Scope
from sidecode_trio.wire import events as ev

PHONE = Principal("dev1", "phone", Scope.APPROVE)


class LogSource:
    """What Operations gives the feed, without the scope check (tested in test_security)."""

    def __init__(self, log: EventLog) -> None:
        self.log = log

    def snapshot_position(self, who: Principal, session_id: str) -> Position:
        return self.log.position(session_id)

    def subscribe(
        self, who: Principal, session_id: str, since: Position | None, max_queue: int
    ) -> tuple[Replay | SnapshotRead, Subscription]:
        return self.log.subscribe(session_id, since, max_queue)


class Refusing:
    """A transport's direct path that takes events but refuses every third one."""

    def __init__(self, got: list[int]) -> None:
        self.got = got
        self.offered = 0

    def write(self, event: StoredEvent) -> bool:
        self.offered += 1
        if self.offered % 3 == 0:
            return False
        self.got.append(event.cursor)
        return True

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint()


def _log(tmp_path: Path) -> EventLog:
    log = EventLog(SQLiteStore(tmp_path / "db"))
    log.load()
    return log


def _delta() -> ev.Event:
    return ev.TextDelta("m", 0, "x")


async def test_events_arrive_once_and_in_order_across_the_direct_path_and_the_queue(
    tmp_path: Path,
) -> None:
    log = _log(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        log.create("s")
        got: list[int] = []
        direct = Refusing(got)
        feed = SessionFeed.open(LogSource(log), None, PHONE, "s", None, 1000)
        assert [type(item) for item in feed.catch_up()] == [Snapshot]  # a new client
        ended = trio.Event()

        async def read() -> None:
            async for item in feed.live(direct):
                if isinstance(item, Events):
                    got.extend(e.cursor for e in item.events)
                elif isinstance(item, End):
                    ended.set()

        nursery.start_soon(read)
        for burst in range(10):
            for _ in range(burst + 1):
                log.append("s", _delta())
            await log.flush()
            await trio.testing.wait_all_tasks_blocked()
        feed.end()
        with trio.fail_after(5):
            await ended.wait()
        assert got == list(range(1, 56))  # 1 + 2 + ... + 10 events, each once, in order
        assert direct.offered > 0  # some went the direct way, some (refused) through the queue
        feed.close()
        nursery.cancel_scope.cancel()


async def test_a_client_that_lags_is_ended_with_lagging_after_what_it_was_owed(
    tmp_path: Path,
) -> None:
    log = _log(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        log.create("s")
        with SessionFeed.open(LogSource(log), None, PHONE, "s", None, 4) as feed:
            for _ in range(10):
                log.append("s", _delta())
            await log.flush()
            items = [item async for item in feed.live()]
        assert items == [Events(items[0].events), End("lagging")]  # type: ignore[union-attr]
        assert [e.cursor for e in items[0].events] == [1, 2, 3, 4]  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def test_revoking_the_device_ends_the_feed_and_keepalives_pass_through(
    tmp_path: Path,
) -> None:
    log = _log(tmp_path)
    links = Links()
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        log.create("s")
        with SessionFeed.open(LogSource(log), links, PHONE, "s", None, 100) as feed:
            log.keepalive()
            live = feed.live()
            assert await live.__anext__() == KeepAlive()
            assert links.close_device("dev1") == 1
            assert await live.__anext__() == End("closed")
            await live.aclose()
        assert links.count() == 0  # closing the feed forgot its registration
        nursery.cancel_scope.cancel()


async def test_a_resume_is_exact_and_an_unknown_position_gets_a_snapshot(tmp_path: Path) -> None:
    log = _log(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        epoch = log.create("s")
        for _ in range(5):
            log.append("s", _delta())
        await log.flush()
        source = LogSource(log)
        with SessionFeed.open(source, None, PHONE, "s", Position(epoch, 2), 100) as feed:
            (replay,) = feed.catch_up()
            assert isinstance(replay, Events) and not replay.history
            assert [e.cursor for e in replay.events] == [3, 4, 5]
        with SessionFeed.open(source, None, PHONE, "s", Position("other", 2), 100) as feed:
            (snap,) = feed.catch_up()
            assert isinstance(snap, Snapshot) and snap.snapshot.cursor == 5
        # no position, replay allowed up to 10 events: the whole log, marked as history
        with SessionFeed.open(source, None, PHONE, "s", None, 100, replay_up_to=10) as feed:
            (history,) = feed.catch_up()
            assert isinstance(history, Events) and history.history
            assert [e.cursor for e in history.events] == [1, 2, 3, 4, 5]
        with SessionFeed.open(source, None, PHONE, "s", None, 100, replay_up_to=4) as feed:
            assert isinstance(next(feed.catch_up()), Snapshot)  # too long: a snapshot
        nursery.cancel_scope.cancel()
