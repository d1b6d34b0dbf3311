"""The session core alone: commands and recorded CLI frames in, exact events and actions out.

No daemon, no process, no clock: the test plays the driver (``sessions/supervisor.py``), feeding
the frames ``tests/data/recorded/`` captured from the real CLI (see ``test_translate``).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from sidecode_trio.errors import Conflict, NotFound
from sidecode_trio.eventlog.fold import SessionFold
from sidecode_trio.eventlog.log import EventLog
from sidecode_trio.eventlog.store import SQLiteStore
from sidecode_trio.sessions import core as sc
from sidecode_trio.sessions.core import (
    CloseStdin,
    Control,
    MirrorDone,
    Prompt,
    ReadSource,
    SessionCore,
    Source,
    Spawn,
    State,
    Write,
)
from sidecode_trio.sessions.supervisor import SessionSupervisor, SupervisorSettings
from sidecode_trio.wire import events as ev

RECORDED = Path(__file__).parent / "data" / "recorded"
VERSION = sorted(p.name for p in RECORDED.iterdir() if p.is_dir())[-1]
MID = "m-1"


def frames(scenario: str) -> list[dict[str, Any]]:
    path = RECORDED / VERSION / f"{scenario}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def turn_frames(scenario: str, message_id: str) -> list[dict[str, Any]]:
    """The recording, its turn renamed to ``message_id`` (the id the core gave the CLI)."""
    lines = (RECORDED / VERSION / f"{scenario}.stdin.jsonl").read_text().splitlines()
    stdin = [json.loads(x) for x in lines if x.strip()]
    recorded = next(m["uuid"] for m in stdin if m.get("type") == "user")
    text = "\n".join(json.dumps(f) for f in frames(scenario)).replace(recorded, message_id)
    return [json.loads(line) for line in text.splitlines()]


def until(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The frames up to and including the first of type ``kind`` (``system``: its init)."""
    for i, frame in enumerate(frames):
        if frame.get("type") == kind and frame.get("subtype", "init") == "init":
            return frames[: i + 1]
    raise AssertionError(f"no {kind} frame")


def new_core(**settings: Any) -> SessionCore:
    fold = SessionFold("s1")
    fold.cwd = "/work"
    core = SessionCore("s1", fold, sc.CoreSettings(**settings))
    core.wake()
    return core


def state(core: SessionCore) -> State:
    """Read afresh (mypy would keep the state narrowed across the inputs that change it)."""
    return core.state


def kinds(outputs: list[sc.Output]) -> list[str]:
    return [o.TYPE if isinstance(o, ev.Event) else type(o).__name__ for o in outputs]


def running(core: SessionCore, text: str = "hi", message_id: str = MID) -> None:
    """Queue, store, spawn, start and deliver one message; the core is then DELIVERED."""
    core.send(message_id, Prompt(text))
    core.stored(message_id)
    assert kinds(core.poll(0)) == ["cli.state", "Spawn"]
    assert kinds(core.started(123, 0.0)) == ["cli.state"]
    (write,) = core.poll(0)
    assert isinstance(write, Write) and write.delivers == message_id
    assert state(core) is State.DELIVERED


def test_a_full_turn_from_recorded_frames() -> None:
    core = new_core()
    message_id, created, out = core.send(MID, Prompt("hi"))
    assert (message_id, created) == (MID, True)
    assert out == [
        ev.MessageQueued(MID, "hi", None, []),
        ev.StatusChanged(ev.SessionStatus.RUNNING),
    ]
    assert core.poll(0) == []  # not durable yet: it may still be withdrawn (issue 13.14)
    core.stored(MID)
    assert core.poll(0) == [
        ev.CLIStateChanged(ev.CLIState.STARTING),
        Spawn(None, "default", False, None),
    ]
    assert state(core) is State.SPAWNING
    assert core.started(123, 0.0) == [ev.CLIStateChanged(ev.CLIState.RUNNING, pid=123)]
    (write,) = core.poll(0)
    assert isinstance(write, Write) and write.delivers == MID and write.frame["uuid"] == MID
    assert core.delivered(MID) == [ev.MessageDelivered(MID)]
    out = core.frames(turn_frames("text", MID), 1.0)
    names = kinds(out)
    assert names[0] == "turn.started" and names[-2:] == ["turn.completed", "session.status"]
    assert set(names[1:-2]) == {"text.delta", "assistant.text"}
    assert out[-1] == ev.StatusChanged(ev.SessionStatus.IDLE)
    assert state(core) is State.READY
    assert core.poll(1.0) == []  # idle: the CLI is stopped after idle_timeout
    assert core.deadline(1.0) == 1.0 + 600.0
    assert core.poll(601.0) == [CloseStdin()]
    assert state(core) is State.STOPPING
    assert core.exited(0, [], cancelled=False) == [
        ev.CLIStateChanged(ev.CLIState.STOPPED, exit_code=0)
    ]
    assert core.poll(602.0) == [] and state(core) is State.ENDING
    assert core.run_ended(cancelled=False) == (False, [])
    assert state(core) is State.ASLEEP


