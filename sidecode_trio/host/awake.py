"""Keep the host awake while a session is running or waiting for an approval.

A phone user who starts a long turn and pockets the phone expects the laptop to finish it; an idle
sleep in the middle freezes the CLI and drops every client link. Rather than talk to each OS's
power API, we run the OS's own inhibitor command for exactly as long as the host must stay awake:
the inhibition lasts while the process runs, and the kernel ends it with the process, so no state
can leak past our lifetime.

* macOS: ``caffeinate -i -w <daemon pid>``: ``-w`` makes it exit with the daemon even if the
  daemon is SIGKILLed.
* Linux: ``systemd-inhibit ... cat``: ``cat`` reads the stdin pipe we hold, so when the daemon dies
  in any way the pipe closes, ``cat`` exits and ``systemd-inhibit`` releases the lock with it
  (``sleep infinity`` would keep the machine awake forever after a crash).
* anything else: a custom command from the config, or nothing.

:class:`KeepAwake` is a thin driver: one loop waits for "busy", holds the inhibitor until "idle"
(plus a short linger, so back-to-back turns keep one process), and stops it with the same
discipline as the CLI's driver: close stdin, SIGTERM the process group, SIGKILL, reap, shielded and
bounded. A command that cannot hold (no such binary, no logind in a container) is reported in
:meth:`KeepAwake.status` and retried only at the next busy transition or after a backoff, never in
a tight loop; nothing here raises into the daemon.
"""

from __future__ import annotations

import enum
import logging
import os
import platform
import shlex
import shutil
import signal
import subprocess
from collections.abc import Callable
from typing import Final, Literal

import attrs
import trio

log = logging.getLogger(__name__)

INHIBIT_WHY: Final = "A Claude Code session is running"
STDERR_TAIL: Final = 2000  #: bytes of an inhibitor's stderr kept for status()
DRAIN_GRACE: Final = 1.0  #: seconds to collect the stderr of an inhibitor that exited
REAP_LIMIT: Final = 5.0  #: seconds to wait for the kernel to reap after SIGKILL


class Phase(enum.StrEnum):
    """Where the driver is; every transition happens in :class:`KeepAwake`'s one loop."""

    OFF = "off"  #: no inhibitor configured or found
    IDLE = "idle"  #: waiting for a session to get busy
    HOLDING = "holding"  #: the inhibitor runs and a session is busy
    LINGERING = "lingering"  #: the inhibitor runs; idle, but a next turn may come soon
    STOPPING = "stopping"  #: SIGTERM/SIGKILL sent, waiting to reap
    BACKOFF = "backoff"  #: the inhibitor failed; retried at the next busy or after a delay


@attrs.frozen
class Inhibitor:
    """A command that holds the inhibition for as long as it runs."""

    name: str  #: "caffeinate" | "systemd-inhibit" | "custom"
    argv: tuple[str, ...]


@attrs.frozen
class AwakeStatus:
    """What ``/status`` and ``doctor`` show about keeping the host awake."""

    enabled: bool  #: an inhibitor is configured (or was found)
    inhibitor: str | None  #: its name
    command: list[str]
    busy: bool  #: a session is running or waiting for approval
    phase: Phase
    active: bool  #: the inhibitor process is running now
    error: str | None  #: the last failure (e.g. the tail of its stderr); None once one held


def find_inhibitor(
    *,
    system: str | None = None,
    which: Callable[[str], str | None] = shutil.which,
    pid: int | None = None,
) -> Inhibitor | None:
    """The OS's own inhibitor for this host, or None when there is none we know of."""
    system = platform.system() if system is None else system
    if system == "Darwin" and which("caffeinate") is not None:
        daemon = os.getpid() if pid is None else pid
        return Inhibitor("caffeinate", ("caffeinate", "-i", "-w", str(daemon)))
    if system == "Linux" and which("systemd-inhibit") is not None:
        argv = (
            "systemd-inhibit",
            "--what=idle:sleep",
            "--who=sidecode-trio",
            f"--why={INHIBIT_WHY}",
            "--mode=block",
            "cat",  # exits on EOF of the stdin pipe we hold: the lock cannot outlive the daemon
        )
        return Inhibitor("systemd-inhibit", argv)
    return None


