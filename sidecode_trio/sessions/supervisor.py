"""One session's supervisor: its message queue, its ``claude`` process and its state.

The supervisor's task (:meth:`SessionSupervisor.run`) is alive while the session is live: it owns
a nursery holding the CLI process, spawns it on demand (``--resume`` once a transcript exists),
delivers queued messages one turn at a time, stops the CLI after a quiet period, and returns when
there is nothing left to do. The state that clients see is only ever changed by appending events
to the log; the few fields kept here (queue, current turn, pending requests) are what the driver
needs to act, and they are rebuilt from the log's fold after a restart.
"""

from __future__ import annotations

import logging
import math
import os
import uuid as uuidlib
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
import trio

from ..claude import messages as msg
from ..claude.process import ClaudeProcess, Grace
from ..claude.translate import Translator, coalesce
from ..errors import BadRequest, CLIError, Conflict, NotFound
from ..eventlog.log import EventLog
from ..wire import events as ev

log = logging.getLogger(__name__)

RECENT_IDS: Final = 512  # client ids and answered requests remembered for idempotency


@attrs.frozen
class SupervisorSettings:
    claude: str = "claude"
    env: Mapping[str, str] = attrs.field(factory=dict)
    idle_timeout: float = 600.0  #: seconds a CLI may sit idle before it is stopped
    max_crashes: int = 3  #: consecutive crashes before queued messages are failed
    grace: Grace = Grace()
    extra_args: Sequence[str] = ()