def test_status_is_refreshed_at_the_turn_end() -> None:
    core = new_core()
    running(core)
    out = core.frames(turn_frames("text", MID), 1.0)
    assert out[-1] == ev.StatusChanged(ev.SessionStatus.IDLE)


def test_interrupt_before_the_cli_began_the_turn_is_sent_again_on_init() -> None:
    core = new_core()
    running(core)
    assert core.interrupt() == (True, [Control({"subtype": "interrupt"})])
    out = core.frames(until(turn_frames("text", MID), "system"), 1.0)  # init: the turn begins
    assert [o for o in out if not isinstance(o, ev.Event)] == [
        Control({"subtype": "interrupt"}, "interrupt_again")
    ]
    assert state(core) is State.TURN
    # once only: another init of the same turn sends nothing
    assert core.interrupt() == (True, [Control({"subtype": "interrupt"})])
    assert core.frames(until(turn_frames("text", MID), "system")[-1:], 1.0) == []


def test_interrupting_a_message_queued_while_the_cli_spawns() -> None:
    core = new_core()
    core.send(MID, Prompt("first"))
    core.send("m-2", Prompt("second"))
    core.stored(MID)
    core.stored("m-2")
    assert kinds(core.poll(0)) == ["cli.state", "Spawn"]
    assert core.interrupt() == (True, [ev.TurnInterrupted(MID)])
    core.started(7, 0.0)
    (write,) = core.poll(0)  # the later one stays queued, and runs
    assert isinstance(write, Write) and write.delivers == "m-2"


def test_interrupt_with_nothing_running() -> None:
    assert new_core().interrupt() == (False, [])


def permission(core: SessionCore, now: float = 1.0) -> ev.PermissionRequested:
    running(core, "[[bash:echo hi > hi.txt]]")
    out = core.frames(until(turn_frames("bash_allow", MID), "control_request"), now)
    request = next(o for o in out if isinstance(o, ev.PermissionRequested))
    assert core.status is ev.SessionStatus.REQUIRES_ACTION
    return request


def test_a_permission_request_answered() -> None:
    core = new_core()
    request = permission(core)
    out = core.answer(request.request_id, True, by="phone")
    assert kinds(out) == ["permission.resolved", "session.status", "Write"]
    resolved, _, write = out
    assert isinstance(resolved, ev.PermissionResolved)
    assert resolved.outcome is ev.PermissionOutcome.ALLOWED and resolved.by == "phone"
    assert isinstance(write, Write)
    assert write.frame["response"]["request_id"] == request.request_id
    assert write.frame["response"]["response"]["behavior"] == "allow"


def test_a_permission_answered_twice_the_first_wins() -> None:
    core = new_core()
    request = permission(core)
    core.answer(request.request_id, False, by="watch")
    with pytest.raises(Conflict) as caught:
        core.answer(request.request_id, True, by="phone")
    assert caught.value.code == "already_resolved"
    with pytest.raises(NotFound):
        core.answer("never-seen", True)


