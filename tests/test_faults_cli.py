"""A ``claude`` child killed with SIGKILL mid-turn and mid-permission-request.

The daemon runs in-process here (the fault is in its child, which is a real process); clients are
SSE followers that fold what they receive and must end with the daemon's snapshot.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from faultkit import Follower, kill_leftovers
from helpers import Client, cli_argvs, pid_alive

pytestmark = pytest.mark.faults


def running_pid(follower: Follower) -> int | None:
    pids = [b["pid"] for _, t, b in follower.types if t == "cli.state" and b.get("pid")]
    return pids[-1] if pids else None


@pytest.mark.parametrize("point", ["streaming", "permission", "question"])
async def test_claude_killed_then_the_session_recovers(
    daemon: Client, work_dir: Path, cli_log: Path, point: str
) -> None:
    """The turn ends with ``turn.failed`` (``cli_exited``), a pending permission is withdrawn
    (answering it is ``409 already_resolved``), the next prompt resumes the CLI's session, and
    both a client that followed from the start and one that joined by snapshot agree with the
    daemon's state."""
    prompts = {
        "streaming": "[[slow:400]]",
        "permission": "[[bash:echo never]]",
        "question": "[[ask:Which one?|A,B]]",
    }
    pids: list[int] = []
    first = Follower("first", "")
    joined = Follower("joined", "")
    try:
        with trio.fail_after(40):
            created = await daemon.create(work_dir, prompts[point])
            session_id, turn = created["session"]["id"], created["message_id"]
            first.session_id = joined.session_id = session_id
            await first.connect(daemon, from_start=True)
            await first.read_until(lambda f: running_pid(f) is not None)
            pid = running_pid(first)
            assert pid is not None
            pids.append(pid)
            if point == "streaming":
                await first.read_until(lambda f: sum(t == "text.delta" for _, t, _ in f.types) > 3)
            else:
                await first.read_until(lambda f: bool(f.fold and f.fold.pending))
            await joined.connect(daemon)  # a snapshot holding the pending request, if any
            pending = list(first.fold.pending) if first.fold else []

            os.kill(pid, signal.SIGKILL)
            await first.read_until(lambda f: bool(f.ends_of(turn)))
            end = [b for _, t, b in first.types if t == "turn.failed" and b["turn_id"] == turn]
            assert [e["reason"] for e in end] == ["cli_exited"]
            assert "-9" in end[0]["message"]
            for request_id in pending:
                resolved = [
                    b for _, t, b in first.types
                    if t == "permission.resolved" and b["request_id"] == request_id
                ]  # fmt: skip
                assert [r["outcome"] for r in resolved] == ["withdrawn"]
                answer = await daemon.answer(session_id, request_id, behavior="allow")
                assert answer.status_code == 409, answer.text
                assert answer.json()["error"]["code"] == "already_resolved"
            snap = await first.check_fold(daemon)
            assert snap.active_turn is None and not snap.pending_permissions
            assert snap.session.status == "errored" and snap.session.cli == "crashed"
            assert not pid_alive(pid), "the killed claude was reaped"

            again = (await daemon.send(session_id, "are you back?"))["message_id"]
            await first.read_until(lambda f: bool(f.ends_of(again)))
            assert first.ends_of(again) == ["turn.completed"]
            pids.extend(p for p in [running_pid(first)] if p is not None)
            for follower in (first, joined):
                snap = await follower.check_fold(daemon)
            assert snap.session.status == "idle" and snap.session.cli == "running"
            argvs = cli_argvs(cli_log)
            assert f"--resume={session_id}" in argvs[-1] and len(argvs) == 2
            status = await daemon.http.get("/v1/status")
            assert status.status_code == 200 and status.json()["log"]["store_error"] is None
    finally:
        await first.close()
        await joined.close()
        kill_leftovers(pids)


async def test_claude_killed_again_and_again_fails_what_is_queued(
    daemon: Client, work_dir: Path
) -> None:
    """Three kills in a row: each running turn fails; the session stays usable afterwards."""
    follower = Follower("phone", "")
    pids: list[int] = []
    try:
        with trio.fail_after(40):
            created = await daemon.create(work_dir, "[[slow:400]]")
            follower.session_id = session_id = created["session"]["id"]
            await follower.connect(daemon, from_start=True)
            turns = [created["message_id"]]
            for kill in range(3):
                await follower.read_until(lambda f: running_pid(f) not in (None, *pids))
                pid = running_pid(follower)
                assert pid is not None
                pids.append(pid)
                os.kill(pid, signal.SIGKILL)
                await follower.read_until(lambda f: bool(f.ends_of(turns[-1])))
                if kill < 2:
                    turns.append((await daemon.send(session_id, "[[slow:400]]"))["message_id"])
            assert [follower.ends_of(t) for t in turns] == [["turn.failed"]] * 3
            done = (await daemon.send(session_id, "still here"))["message_id"]
            await follower.read_until(lambda f: bool(f.ends_of(done)))
            assert follower.ends_of(done) == ["turn.completed"]
            await follower.check_fold(daemon)
            assert not any(pid_alive(pid) for pid in pids)
    finally:
        await follower.close()
        kill_leftovers(pids)
