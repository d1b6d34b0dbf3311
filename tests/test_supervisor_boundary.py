"""A session's supervisor is an error boundary: one session's unexpected error is that session's
failure (logged, its CLI stopped and reaped, a ``session.error`` every follower sees, the status
``errored`` in the list), never the daemon's; the next message starts it again, and one that
fails over and over stops being restarted (``sessions/registry.py``: MAX_FAILURES)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
import trio
from fake_remote import FakeRemote, assistant
from test_bridge import bridge_config, fake, no_env_login, wait_listed, write_login

from sidecode_trio.bridge.remote import RemoteSession
from sidecode_trio.claude.process import ClaudeProcess
from sidecode_trio.config import DaemonConfig
from sidecode_trio.sessions import registry
from sidecode_trio.sessions.core import SessionCore
from sidecode_trio.sessions.session import Remote

from helpers import Client, SSEEvent, SSEStream, cli_argvs, open_sse, pid_alive, running_daemon

__all__ = ["bridge_config", "fake", "no_env_login"]  # fixtures of test_bridge, used here too


class Injected:
    """Makes one session's run task raise ``RuntimeError`` (only that session, while armed)."""

    def __init__(self) -> None:
        self.victim: str | None = None
        self.raised = 0

    def fire(self, session_id: str) -> None:
        if session_id == self.victim:
            self.raised += 1
            raise RuntimeError("injected failure")