def test_an_unanswered_permission_is_denied_by_the_timeout() -> None:
    core = new_core(permission_timeout=30.0)
    request = permission(core, now=100.0)
    assert request.expires_at == 130.0
    assert core.deadline(100.0) == 130.0
    assert core.poll(129.0) == []
    out = core.poll(130.0)
    assert kinds(out) == ["permission.resolved", "session.status", "Write"]
    resolved = out[0]
    assert isinstance(resolved, ev.PermissionResolved)
    assert resolved.outcome is ev.PermissionOutcome.DENIED and resolved.by == "timeout"
    assert "permission_timeout" in resolved.message
    assert core.deadline(130.0) == float("inf")  # the timer is gone with the request
    assert state(core) is State.TURN  # the CLI goes on with the denial


def test_a_file_edit_request_waits_for_its_source_and_keeps_the_order() -> None:
    core = new_core()
    running(core, "write")
    request = ev.PermissionRequested("r-1", "Write", {"file_path": "a.txt", "content": "new\n"})
    frame = {
        "type": "control_request",
        "request_id": "r-1",
        "request": {"subtype": "can_use_tool", "tool_name": "Write", "input": request.input},
    }
    cancel = {"type": "control_cancel_request", "request_id": "r-1"}
    assert core.frames([frame], 1.0) == [ReadSource("r-1", "/work/a.txt")]
    assert core.frames([cancel], 1.0) == []  # held behind the request it cancels
    out = core.source_read("r-1", Source("old\n"), 2.0)
    assert kinds(out) == ["permission.requested", "permission.resolved"]
    shown = out[0]
    assert isinstance(shown, ev.PermissionRequested) and shown.diff is not None
    assert core.status is ev.SessionStatus.RUNNING


def test_a_cli_that_ignores_eof_is_terminated_after_the_grace() -> None:
    core = new_core(idle_timeout=10.0, stop_grace=5.0)
    running(core)
    core.frames(turn_frames("text", MID), 0.0)
    assert core.deadline(0.0) == 10.0
    assert core.poll(10.0) == [CloseStdin()]
    assert core.deadline(10.0) == 15.0
    assert core.poll(14.0) == []
    assert core.poll(15.0) == [sc.Terminate()]
    assert kinds(core.exited(-15, [], cancelled=False)) == ["cli.state"]  # asked: no crash


def test_an_exit_while_a_diff_is_read_releases_then_withdraws_the_request() -> None:
    core = new_core()
    running(core, "write")
    frame = {
        "type": "control_request",
        "request_id": "r-1",
        "request": {"subtype": "can_use_tool", "tool_name": "Edit", "input": {"file_path": "a"}},
    }
    assert kinds(core.frames([frame], 1.0)) == ["ReadSource"]
    out = core.exited(1, [], cancelled=False)
    assert kinds(out)[:3] == ["permission.requested", "permission.resolved", "turn.failed"]
    assert core.source_read("r-1", Source("x"), 2.0) == []  # too late: ignored


def test_a_crash_mid_turn_fails_the_turn_and_withdraws_the_request() -> None:
    core = new_core()
    request = permission(core)
    out = core.exited(1, ["boom"], cancelled=False)
    assert out == [
        ev.PermissionResolved(
            request.request_id,
            ev.PermissionOutcome.WITHDRAWN,
            "claude exited",
            summary=request.summary,
        ),
        ev.TurnFailed(MID, "cli_exited", "claude exited with code 1: boom"),
        ev.CLIStateChanged(ev.CLIState.CRASHED, exit_code=1, detail="boom"),
        ev.SessionError("cli_exited", "claude exited unexpectedly (code 1): boom"),
        ev.StatusChanged(ev.SessionStatus.ERRORED),
    ]
    assert state(core) is State.AWAKE
    with pytest.raises(Conflict):  # answered after the exit: 409, not 404
        core.answer(request.request_id, True)


def test_crashes_in_a_row_fail_what_is_queued() -> None:
    core = new_core(max_crashes=1)
    running(core)
    core.send("m-2", Prompt("next"))
    out = core.exited(1, [], cancelled=False)
    assert ev.TurnFailed("m-2", "cli_crashed", "claude crashed 1 times in a row") in out