class SessionSupervisor:
    def __init__(self, session_id: str, log: EventLog, settings: SupervisorSettings) -> None:
        self.id = session_id
        self._log = log
        self._settings = settings
        fold = log.fold(session_id)
        self._cwd = fold.cwd
        self._model = fold.model
        self._mode = fold.permission_mode
        self._status = fold.status
        self._queue: deque[tuple[str, str]] = deque()  # (message id, text) not yet delivered
        self._current: str | None = None  # delivered message whose turn has not ended
        self._pending: dict[str, ev.PermissionRequested] = {}
        self._answered: OrderedDict[str, str] = OrderedDict()  # request id -> outcome
        self._client_ids: OrderedDict[str, str] = OrderedDict()  # client id -> message id
        self._process: ClaudeProcess | None = None
        self._translator = Translator(fold.cost_usd)
        self._errored = fold.status is ev.SessionStatus.ERRORED
        self._crashes = 0
        self._stopping = False
        self._wake = trio.Event()
        self.active = False  #: the run task is alive

    def __repr__(self) -> str:
        return (
            f"<SessionSupervisor {self.id} {self._status.value} queued={len(self._queue)} "
            f"current={self._current} pending={len(self._pending)} cli={self._process!r}>"
        )

    # -- events ------------------------------------------------------------------------------

    def _emit(self, event: ev.Event) -> None:
        self._log.append(self.id, event)

    def _refresh_status(self) -> None:
        if self._pending:
            status = ev.SessionStatus.REQUIRES_ACTION
        elif self._current is not None or self._queue:
            status = ev.SessionStatus.RUNNING
        elif self._errored:
            status = ev.SessionStatus.ERRORED
        else:
            status = ev.SessionStatus.IDLE
        if status is not self._status:
            self._status = status
            self._emit(ev.StatusChanged(status))

    def init_created(self, cwd: str, model: str | None, permission_mode: str) -> None:
        """A new session: its creation event is appended but not yet folded."""
        self._cwd, self._model, self._mode = cwd, model, permission_mode

    def recover(self) -> None:
        """After a daemon restart: close what the dead daemon left open, with explicit events."""
        fold = self._log.fold(self.id)
        if fold.active_turn is not None:
            self._emit(
                ev.TurnFailed(
                    fold.active_turn, "daemon_restarted", "the daemon restarted during this turn"
                )
            )
        for message_id in list(fold.queued):
            if message_id != fold.active_turn:
                self._emit(
                    ev.TurnFailed(
                        message_id,
                        "daemon_restarted",
                        "the daemon restarted before this message ran",
                    )
                )
        for request_id in list(fold.pending):
            self._emit(
                ev.PermissionResolved(
                    request_id, ev.PermissionOutcome.WITHDRAWN, "daemon restarted"
                )
            )
        if fold.cli is not ev.CLIState.STOPPED and fold.cli is not ev.CLIState.CRASHED:
            self._emit(ev.CLIStateChanged(ev.CLIState.STOPPED, detail="daemon restarted"))
        self._refresh_status()

    # -- operations (called by ops/, from any task) ------------------------------------------

    def send(self, text: str, client_id: str | None = None) -> tuple[str, bool]:
        """Queue a user message. Returns ``(message_id, created)``; a repeated ``client_id`` is
        accepted once and answers with the first message's id."""
        if client_id is not None and client_id in self._client_ids:
            return self._client_ids[client_id], False
        message_id = str(uuidlib.uuid4())
        if client_id is not None:
            self._client_ids[client_id] = message_id
            while len(self._client_ids) > RECENT_IDS:
                self._client_ids.popitem(last=False)
        self._emit(ev.MessageQueued(message_id, text, client_id))
        self._queue.append((message_id, text))
        self._crashes = 0
        self._refresh_status()
        self._wake.set()
        return message_id, True

    async def interrupt(self) -> bool:
        """Interrupt the running turn. Returns False when nothing was running."""
        process = self._process
        if self._current is None or process is None:
            return False
        try:
            await process.request({"subtype": "interrupt"})
        except CLIError as exc:
            if self._process is not process:
                return True  # the CLI exited meanwhile: the turn ended anyway
            raise CLIError(f"interrupt failed: {exc.message}") from exc
        return True

    async def answer_permission(
        self,
        request_id: str,
        allow: bool,
        *,
        message: str = "",
        updated_input: dict[str, Any] | None = None,
        updated_permissions: list[Any] | None = None,
        interrupt: bool = False,
    ) -> None:
        """Answer a pending tool permission request; the first answer wins."""
        request = self._pending.pop(request_id, None)
        if request is None:
            if request_id in self._answered:
                raise Conflict(
                    f"permission request {request_id} is already {self._answered[request_id]}",
                    code="already_resolved",
                )
            raise NotFound(f"unknown permission request {request_id!r}", code="unknown_request")
        outcome = ev.PermissionOutcome.ALLOWED if allow else ev.PermissionOutcome.DENIED
        self._remember_answer(request_id, outcome.value)
        self._emit(ev.PermissionResolved(request_id, outcome, message))
        self._refresh_status()
        if allow:
            answer = msg.permission_allow(request.input, updated_input, updated_permissions)
        else:
            answer = msg.permission_deny(message or "denied from a paired device", interrupt)
        process = self._process
        if process is not None:
            await process.send(msg.control_success(request_id, answer))

    async def set_permission_mode(self, mode: str) -> None:
        if mode not in msg.PERMISSION_MODES:
            raise BadRequest(
                f"unknown permission mode {mode!r}; one of {', '.join(msg.PERMISSION_MODES)}"
            )
        process = self._process
        if process is not None:
            await process.request({"subtype": "set_permission_mode", "mode": mode})
        self._set_settings(mode=mode)

    async def set_model(self, model: str) -> None:
        if not model or len(model) > 200 or any(c.isspace() for c in model):
            raise BadRequest("model must be a non-empty name without spaces")
        process = self._process
        if process is not None:
            await process.request({"subtype": "set_model", "model": model})
        self._set_settings(model=model)

    def _set_settings(self, *, mode: str | None = None, model: str | None = None) -> None:
        mode = mode if mode is not None and mode != self._mode else None
        model = model if model is not None and model != self._model else None
        if mode is None and model is None:
            return
        self._mode = mode or self._mode
        self._model = model or self._model
        self._emit(ev.SessionUpdated(model=model, permission_mode=mode))

    def _remember_answer(self, request_id: str, outcome: str) -> None:
        self._answered[request_id] = outcome
        while len(self._answered) > RECENT_IDS:
            self._answered.popitem(last=False)

    def has_work(self) -> bool:
        return bool(self._queue) or self._current is not None or self._process is not None

    # -- the supervisor task -----------------------------------------------------------------

    async def run(self) -> None:
        """Live until the queue is empty and the CLI has been stopped; then the session sleeps."""
        self.active = True
        try:
            async with trio.open_nursery() as nursery:
                await self._loop(nursery)
                nursery.cancel_scope.cancel()
        finally:
            self.active = False
            self._on_shutdown()

    async def _loop(self, nursery: trio.Nursery) -> None:
        while True:
            if self._current is None and self._queue and not self._stopping:
                if self._process is None and not await self._spawn(nursery):
                    continue
                await self._deliver()
                continue
            if self._process is None and self._current is None and not self._queue:
                return
            idle = self._current is None and not self._queue and not self._pending
            timeout = self._settings.idle_timeout if idle and self._process else math.inf
            with trio.move_on_after(timeout) as quiet:
                await self._wake.wait()
            self._wake = trio.Event()
            if quiet.cancelled_caught and self._process is not None:
                await self._stop_idle(self._process)

    async def _spawn(self, nursery: trio.Nursery) -> bool:
        fold = self._log.fold(self.id)
        spec = msg.LaunchSpec(
            claude=self._settings.claude,
            cwd=self._cwd,
            session_id=self.id,
            resume=fold.turns > 0 or self._transcript_exists(),
            model=self._model,
            permission_mode=self._mode,
            env=self._settings.env,
            extra_args=self._settings.extra_args,
        )
        self._emit(ev.CLIStateChanged(ev.CLIState.STARTING))
        self._translator = Translator(fold.cost_usd)
        process = ClaudeProcess(spec, self._on_frames, self._settings.grace)
        try:
            await nursery.start(self._run_process, process)
        except CLIError as exc:
            self._emit(ev.CLIStateChanged(ev.CLIState.CRASHED, detail=exc.message))
            self._errored = True
            self._fail_queue("cli_unavailable", exc.message)
            return False
        self._emit(ev.CLIStateChanged(ev.CLIState.RUNNING, pid=process.pid))
        return True

    def _transcript_exists(self) -> bool:
        env = {**os.environ, **self._settings.env}
        return msg.transcript_path(self._cwd, self.id, env).exists()

    async def _run_process(
        self,
        process: ClaudeProcess,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await process.run(task_status=_Started(task_status, self, process))
        finally:
            # -inf: this task is being cancelled, i.e. the daemon or the session is stopping it
            stopped = trio.current_effective_deadline() == -math.inf
            self._on_exit(process, process.exit_code, stopped or self._stopping)

    async def _deliver(self) -> None:
        message_id, text = self._queue.popleft()
        process = self._process
        assert process is not None
        self._current = message_id
        self._translator.delivered = message_id
        try:
            await process.send(msg.user_message(text, message_id))
        except CLIError:
            return  # the process died; _on_exit fails the current turn
        self._emit(ev.MessageDelivered(message_id))

    async def _stop_idle(self, process: ClaudeProcess) -> None:
        self._stopping = True
        try:
            await process.close_stdin()
            # the CLI exits on EOF; _on_exit records it. Bounded: the run() shutdown covers a hang.
            with trio.move_on_after(
                self._settings.grace.close_stdin + self._settings.grace.terminate
            ):
                while self._process is process:
                    await self._wake.wait()
                    self._wake = trio.Event()
        finally:
            self._stopping = False

    # -- what the CLI says -------------------------------------------------------------------

    def _on_frames(self, frames: list[dict[str, Any]]) -> None:
        translated: list[ev.Event] = []
        for frame in frames:
            translated.extend(self._translator.feed(frame))
        for event in coalesce(translated):
            if self._accept(event):
                self._emit(event)
        self._refresh_status()
        self._log.commit()  # durable, then delivered, with no hop to another task

    def _accept(self, event: ev.Event) -> bool:
        """Update the driver's own fields from ``event``; False to drop a redundant event."""
        match event:
            case ev.TurnStarted():
                self._errored = False
                if event.model:
                    self._model = event.model
            case ev.PermissionRequested():
                self._pending[event.request_id] = event
            case ev.PermissionResolved():
                if self._pending.pop(event.request_id, None) is None:
                    return False  # a cancel for a request already answered
                self._remember_answer(event.request_id, event.outcome.value)
            case ev.TurnCompleted() | ev.TurnFailed() | ev.TurnInterrupted():
                if event.turn_id == self._current:
                    self._current = None
                    self._wake.set()
                if isinstance(event, ev.TurnCompleted):
                    self._crashes = 0
            case ev.SessionUpdated():
                if event.permission_mode == self._mode or event.permission_mode is None:
                    return False
                self._mode = event.permission_mode
        return True

    def _on_exit(self, process: ClaudeProcess, code: int | None, expected: bool) -> None:
        if self._process is not process:
            return
        self._process = None
        crashed = not expected
        tail = " | ".join(list(process.stderr_tail)[-3:])
        for request_id in list(self._pending):
            self._pending.pop(request_id)
            self._emit(
                ev.PermissionResolved(request_id, ev.PermissionOutcome.WITHDRAWN, "claude exited")
            )
        if self._current is not None:
            reason = "cli_exited" if crashed else "daemon_stopped"
            detail = f"claude exited with code {code}" + (f": {tail}" if tail else "")
            self._emit(ev.TurnFailed(self._current, reason, detail))
            self._current = None
        if crashed:
            self._crashes += 1
            self._errored = True
            self._emit(ev.CLIStateChanged(ev.CLIState.CRASHED, exit_code=code, detail=tail))
            self._emit(
                ev.SessionError(
                    "cli_exited",
                    f"claude exited unexpectedly (code {code})" + (f": {tail}" if tail else ""),
                )
            )
            if self._crashes >= self._settings.max_crashes:
                self._fail_queue("cli_crashed", f"claude crashed {self._crashes} times in a row")
        else:
            self._emit(ev.CLIStateChanged(ev.CLIState.STOPPED, exit_code=code))
        self._refresh_status()
        self._wake.set()

    def _fail_queue(self, reason: str, detail: str) -> None:
        while self._queue:
            message_id, _ = self._queue.popleft()
            self._emit(ev.TurnFailed(message_id, reason, detail))
        self._refresh_status()

    def _on_shutdown(self) -> None:
        """The daemon is stopping: messages that will not run now are failed, explicitly."""
        if self._queue:
            self._fail_queue("daemon_stopped", "the daemon stopped before this message ran")


class _Started:
    """Wraps ``task_status`` to record the process as the session's own before reporting."""

    def __init__(
        self, inner: trio.TaskStatus[None], supervisor: SessionSupervisor, process: ClaudeProcess
    ) -> None:
        self._inner, self._supervisor, self._process = inner, supervisor, process

    def started(self, value: object = None) -> None:
        self._supervisor._process = self._process
        self._inner.started()
