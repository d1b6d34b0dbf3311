"""Load: many sessions streaming at once to many clients, for a bounded time.

LOAD_SESSIONS sessions (20) each stream an answer of LOAD_DELTAS text deltas (300) paced at
LOAD_RATE deltas per second (30) from the fake CLI, while LOAD_CLIENTS SSE clients (100) and
LOAD_WT_CLIENTS WebTransport clients (4) follow them: some from cursor 0, some from a snapshot
taken mid-stream, some dropping their connection mid-stream and resuming from their last
``(epoch, cursor)``. Every client checks each event is the one after its last (no loss, no
duplicate) and, at the end, that its folded state equals the daemon's snapshot. Raise the
counts for a local soak, e.g. ``LOAD_SESSIONS=50 LOAD_CLIENTS=500 LOAD_DELTAS=3000``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import trio

from sidecode_trio.wire import converter as wire
from sidecode_trio.wire.snapshot import AssistantItem, Snapshot

from faultkit import (
    DaemonProcess,
    Follower,
    Kit,
    daemon_process,
    env_int,
    kill_leftovers,
    memory,
    seeded,
)
from helpers import Client, load_example

pytestmark = pytest.mark.load

wt = load_example("wt_client")
SESSIONS = env_int("LOAD_SESSIONS", 20)
CLIENTS = env_int("LOAD_CLIENTS", 100)
WT_CLIENTS = env_int("LOAD_WT_CLIENTS", 4)
DELTAS = env_int("LOAD_DELTAS", 300)
RATE = env_int("LOAD_RATE", 30)
HOW = ("from_start", "snapshot", "resumes")  # how a client joins, in turn


@pytest.fixture
def kit(tmp_path: Path, fake_claude: Path, work_dir: Path, claude_env: dict[str, str]) -> Kit:
    return Kit(tmp_path, fake_claude, work_dir, claude_env)


async def follow_sse(
    client: Client, follower: Follower, how: str, turn: str, resume_at: int
) -> None:
    """Follow one session to the end of ``turn``; ``resumes``: drop the connection after
    ``resume_at`` events and reconnect from the last position."""
    await follower.connect(client, from_start=how != "snapshot")
    if how == "resumes":
        await follower.read_until(lambda f: f.cursor >= resume_at or bool(f.ends_of(turn)))
        await follower.connect(client)  # closes the old stream first: an abrupt disconnect
    await follower.read_until(lambda f: bool(f.ends_of(turn)), timeout=120)


async def follow_wt(device: Any, follower: Follower, turn: str) -> None:
    async def collect(_: Any, frame: dict[str, Any]) -> bool:
        follower.apply_wt(frame)
        return bool(follower.ends_of(turn))

    await device.follow(follower.session_id, collect, None)  # a snapshot first


async def catch_up_wt(device: Any, follower: Follower, cursor: int) -> None:
    async def collect(_: Any, frame: dict[str, Any]) -> bool:
        follower.apply_wt(frame)
        return follower.cursor >= cursor

    if follower.cursor < cursor:
        await device.follow(follower.session_id, collect, follower.position)


async def pair_device(client: Client) -> Any:
    offer = await client.http.post("/v1/pairings", json={"scope": "admin"})
    assert offer.status_code == 201, offer.text
    async with trio.open_nursery() as nursery:
        credentials = await wt.pair(nursery, offer.json()["payload"], "load")
        nursery.cancel_scope.cancel()
    return wt.Device(credentials)


def cli_pids(followers: list[Follower]) -> set[int]:
    return {b["pid"] for f in followers for _, t, b in f.types if t == "cli.state" and b.get("pid")}


async def test_sessions_streaming_to_many_clients(kit: Kit) -> None:
    rng = seeded("load")
    followers: list[Follower] = []
    try:
        with trio.fail_after(150):
            async with daemon_process(kit) as daemon:
                figures = await run_load(daemon, kit, rng, followers)
        print(f"load figures: {figures}")
    finally:
        for follower in followers:
            await follower.close()
        kill_leftovers(sorted(cli_pids(followers)))


async def run_load(
    daemon: DaemonProcess, kit: Kit, rng: random.Random, followers: list[Follower]
) -> dict[str, object]:
    client = daemon.client
    device = await pair_device(client) if WT_CLIENTS else None
    sessions = [
        (await client.create(kit.work_dir, f"session {n}"))["session"]["id"]
        for n in range(SESSIONS)
    ]
    base = memory(daemon.pid)
    started = trio.current_time()
    turns = {}
    for session_id in sessions:
        prompt = f"[[stamp:{DELTAS}:{RATE}]]"
        turns[session_id] = (await client.send(session_id, prompt))["message_id"]
    async with trio.open_nursery() as nursery:
        for n in range(CLIENTS):
            session_id, how = sessions[n % SESSIONS], HOW[n % len(HOW)]
            follower = Follower(f"sse-{n}-{how}", session_id)
            followers.append(follower)
            resume_at = rng.randint(5, DELTAS // 2)
            nursery.start_soon(follow_sse, client, follower, how, turns[session_id], resume_at)
        for n in range(WT_CLIENTS):
            follower = Follower(f"wt-{n}", sessions[n % SESSIONS])
            followers.append(follower)
            nursery.start_soon(follow_wt, device, follower, turns[follower.session_id])
    elapsed = trio.current_time() - started
    peak = memory(daemon.pid)
    snapshots = {sid: wire.structure(await client.snapshot(sid), Snapshot) for sid in sessions}
    for follower in followers:  # the same state as the daemon, event for event
        snap = snapshots[follower.session_id]
        if follower.name.startswith("sse"):
            assert await follower.check_fold(client) == snap
        else:  # a WebTransport client reconnects to catch up with the snapshot
            await catch_up_wt(device, follower, snap.cursor)
            assert follower.fold is not None
            assert follower.fold.snapshot(snap.epoch, snap.cursor) == snap
        assert follower.ends_of(turns[follower.session_id]) == ["turn.completed"]
    for snap in snapshots.values():
        text = [item for item in snap.items if isinstance(item, AssistantItem)]
        assert len(text[-1].text.split(";")) == DELTAS + 1  # every stamped delta, once
    return {
        "sessions": SESSIONS,
        "sse_clients": CLIENTS,
        "wt_clients": WT_CLIENTS,
        "events": sum(snap.cursor for snap in snapshots.values()),
        "delivered": sum(len(f.seen) for f in followers),
        "seconds": round(elapsed, 1),
        "lag_drops": sum(f.reconnects for f in followers),
        "snapshots": sum(f.snapshots for f in followers),
        "rss_mib": round(base["VmRSS"] / 2**20, 1),
        "peak_rss_mib": round(peak["VmHWM"] / 2**20, 1),
    }
