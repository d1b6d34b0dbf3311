"""The daemon end to end over HTTP/SSE on 127.0.0.1, driving the fake CLI.

Each test is bounded by ``fail_after``; the daemon's shutdown stops every CLI it started.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from sidecode_trio.config import DaemonConfig

from helpers import (
    Client,
    SSEEvent,
    cli_argvs,
    open_sse,
    pid_alive,
    read_cli_log,
    running_daemon,
)

pytestmark = pytest.mark.trio


def is_type(*types: str) -> Callable[[SSEEvent], bool]:
    return lambda e: e.type in types


async def test_full_turn_with_a_tool_approved_over_http(daemon: Client, work_dir: Path) -> None:
    with trio.fail_after(20):
        created = await daemon.create(work_dir, "[[bash:echo hi > hi.txt]]")
        session = created["session"]
        assert session["cwd"] == str(work_dir) and session["title"] == "[[bash:echo hi > hi.txt]]"
        message_id = created["message_id"]
        async with daemon.events(session["id"], from_start=False) as stream:
            first = await stream.next()
            assert first.event == "snapshot"
            request = await stream.until_type("permission.requested")
            assert request.body["tool_name"] == "Bash"
            assert request.body["input"]["command"] == "echo hi > hi.txt"
            snap = await daemon.snapshot(session["id"])
            assert snap["session"]["status"] == "requires_action"
            reply = await daemon.answer(session["id"], request.body["request_id"], behavior="allow")
            assert reply.status_code == 200, reply.text
            done = await stream.until_type("turn.completed")
            assert done.body["turn_id"] == message_id
            assert done.body["result"].startswith("TOOL RESULT SEEN")
        assert (work_dir / "hi.txt").read_text() == "hi\n"
        kinds = [e.type for e in stream.seen]
        for expected in (
            "turn.started",
            "text.delta",
            "assistant.text",
            "tool.started",
            "permission.resolved",
            "tool.finished",
        ):
            assert expected in kinds
        snap = await daemon.snapshot(session["id"])
        assert snap["session"]["status"] == "idle" and snap["session"]["cost_usd"] > 0
        items = [item["type"] for item in snap["items"]]
        assert items[:2] == ["user", "assistant"] and "tool" in items and items[-1] == "turn_end"
        assert snap["items"][0]["state"] == "completed"


async def test_denied_tool_does_not_run_and_the_turn_goes_on(
    daemon: Client, work_dir: Path
) -> None:
    with trio.fail_after(20):
        session = (await daemon.create(work_dir, "[[write:nope.txt|secret]]"))["session"]
        async with daemon.events(session["id"]) as stream:
            request = await stream.until_type("permission.requested")
            reply = await daemon.answer(
                session["id"], request.body["request_id"], behavior="deny", message="not today"
            )
            assert reply.status_code == 200
            resolved = await stream.until_type("permission.resolved")
            assert resolved.body["outcome"] == "denied"
            finished = await stream.until_type("tool.finished")
            assert finished.body["is_error"] and "not today" in finished.body["output"]
            await stream.until_type("turn.completed")
        assert not (work_dir / "nope.txt").exists()
        again = await daemon.answer(session["id"], request.body["request_id"], behavior="allow")
        assert again.status_code == 409 and again.json()["error"]["code"] == "already_resolved"


async def test_a_deny_without_message_tells_claude_who_denied(
    daemon: Client, work_dir: Path
) -> None:
    """``d`` in ``attach`` sends ``{"behavior": "deny"}``: Claude is told the same "denied by
    <who>" the transcript shows, not that a paired device denied it (issue 14, item 7)."""
    with trio.fail_after(20):
        session = (await daemon.create(work_dir, "[[write:nope.txt|secret]]"))["session"]
        async with daemon.events(session["id"]) as stream:
            request = await stream.until_type("permission.requested")
            reply = await daemon.answer(session["id"], request.body["request_id"], behavior="deny")
            assert reply.status_code == 200
            resolved = await stream.until_type("permission.resolved")
            assert resolved.body["by"] == "local owner"
            finished = await stream.until_type("tool.finished")
            assert "denied by local owner" in finished.body["output"]
            assert "paired device" not in finished.body["output"]


async def test_interrupt_mid_stream(daemon: Client, work_dir: Path) -> None:
    with trio.fail_after(20):
        session = (await daemon.create(work_dir, "[[slow:200]]"))["session"]
        async with daemon.events(session["id"]) as stream:
            await stream.until_type("text.delta")
            reply = await daemon.http.post(f"/v1/sessions/{session['id']}/interrupt")
            assert reply.json() == {"interrupted": True}
            ended = await stream.until_type("turn.completed", "turn.failed", "turn.interrupted")
            assert ended.type == "turn.interrupted"
        reply = await daemon.http.post(f"/v1/sessions/{session['id']}/interrupt")
        assert reply.json() == {"interrupted": False}  # nothing running any more


