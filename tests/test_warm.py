"""Warm CLIs: a client opening a session whose CLI is stopped starts it in the background, at most
``warm_limit`` at once (the least recently opened is stopped first), each stopped again when it
sits idle; a message then starts its turn on that CLI, with no start-up of its own.

The fake CLI runs as a real process, so these tests use the real clock: each waits for the
events it asserts (``trio.fail_after`` is only a deadline)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import trio

from sidecode_trio.config import DaemonConfig

from helpers import SSEEvent, SSEStream, cli_argvs, pid_alive, running_daemon


def cli_state(state: str) -> Callable[[SSEEvent], bool]:
    return lambda e: e.type == "cli.state" and e.body["state"] == state


async def running_pid(stream: SSEStream) -> int:
    return int((await stream.until(cli_state("running"), timeout=30)).body["pid"])


async def test_opening_a_stopped_session_warms_its_cli_and_the_cap_holds(
    make_config: Callable[..., DaemonConfig], work_dir: Path, cli_log: Path
) -> None:
    with trio.fail_after(90):
        async with running_daemon(make_config(warm_limit=1)) as daemon:
            first = (await daemon.create(work_dir))["session"]["id"]
            second = (await daemon.create(work_dir))["session"]["id"]
            third = (await daemon.create(work_dir))["session"]["id"]
            assert cli_argvs(cli_log) == []  # created without a prompt: no CLI yet
            async with daemon.events(first) as first_stream:
                first_pid = await running_pid(first_stream)  # opened: warmed
                async with daemon.events(second) as second_stream:
                    second_pid = await running_pid(second_stream)
                    # the cap is one warm CLI: the least recently opened one is stopped
                    await first_stream.until(cli_state("stopped"), timeout=30)
                    assert not pid_alive(first_pid) and pid_alive(second_pid)
                    # a message to the opened session runs on its warm CLI: no second start
                    await daemon.send(second, "hello")
                    seen = [await second_stream.next()]
                    while seen[-1].type != "turn.completed":
                        seen.append(await second_stream.next())
                    assert not [e for e in seen if cli_state("starting")(e)]
                    assert seen[-1].body["result"] == "You said: hello"
                    # busy with real work, it is no longer a warm one: opening another leaves it
                    async with daemon.events(third) as third_stream:
                        await running_pid(third_stream)
                        assert pid_alive(second_pid)
        assert len(cli_argvs(cli_log)) == 3  # one start per session, none for the message


async def test_a_warm_cli_is_stopped_again_when_idle(
    make_config: Callable[..., DaemonConfig], work_dir: Path, cli_log: Path
) -> None:
    with trio.fail_after(60):
        async with running_daemon(make_config(idle_timeout=0.5)) as daemon:
            session = (await daemon.create(work_dir))["session"]["id"]
            async with daemon.events(session) as stream:
                pid = await running_pid(stream)
                await stream.until(cli_state("stopped"), timeout=30)  # no message came
                assert not pid_alive(pid)
        assert len(cli_argvs(cli_log)) == 1


async def test_no_warming_when_the_limit_is_zero(
    make_config: Callable[..., DaemonConfig], work_dir: Path, cli_log: Path
) -> None:
    with trio.fail_after(60):
        async with running_daemon(make_config(warm_limit=0)) as daemon:
            session = (await daemon.create(work_dir))["session"]["id"]
            async with daemon.events(session) as stream:
                await daemon.send(session, "hi")
                starting = await stream.until(lambda e: e.type in ("cli.state", "message.queued"))
                assert starting.type == "message.queued"  # the CLI starts for the message
                await stream.until_type("turn.completed")
        assert len(cli_argvs(cli_log)) == 1


def test_the_core_warms_a_sleeping_session_and_stops_it_when_idle_or_cooled() -> None:
    """The sans-IO core, with its own clock: warm() spawns, an idle warm CLI stops after
    ``warm_idle_timeout``; cool() stops it at once; a message turns it into a real one."""
    from sidecode_trio.eventlog.fold import SessionFold
    from sidecode_trio.sessions import core as sc

    fold = SessionFold("s1")
    fold.cwd = "/work"
    core = sc.SessionCore("s1", fold, sc.CoreSettings(idle_timeout=600, warm_idle_timeout=30))

    def state() -> sc.State:  # read afresh (mypy would keep it narrowed across the inputs)
        return core.state

    def warm_only() -> bool:
        return core.warm_only

    assert state() is sc.State.ASLEEP and not core.wants_run()
    assert core.warm() and core.wants_run() and not core.warm()  # once
    core.wake()
    assert [type(o).__name__ for o in core.poll(0)] == ["CLIStateChanged", "Spawn"]
    core.started(123, 0.0)
    assert core.poll(0) == [] and warm_only()
    assert core.deadline(0) == 30  # the warm idle timeout, not the 600 s one
    assert core.poll(30) == [sc.CloseStdin()]  # idle: stopped again
    core.exited(0, [], cancelled=False)
    assert not warm_only()
    assert core.poll(31) == [] and state() is sc.State.ENDING
    core.run_ended(cancelled=False)
    # warmed again, then cooled by the registry's cap: stopped at the next poll
    assert core.warm()
    core.wake()
    core.poll(40)
    core.started(124, 0.0)
    core.cool()
    assert core.poll(41) == [sc.CloseStdin()]
    core.exited(0, [], cancelled=False)
    core.poll(42)
    core.run_ended(cancelled=False)
    # warmed, then a message: delivered on that CLI, and no longer a warm one
    assert core.warm()
    core.wake()
    core.poll(50)
    core.started(125, 0.0)
    core.send("m1", sc.Prompt("hi"))
    core.stored("m1")
    (write,) = core.poll(51)
    assert isinstance(write, sc.Write) and write.delivers == "m1" and not warm_only()
    core.cool()  # a real turn is not stopped by the cap
    assert core.poll(52) == []