@pytest.fixture(params=["writer", "translator"])
def injected(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Injected:
    """``writer``: the line writer raises as a user message is written (in the supervisor's
    loop). ``translator``: the core's frame step raises (in the CLI's reader task)."""
    injection = Injected()
    if request.param == "writer":
        send = ClaudeProcess.send

        async def failing_send(self: ClaudeProcess, message: Mapping[str, Any]) -> None:
            if message.get("type") == "user":
                injection.fire(self.spec.session_id)
            await send(self, message)

        monkeypatch.setattr(ClaudeProcess, "send", failing_send)
    else:
        frames = SessionCore.frames

        def failing_frames(self: SessionCore, batch: Any, now: float) -> Any:
            injection.fire(self.id)
            return frames(self, batch, now)

        monkeypatch.setattr(SessionCore, "frames", failing_frames)
    return injection


def state(value: str) -> Callable[[SSEEvent], bool]:
    return lambda e: e.type == "cli.state" and e.body["state"] == value


def failed_turn(message_id: str) -> Callable[[SSEEvent], bool]:
    return lambda e: e.type == "turn.failed" and e.body["turn_id"] == message_id


async def idle_session(daemon: Client, work_dir: Path, text: str) -> tuple[str, int]:
    """A session that ran one turn, its CLI still running: (id, the CLI's pid)."""
    session = (await daemon.create(work_dir, text))["session"]
    async with daemon.events(session["id"]) as stream:
        running = await stream.until(state("running"))
        await stream.until_type("turn.completed")
    return session["id"], running.body["pid"]


async def status_of(daemon: Client, session_id: str) -> str:
    listing = (await daemon.http.get("/v1/sessions")).json()["sessions"]
    return next(str(s["status"]) for s in listing if s["id"] == session_id)


async def test_one_sessions_failure_is_contained_and_it_recovers(
    daemon: Client, work_dir: Path, cli_log: Path, injected: Injected
) -> None:
    with trio.fail_after(40):
        victim, victim_pid = await idle_session(daemon, work_dir, "first")
        other, other_pid = await idle_session(daemon, work_dir, "second")
        async with (
            daemon.events(victim) as failing,
            daemon.events(other) as healthy,
            open_sse(daemon, "/v1/events") as listing,
        ):
            await listing.next()  # the whole list
            injected.victim = victim
            boom = (await daemon.send(victim, "boom"))["message_id"]
            error = await failing.until(
                lambda e: e.type == "session.error" and e.body["code"] == "session_failed"
            )
            assert "RuntimeError" in error.body["message"]
            assert "the next message starts it again" in error.body["message"]
            failed = await until_seen(failing, failed_turn(boom))
            assert failed.body["reason"] == "session_failed"
            await until_seen(
                failing, lambda e: e.type == "session.status" and e.body["status"] == "errored"
            )
            assert injected.raised == 1
            await listing.until(
                lambda e: e.data.get("id") == victim and e.data["status"] == "errored"
            )
            assert await status_of(daemon, victim) == "errored"
            assert not pid_alive(victim_pid)  # stopped and reaped, as a normal stop
            assert (await daemon.snapshot(victim))["session"]["cli"] in ("stopped", "crashed")

            # every other session goes on, on the same CLI
            sent = (await daemon.send(other, "still here?"))["message_id"]
            done = await healthy.until(
                lambda e: e.type == "turn.completed" and e.body["turn_id"] == sent
            )
            assert done.body["result"] == "You said: still here?"
            assert pid_alive(other_pid)
            assert not any(e.type == "session.error" for e in healthy.seen)

            # the next message starts the failed session again (resumed, as after an idle stop)
            injected.victim = None
            again = (await daemon.send(victim, "again"))["message_id"]
            done = await failing.until(
                lambda e: e.type == "turn.completed" and e.body["turn_id"] == again
            )
            assert done.body["result"] == "You said: again"
        assert await status_of(daemon, victim) == "idle"
        victim_argvs = [a for a in cli_argvs(cli_log) if any(victim in arg for arg in a)]
        assert len(victim_argvs) == 2 and f"--resume={victim}" in victim_argvs[1]


async def test_a_session_failing_over_and_over_stops_being_restarted(
    daemon: Client, work_dir: Path, injected: Injected
) -> None:
    with trio.fail_after(40):
        created = await daemon.create(work_dir, "[[bash:echo hi]]")
        victim = created["session"]["id"]
        other, _ = await idle_session(daemon, work_dir, "bystander")
        async with daemon.events(victim) as stream:
            request = await stream.until_type("permission.requested")
            # queued behind the pending request: each restart would deliver the next one
            queued = [(await daemon.send(victim, f"m{i}"))["message_id"] for i in range(5)]
            injected.victim = victim
            reply = await daemon.answer(victim, request.body["request_id"], behavior="allow")
            assert reply.status_code == 200, reply.text
            errors: list[SSEEvent] = []
            while len(errors) < registry.MAX_FAILURES:
                errors.append(
                    await stream.until(
                        lambda e: e.type == "session.error" and e.body["code"] == "session_failed"
                    )
                )
            assert "restarted" in errors[0].body["message"]
            assert "not delivered" in errors[-1].body["message"]
            for message_id in queued:
                await until_seen(stream, failed_turn(message_id))
            failures = {
                e.body["turn_id"]: e.body["message"] for e in stream.seen if e.type == "turn.failed"
            }
            # the turns that were running when it failed (the first one too, when the failure
            # is in reading the CLI's output), then those never delivered
            ran = [m for m in [created["message_id"], *queued] if "during" in failures.get(m, "")]
            assert len(ran) == registry.MAX_FAILURES
            assert all("not delivered" in failures[m] for m in queued if m not in ran)
            assert injected.raised == registry.MAX_FAILURES  # no restart after the last one
            assert await status_of(daemon, victim) == "errored"
            # the daemon and the other session are untouched
            async with daemon.events(other, from_start=False) as bystander:
                await daemon.send(other, "fine?")
                done = await bystander.until_type("turn.completed")
                assert done.body["result"] == "You said: fine?"
            # the user acts: a new message starts it again
            injected.victim = None
            last = (await daemon.send(victim, "once more"))["message_id"]
            done = await stream.until(
                lambda e: e.type == "turn.completed" and e.body["turn_id"] == last
            )
            assert done.body["result"] == "You said: once more"
            assert injected.raised == registry.MAX_FAILURES


async def until_seen(stream: SSEStream, predicate: Callable[[SSEEvent], bool]) -> SSEEvent:
    for event in stream.seen:
        if predicate(event):
            return event
    return await stream.until(predicate)


async def test_a_remote_sessions_follower_failing_is_contained_and_restarted(
    fake: FakeRemote,
    bridge_config: Callable[..., DaemonConfig],
    claude_env: dict[str, str],
    work_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bridge's follower of one remote session runs in the registry's nursery too."""
    write_login(claude_env)
    fake.add_session("cse_remote_1", "Remote one", [])
    apply = RemoteSession._apply
    raised: list[str] = []

    def failing_apply(self: RemoteSession, raws: Any) -> int:
        raws = list(raws)
        if not raised and "boom" in repr(raws):
            raised.append(self.id)
            raise RuntimeError("injected failure")
        return apply(self, raws)

    monkeypatch.setattr(RemoteSession, "_apply", failing_apply)
    with trio.fail_after(30):
        async with running_daemon(bridge_config(fake.url)) as client:
            local, _ = await idle_session(client, work_dir, "local one")
            await wait_listed(client, "cse_remote_1")
            async with client.events("cse_remote_1") as stream:
                await stream.until_type("upstream.connected")
                fake.push("cse_remote_1", assistant("b", "boom"))
                error = await stream.until_type("session.error")
                assert error.body["code"] == "session_failed" and raised == ["cse_remote_1"]
                assert "restarted" in error.body["message"]
                # followed again at once (within the restart budget), nothing lost
                await stream.until(
                    lambda e: e.type == "assistant.text" and e.body["text"] == "boom"
                )
                fake.push("cse_remote_1", assistant("c", "after"))
                await stream.until(
                    lambda e: e.type == "assistant.text" and e.body["text"] == "after"
                )
            async with client.events(local) as other:
                sent = (await client.send(local, "still fine"))["message_id"]
                done = await other.until(
                    lambda e: e.type == "turn.completed" and e.body["turn_id"] == sent
                )
                assert done.body["result"] == "You said: still fine"


async def test_what_a_client_does_while_a_session_is_failing_is_still_logged(
    daemon: Client, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run task has failed and its CLI is being stopped (the stop is held open here) when
    an answer arrives: the core takes it (200, the request no longer pending), so the log must
    say so too. It used to drop every event while failing: the request stayed pending in every
    snapshot, its approval card and notification never retracted, until the daemon restarted."""
    from sidecode_trio.sessions.supervisor import SessionSupervisor

    victim: list[str] = []
    armed, stopping, release = trio.Event(), trio.Event(), trio.Event()
    loop, stop = SessionSupervisor._loop, ClaudeProcess._stop

    async def loop_with_a_bomb(self: SessionSupervisor) -> None:
        async def bomb() -> None:
            await armed.wait()
            if self.id in victim:
                raise RuntimeError("injected failure")

        async with trio.open_nursery() as inner:
            inner.start_soon(bomb)
            await loop(self)
            inner.cancel_scope.cancel()

    async def held_stop(self: ClaudeProcess, proc: trio.Process) -> None:
        if armed.is_set() and self.spec.session_id in victim:
            stopping.set()
            await release.wait()
        await stop(self, proc)

    monkeypatch.setattr(SessionSupervisor, "_loop", loop_with_a_bomb)
    monkeypatch.setattr(ClaudeProcess, "_stop", held_stop)
    with trio.fail_after(40):
        created = await daemon.create(work_dir, "[[bash:echo hi]]")
        session = created["session"]["id"]
        victim.append(session)
        async with daemon.events(session) as stream:
            request = (await stream.until_type("permission.requested")).body["request_id"]
            armed.set()
            try:
                await stopping.wait()  # failing: its CLI is being stopped
                reply = await daemon.answer(session, request, behavior="allow")
            finally:  # (a shielded stop held open would hold the daemon's exit)
                release.set()
            assert reply.status_code == 200, reply.text
            await stream.until(
                lambda e: e.type == "session.error" and e.body["code"] == "session_failed"
            )
            resolved = [e for e in stream.seen if e.type == "permission.resolved"]
            assert [e.body["request_id"] for e in resolved] == [request]
        assert (await daemon.snapshot(session))["pending_permissions"] == []
        assert await status_of(daemon, session) != "requires_action"


class BrokenFollower:
    """A remote session whose follower fails each time it starts (a bug that does not pass)."""

    source = "remote"

    def __init__(self, session_id: str) -> None:
        self.id = session_id
        self.active = False
        self.closed = False
        self.runs = 0

    def follow(self) -> None:
        pass

    def has_work(self) -> bool:
        return True

    async def run(self) -> None:
        try:
            self.runs += 1
            await trio.lowlevel.checkpoint()
            raise RuntimeError("injected failure")
        finally:
            self.active = False


async def test_a_remote_follower_past_its_restart_budget_waits_for_a_client_to_open_it(
    tmp_path: Path,
) -> None:
    """Past MAX_FAILURES in the window, a remote follower is followed again when a client opens
    the session (subscribes), as for a local session's new message; not at every snapshot a
    client reads (a watch polling one every few seconds), each of which used to start it again:
    one more failure, traceback and ``session.error`` in the log per poll, without end."""
    from sidecode_trio.eventlog.log import EventLog
    from sidecode_trio.eventlog.store import SQLiteStore
    from sidecode_trio.sessions.supervisor import SupervisorSettings
    from sidecode_trio.wire import events as ev

    store = SQLiteStore(tmp_path / "events.sqlite3")
    log = EventLog(store)
    log.load()
    log.create("remote-1")
    log.append("remote-1", ev.SessionCreated(str(tmp_path), "t"))
    log.commit()
    sessions = registry.SessionRegistry(log, SupervisorSettings(), [tmp_path])
    follower = BrokenFollower("remote-1")
    # as the bridge's factory adds them (only what the registry's boundary uses is here)
    sessions._remotes["remote-1"] = cast(Remote, follower)
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                sessions._nursery = nursery
                sessions.follow("remote-1")  # a snapshot: follow it meanwhile
                await trio.testing.wait_all_tasks_blocked()
                assert follower.runs == registry.MAX_FAILURES  # restarted at once, then not
                for _ in range(5):  # a client polls the session's snapshot
                    sessions.follow("remote-1")
                    await trio.testing.wait_all_tasks_blocked()
                assert follower.runs == registry.MAX_FAILURES
                sessions.follow("remote-1", opened=True)  # a client opens it: followed again
                await trio.testing.wait_all_tasks_blocked()
                assert follower.runs == registry.MAX_FAILURES + 1
    finally:
        store.close()


def session_failed(e: SSEEvent) -> bool:
    return e.type == "session.error" and e.body["code"] == "session_failed"


INTERNAL_REPLY = {"error": {"code": "internal", "message": "internal error; see the daemon's log"}}


async def a_failed_request_failed_only_its_session(
    daemon: Client,
    victim: str,
    victim_pid: int,
    failing: SSEStream,
    other: tuple[str, int],
    disarm: Callable[[], None],
) -> None:
    """After a request's unexpected error on ``victim`` (its reply a 500): the session went the
    run task's failure path, the bystander ``other`` (id, CLI pid) is untouched, and the next
    message to the victim starts it again."""
    error = await failing.until(session_failed)
    assert "RuntimeError" in error.body["message"]
    assert "the next message starts it again" in error.body["message"]
    await until_seen(
        failing, lambda e: e.type == "session.status" and e.body["status"] == "errored"
    )
    assert not pid_alive(victim_pid)  # stopped and reaped before the failure was recorded
    snapshot = await daemon.snapshot(victim)
    assert snapshot["pending_permissions"] == []
    assert snapshot["session"]["cli"] in ("stopped", "crashed")
    assert await status_of(daemon, victim) == "errored"

    other_id, other_pid = other
    async with daemon.events(other_id, from_start=False) as healthy:
        sent = (await daemon.send(other_id, "still here?"))["message_id"]
        done = await healthy.until(
            lambda e: e.type == "turn.completed" and e.body["turn_id"] == sent
        )
        assert done.body["result"] == "You said: still here?"
        assert not any(e.type == "session.error" for e in healthy.seen)
    assert pid_alive(other_pid)

    disarm()
    again = (await daemon.send(victim, "again"))["message_id"]
    done = await failing.until(lambda e: e.type == "turn.completed" and e.body["turn_id"] == again)
    assert done.body["result"] == "You said: again"
    assert await status_of(daemon, victim) == "idle"


async def test_an_answers_unexpected_error_fails_its_session_not_half_applied(
    daemon: Client, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer is taken by the core (resolved) and then writing it to the CLI raises: the
    CLI would never get it and the session hung, its turn waiting for ever. Now the request is
    a 500 and the session fails as when its own task fails: its turn ends ``session_failed``,
    its CLI is stopped, and a new message starts it again."""
    victims: list[str] = []
    raised: list[str] = []
    send = ClaudeProcess.send

    async def failing_send(self: ClaudeProcess, message: Mapping[str, Any]) -> None:
        if message.get("type") == "control_response" and self.spec.session_id in victims:
            raised.append(self.spec.session_id)
            raise RuntimeError("injected failure")
        await send(self, message)

    monkeypatch.setattr(ClaudeProcess, "send", failing_send)
    with trio.fail_after(40):
        other = await idle_session(daemon, work_dir, "bystander")
        created = await daemon.create(work_dir, "[[bash:echo hi]]")
        victim = created["session"]["id"]
        async with daemon.events(victim) as failing:
            request = (await failing.until_type("permission.requested")).body["request_id"]
            victim_pid = (await until_seen(failing, state("running"))).body["pid"]
            victims.append(victim)
            reply = await daemon.answer(victim, request, behavior="allow")
            assert reply.status_code == 500, reply.text
            assert reply.json() == INTERNAL_REPLY
            assert raised == [victim]
            await a_failed_request_failed_only_its_session(
                daemon, victim, victim_pid, failing, other, victims.clear
            )
            turn = next(e for e in failing.seen if failed_turn(created["message_id"])(e))
            assert turn.body["reason"] == "session_failed"
            assert raised == [victim]


async def test_a_model_changes_unexpected_error_fails_its_session(
    daemon: Client, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a change of model, here while a permission request is pending: it is
    withdrawn (no approval card waits for a CLI that is gone)."""
    victims: list[str] = []
    request = ClaudeProcess.request

    async def failing_request(
        self: ClaudeProcess, body: Mapping[str, Any], timeout: float = 30.0
    ) -> dict[str, Any]:
        if body.get("subtype") == "set_model" and self.spec.session_id in victims:
            raise RuntimeError("injected failure")
        return await request(self, body, timeout)

    monkeypatch.setattr(ClaudeProcess, "request", failing_request)
    with trio.fail_after(40):
        other = await idle_session(daemon, work_dir, "bystander")
        created = await daemon.create(work_dir, "[[bash:echo hi]]")
        victim = created["session"]["id"]
        async with daemon.events(victim) as failing:
            pending = (await failing.until_type("permission.requested")).body["request_id"]
            victim_pid = (await until_seen(failing, state("running"))).body["pid"]
            # an expected error (the package's own, a 4xx) is the request's only
            reply = await daemon.http.patch(f"/v1/sessions/{victim}", json={"model": "a b"})
            assert reply.status_code == 400, reply.text
            victims.append(victim)
            reply = await daemon.http.patch(
                f"/v1/sessions/{victim}", json={"model": "claude-haiku-4-5"}
            )
            assert reply.status_code == 500, reply.text
            assert reply.json() == INTERNAL_REPLY
            await a_failed_request_failed_only_its_session(
                daemon, victim, victim_pid, failing, other, victims.clear
            )
            withdrawn = [
                e.body
                for e in failing.seen
                if e.type == "permission.resolved" and e.body["request_id"] == pending
            ]
            assert [w["outcome"] for w in withdrawn] == ["withdrawn"]
            turn = next(e for e in failing.seen if failed_turn(created["message_id"])(e))
            assert turn.body["reason"] == "session_failed"
            # a model change that works still does, after the restart
            reply = await daemon.http.patch(
                f"/v1/sessions/{victim}", json={"model": "claude-haiku-4-5"}
            )
            assert reply.status_code == 200, reply.text
            assert len([e for e in failing.seen if session_failed(e)]) == 1


async def test_a_requests_unexpected_error_on_a_sleeping_session_fails_it_too(
    make_config: Callable[..., DaemonConfig], work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No run task is alive to die of it (the CLI stopped when idle): the registry is told
    directly, and the session fails the same way."""
    victims: list[str] = []
    set_settings = SessionCore.set_settings

    def failing_set_settings(self: SessionCore, **changes: Any) -> Any:
        if self.id in victims:
            raise RuntimeError("injected failure")
        return set_settings(self, **changes)

    monkeypatch.setattr(SessionCore, "set_settings", failing_set_settings)
    with trio.fail_after(40):
        async with running_daemon(make_config(idle_timeout=0.3)) as daemon:
            victim = (await daemon.create(work_dir, "first"))["session"]["id"]
            async with daemon.events(victim) as failing:
                await failing.until_type("turn.completed")
                await failing.until(state("stopped"))  # asleep: idle for idle_timeout
                victims.append(victim)
                reply = await daemon.http.patch(
                    f"/v1/sessions/{victim}", json={"model": "claude-haiku-4-5"}
                )
                assert reply.status_code == 500, reply.text
                assert reply.json() == INTERNAL_REPLY
                error = await failing.until(session_failed)
                assert "RuntimeError" in error.body["message"]
                assert await status_of(daemon, victim) == "errored"
                victims.clear()
                again = (await daemon.send(victim, "again"))["message_id"]
                done = await failing.until(
                    lambda e: e.type == "turn.completed" and e.body["turn_id"] == again
                )
                assert done.body["result"] == "You said: again"
