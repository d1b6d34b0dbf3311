"""Scenario 4: replay of 10,000 missed events to one reconnecting client.

* From memory (the live daemon's in-memory tail): the real ``serve()`` runs in this process,
  with its :class:`EventLog` recorded on creation (a subclass, patched in for the run) so that
  10,000 ``TextDelta`` events can be appended to a session straight through ``EventLog.append``.
* From SQLite (after a restart): the same state directory served by a fresh child daemon, whose
  tail is empty, so the same request reads the events back from the store.
* Baseline: the raw relay writing 10,000 pre-encoded frames of the same size from memory.

The client (a separate process) sends ``Last-Event-ID: <epoch>:<cursor>`` naming the event just
before the 10,000 and measures, from sending the request: the first byte, the first frame and the
10,000th frame. Each is repeated on a fresh connection; the median and the best are reported.
"""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar
from unittest import mock

import attrs
import trio
from bench_harness import (
    STOP_GRACE,
    Layout,
    client_argv,
    expect,
    http_call,
    pin,
    rss_mib,
    run_client,
)
from bench_targets import child_daemon

import sidecode_trio.daemon as daemon_module
from sidecode_trio.config import DaemonConfig
from sidecode_trio.daemon import DaemonHandle, serve
from sidecode_trio.eventlog.log import EventLog
from sidecode_trio.wire.events import TextDelta

REPLAY_TEXT = "7" * 13 + ";"  # the relay's replay frames carry the same 14 characters
MESSAGE_ID = "msg_replay"
APPEND_BATCH = 500


class _RecordedLog(EventLog):
    """An :class:`EventLog` that remembers its instances (the daemon keeps its own private)."""

    made: ClassVar[list[EventLog]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _RecordedLog.made.append(self)


@attrs.frozen
class ReplayPlan:
    events: int
    repeat: int
    daemon_cpu: int
    client_cpu: int


@attrs.define
class InProcess:
    """The in-process daemon: its handle, its event log, and whether it had to be cancelled."""

    handle: DaemonHandle
    log: EventLog
    forced_stop: bool = False


@asynccontextmanager
async def inprocess_daemon(layout: Layout, name: str) -> AsyncIterator[InProcess]:
    """The real ``serve()`` in this process; stopped by its ``stop`` event, cancelled after
    ``STOP_GRACE`` if it has not returned by then."""
    config = DaemonConfig(
        state_dir=layout.state(name),
        port=0,
        claude=str(layout.wrapper),
        allowed_roots=(layout.work,),
        claude_env=layout.cli_env(),
    )
    with mock.patch.object(daemon_module, "EventLog", _RecordedLog):
        async with trio.open_nursery() as nursery:
            handle: DaemonHandle = await nursery.start(serve, config)
            daemon = InProcess(handle, _RecordedLog.made[-1])
            try:
                yield daemon
            finally:
                handle.stop.set()
                nursery.cancel_scope.deadline = trio.current_time() + STOP_GRACE
        daemon.forced_stop = nursery.cancel_scope.cancelled_caught


async def fill(handle: DaemonHandle, log: EventLog, layout: Layout, events: int) -> tuple[str, str]:
    """A session holding ``events`` text deltas: its id, and the Last-Event-ID just before."""
    status, reply = await http_call(
        handle.port, handle.token, "POST", "/v1/sessions", {"cwd": str(layout.work)}
    )
    session_id = str(expect(status, reply, 201)["session"]["id"])
    before = log.position(session_id)
    delta = TextDelta(MESSAGE_ID, 0, REPLAY_TEXT)
    for start in range(0, events, APPEND_BATCH):
        for _ in range(min(APPEND_BATCH, events - start)):
            log.append(session_id, delta)
        await log.flush()
    return session_id, str(before)


async def replay(
    layout: Layout, plan: ReplayPlan, port: int, path: str, token: str, last_event_id: str
) -> dict[str, Any]:
    argv = client_argv(
        "replay",
        port,
        path,
        plan.client_cpu,
        token=token,
        last_event_id=last_event_id,
        frames=plan.events,
        repeat=plan.repeat,
        timeout=30,
    )
    result = await run_client(argv, 60 + 30 * plan.repeat, layout.log("client"))
    return summarise(result["runs"])


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"runs": len(runs), "frames": min(r["frames"] for r in runs)}
    for key in ("total_ms", "ttfb_ms", "first_frame_ms"):
        values = [r[key] for r in runs]
        summary[key] = statistics.median(values)
        summary[f"{key}_best"] = min(values)
    summary["total_ms_first"] = runs[0]["total_ms"]  # the first after start-up: cold caches
    summary["bytes"] = runs[0]["bytes"]
    return summary


async def from_memory(layout: Layout, plan: ReplayPlan) -> tuple[dict[str, Any], str, str]:
    """Fill a session in an in-process daemon and replay from its tail. Also returns the ids."""
    pin(0, plan.daemon_cpu)
    try:
        async with inprocess_daemon(layout, "replay") as daemon:
            handle = daemon.handle
            session_id, before = await fill(handle, daemon.log, layout, plan.events)
            path = f"/v1/sessions/{session_id}/events"
            result = await replay(layout, plan, handle.port, path, handle.token, before)
    finally:
        pin(0, plan.client_cpu)
    if daemon.forced_stop:
        result["note"] = f"serve() did not return within {STOP_GRACE:g} s of stop; cancelled"
    return result, session_id, before


async def from_sqlite(
    layout: Layout, plan: ReplayPlan, session_id: str, before: str
) -> dict[str, Any]:
    """The same replay from a restarted child daemon (empty tail: the events come from SQLite)."""
    async with child_daemon(layout, "replay", plan.daemon_cpu) as daemon:
        path = f"/v1/sessions/{session_id}/events"
        result = await replay(layout, plan, daemon.port, path, daemon.token, before)
        result["rss_mib"] = rss_mib(daemon.pid)
    return result


async def from_relay(layout: Layout, plan: ReplayPlan, port: int) -> dict[str, Any]:
    return await replay(layout, plan, port, "/replay", "", "")
