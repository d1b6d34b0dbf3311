"""A client that stops reading, over SSE and over WebTransport: the daemon's memory stays bounded,
the other clients keep receiving, and the stalled client later resumes exactly.

The daemon is a separate process, so its resident memory (``/proc/PID/status``) is its own. The
memory check compares two equal bursts in one daemon: one while every client reads, one while a
client has stopped. What the daemon keeps anyway (the transcript in the session's fold, the
in-memory tail of recent events) grows alike in both; a stalled client that made the daemon
buffer what it could not send (a queue without a bound, a transport buffering without limit)
would add the whole burst again. The stalled client's own sign: the log drops its subscription
(``/v1/status`` ``log.subscribers``) while the healthy client reads the burst to its end.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from sidecode_trio.wire import converter as wire
from sidecode_trio.wire.snapshot import Snapshot

from faultkit import DaemonProcess, Follower, Kit, daemon_process, env_int, memory
from helpers import Client, load_example

pytestmark = pytest.mark.faults

wt = load_example("wt_client")
MiB = 1024 * 1024
BURST_DELTAS = env_int("FAULTS_STALL_DELTAS", 2500)  # text deltas per burst (one event each)
DELTA_CHARS = 1000
STALLED = env_int("FAULTS_STALLED_CLIENTS", 4)  # stalled clients at once (more: a sharper check)
STALLED_WT = env_int("FAULTS_STALLED_WT_CLIENTS", 2)  # each resume replays ~5 MB over aioquic
CLIENT_QUEUE = 512  # events queued per subscriber before a drop (the default is 4096)
HEADROOM = 8 * MiB  # what all the stalled clients together may add (measured: nothing)
SMALL_WINDOW = 16 * 1024  # a stalled SSE client's TCP receive buffer


@pytest.fixture
def kit(tmp_path: Path, fake_claude: Path, work_dir: Path, claude_env: dict[str, str]) -> Kit:
    return Kit(tmp_path, fake_claude, work_dir, claude_env)


async def subscribers(client: Client) -> int:
    status = (await client.http.get("/v1/status")).json()
    return int(status["log"]["subscribers"])


async def burst(client: Client, reader: Follower) -> str:
    """One long answer (~2.5 MB of text in 1000-character deltas), read to its end by
    ``reader``; returns its message id."""
    prompt = f"[[fast:{BURST_DELTAS}:{DELTA_CHARS}]]"
    message: str = (await client.send(reader.session_id, prompt))["message_id"]
    await reader.until_ended(message, timeout=60)
    return message


async def stalled_burst(
    daemon: DaemonProcess,
    kit: Kit,
    stall: Callable[[Client, str], Awaitable[None]],
    stalled: int = STALLED,
) -> tuple[Follower, str, Snapshot]:
    """A control burst, then ``stall`` (clients that stop reading) and the same burst again.
    Returns the healthy follower, the stalled burst's message id and the snapshot after it."""
    client = daemon.client
    created = await client.create(kit.work_dir, "warm up")
    healthy = Follower("healthy", created["session"]["id"])
    await healthy.connect(client, from_start=True)
    await healthy.read_until(lambda f: bool(f.ends_of(created["message_id"])))
    base = memory(daemon.pid)
    await burst(client, healthy)
    control = memory(daemon.pid)
    await stall(client, healthy.session_id)
    assert await subscribers(client) == 1 + stalled
    before = healthy.cursor
    message = await burst(client, healthy)  # read to its end while the others are stalled
    after = memory(daemon.pid)
    figures = {
        "events": healthy.cursor - before,
        "text_bytes": BURST_DELTAS * DELTA_CHARS,
        "stalled_clients": stalled,
        "control_growth": control["VmHWM"] - base["VmRSS"],
        "stalled_growth": after["VmHWM"] - control["VmRSS"],
        "healthy_reconnects": healthy.reconnects,
    }
    print(f"stalled-client figures: {figures}")
    assert await subscribers(client) == 1, "every lagging client's subscription was dropped"
    assert figures["stalled_growth"] < figures["control_growth"] + HEADROOM, figures
    return healthy, message, await healthy.check_fold(client)


async def test_stalled_sse_clients(kit: Kit) -> None:
    stalled: list[Follower] = []

    async def stall(client: Client, session_id: str) -> None:
        for n in range(STALLED):
            follower = Follower(f"stalled-{n}", session_id)
            await follower.connect(client, receive_buffer=SMALL_WINDOW)
            await follower.read_until(lambda f: f.fold is not None)  # a snapshot, then no more
            stalled.append(follower)

    try:
        with trio.fail_after(90):
            async with daemon_process(kit, settings={"client_queue": CLIENT_QUEUE}) as daemon:
                healthy, message, snap = await stalled_burst(daemon, kit, stall)
                for follower in stalled:
                    # it reads again: what the daemon had sent it, then the end of its stream
                    await follower.drain(timeout=30)
                    assert follower.cursor < snap.cursor
                    # and resumes from its last (epoch, cursor): exact, no second snapshot
                    await follower.connect(daemon.client)
                    await follower.check_fold(daemon.client)
                    assert follower.snapshots == 1 and bool(follower.ends_of(message))
                    await follower.close()
                await healthy.close()
    finally:
        for follower in stalled:
            await follower.close()


async def paired_device(client: Client, name: str) -> Any:
    """A device paired over WebTransport from the pairing payload (what a user does)."""
    response = await client.http.post("/v1/pairings", json={"scope": "admin"})
    assert response.status_code == 201, response.text
    async with trio.open_nursery() as nursery:
        credentials = await wt.pair(nursery, response.json()["payload"], name)
        nursery.cancel_scope.cancel()
    return wt.Device(credentials)


async def test_stalled_webtransport_clients(kit: Kit) -> None:
    stalled: list[tuple[Follower, str | None]] = []
    device: list[Any] = []
    with trio.fail_after(90):
        async with daemon_process(kit, settings={"client_queue": CLIENT_QUEUE}) as daemon:
            async with trio.open_nursery() as connections:

                async def stall(client: Client, session_id: str) -> None:
                    device.append(await paired_device(client, "stalling phone"))
                    for n in range(STALLED_WT):
                        follower = Follower(f"stalled-wt-{n}", session_id)
                        session = await device[0].connect(connections)
                        path = f"/v1/sessions/{session_id}/events"
                        stream = await session.subscribe(path)  # a snapshot first
                        follower.apply_wt(await stream.next())
                        stalled.append((follower, stream.last_id))
                        session.client.stop_reading()  # its network stalls: no more acks

                healthy, message, snap = await stalled_burst(daemon, kit, stall, STALLED_WT)
                connections.cancel_scope.cancel()  # those connections are gone for good
            for follower, last in stalled:

                async def collect(_: Any, frame: dict[str, Any], f: Follower = follower) -> bool:
                    f.apply_wt(frame)
                    return f.cursor >= snap.cursor

                # a new connection resumes from the last event it applied: no second snapshot
                with trio.fail_after(30):
                    await device[0].follow(follower.session_id, collect, last)
                assert follower.snapshots == 1 and bool(follower.ends_of(message))
                assert follower.fold is not None
                mine = follower.fold.snapshot(snap.epoch, snap.cursor)
                assert wire.unstructure(mine) == wire.unstructure(snap)
            await healthy.close()
