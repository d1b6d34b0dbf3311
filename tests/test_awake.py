"""Keeping the host awake: the inhibitor's lifetime follows "busy", and failures stay quiet.

The inhibitor here is a tiny Python script that records each start (its pid, one line per start)
and then holds, fails at once, or holds until its stdin closes. Every process it starts is
stopped by ``KeepAwake`` itself (which is what is under test) and, failing that, killed in the
test's ``finally``. Tests that must cross the 60 s retry backoff use a mock clock running at real
speed, so they can jump over it instead of sleeping.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from sidecode_trio.host.awake import (
    INHIBIT_WHY,
    Inhibitor,
    KeepAwake,
    Phase,
    find_inhibitor,
    parse_setting,
)

INHIBITOR_SCRIPT = """\
import os, sys, time
state, mode = sys.argv[1], sys.argv[2]
with open(os.path.join(state, "starts"), "a") as log:
    log.write(f"{os.getpid()}\\n")
if mode == "fail":
    print("Failed to inhibit: nobody to ask", file=sys.stderr)
    sys.exit(1)
if mode == "eof":
    sys.stdin.read()
    with open(os.path.join(state, "eof"), "w") as done:
        done.write("stdin closed")
    sys.exit(0)
while True:
    time.sleep(60)
"""

# A daemon stand-in: keeps the host awake with the "eof" inhibitor until it is SIGKILLed.
DAEMON_CODE = """\
import sys, trio
from sidecode_trio.host.awake import Inhibitor, KeepAwake