def test_a_repeated_client_id_is_one_message() -> None:
    core = new_core()
    assert core.send(MID, Prompt("a"), "c-1")[:2] == (MID, True)
    assert core.send("m-2", Prompt("a"), "c-1") == (MID, False, [])
    # withdrawn (503) before durable: the client id is forgotten, a retry queues anew
    out = core.withdraw(MID)
    assert out is not None and kinds(out) == ["turn.failed", "session.status"]
    assert core.send("m-3", Prompt("a"), "c-1")[:2] == ("m-3", True)
    core.stored("m-3")
    assert core.withdraw("m-3") is None  # durable: it runs


def test_client_ids_are_rebuilt_from_the_log() -> None:
    fold = SessionFold("s1")
    fold.apply(ev.MessageQueued("old", "a", "c-9", []), 0.0)
    core = SessionCore("s1", fold, sc.CoreSettings())
    assert core.send("new", Prompt("a"), "c-9") == ("old", False, [])


def test_mirroring_on_then_off() -> None:
    core = new_core()
    assert core.request_mirror(True, None, "my title") is True
    with pytest.raises(Conflict):
        core.request_mirror(True, None, "my title")
    assert core.poll(0) == [
        ev.CLIStateChanged(ev.CLIState.STARTING),
        Spawn(None, "default", True, "my title"),
    ]
    out = core.started(5, 0.0)
    assert out[-1] == Control({"subtype": "initialize"}, "confirm_mirror", 30.0)
    assert state(core) is State.CONFIRMING
    out = core.mirror_answer({}, 1.0)
    assert out == [ev.SessionMirror(True, "my title", True, ""), MirrorDone(None)]
    assert state(core) is State.READY and core.mirrored
    assert core.deadline(1.0) == float("inf")  # a mirrored CLI is not stopped when idle
    assert core.request_mirror(True, None, "x") is False  # so already
    assert core.request_mirror(False, None, None) is True
    assert core.poll(2.0) == [CloseStdin()]  # restart without --remote-control
    assert kinds(core.exited(0, [], cancelled=False)) == ["cli.state"]
    assert core.poll(3.0) == [
        ev.CLIStateChanged(ev.CLIState.STARTING),
        Spawn(None, "default", False, None),
    ]
    core.started(6, 0.0)
    assert core.mirror_answer({}, 4.0)[0] == ev.SessionMirror(False, None, True, "")


def test_mirroring_not_confirmed_is_off() -> None:
    core = new_core()
    core.request_mirror(True, "n", None)
    core.poll(0)
    core.started(5, 0.0)
    assert core.mirror_answer(None, 1.0, "timed out") == [CloseStdin()]
    out = core.exited(0, [], cancelled=False)
    assert out[-2] == ev.SessionMirror(False, None, False, "claude did not confirm: timed out")
    done = out[-1]
    assert isinstance(done, MirrorDone) and done.error is not None
    assert done.error.code == "mirror_failed" and not core.mirrored


def test_mirroring_while_busy_is_refused() -> None:
    core = new_core()
    running(core)
    with pytest.raises(Conflict) as caught:
        core.request_mirror(True, None, None)
    assert caught.value.code == "session_busy"


def test_a_send_while_the_run_task_ends_is_started() -> None:
    """The race issue 13 reported: a send that arrives while the run task is ending finds it
    still active (so the registry starts no other); the ending task goes on with it."""
    core = new_core()
    assert core.poll(0) == [] and state(core) is State.ENDING
    core.send(MID, Prompt("late"))
    go_on, out = core.run_ended(cancelled=False)
    assert (go_on, out) == (True, [])  # not failed "daemon_stopped", not left unstarted
    assert state(core) is State.AWAKE
    core.stored(MID)
    assert kinds(core.poll(0)) == ["cli.state", "Spawn"]


def test_the_daemon_stopping_fails_what_is_queued() -> None:
    core = new_core()
    core.send(MID, Prompt("a"))
    go_on, out = core.run_ended(cancelled=True)
    assert not go_on and state(core) is State.ASLEEP
    assert out[0] == ev.TurnFailed(
        MID, "daemon_stopped", "the daemon stopped before this message ran"
    )