def held_claude(fake_claude: Path, gate: Path) -> Path:
    """A ``claude`` that starts only once ``gate`` exists (stdin fills up meanwhile)."""
    held = gate.with_name("held-claude")
    held.write_text(
        f'#!/bin/sh\nwhile [ ! -e "{gate}" ]; do sleep 0.02; done\nexec "{fake_claude}" "$@"\n'
    )
    held.chmod(0o755)
    return held


async def test_interrupt_before_the_cli_began_the_turn(
    make_config: Callable[..., DaemonConfig], fake_claude: Path, tmp_path: Path, work_dir: Path
) -> None:
    """Stop pressed while the CLI has not begun the turn yet (it is still starting, the message
    waits in its stdin): the turn still ends interrupted, not completed. A CLI that reads the
    interrupt before it begins the turn acks it and forgets it (1 run in 3 before the daemon
    sent it again when the turn began)."""
    gate = tmp_path / "gate"
    async with running_daemon(make_config(claude=str(held_claude(fake_claude, gate)))) as daemon:
        with trio.fail_after(20):
            created = await daemon.create(work_dir, "[[slow:400]]")
            sid = created["session"]["id"]
            async with daemon.events(sid) as stream:
                await stream.until_type("message.delivered")
                async with trio.open_nursery() as nursery:
                    replies: list[object] = []

                    async def stop() -> None:
                        reply = await daemon.http.post(f"/v1/sessions/{sid}/interrupt")
                        replies.append(reply.json())

                    nursery.start_soon(stop)
                    # the request waits in the daemon for the CLI's answer (in its stdin)
                    await trio.testing.wait_all_tasks_blocked(0.05)
                    gate.touch()
                end = await stream.until_type("turn.interrupted", "turn.completed", "turn.failed")
                assert replies == [{"interrupted": True}]
                assert (end.type, end.body["turn_id"]) == (
                    "turn.interrupted",
                    created["message_id"],
                )
                sent = await daemon.send(sid, "this one runs")
                end = await stream.until_type("turn.interrupted", "turn.completed", "turn.failed")
            assert (end.type, end.body["turn_id"]) == ("turn.completed", sent["message_id"])


async def test_interrupt_while_a_permission_is_pending(daemon: Client, work_dir: Path) -> None:
    with trio.fail_after(20):
        session = (await daemon.create(work_dir, "[[bash:echo x > x.txt]]"))["session"]
        async with daemon.events(session["id"]) as stream:
            request = await stream.until_type("permission.requested")
            await daemon.http.post(f"/v1/sessions/{session['id']}/interrupt")
            resolved = await stream.until_type("permission.resolved")
            assert resolved.body["request_id"] == request.body["request_id"]
            assert resolved.body["outcome"] == "withdrawn"
            await stream.until_type("turn.interrupted")
        late = await daemon.answer(session["id"], request.body["request_id"], behavior="allow")
        assert late.status_code == 409
        assert not (work_dir / "x.txt").exists()
        assert (await daemon.snapshot(session["id"]))["pending_permissions"] == []


async def test_a_retried_create_with_its_client_id_is_the_same_session(
    daemon: Client, work_dir: Path
) -> None:
    """A client that lost the reply (or got a 503 while the disk was full, whose work still runs
    once the store recovers) sends the create again: same session, same first message."""
    body = {"cwd": str(work_dir), "prompt": "hello", "client_id": "phone-create-1"}
    with trio.fail_after(20):
        first = await daemon.http.post("/v1/sessions", json=body)
        again = await daemon.http.post("/v1/sessions", json=body)
        other = await daemon.http.post("/v1/sessions", json={**body, "client_id": "phone-2"})
        listed = (await daemon.http.get("/v1/sessions")).json()["sessions"]
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 201)
    assert first.json()["created"] and not again.json()["created"]
    assert again.json()["session"]["id"] == first.json()["session"]["id"]
    assert again.json()["message_id"] == first.json()["message_id"]
    assert sorted(s["id"] for s in listed) == sorted(
        r.json()["session"]["id"] for r in (first, other)
    )