def parse_setting(value: str) -> Inhibitor | Literal["auto"] | None:
    """Read the ``keep_awake`` setting: ``"auto"``, ``"off"`` or a command line (shlex syntax).

    Raises ValueError with a message fit for ``bad value @ $.keep_awake: ...``.
    """
    text = value.strip()
    if text.lower() == "auto":
        return "auto"
    if text.lower() == "off":
        return None
    if "\x00" in text:
        raise ValueError("the command must not contain a NUL byte")
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot parse the command {value!r}: {exc}") from None
    if not argv or not argv[0]:
        raise ValueError('empty command; use "auto", "off" or a command line')
    return Inhibitor("custom", tuple(argv))


def choose_inhibitor(value: str) -> Inhibitor | None:
    """The inhibitor a ``keep_awake`` setting asks for on this host (``auto`` looks it up)."""
    setting = parse_setting(value)
    return find_inhibitor() if setting == "auto" else setting


class KeepAwake:
    """Run ``inhibitor`` while any session is busy; owned by the daemon's nursery for its life.

    ``linger``: seconds to keep holding after the last session went idle, so a back-to-back turn
    does not restart the process. ``retry_after``: seconds before a failed inhibitor is tried
    again while sessions stay busy. ``grace``: seconds between SIGTERM and SIGKILL.
    """

    def __init__(
        self,
        inhibitor: Inhibitor | None,
        *,
        linger: float = 5.0,
        retry_after: float = 60.0,
        grace: float = 2.0,
    ) -> None:
        self._inhibitor = inhibitor
        self._linger = linger
        self._retry_after = retry_after
        self._grace = grace
        self._busy = False
        self._phase = Phase.OFF if inhibitor is None else Phase.IDLE
        self._changed = trio.Event()  # set and replaced at each busy transition
        self._proc: trio.Process | None = None
        self._error: str | None = None
        self._warned: str | None = None  # the failure last logged as a warning
        self.starts = 0  #: inhibitor processes started so far

    def __repr__(self) -> str:
        name = self._inhibitor.name if self._inhibitor is not None else "none"
        busy = "busy" if self._busy else "not busy"
        pid = f" pid={self._proc.pid}" if self._proc is not None else ""
        return f"<KeepAwake {name} {self._phase} {busy}{pid} starts={self.starts}>"

    def set_busy(self, busy: bool) -> None:
        """Say whether a session needs the host awake; cheap and idempotent, call it freely."""
        if busy != self._busy:
            self._busy = busy
            self._changed.set()
            self._changed = trio.Event()

    def status(self) -> AwakeStatus:
        inhibitor = self._inhibitor
        return AwakeStatus(
            enabled=inhibitor is not None,
            inhibitor=inhibitor.name if inhibitor is not None else None,
            command=list(inhibitor.argv) if inhibitor is not None else [],
            busy=self._busy,
            phase=self._phase,
            active=self._proc is not None and self._proc.returncode is None,
            error=self._error,
        )

    # -- lifetime ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the inhibitor whenever busy, until cancelled; the process never outlives this."""
        task_status.started()
        inhibitor = self._inhibitor
        if inhibitor is None:
            await trio.sleep_forever()
        while True:
            await self._until(busy=True)
            if await self._hold(inhibitor):
                continue
            # It could not hold: try again at the next busy transition, or after the backoff
            # if sessions stay busy that long. Never a tight respawn loop.
            self._phase = Phase.BACKOFF
            with trio.move_on_after(self._retry_after):
                await self._until(busy=False)
            self._phase = Phase.IDLE

    async def _until(self, *, busy: bool) -> None:
        while self._busy != busy:
            await self._changed.wait()

    async def _hold(self, inhibitor: Inhibitor) -> bool:
        """Run the inhibitor until the host may sleep; False if it could not hold that long."""
        try:
            proc = await trio.lowlevel.open_process(
                inhibitor.argv,
                stdin=subprocess.PIPE,  # its end of our lifetime: EOF when the daemon dies
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group, signalled as a whole
            )
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the command
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self._failed(f"cannot start {inhibitor.argv[0]!r}: {reason}")
            return False
        self._proc = proc
        self._phase = Phase.HOLDING
        self.starts += 1
        # Once it has failed, each retry (one per turn) is news only at debug level, until a
        # hold succeeds again: a broken inhibitor must not add a line to every turn.
        level = logging.DEBUG if self._warned is not None else logging.INFO
        log.log(level, "keeping the host awake with %s (pid %d)", inhibitor.name, proc.pid)
        stderr = bytearray()
        try:
            with trio.CancelScope() as holding:
                async with trio.open_nursery() as nursery:
                    drained = trio.Event()
                    nursery.start_soon(_drain, proc, stderr, drained)
                    nursery.start_soon(self._release_when_idle, holding)
                    await proc.wait()
                    with trio.move_on_after(DRAIN_GRACE):  # a grandchild may hold stderr open
                        await drained.wait()
                    nursery.cancel_scope.cancel()
        finally:
            self._phase = Phase.STOPPING
            with trio.CancelScope(shield=True):
                await self._stop(proc)
            self._proc = None
            self._phase = Phase.IDLE
        if holding.cancelled_caught:
            log.info("the host may sleep again (%s stopped)", inhibitor.name)
            self._error = self._warned = None  # it works again: a new failure is news
            return True
        tail = stderr.decode(errors="replace").strip()
        message = f"{inhibitor.argv[0]} exited with code {proc.returncode}"
        self._failed(f"{message}: {tail}" if tail else message)
        return False

    async def _release_when_idle(self, holding: trio.CancelScope) -> None:
        """Cancel ``holding`` once no session was busy for ``linger`` seconds."""
        while True:
            await self._until(busy=False)
            self._phase = Phase.LINGERING
            with trio.move_on_after(self._linger) as lingering:
                # Any transition ends this linger; if we are idle again, a new one starts now.
                await self._changed.wait()
            if lingering.cancelled_caught:
                holding.cancel()
                return
            self._phase = Phase.HOLDING

    async def _stop(self, proc: trio.Process) -> None:
        """Close stdin, SIGTERM the group, SIGKILL it, reap; bounded (call shielded)."""
        if proc.stdin is not None:
            await proc.stdin.aclose()
        for sig, grace in ((signal.SIGTERM, self._grace), (signal.SIGKILL, REAP_LIMIT)):
            if proc.returncode is not None:
                break
            _signal_group(proc, sig)
            with trio.move_on_after(grace):
                await proc.wait()
        _signal_group(proc, signal.SIGKILL)  # leftovers of its group
        if proc.stderr is not None:
            await proc.stderr.aclose()
        if proc.returncode is None:
            log.warning("the inhibitor (pid %d) survived SIGKILL; it was not reaped", proc.pid)

    def _failed(self, message: str) -> None:
        self._error = message
        if message != self._warned:  # once per distinct failure: retries must not flood the log
            self._warned = message
            log.warning("cannot keep the host awake: %s", message)
        else:
            log.debug("cannot keep the host awake: %s", message)


async def _drain(proc: trio.Process, tail: bytearray, drained: trio.Event) -> None:
    """Keep the end of the inhibitor's stderr: it is the only explanation a failure gives."""
    assert proc.stderr is not None
    try:
        while data := await proc.stderr.receive_some(STDERR_TAIL):
            tail += data
            del tail[:-STDERR_TAIL]
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    drained.set()


def _signal_group(proc: trio.Process, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
