"""The daemon process dies (``kill -9``) at random points, moves to another port, its clock jumps.

Every test runs ``python -m sidecode_trio serve`` as a separate process (so SIGKILL is real) with
its state in ``tmp_path``, and talks to it over loopback like a device: SSE clients that fold
what they receive (``faultkit.Follower``) and must end with the daemon's own snapshot.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from faultkit import (
    TERMINAL,
    DaemonProcess,
    Follower,
    Kit,
    check_log_integrity,
    daemon_process,
    env_int,
    free_port,
    kill_leftovers,
    seeded,
    settled_snapshot,
)
from helpers import Client, pid_alive

pytestmark = pytest.mark.faults

KILLS = env_int("FAULTS_KILLS", 20)  # the issue asks for 20; raise it for a local soak
SCENARIOS = ("streaming", "permission", "queued", "idle", "anywhere")


@pytest.fixture
def kit(tmp_path: Path, fake_claude: Path, work_dir: Path, claude_env: dict[str, str]) -> Kit:
    return Kit(tmp_path, fake_claude, work_dir, claude_env)


def cli_pids(*followers: Follower) -> list[int]:
    return sorted(
        {
            body["pid"]
            for f in followers
            for _, kind, body in f.types
            if kind == "cli.state" and body.get("pid")
        }
    )


async def provoke(kind: str, rng: random.Random, client: Client, watcher: Follower) -> str:
    """Start something in the session and return at a random point of it (the kill point).
    Returns the id of the message whose turn was running or queued."""
    sid = watcher.session_id
    message: str
    if kind == "streaming":
        message = (await client.send(sid, "[[slow:40]]"))["message_id"]
        deltas = rng.randint(0, 12)
        # or the turn's end: a starved daemon coalesces the 40 ticks into fewer events
        await watcher.read_until(
            lambda f: _count(f, message, "text.delta") >= deltas or bool(f.ends_of(message))
        )
    elif kind == "permission":
        message = (await client.send(sid, f"[[bash:echo {rng.randint(0, 999)}]]"))["message_id"]
        await watcher.read_until(lambda f: bool(f.fold and f.fold.pending))
    elif kind == "queued":
        message = (await client.send(sid, "[[slow:40]]"))["message_id"]  # killed right after 202
    elif kind == "idle":
        message = (await client.send(sid, "between turns"))["message_id"]
        await watcher.read_until(lambda f: bool(f.ends_of(message)))
    else:  # anywhere: a random instant of a fast stream (start-up, mid-stream, commit, done)
        message = (await client.send(sid, "[[fast:3000]]"))["message_id"]
        await trio.sleep(rng.uniform(0.0, 0.4))
    return message


def _count(follower: Follower, message: str, kind: str) -> int:
    started = [c for c, t, b in follower.types if t == "turn.started" and b["turn_id"] == message]
    return sum(1 for c, t, _ in follower.types if started and c > started[0] and t == kind)


async def recover_and_check(
    daemon: DaemonProcess, followers: list[Follower], seen: dict[str, dict[str, Any]]
) -> Follower:
    """After a restart: exact resume for every follower, nothing left open, the same history."""
    client = daemon.client
    session_id = followers[0].session_id
    auditor = Follower("auditor", session_id)  # a new client reading the whole log from 0
    await auditor.connect(client, from_start=True)
    snap = await settled_snapshot(client, session_id)
    await auditor.read_until(lambda f: f.cursor >= snap.cursor)
    queued = [b["message_id"] for _, t, b in auditor.types if t == "message.queued"]
    for message in queued:
        assert len(auditor.ends_of(message)) == 1, f"message {message}: one terminal event"
    for event_id, data in seen.items():  # every event a client saw is replayed, the same
        assert auditor.seen.get(event_id) == data, f"{event_id} is not replayed as it was seen"
    for follower in followers:
        snapshots = follower.snapshots
        await follower.connect(client)  # Last-Event-ID: its last (epoch, cursor)
        await follower.read_until(lambda f: f.cursor >= auditor.cursor)
        assert follower.snapshots == snapshots, f"{follower.name}: same epoch, exact replay"
    return auditor


async def resume_with_a_prompt(client: Client, followers: list[Follower], text: str) -> None:
    message = (await client.send(followers[0].session_id, text))["message_id"]
    await followers[0].read_until(lambda f: bool(f.ends_of(message)))
    end = [b for _, t, b in followers[0].types if t in TERMINAL and b["turn_id"] == message]
    assert end == [end[0]] and end[0]["type"] == "turn.completed", end
    assert end[0]["result"] == f"You said: {text}"
    for follower in followers:
        await follower.check_fold(client)


async def test_kill_9_at_random_points_then_restart(kit: Kit) -> None:
    """``kill -9`` mid-turn, mid-permission, right after a 202, between turns or anywhere in a
    fast stream, KILLS times; after each restart: same epoch and exact replay for every client,
    the interrupted turn ended (``daemon_restarted``), a new prompt works, the store is intact
    and every client's fold equals the daemon's snapshot."""
    rng = seeded("kill -9 loop")
    followers: list[Follower] = []
    seen: dict[str, dict[str, Any]] = {}
    killed_turns: list[str] = []  # turns that cannot have ended before their kill
    try:
        with trio.fail_after(60 + 10 * KILLS):
            for round_ in range(KILLS + 1):
                async with daemon_process(kit) as daemon:
                    client = daemon.client
                    if round_ == 0:
                        created = await client.create(kit.work_dir, "hello")
                        session_id, first = created["session"]["id"], created["message_id"]
                        live, late = Follower("live", session_id), Follower("late", session_id)
                        await live.connect(client, from_start=True)
                        await live.until_ended(first)
                        await late.connect(client)  # a snapshot first, then events
                        followers = [live, late]
                    else:
                        auditor = await recover_and_check(daemon, followers, seen)
                        await resume_with_a_prompt(client, followers, f"ping {round_}")
                        await auditor.check_fold(client)
                        await auditor.close()
                    if round_ == KILLS:  # the last daemon stops cleanly, its claude with it
                        await client.http.aclose()  # idle keep-alive would hold it 5 s
                        daemon.proc.send_signal(signal.SIGTERM)
                        assert await daemon.proc.wait() == 0
                        break
                    kind = rng.choice(SCENARIOS)
                    print(f"round {round_}: {kind}")
                    message = await provoke(kind, rng, client, followers[0])
                    daemon.kill()
                    await daemon.proc.wait()
                    for follower in followers:
                        await follower.drain()  # what the dead daemon had already sent
                        seen.update(follower.seen)
                    check_log_integrity(kit.db_path)
                    # a turn the kill cut (a starved daemon may have finished a streaming one)
                    cut = kind in ("streaming", "permission", "queued")
                    if cut and not followers[0].ends_of(message):
                        killed_turns.append(message)
        check_log_integrity(kit.db_path)
        live = followers[0]
        for message in killed_turns:  # ended on restart, explicitly
            ends = [b for _, t, b in live.types if t in TERMINAL and b["turn_id"] == message]
            assert [e.get("reason") for e in ends] == ["daemon_restarted"], (message, ends)
        # no claude outlives its killed daemon (the leash kills it: sidecode_trio/claude/leash.py)
        with trio.fail_after(10):
            while any(pid_alive(pid) for pid in cli_pids(*followers)):
                await trio.sleep(0.05)
    finally:
        for follower in followers:
            await follower.close()
        kill_leftovers(cli_pids(*followers))


async def test_restarted_on_another_port_clients_find_it_and_resume(kit: Kit) -> None:
    """A client that knows only the state directory finds the new address in ``daemon.json``,
    checks it is the same daemon (``/v1/info``: same identity) and resumes in the same epoch."""
    pids: list[int] = []
    follower: Follower | None = None
    try:
        with trio.fail_after(60):
            async with daemon_process(kit) as first:
                before = (await first.client.http.get("/v1/info")).json()
                created = await first.client.create(kit.work_dir, "[[slow:200]]")
                follower = Follower("phone", created["session"]["id"])
                await follower.connect(first.client, from_start=True)
                await follower.read_until(
                    lambda f: _count(f, created["message_id"], "text.delta") > 2
                )
                # (an idle keep-alive connection would hold a clean stop for hypercorn's 5 s)
                await first.client.http.aclose()
                first.proc.send_signal(signal.SIGTERM)  # a clean stop this time
                assert await first.proc.wait() == 0
                await follower.drain()
            assert not (kit.state_dir / "daemon.json").exists(), "a clean stop removes it"
            port = free_port(avoid=first.client.handle.port)
            async with daemon_process(kit, port=port) as second:
                assert second.info["http"] == f"http://127.0.0.1:{port}"
                assert second.info["http"] != first.info["http"]
                after = (await second.client.http.get("/v1/info")).json()
                assert after["fingerprint"] == before["fingerprint"]  # the same daemon identity
                assert after["quic"] == [second.info["quic"]] != before["quic"]  # WebTransport too
                snapshots = follower.snapshots
                await follower.connect(second.client)  # from its last (epoch, cursor)
                assert follower.ends_of(created["message_id"]) == ["turn.failed"]  # clean stop
                await resume_with_a_prompt(second.client, [follower], "on a new port")
                assert follower.snapshots == snapshots, "the epoch held: replay, no snapshot"
                pids = cli_pids(follower)
                await follower.close()
                await second.client.http.aclose()
                second.proc.send_signal(signal.SIGTERM)
                assert await second.proc.wait() == 0
            check_log_integrity(kit.db_path)
            assert not any(pid_alive(pid) for pid in pids)
    finally:
        if follower is not None:
            await follower.close()
        kill_leftovers(pids)


async def test_the_wall_clock_jumping_back_and_forward(kit: Kit) -> None:
    """The daemon's ``time.time`` jumps an hour back, then a day forward, mid-stream. Order and
    replay rest on cursors, not on times: no gap, no duplicate, the folds agree, the session
    list keeps working, and a permission still waits for its answer (Trio's clock, monotonic)."""
    clock = kit.tmp_path / "clock-offset"
    clock.write_text("0")
    follower: Follower | None = None
    pids: list[int] = []

    def jump(seconds: float) -> None:
        tmp = clock.with_suffix(".tmp")
        tmp.write_text(str(seconds))
        os.replace(tmp, clock)  # a new inode: the daemon re-reads its offset at once

    try:
        with trio.fail_after(60):
            async with daemon_process(kit, clock_file=clock) as daemon:
                client = daemon.client
                created = await client.create(kit.work_dir, "[[slow:30]]")
                session_id = created["session"]["id"]
                follower = Follower("phone", session_id)
                await follower.connect(client, from_start=True)
                await follower.read_until(
                    lambda f: _count(f, created["message_id"], "text.delta") > 3
                )
                jump(-3600)  # an hour back, mid-stream
                at_jump = follower.cursor
                await follower.read_until(lambda f: bool(f.ends_of(created["message_id"])))
                times = [
                    e["at"] for i, e in follower.seen.items() if int(i.rpartition(":")[2]) > at_jump
                ]
                assert min(times) < follower.seen[f"{follower.epoch}:{at_jump}"]["at"] - 3000
                await follower.check_fold(client)
                jump(86400)  # a day forward
                asked = (await client.send(session_id, "[[bash:echo jumped]]"))["message_id"]
                await follower.read_until(lambda f: bool(f.fold and f.fold.pending))
                request_id = next(iter(follower.fold.pending))  # type: ignore[union-attr]
                reply = await client.answer(session_id, request_id, behavior="allow")
                assert reply.status_code == 200, reply.text
                await follower.read_until(lambda f: bool(f.ends_of(asked)))
                assert follower.ends_of(asked) == ["turn.completed"]
                jump(-7200)  # and back again
                await resume_with_a_prompt(client, [follower], "after the jumps")
                listed = (await client.http.get("/v1/sessions")).json()["sessions"]
                assert [s["id"] for s in listed] == [session_id]
                # a new client from cursor 0 folds to the same state: order is by cursor only
                fresh = Follower("fresh", session_id)
                await fresh.connect(client, from_start=True)
                await fresh.check_fold(client)
                await fresh.close()
                pids = cli_pids(follower)
            check_log_integrity(kit.db_path)
    finally:
        if follower is not None:
            await follower.close()
        kill_leftovers(pids)