async def test_messages_sent_during_a_turn_are_queued(
    daemon: Client, work_dir: Path, cli_log: Path
) -> None:
    with trio.fail_after(20):
        session = (await daemon.create(work_dir, "[[slow:10]]"))["session"]
        second = await daemon.send(session["id"], "second")
        third = await daemon.send(session["id"], "third", client_id="c-3")
        again = await daemon.send(session["id"], "third", client_id="c-3")
        assert again == {"message_id": third["message_id"], "created": False}
        async with daemon.events(session["id"]) as stream:
            await stream.until(
                lambda e: e.type == "turn.completed" and e.body["turn_id"] == third["message_id"]
            )
        snap = await daemon.snapshot(session["id"])
        users = [item for item in snap["items"] if item["type"] == "user"]
        assert [u["text"] for u in users] == ["[[slow:10]]", "second", "third"]
        assert all(u["state"] == "completed" for u in users)
        results = [i for i in snap["items"] if i["type"] == "turn_end"]
        assert [r["turn_id"] for r in results][1:] == [second["message_id"], third["message_id"]]
        sent = [e for e in read_cli_log(cli_log) if e.get("type") == "user"]
        assert len(sent) == 3  # one write per message, never duplicated
        assert len(cli_argvs(cli_log)) == 1  # one CLI process served all three


async def test_cli_killed_mid_turn_then_resumed(
    daemon: Client, work_dir: Path, cli_log: Path
) -> None:
    with trio.fail_after(30):
        session = (await daemon.create(work_dir, "[[slow:400]]"))["session"]
        async with daemon.events(session["id"]) as stream:
            running = await stream.until(
                lambda e: e.type == "cli.state" and e.body["state"] == "running"
            )
            await stream.until_type("text.delta")
            os.kill(running.body["pid"], signal.SIGKILL)
            failed = await stream.until_type("turn.failed")
            assert failed.body["reason"] == "cli_exited"
            crashed = await stream.until(
                lambda e: e.type == "cli.state" and e.body["state"] == "crashed"
            )
            assert crashed.body["exit_code"] == -9
            await stream.until(
                lambda e: e.type == "session.status" and e.body["status"] == "errored"
            )
            await daemon.send(session["id"], "are you back?")
            done = await stream.until_type("turn.completed")
            assert done.body["result"] == "You said: are you back?"
        argvs = cli_argvs(cli_log)
        assert len(argvs) == 2
        assert f"--session-id={session['id']}" in argvs[0]
        assert f"--resume={session['id']}" in argvs[1]


async def test_cli_crash_directive_fails_the_turn_with_stderr(
    daemon: Client, work_dir: Path
) -> None:
    with trio.fail_after(20):
        session = (await daemon.create(work_dir, "[[crash:3]]"))["session"]
        async with daemon.events(session["id"]) as stream:
            failed = await stream.until_type("turn.failed")
            assert failed.body["reason"] == "cli_exited" and "code 3" in failed.body["message"]
            error = await stream.until_type("session.error")
            assert error.body["code"] == "cli_exited"
        assert (await daemon.snapshot(session["id"]))["session"]["status"] == "errored"


async def test_sse_resume_with_last_event_id_is_exact(daemon: Client, work_dir: Path) -> None:
    with trio.fail_after(30):
        session = (await daemon.create(work_dir, "[[slow:60]]"))["session"]
        async with daemon.events(session["id"], from_start=False) as stream:
            snapshot = await stream.next()
            for _ in range(5):
                await stream.until_type("text.delta")
            resume_from = stream.last_id
            first_part = [e.id for e in stream.seen[1:]]
        # the client is gone; the turn goes on without it
        await trio.sleep(0.3)
        async with daemon.events(session["id"], resume_from) as stream:
            await stream.until_type("turn.completed")
            second_part = [e.id for e in stream.seen]
        assert stream.seen[0].event != "snapshot"
        async with daemon.events(session["id"], f"{snapshot.id.split(':')[0]}:0") as full:  # type: ignore[union-attr]
            await full.until_type("turn.completed")
            everything = [e.id for e in full.seen]
        assert first_part + second_part == everything[everything.index(first_part[0]) :]
        assert len(set(everything)) == len(everything)
        cursors = [int(i.split(":")[1]) for i in everything if i]
        assert cursors == list(range(1, len(cursors) + 1))