async def main():
    inhibitor = Inhibitor("custom", (sys.executable, sys.argv[1], sys.argv[2], "eof"))
    awake = KeepAwake(inhibitor, linger=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(awake.run)
        awake.set_busy(True)

trio.run(main)
"""


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """The inhibitor script's directory; any inhibitor still alive at the end is killed."""
    path = tmp_path / "inhibitor"
    path.mkdir()
    (path / "inhibitor.py").write_text(INHIBITOR_SCRIPT)
    try:
        yield path
    finally:
        for pid in started(path):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Real-time pace, but a test can jump over a backoff instead of sleeping through it."""
    return trio.testing.MockClock(rate=1.0)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_holding(awake: KeepAwake, state: Path) -> None:
    """Until the driver holds the process and the process has recorded its start (either first)."""
    await wait_until(lambda: awake.status().phase == Phase.HOLDING and len(started(state)) == 1)


def script(state: Path, mode: str) -> Inhibitor:
    return Inhibitor("custom", (sys.executable, str(state / "inhibitor.py"), str(state), mode))


def started(state: Path) -> list[int]:
    path = state / "starts"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


async def wait_until(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(10):  # a safety net only: each condition is met in milliseconds
        while not predicate():
            await trio.sleep(0.01)


async def test_holds_while_busy_and_stops_when_idle(state: Path) -> None:
    inhibitor = script(state, "hold")
    awake = KeepAwake(inhibitor, linger=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(awake.run)
        assert not awake.status().active

        awake.set_busy(True)
        await wait_holding(awake, state)
        [pid] = started(state)
        status = awake.status()
        assert status.active and status.busy and status.enabled
        assert status.phase == Phase.HOLDING
        assert status.inhibitor == "custom"
        assert status.command == list(inhibitor.argv)
        assert os.getsid(pid) == pid  # its own session, so its whole group is signalled

        awake.set_busy(False)
        await wait_until(lambda: awake.status().phase == Phase.IDLE)  # after the reap
        assert not pid_alive(pid)  # gone and reaped: a zombie would still answer kill(pid, 0)
        assert not awake.status().active
        assert awake.status().error is None
        assert awake.starts == 1
        nursery.cancel_scope.cancel()


async def test_busy_again_keeps_one_process(state: Path) -> None:
    awake = KeepAwake(script(state, "hold"), linger=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(awake.run)
        awake.set_busy(True)
        await wait_holding(awake, state)
        for _ in range(3):
            awake.set_busy(True)  # every status change calls this; only a transition matters
        awake.set_busy(False)
        awake.set_busy(True)  # idle and busy again before the driver looked: nothing to do
        await trio.testing.wait_all_tasks_blocked()
        assert awake.starts == 1
        assert awake.status().phase == Phase.HOLDING
        assert pid_alive(started(state)[0])
        nursery.cancel_scope.cancel()


async def test_linger_keeps_the_process_across_back_to_back_turns(
    state: Path, clock: trio.testing.MockClock
) -> None:
    awake = KeepAwake(script(state, "hold"), linger=30)

    async def phase_after(busy: bool | None = None, jump: float = 0) -> Phase:
        if busy is not None:
            awake.set_busy(busy)
        clock.jump(jump)
        await trio.testing.wait_all_tasks_blocked()
        return awake.status().phase

    async with trio.open_nursery() as nursery:
        await nursery.start(awake.run)
        awake.set_busy(True)
        await wait_holding(awake, state)
        assert await phase_after(busy=False) == Phase.LINGERING
        assert await phase_after(jump=20) == Phase.LINGERING
        assert await phase_after(busy=True) == Phase.HOLDING  # the next turn: same process
        assert await phase_after(busy=False) == Phase.LINGERING
        assert await phase_after(jump=29) == Phase.LINGERING  # counted from the last idle
        awake.set_busy(True)  # a turn that began and ended before the driver looked
        assert await phase_after(busy=False) == Phase.LINGERING
        assert await phase_after(jump=29) == Phase.LINGERING  # it still restarts the linger
        clock.jump(2)
        await wait_until(lambda: awake.status().phase == Phase.IDLE)
        assert awake.starts == 1
        assert not pid_alive(started(state)[0])
        nursery.cancel_scope.cancel()


async def test_cancelling_the_owner_stops_the_inhibitor(state: Path) -> None:
    awake = KeepAwake(script(state, "hold"), linger=60)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(awake.run)
            awake.set_busy(True)
            await wait_holding(awake, state)
            nursery.cancel_scope.cancel()
    [pid] = started(state)
    assert not pid_alive(pid)
    assert not awake.status().active


async def test_a_failing_command_is_reported_and_not_respawned_in_a_loop(
    state: Path, clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sidecode_trio.host.awake")
    awake = KeepAwake(script(state, "fail"), linger=0, retry_after=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(awake.run)
        awake.set_busy(True)
        await wait_until(lambda: awake.status().error is not None)
        assert awake.status().error == (
            f"{sys.executable} exited with code 1: Failed to inhibit: nobody to ask"
        )
        assert not awake.status().active
        assert awake.status().phase == Phase.BACKOFF

        await trio.testing.wait_all_tasks_blocked()
        clock.jump(59)
        await trio.testing.wait_all_tasks_blocked()
        assert awake.status().phase == Phase.BACKOFF  # still busy, but waiting out the backoff
        assert awake.starts == 1
        assert len(started(state)) == 1

        clock.jump(2)
        await wait_until(lambda: awake.starts == 2)  # the backoff is over: one more try
        await wait_until(lambda: awake.status().phase == Phase.BACKOFF)

        awake.set_busy(False)
        await trio.testing.wait_all_tasks_blocked()
        assert awake.status().phase == Phase.IDLE
        awake.set_busy(True)
        await wait_until(lambda: awake.starts == 3)  # a new busy period: tried at once
        await wait_until(lambda: awake.status().phase == Phase.BACKOFF)
        assert len(started(state)) == 3
        nursery.cancel_scope.cancel()

    assert not any(pid_alive(pid) for pid in started(state))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the same failure is logged once, then at debug level
    assert "Failed to inhibit" in warnings[0].getMessage()
    # three tries (one per busy period, i.e. per turn): one INFO line, the rest at debug
    starting = [r for r in caplog.records if "keeping the host awake" in r.getMessage()]
    assert [r.levelno for r in starting] == [logging.INFO, logging.DEBUG, logging.DEBUG]


async def test_a_missing_binary_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-inhibitor"
    awake = KeepAwake(Inhibitor("custom", (str(missing), "--hold")), linger=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(awake.run)
        awake.set_busy(True)
        await wait_until(lambda: awake.status().error is not None)
        assert awake.status().error == f"cannot start {str(missing)!r}: No such file or directory"
        assert awake.starts == 0
        assert not awake.status().active
        assert awake.status().phase == Phase.BACKOFF
        nursery.cancel_scope.cancel()


async def test_disabled_does_nothing() -> None:
    awake = KeepAwake(None)
    async with trio.open_nursery() as nursery:
        await nursery.start(awake.run)
        awake.set_busy(True)
        await trio.testing.wait_all_tasks_blocked()
        status = awake.status()
        assert (status.enabled, status.inhibitor, status.command) == (False, None, [])
        assert (status.busy, status.active, status.error) == (True, False, None)
        assert status.phase == Phase.OFF
        assert awake.starts == 0
        nursery.cancel_scope.cancel()


async def test_the_inhibitor_ends_with_a_sigkilled_daemon(state: Path) -> None:
    """Its stdin is a pipe only the daemon holds: a crash closes it, and it exits on EOF."""
    argv = [sys.executable, "-c", DAEMON_CODE, str(state / "inhibitor.py"), str(state)]
    daemon = await trio.lowlevel.open_process(argv)
    try:
        await wait_until(lambda: len(started(state)) == 1)
        daemon.kill()
        with trio.fail_after(10):
            await daemon.wait()
        eof = state / "eof"
        await wait_until(lambda: eof.exists() and eof.read_text() == "stdin closed")
        assert eof.read_text() == "stdin closed"
    finally:
        if daemon.returncode is None:
            daemon.kill()
            with trio.move_on_after(5):
                await daemon.wait()


def test_find_inhibitor_per_system() -> None:
    def which(*available: str) -> Callable[[str], str | None]:
        return lambda name: f"/usr/bin/{name}" if name in available else None

    mac = find_inhibitor(system="Darwin", which=which("caffeinate"), pid=4242)
    assert mac == Inhibitor("caffeinate", ("caffeinate", "-i", "-w", "4242"))
    linux = find_inhibitor(system="Linux", which=which("systemd-inhibit"))
    assert linux == Inhibitor(
        "systemd-inhibit",
        (
            "systemd-inhibit",
            "--what=idle:sleep",
            "--who=sidecode-trio",
            f"--why={INHIBIT_WHY}",
            "--mode=block",
            "cat",
        ),
    )
    assert find_inhibitor(system="Linux", which=which("caffeinate")) is None
    assert find_inhibitor(system="Darwin", which=which()) is None
    assert find_inhibitor(system="Windows", which=which("caffeinate", "systemd-inhibit")) is None
    assert find_inhibitor(system="FreeBSD", which=which("caffeinate", "systemd-inhibit")) is None
    default = find_inhibitor(system="Darwin", which=which("caffeinate"))
    assert default is not None and default.argv[-1] == str(os.getpid())


def test_parse_setting() -> None:
    assert parse_setting("auto") == "auto"
    assert parse_setting(" Auto ") == "auto"
    assert parse_setting("off") is None
    assert parse_setting("my-inhibit --why 'a long turn'") == Inhibitor(
        "custom", ("my-inhibit", "--why", "a long turn")
    )
    for empty in ("", "   ", '""'):
        with pytest.raises(ValueError, match="empty command"):
            parse_setting(empty)
    with pytest.raises(ValueError, match="cannot parse the command"):
        parse_setting("my-inhibit 'unbalanced")
    with pytest.raises(ValueError, match="NUL"):
        parse_setting("my-inhibit \x00")


@pytest.mark.skipif(shutil.which("systemd-inhibit") is None, reason="no systemd-inhibit here")
async def test_real_systemd_inhibit_holds_or_reports_why_not() -> None:
    """With logind it holds until idle; in a container it fails, and status() says why."""
    inhibitor = find_inhibitor(system="Linux")
    assert inhibitor is not None
    awake = KeepAwake(inhibitor, linger=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(awake.run)
        awake.set_busy(True)
        with trio.move_on_after(5):  # a working inhibitor never reports: it just holds
            await wait_until(lambda: awake.status().error is not None)
        error = awake.status().error
        if error is not None:
            assert error.startswith("systemd-inhibit exited with code 1: ")
            assert not awake.status().active
        else:
            assert awake.status().phase == Phase.HOLDING
            awake.set_busy(False)
            await wait_until(lambda: awake.status().phase == Phase.IDLE)
        assert awake.starts == 1
        nursery.cancel_scope.cancel()
