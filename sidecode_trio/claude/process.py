"""The Trio driver for one ``claude`` process: spawn, read, write, control requests, shutdown.

One reader task frames stdout and hands each read's frames to ``on_frames`` (synchronously: the
session appends them to its log right there, with no extra hop); one task drains stderr, keeping
the last lines for error reports; writes are serialised under a lock and shielded, so a cancel
never leaves half a line on the CLI's stdin (one bad line makes the CLI exit). Cancellation is how
the process dies: on any exit, close stdin, wait, SIGTERM the process group, wait, SIGKILL, reap.
If the daemon itself dies, the leash (``leash.py``) kills the process group at once.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import trio

from ..errors import CLIError
from .framing import Frame, LineFramer, TextDeltaLine
from .leash import Leash, executable
from .messages import LaunchSpec, control_error, control_request, control_success, encode_line
from .messages import new_request_id as _request_id

log = logging.getLogger(__name__)

READ_SIZE: Final = 64 * 1024  # larger reads allocate through mmap: ~16 us more per token
STDERR_LINES: Final = 40  # kept for crash reports
WRITE_TIMEOUT: Final = 10.0  # seconds a stdin write may block before the CLI is deemed stuck


@attrs.frozen
class Grace:
    """Seconds to wait at each step of stopping the process."""

    close_stdin: float = 2.0
    terminate: float = 3.0


@attrs.define
class _Waiter:
    done: trio.Event = attrs.field(factory=trio.Event)
    response: dict[str, Any] = attrs.field(factory=dict)
    error: str | None = None


FramesCallback = Callable[[list[Frame]], None]


class ClaudeProcess:
    def __init__(self, spec: LaunchSpec, on_frames: FramesCallback, grace: Grace = Grace()) -> None:
        self.spec = spec
        self._on_frames = on_frames
        self._grace = grace
        self._proc: trio.Process | None = None
        self._nursery: trio.Nursery | None = None
        self._write_lock = trio.Lock()
        self._waiters: dict[str, _Waiter] = {}
        self._requests = 0
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
        self.framer = LineFramer()
        self.exit_code: int | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __repr__(self) -> str:
        state = "running" if self.exit_code is None else f"exited {self.exit_code}"
        return f"<ClaudeProcess pid={self.pid} {state} cwd={self.spec.cwd!r}>"

    # -- lifetime ----------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[ClaudeProcess] = trio.TASK_STATUS_IGNORED
    ) -> int:
        """Start the process, report it started, and return its exit code when it exits.

        It runs on the daemon's leash (``leash.py``): it is killed, with its tools, the moment
        the daemon dies, however it dies."""
        env = self.spec.environment()
        if executable(self.spec.claude, env.get("PATH")) is None:
            raise CLIError(f"cannot start {self.spec.claude!r}: No such file or directory")
        leash = Leash.get()
        try:
            proc = await trio.lowlevel.open_process(
                leash.wrap(self.spec.argv()),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.spec.cwd,
                env=env,
                start_new_session=True,  # its own process group: tool children die with it
                pass_fds=(leash.read_fd,),
            )
        except OSError as exc:
            raise CLIError(f"cannot start {self.spec.claude!r}: {exc.strerror or exc}") from exc
        self._proc = proc
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._drain_stderr, proc)
                task_status.started(self)
                await self._read_stdout(proc)
                with trio.move_on_after(self._grace.terminate):
                    await proc.wait()
                nursery.cancel_scope.cancel()  # a tool's child may hold stderr open
        finally:
            with trio.CancelScope(shield=True):
                await self._stop(proc)
                self.exit_code = proc.returncode
                self._fail_waiters(f"claude exited with code {proc.returncode}")
        assert proc.returncode is not None
        return proc.returncode

    async def close_stdin(self) -> None:
        """Ask the CLI to finish its turns and exit (what it does on stdin EOF)."""
        if self._proc is not None and self._proc.stdin is not None:
            async with self._write_lock:
                await self._proc.stdin.aclose()

    async def _stop(self, proc: trio.Process) -> None:
        if proc.returncode is None and proc.stdin is not None:
            with trio.move_on_after(self._grace.close_stdin):
                await proc.stdin.aclose()
                await proc.wait()
        for sig, grace in ((signal.SIGTERM, self._grace.terminate), (signal.SIGKILL, math.inf)):
            if proc.returncode is not None:
                break
            _signal_group(proc, sig)
            with trio.move_on_after(grace):
                await proc.wait()
        _signal_group(proc, signal.SIGKILL)  # leftovers of its group (a tool's background child)

    # -- reading -----------------------------------------------------------------------------

    async def _read_stdout(self, proc: trio.Process) -> None:
        """Park until stdout is readable, read once, hand the frames over: one scheduler step
        per read. (``receive_some`` takes two: it checkpoints first, then finds the pipe empty
        and parks; on the token path that is a second pass of the run loop per delta.)"""
        stdout = proc.stdout
        assert isinstance(stdout, trio.lowlevel.FdStream)
        fd = stdout.fileno()  # non-blocking (FdStream made it so); closing it wakes the wait
        while True:
            try:
                await trio.lowlevel.wait_readable(fd)
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                continue  # woken with nothing to read after all
            except (trio.ClosedResourceError, OSError):  # closed (EBADF) or broken: the end
                data = b""
            # text-delta lines take the framer's fast path
            frames = self.framer.feed_frames(data) if data else self._closing()
            if frames:
                self._dispatch(frames)
            if not data:
                return

    def _closing(self) -> list[Frame]:
        return list(self.framer.close())

    def _dispatch(self, frames: list[Frame]) -> None:
        # one comprehension: a text-delta line (nearly every frame of a read) costs a type test
        passed = [f for f in frames if type(f) is TextDeltaLine or self._passes(f)]
        if passed:
            self._on_frames(passed)

    def _passes(self, frame: Frame) -> bool:
        """Whether a general frame goes on to the session (control traffic stops here)."""
        assert isinstance(frame, dict)
        kind = frame.get("type")
        if kind == "control_response":
            self._resolve(frame.get("response"))
            return False
        if kind == "control_request" and _subtype(frame) != "can_use_tool":
            self._answer_unhandled(frame)
            return False
        return True

    def _resolve(self, response: Any) -> None:
        if not isinstance(response, Mapping):
            return
        waiter = self._waiters.get(str(response.get("request_id")))
        if waiter is None:
            return  # a stale or unknown id: ignore, as the CLI does
        if response.get("subtype") == "error":
            waiter.error = str(response.get("error") or "control request failed")
        payload = response.get("response")
        waiter.response = dict(payload) if isinstance(payload, Mapping) else {}
        waiter.done.set()

    def _answer_unhandled(self, frame: dict[str, Any]) -> None:
        """Hook callbacks get "no opinion"; other requests we do not serve get an error."""
        request_id = frame.get("request_id")
        if not isinstance(request_id, str):
            return
        if _subtype(frame) == "hook_callback":
            message = control_success(request_id, {})
        else:
            message = control_error(request_id, f"unsupported by sidecode-trio: {_subtype(frame)}")
        self._send_soon(message)

    def _send_soon(self, message: dict[str, Any]) -> None:
        # Called from the reader (sync); the write is a task of this process's own nursery.
        if self._nursery is not None:
            self._nursery.start_soon(self._send_quietly, message)

    async def _send_quietly(self, message: dict[str, Any]) -> None:
        try:
            await self.send(message)
        except CLIError:
            pass  # the process is gone; nothing is waiting for this answer

    async def _drain_stderr(self, proc: trio.Process) -> None:
        assert proc.stderr is not None
        framer = bytearray()
        while True:
            try:
                data = await proc.stderr.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                break
            framer += data
            *lines, rest = framer.split(b"\n")
            framer = bytearray(rest[-4096:])
            for line in lines:
                text = line.decode(errors="replace").rstrip()
                if text:
                    self.stderr_tail.append(text[:1000])
                    log.debug("claude[%s] stderr: %s", proc.pid, text[:300])
        if framer.strip():
            self.stderr_tail.append(framer.decode(errors="replace").strip()[:1000])

    # -- writing -----------------------------------------------------------------------------

    async def send(self, message: Mapping[str, Any]) -> None:
        """Write one message to stdin; raises :class:`CLIError` when the CLI is gone."""
        line = encode_line(message)
        proc = self._proc
        if proc is None or proc.stdin is None or self.exit_code is not None:
            raise CLIError("the claude process is not running", code="cli_not_running")
        async with self._write_lock:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(WRITE_TIMEOUT) as timeout:
                    try:
                        await proc.stdin.send_all(line)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        raise CLIError(
                            "the claude process closed its input", code="cli_not_running"
                        ) from exc
        if timeout.cancelled_caught:
            raise CLIError("the claude process stopped reading its input", code="cli_stuck")

    async def request(self, request: Mapping[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send a control request and wait for its response payload."""
        self._requests += 1
        request_id = _request_id(self._requests)
        waiter = _Waiter()
        self._waiters[request_id] = waiter
        try:
            await self.send(control_request(request_id, request))
            with trio.move_on_after(timeout) as scope:
                await waiter.done.wait()
        finally:
            self._waiters.pop(request_id, None)
        if scope.cancelled_caught:
            raise CLIError(
                f"no answer to {request.get('subtype')} in {timeout:g}s", code="cli_timeout"
            )
        if waiter.error is not None:
            raise CLIError(waiter.error, code="cli_refused")
        return waiter.response

    def _fail_waiters(self, reason: str) -> None:
        for waiter in self._waiters.values():
            waiter.error = reason
            waiter.done.set()


def _subtype(frame: Mapping[str, Any]) -> str:
    request = frame.get("request")
    return str(request.get("subtype")) if isinstance(request, Mapping) else ""


def _signal_group(proc: trio.Process, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