async def test_since_query_parameter_and_bad_ids(daemon: Client, work_dir: Path) -> None:
    session = (await daemon.create(work_dir))["session"]
    url = f"/v1/sessions/{session['id']}/events"
    bad = await daemon.http.get(url, headers={"Last-Event-ID": "garbage"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"
    with trio.fail_after(5):
        async with open_sse(daemon, url + "?since=otherepoch:3") as stream:
            assert await stream.raw_frame() == "retry: 2000"
            snapshot = await stream.next()
            assert snapshot.event == "snapshot" and snapshot.data["reason"] == "epoch_changed"
            assert snapshot.id == f"{snapshot.data['snapshot']['epoch']}:1"


async def test_mode_and_model_switch(daemon: Client, work_dir: Path, cli_log: Path) -> None:
    with trio.fail_after(20):
        session = (await daemon.create(work_dir, "hello"))["session"]
        async with daemon.events(session["id"]) as stream:
            await stream.until_type("turn.completed")
            reply = await daemon.http.patch(
                f"/v1/sessions/{session['id']}",
                json={"permission_mode": "acceptEdits", "model": "claude-haiku-4-5"},
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["permission_mode"] == "acceptEdits"
            assert reply.json()["model"] == "claude-haiku-4-5"
            update = await stream.until_type("session.updated")
            assert update.body["permission_mode"] == "acceptEdits" or update.body["model"]
        sent = [e for e in read_cli_log(cli_log) if e.get("type") == "control_request"]
        subtypes = [e["request"]["subtype"] for e in sent]
        assert "set_permission_mode" in subtypes and "set_model" in subtypes
        bad = await daemon.http.patch(
            f"/v1/sessions/{session['id']}", json={"permission_mode": "yolo"}
        )
        assert bad.status_code == 400


async def test_idle_cli_is_stopped_and_resumed(
    make_config: Callable[..., DaemonConfig], work_dir: Path, cli_log: Path
) -> None:
    with trio.fail_after(30):
        async with running_daemon(make_config(idle_timeout=0.3)) as daemon:
            session = (await daemon.create(work_dir, "one"))["session"]
            async with daemon.events(session["id"]) as stream:
                running = await stream.until(
                    lambda e: e.type == "cli.state" and e.body["state"] == "running"
                )
                await stream.until_type("turn.completed")
                await stream.until(lambda e: e.type == "cli.state" and e.body["state"] == "stopped")
                assert not pid_alive(running.body["pid"])
                await daemon.send(session["id"], "two")
                done = await stream.until_type("turn.completed")
                assert done.body["result"] == "You said: two"
        argvs = cli_argvs(cli_log)
        assert len(argvs) == 2 and f"--resume={session['id']}" in argvs[1]


async def test_session_list_and_its_stream(daemon: Client, work_dir: Path) -> None:
    with trio.fail_after(20):
        async with open_sse(daemon, "/v1/events") as stream:
            first = await stream.next()
            assert first.event == "sessions" and first.data == {"sessions": []}
            session = (await daemon.create(work_dir, "list me"))["session"]
            update = await stream.until(
                lambda e: e.data.get("status") == "idle" and e.data.get("turns") == 1
            )
            assert update.event == "session" and update.data["id"] == session["id"]
            assert update.data["cost_usd"] > 0
        listing = (await daemon.http.get("/v1/sessions")).json()["sessions"]
        assert [s["id"] for s in listing] == [session["id"]]


async def test_missing_cli_binary_is_a_clear_failure(
    make_config: Callable[..., DaemonConfig], work_dir: Path, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        async with running_daemon(make_config(claude=str(tmp_path / "no-such-claude"))) as daemon:
            session = (await daemon.create(work_dir, "hello"))["session"]
            async with daemon.events(session["id"]) as stream:
                failed = await stream.until_type("turn.failed")
                assert failed.body["reason"] == "cli_unavailable"
                assert "no-such-claude" in failed.body["message"]
            assert (await daemon.snapshot(session["id"]))["session"]["status"] == "errored"
            sessions = (await daemon.http.get("/v1/status")).json()["sessions"]
            assert sum(sessions["states"].values()) == sessions["sessions"] == 1  # core states


async def test_a_vanished_client_leaves_nothing_behind(daemon: Client, work_dir: Path) -> None:
    async def subscribers() -> int:
        status = (await daemon.http.get("/v1/status")).json()
        return int(status["log"]["subscribers"])

    with trio.fail_after(20):
        session = (await daemon.create(work_dir, "[[slow:100]]"))["session"]
        for _ in range(3):
            async with daemon.events(session["id"]) as stream:
                await stream.until_type("text.delta")
                assert await subscribers() >= 1
        while await subscribers():  # the server notices the closed sockets promptly
            await trio.sleep(0.05)
        await daemon.http.post(f"/v1/sessions/{session['id']}/interrupt")
        async with daemon.events(session["id"]) as stream:
            await stream.until_type("turn.interrupted")  # the session never noticed


async def test_idle_streams_get_keepalive_comments(
    make_config: Callable[..., DaemonConfig], work_dir: Path
) -> None:
    with trio.fail_after(10):
        # warm_limit=0: opening the session would start its CLI, and its events are not idle
        async with running_daemon(make_config(sse_keepalive=0.2, warm_limit=0)) as daemon:
            session = (await daemon.create(work_dir))["session"]
            for path in (f"/v1/sessions/{session['id']}/events", "/v1/events"):
                async with open_sse(daemon, path) as stream:
                    await stream.next()  # the snapshot, or the session list
                    assert await stream.raw_frame() == ": keep-alive"
