"""What the daemon prints, logs and records: nothing a client sends can drive the owner's
terminal or forge a log line, the pairing secret never lands in a log, and the events an owner
needs (a CLI crash, a turn recovered after a restart) are logged once, with the session id."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import trio

from sidecode_trio.config import DaemonConfig
from sidecode_trio.daemon import DaemonHandle, serve
from sidecode_trio.eventlog.log import EventLog
from sidecode_trio.eventlog.store import SQLiteStore
from sidecode_trio.sessions.supervisor import SessionSupervisor, SupervisorSettings
from sidecode_trio.wire import events as ev

from helpers import Client

pytestmark = pytest.mark.trio


async def test_a_cli_crash_is_logged_with_the_session_id(
    daemon: Client, work_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(20):
        session = (await daemon.create(work_dir, "[[crash:3]]"))["session"]
        async with daemon.events(session["id"]) as stream:
            await stream.until_type("session.error")
    crashes = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and session["id"] in r.getMessage()
    ]
    assert len(crashes) == 1, [r.getMessage() for r in caplog.records]
    assert "code 3" in crashes[0].getMessage()


async def test_recovering_an_interrupted_turn_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What a killed daemon left open (a running turn, a queued message, a pending request)
    is closed at start-up, and one INFO line says so with the session id."""
    store = SQLiteStore(tmp_path / "events.sqlite3")
    event_log = EventLog(store)
    event_log.load()
    event_log.create("s1")
    for event in (
        ev.SessionCreated(str(tmp_path), "t"),
        ev.MessageQueued("m1", "first"),
        ev.TurnStarted("m1"),
        ev.MessageQueued("m2", "second"),
    ):
        event_log.append("s1", event)
    event_log.commit()  # folded when committed, as a killed daemon left it on disk
    caplog.set_level(logging.INFO, logger="sidecode_trio.sessions")
    SessionSupervisor("s1", event_log, SupervisorSettings()).recover()
    store.close()
    lines = [r for r in caplog.records if "s1" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "m1" in lines[0].getMessage() and "1 queued" in lines[0].getMessage()


async def test_the_start_up_pairing_offer_is_never_written_to_a_non_terminal(
    make_config: Callable[..., DaemonConfig],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """stdout here is not a terminal (as under systemd or ``> daemon.log``): no pairing code,
    link or secret goes there or into the log; one log line says how to get one."""
    caplog.set_level(logging.INFO)
    config = make_config()
    async with trio.open_nursery() as nursery:
        handle: DaemonHandle = await nursery.start(partial(serve, config, show_pairing=True))
        handle.stop.set()
    out, err = capfd.readouterr()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for text in (out, err, logged):
        assert "pair#" not in text and "#pair=" not in text and '"secret"' not in text
        assert "sidecode-trio://" not in text
    assert "sidecode-trio pair" in logged