def test_recovery_after_a_restart() -> None:
    fold = SessionFold("s1")
    fold.apply(ev.MessageQueued("a", "x", None, []), 0.0)
    fold.apply(ev.MessageDelivered("a"), 0.0)
    fold.apply(ev.TurnStarted("a"), 0.0)
    fold.apply(ev.MessageQueued("b", "y", None, []), 0.0)
    core = SessionCore("s1", fold, sc.CoreSettings())
    out = core.recover(fold)
    failed = [o for o in out if isinstance(o, ev.TurnFailed)]
    assert [(f.turn_id, f.reason) for f in failed] == [
        ("a", "daemon_restarted"),
        ("b", "daemon_restarted"),
    ]


@pytest.mark.parametrize("restart", [True, False])
def test_a_failed_run_task_closes_what_was_open_and_sleeps(restart: bool) -> None:
    """The driver's run task died of an unexpected error (the registry's boundary caught it,
    the CLI is stopped): from wherever it was, the core goes back to sleep, and says so."""
    core = new_core()
    request = permission(core)
    core.send("m-2", Prompt("next"))
    core.stored("m-2")
    out = core.failed("internal error RuntimeError", restart)
    assert out[:3] == [
        ev.PermissionResolved(
            request.request_id,
            ev.PermissionOutcome.WITHDRAWN,
            "the session failed",
            summary=request.summary,
        ),
        ev.TurnFailed(MID, "session_failed", "the session failed during this turn (internal "
                      "error RuntimeError)"),
        ev.CLIStateChanged(ev.CLIState.STOPPED, detail="the session failed"),
    ]  # fmt: skip
    assert state(core) is State.ASLEEP and core.current is None
    with pytest.raises(Conflict):  # the withdrawn request: 409, not 404
        core.answer(request.request_id, True)
    error = next(o for o in out if isinstance(o, ev.SessionError))
    assert error.code == "session_failed"
    if restart:  # the queued message stays, for a fresh run task
        assert out[3:] == [error, ev.StatusChanged(ev.SessionStatus.RUNNING)]
        assert core.wants_run()
        core.wake()
        assert kinds(core.poll(0)) == ["cli.state", "Spawn"]
    else:  # not delivered, said so; asleep until a new message
        assert out[3] == ev.TurnFailed(
            "m-2",
            "session_failed",
            "the session failed before this message ran (internal error RuntimeError): not "
            "delivered",
        )
        assert out[4:] == [error, ev.StatusChanged(ev.SessionStatus.ERRORED)]
        assert not core.wants_run() and not core.warm()
        core.send("m-3", Prompt("again"))
        assert core.wants_run()


def test_an_input_the_table_does_not_allow_is_an_error() -> None:
    core = new_core()
    with pytest.raises(sc.StateError):
        core.started(1, 0.0)  # never spawned
    assert "AWAKE" in repr(core)
    assert core.statistics()["state"] == "awake"


# -- the driver: the same race, with a real store and the fake CLI ------------------------------


async def test_the_driver_runs_a_send_that_races_the_end_of_its_task(
    tmp_path: Path, work_dir: Path, fake_claude: Path, claude_env: dict[str, str]
) -> None:
    """The loop has decided to end; a send arrives before the task is gone (the registry saw it
    active, so it started no other). Before the core, it was failed ``daemon_stopped``."""
    sid = str(uuid.uuid4())  # the CLI wants a UUID
    store = SQLiteStore(tmp_path / "events.sqlite3")
    log = EventLog(store)
    log.load()
    log.create(sid)
    log.append(sid, ev.SessionCreated(str(work_dir), "t"))
    log.commit()
    settings = SupervisorSettings(claude=str(fake_claude), env=claude_env, idle_timeout=0.01)
    supervisor = SessionSupervisor(sid, log, settings)
    loop = supervisor._loop
    late: list[str] = []

    async def loop_then_send(*args: Any) -> None:
        await loop(*args)
        if not late:
            late.append(supervisor.send("late")[0])
            log.commit()

    supervisor._loop = loop_then_send  # type: ignore[method-assign]
    try:
        with trio.fail_after(20):
            await supervisor.run()  # returns once the late message ran and the CLI stopped
        fold = log.fold(sid)
        assert (fold.turns, fold.queued, fold.status) == (1, [], ev.SessionStatus.IDLE)
        assert not supervisor.active and supervisor.core.state is State.ASLEEP
    finally:
        store.close()
