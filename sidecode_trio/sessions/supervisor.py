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
import time
import uuid as uuidlib
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
import trio

from ..claude import messages as msg
from ..claude.framing import Frame
from ..claude.leash import Records
from ..claude.process import ClaudeProcess, Grace
from ..claude.translate import Translator
from ..errors import BadRequest, CLIError, Conflict, NotFound, SidecodeError
from ..eventlog.fold import REFUSED
from ..eventlog.log import EventLog
from ..views import diff as diffs
from ..wire import events as ev

log = logging.getLogger(__name__)

RECENT_IDS: Final = 512  # client ids and answered requests remembered for idempotency
MAX_DIFF_SOURCE: Final = 2 * 1024 * 1024  # bytes of a file read to show a proposed edit's diff
FILE_TOOLS: Final = frozenset({"Edit", "MultiEdit", "Write"})
MIRROR_CONFIRM_TIMEOUT: Final = 30.0  # seconds a restarted CLI has to answer ``initialize``


@attrs.frozen
class Prompt:
    """A user message ready for the CLI: its text, and image blocks (kept in memory only)."""

    text: str
    images: Sequence[ev.ImageRef] = ()
    blocks: Sequence[Mapping[str, Any]] = ()  #: the CLI's ``image`` content blocks


@attrs.define
class MirrorRequest:
    """A change of mirroring waiting for the supervisor's loop to restart the CLI for it."""

    enabled: bool
    name: str | None
    done: trio.Event = attrs.field(factory=trio.Event)
    error: SidecodeError | None = None

    def finish(self, error: SidecodeError | None) -> None:
        self.error = error
        self.done.set()

    async def wait(self) -> None:
        """Until the CLI confirmed the change; raises why it could not."""
        await self.done.wait()
        if self.error is not None:
            raise self.error


@attrs.frozen
class SupervisorSettings:
    claude: str = "claude"
    env: Mapping[str, str] = attrs.field(factory=dict)
    idle_timeout: float = 600.0  #: seconds a CLI may sit idle before it is stopped
    max_crashes: int = 3  #: consecutive crashes before queued messages are failed
    grace: Grace = Grace()
    extra_args: Sequence[str] = ()
    permission_timeout: float | None = None  #: deny a request nobody answered (None: wait)
    #: seconds a CLI started ahead of a message (a client opened the session) may stay idle
    warm_idle_timeout: float = 120.0
    #: where each running CLI is recorded, so a daemon started after a crash stops it first
    records: Records | None = None


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
        #: (message id, prompt, cursor of its message.queued) not delivered; one runs only once
        #: its message.queued is durable, so one refused with a 503 can be withdrawn unrun
        self._queue: deque[tuple[str, Prompt, int]] = deque()
        self._current: str | None = None  # delivered message whose turn has not ended
        self._began = False  # the CLI has begun the current turn (its system/init arrived)
        self._interrupt_on_start = False  # asked to stop before the CLI began the turn
        self._pending: dict[str, ev.PermissionRequested] = {}
        self._timers: dict[str, trio.CancelScope] = {}  # request id -> its timeout task
        self._answered: OrderedDict[str, str] = OrderedDict()  # request id -> outcome
        # client id -> message id, from the log: a retry after a restart is still the same one
        self._client_ids: OrderedDict[str, str] = OrderedDict(
            fold.message_client_ids()[-RECENT_IDS:]
        )
        self._process: ClaudeProcess | None = None
        self._translator = Translator(fold.cost_usd)
        self._errored = fold.status is ev.SessionStatus.ERRORED
        self._mirrored, self._mirror_name = fold.mirrored, fold.mirror_name
        self._mirror_request: MirrorRequest | None = None
        self._process_scope: trio.CancelScope | None = None
        self._spawn_error = ""
        self._crashes = 0
        self._stopping = False
        self._stop_reason = "daemon_stopped"
        self._run_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._warm = False  #: start the CLI ahead of a message (see warm())
        self.warm_only = False  #: the CLI runs because of warm() and has run no turn since
        self._cool = False  #: stop that warm CLI now (the registry's cap)
        self.active = False  #: the run task is alive
        self.closed = False  #: deleted: no more work is accepted
        self._stopped = trio.Event()

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
        if fold.active_turn is not None or fold.queued or fold.pending:
            log.info(
                "session %s: recovered after a restart; turn %s, %d queued message(s) and %d "
                "permission request(s) failed or withdrawn",
                self.id,
                fold.active_turn or "-",
                len([m for m in fold.queued if m != fold.active_turn]),
                len(fold.pending),
            )
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
        if fold.mirrored:  # a mirror lives in a running CLI: start it again, and confirm it
            self._mirror_request = MirrorRequest(True, fold.mirror_name)

    # -- operations (called by ops/, from any task) ------------------------------------------

    def send(self, prompt: Prompt | str, client_id: str | None = None) -> tuple[str, bool]:
        """Queue a user message. Returns ``(message_id, created)``; a repeated ``client_id`` is
        accepted once and answers with the first message's id."""
        if client_id is not None and client_id in self._client_ids:
            return self._client_ids[client_id], False
        if self.closed:
            raise NotFound(f"session {self.id} was deleted", code="unknown_session")
        prompt = Prompt(prompt) if isinstance(prompt, str) else prompt
        message_id = str(uuidlib.uuid4())
        if client_id is not None:
            self._client_ids[client_id] = message_id
            while len(self._client_ids) > RECENT_IDS:
                self._client_ids.popitem(last=False)
        cursor = self._log.append(
            self.id, ev.MessageQueued(message_id, prompt.text, client_id, list(prompt.images))
        )
        self._queue.append((message_id, prompt, cursor))
        self._crashes = 0
        self._refresh_status()
        self._wake.set()
        return message_id, True

    def withdraw(self, message_id: str) -> bool:
        """The store failed before ``message_id`` was durable (its sender gets a 503): take it
        back, so it never runs; it ends ``turn.failed`` ``store_unavailable`` and its client id
        is forgotten (a retry queues it anew). False if it is durable or no longer queued."""
        for entry in self._queue:
            if entry[0] == message_id:
                break
        else:
            return False
        if self._log.durable(self.id, entry[2]):
            return False
        self._queue.remove(entry)
        for client_id, known in list(self._client_ids.items()):
            if known == message_id:
                del self._client_ids[client_id]
        self._emit(
            ev.TurnFailed(
                message_id,
                REFUSED,
                "refused with 503 store_unavailable: the event store was failing; never ran",
            )
        )
        self._refresh_status()
        return True

    async def interrupt(self) -> bool:
        """Interrupt the running turn. Returns False when nothing was running.

        A message still waiting for delivery (the CLI is starting, or the loop has not sent it
        yet) already shows the session as running: interrupting it means it never runs, and it
        ends with ``turn.interrupted`` like a turn stopped half-way. Later messages stay queued,
        as they do behind an interrupted turn."""
        process = self._process
        if self._current is None and self._queue:
            message_id, *_ = self._queue.popleft()
            self._emit(ev.TurnInterrupted(message_id))
            self._refresh_status()
            return True
        if self._current is None or process is None:
            return False
        # The CLI acks an interrupt that finds it idle and forgets it: one sent before the CLI
        # has read the message would be lost, so it is sent again when the turn begins.
        self._interrupt_on_start = not self._began
        try:
            await process.request({"subtype": "interrupt"})
        except CLIError as exc:
            if self._process is not process:
                return True  # the CLI exited meanwhile: the turn ended anyway
            raise CLIError(f"interrupt failed: {exc.message}") from exc
        return True

    async def _interrupt_again(self, process: ClaudeProcess | None) -> None:
        if process is None or process is not self._process:
            return
        try:
            await process.request({"subtype": "interrupt"})
        except CLIError:
            pass  # the CLI exited: the turn ends with it

    def pending(self, request_id: str) -> ev.PermissionRequested:
        """The pending request ``request_id``: 409 if it was answered, 404 if never seen."""
        request = self._pending.get(request_id)
        if request is None:
            if request_id in self._answered:
                raise Conflict(
                    f"permission request {request_id} is already {self._answered[request_id]}",
                    code="already_resolved",
                )
            raise NotFound(f"unknown permission request {request_id!r}", code="unknown_request")
        return request

    async def answer_permission(
        self,
        request_id: str,
        allow: bool,
        *,
        message: str = "",
        updated_input: dict[str, Any] | None = None,
        updated_permissions: Sequence[Any] = (),
        applied: Sequence[str] = (),
        interrupt: bool = False,
        by: str = "",
    ) -> None:
        """Answer a pending tool permission request; the first answer wins."""
        request = self.pending(request_id)
        del self._pending[request_id]
        timer = self._timers.pop(request_id, None)
        if timer is not None:
            timer.cancel()
        outcome = ev.PermissionOutcome.ALLOWED if allow else ev.PermissionOutcome.DENIED
        self._remember_answer(request_id, outcome.value)
        self._emit(
            ev.PermissionResolved(
                request_id, outcome, message, by, list(applied), summary=request.summary
            )
        )
        self._refresh_status()
        if allow:
            answer = msg.permission_allow(request.input, updated_input, updated_permissions)
        else:
            answer = msg.permission_deny(message or denial_text(by), interrupt)
        process = self._process
        if process is not None:
            await process.send(msg.control_success(request_id, answer))

    async def _expire(self, request_id: str, timeout: float, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(timeout)
            self._timers.pop(request_id, None)
            if request_id in self._pending:
                note = f"no answer within {timeout:g} s (the daemon's permission_timeout)"
                try:
                    await self.answer_permission(request_id, False, message=note, by="timeout")
                except CLIError:
                    pass  # the CLI is gone: its exit withdrew the request
                self._log.commit()

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

    def set_labels(self, *, title: str | None = None, archived: bool | None = None) -> None:
        """Rename and/or (un)archive: metadata only, the CLI is not involved."""
        fold = self._log.fold(self.id)
        title = title if title is not None and title != fold.title else None
        archived = archived if archived is not None and archived != fold.archived else None
        if title is not None or archived is not None:
            self._emit(ev.SessionUpdated(title=title, archived=archived))

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

    def request_mirror(self, enabled: bool, name: str | None) -> MirrorRequest | None:
        """Ask to restart the CLI with (or without) ``--remote-control``; only while idle, since
        a restart would cut a turn short. None: it is so already, nothing to restart."""
        if self.closed:
            raise NotFound(f"session {self.id} was deleted", code="unknown_session")
        if self._mirror_request is not None:
            raise Conflict("mirroring is already being changed", code="mirror_in_progress")
        if self._current is not None or self._queue or self._pending:
            raise Conflict(
                "the session is running a turn or waiting for a permission answer; change "
                "mirroring when it is idle (a restart of the CLI would cut the turn short)",
                code="session_busy",
            )
        name = (name or self._mirror_name or self._log.fold(self.id).title) if enabled else None
        live = self._process is not None or not enabled
        if enabled == self._mirrored and name == self._mirror_name and live:
            return None
        request = self._mirror_request = MirrorRequest(enabled, name)
        self._wake.set()
        return request

    def has_work(self) -> bool:
        return (
            bool(self._queue)
            or self._current is not None
            or self._process is not None
            or self._mirror_request is not None
            or self._warm
        )

    def warm(self) -> bool:
        """A client opened the session: start its CLI now, ahead of a message, so that a message
        starts its turn at once (stopped again after ``warm_idle_timeout`` without one). False
        if there is nothing to do (a CLI runs, or will for a message; or the session errored
        or is being deleted: a message retries those)."""
        if self.closed or self._errored or self._process is not None or self.active:
            return False
        self._warm, self.warm_only, self._cool = True, True, False
        self._wake.set()
        return True

    def cool(self) -> None:
        """Stop the CLI now if it is still only warm (idle since warm() started it)."""
        if self.warm_only:
            self._cool = True
            self._wake.set()

    # -- the supervisor task -----------------------------------------------------------------

    async def run(self) -> None:
        """Live until the queue is empty and the CLI has been stopped; then the session sleeps."""
        self.active = True
        self._stopped = trio.Event()
        try:
            with trio.CancelScope() as self._run_scope:
                if self.closed:
                    self._run_scope.cancel()
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await self._loop(nursery)
                    nursery.cancel_scope.cancel()
        finally:
            self.active = False
            self._nursery = self._run_scope = None
            self._on_shutdown()
            self._stopped.set()

    async def wait_stopped(self) -> None:
        """Return once the run task (and so the CLI) is gone."""
        while self.active:
            await self._stopped.wait()

    def close(self) -> None:
        """Deleting the session: stop its CLI (bounded, as at shutdown) and fail what is queued.

        The registry waits for :attr:`active` to drop before it writes the last event."""
        self.closed = True
        self._stop_reason = "session_deleted"
        if self._run_scope is not None:
            self._run_scope.cancel()

    async def _loop(self, nursery: trio.Nursery) -> None:
        while True:
            if self._mirror_request is not None and self._current is None:
                await self._apply_mirror(nursery, self._mirror_request)
                continue
            if self._current is None and self._queue and not self._stopping:
                if not self._log.durable(self.id, self._queue[0][2]):
                    await self._until_committed()  # a 503 may yet withdraw it
                    continue
                if self._process is None and not await self._spawn(nursery):
                    continue
                # an interrupt or a 503 may have taken it while the CLI started
                if self._queue and self._log.durable(self.id, self._queue[0][2]):
                    await self._deliver()
                continue
            if self._warm and self._process is None and self._current is None:
                self._warm = False
                if not await self._spawn(nursery):
                    self.warm_only = False
                continue
            if self._process is None and self._current is None and not self._queue:
                return
            idle = self._current is None and not self._queue and not self._pending
            # a mirrored session's CLI is its link to claude.ai: it is not stopped when idle
            stop_idle = idle and self._process is not None and not self._mirrored
            timeout = self._settings.idle_timeout if stop_idle else math.inf
            if stop_idle and self.warm_only:
                timeout = 0 if self._cool else min(timeout, self._settings.warm_idle_timeout)
            with trio.move_on_after(timeout) as quiet:
                await self._wake.wait()
            self._wake = trio.Event()
            if quiet.cancelled_caught and self._process is not None:
                await self._stop_idle(self._process)

    async def _until_committed(self) -> None:
        """Until the log commits (or something wakes the loop)."""
        wake = self._wake
        async with trio.open_nursery() as nursery:

            async def until(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(until, self._log.next_commit())
            nursery.start_soon(until, wake)
        if wake.is_set() and self._wake is wake:
            self._wake = trio.Event()

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
            remote_control=self._mirrored,
            remote_control_name=self._mirror_name,
        )
        self._emit(ev.CLIStateChanged(ev.CLIState.STARTING))
        self._translator = Translator(fold.cost_usd)
        process = ClaudeProcess(spec, self._on_frames, self._settings.grace)
        try:
            await nursery.start(self._run_process, process)
        except CLIError as exc:
            self._spawn_error = exc.message
            self._emit(ev.CLIStateChanged(ev.CLIState.CRASHED, detail=exc.message))
            self._errored = True
            self._fail_queue("cli_unavailable", exc.message)
            return False
        self._emit(ev.CLIStateChanged(ev.CLIState.RUNNING, pid=process.pid))
        records, pid = self._settings.records, process.pid
        if records is not None and pid is not None:
            # inline, with no await between the start and the first delivery; small (a /proc
            # read and a tiny file, no fsync; on macOS one ps), and only once per CLI start
            records.add(self.id, pid)
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
        scope = self._process_scope = trio.CancelScope()  # a restart may cut it short
        try:
            with scope:
                await process.run(task_status=_Started(task_status, self, process))
        finally:
            # -inf: this task is being cancelled, i.e. the daemon or the session is stopping it
            stopped = scope.cancel_called or trio.current_effective_deadline() == -math.inf
            self._on_exit(process, process.exit_code, stopped or self._stopping or self.closed)

    async def _deliver(self) -> None:
        message_id, prompt, _ = self._queue.popleft()
        process = self._process
        assert process is not None
        self._current = message_id
        self._warm = self.warm_only = False
        self._began = self._interrupt_on_start = False
        self._translator.delivered = message_id
        try:
            await process.send(msg.user_message(prompt.text, message_id, prompt.blocks))
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

    # -- mirroring to Remote Control: a restart of the CLI, confirmed by its initialize ------

    async def _apply_mirror(self, nursery: trio.Nursery, request: MirrorRequest) -> None:
        error: SidecodeError | None = Conflict(
            "the session stopped before mirroring changed", code="session_stopped"
        )
        try:
            error = await self._restart_mirrored(nursery, request)
        finally:
            self._mirror_request = None
            request.finish(error)

    async def _restart_mirrored(
        self, nursery: trio.Nursery, request: MirrorRequest
    ) -> SidecodeError | None:
        """Stop the CLI, start it with the new setting (resuming the session), and append the
        ``session.mirror`` event once it answered ``initialize``; on failure, mirroring is off."""
        if self._process is not None:
            await self._stop_for_restart(self._process)
        self._mirrored, self._mirror_name = request.enabled, request.name
        self._spawn_error = ""
        answer: dict[str, Any] = {}
        detail = ""
        process = self._process if await self._spawn(nursery) else None
        if process is None:
            detail = self._spawn_error or "claude could not be started"
        else:
            try:
                answer = await process.request({"subtype": "initialize"}, MIRROR_CONFIRM_TIMEOUT)
            except CLIError as exc:
                tail = " | ".join(list(process.stderr_tail)[-2:])
                detail = f"claude did not confirm: {exc.message}" + (f": {tail}" if tail else "")
        if not detail:
            note = ""
            if request.enabled and answer.get("remote_control_available") is False:
                note = "claude says Remote Control is not available for this login"
            self._emit(ev.SessionMirror(request.enabled, request.name, True, note))
            return None
        if self._process is not None:
            await self._stop_for_restart(self._process)
        self._mirrored, self._mirror_name = False, None
        self._emit(ev.SessionMirror(False, None, False, detail))
        return CLIError(f"mirroring is off: {detail}", code="mirror_failed")

    async def _stop_for_restart(self, process: ClaudeProcess) -> None:
        await self._stop_idle(process)
        if self._process is process and self._process_scope is not None:
            self._process_scope.cancel()  # it ignored EOF: terminate it (bounded, in its task)
            while self._process is process:
                await self._wake.wait()
                self._wake = trio.Event()

    # -- what the CLI says -------------------------------------------------------------------

    def _on_frames(self, frames: list[Frame]) -> None:
        translated = self._translator.feed_all(frames)  # text deltas coalesced
        with self._log.inline():  # durable, then delivered, with no hop to another task
            for event in translated:
                if isinstance(event, ev.PermissionRequested):
                    event = self._prepare_request(event)
                if self._accept(event):
                    self._emit(event)
            for tool_use_id, output in self._translator.take_outputs():
                self._log.put_output(self.id, tool_use_id, output)
            self._refresh_status()

    def _prepare_request(self, event: ev.PermissionRequested) -> ev.PermissionRequested:
        """Add what a phone needs to decide: the diff of a file edit, and the deadline."""
        diff = self._proposed_diff(event.tool_name, event.input)
        timeout = self._settings.permission_timeout
        expires_at = None
        if timeout is not None and self._nursery is not None:
            expires_at = time.time() + timeout
            scope = trio.CancelScope()
            self._timers[event.request_id] = scope
            self._nursery.start_soon(self._expire, event.request_id, timeout, scope)
        return attrs.evolve(event, diff=diff, expires_at=expires_at)

    def _proposed_diff(self, tool: str, tool_input: Mapping[str, Any]) -> ev.FileDiff | None:
        path = tool_input.get("file_path")
        if tool not in FILE_TOOLS or not isinstance(path, str) or not path:
            return None
        full = path if os.path.isabs(path) else os.path.join(self._cwd, path)
        original: str | None = None
        try:
            # Small and local: read inline, bounded (a phone shows the change, not the file).
            if os.path.getsize(full) > MAX_DIFF_SOURCE:
                return None
            with open(full, encoding="utf-8", errors="replace", newline="") as file:
                original = file.read()
        except FileNotFoundError:
            original = None
        except OSError:
            return None
        return diffs.proposed(tool, tool_input, original)

    def _accept(self, event: ev.Event) -> bool:
        """Update the driver's own fields from ``event``; False to drop a redundant event."""
        match event:
            case ev.TurnStarted():
                self._errored = False
                if event.model:
                    self._model = event.model
                if event.turn_id == self._current:
                    self._began = True
                    if self._interrupt_on_start and self._nursery is not None:
                        self._interrupt_on_start = False
                        self._nursery.start_soon(self._interrupt_again, self._process)
            case ev.PermissionRequested():
                self._pending[event.request_id] = event
            case ev.PermissionResolved():
                if self._pending.pop(event.request_id, None) is None:
                    return False  # a cancel for a request already answered
                timer = self._timers.pop(event.request_id, None)
                if timer is not None:
                    timer.cancel()
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
        records, pid = self._settings.records, process.pid
        if records is not None and pid is not None:
            records.remove(self.id, pid)  # it is reaped: nothing left to stop after a crash
        if self._process is not process:
            return
        self._process = None
        self.warm_only = self._cool = False
        crashed = not expected
        tail = " | ".join(list(process.stderr_tail)[-3:])
        for scope in self._timers.values():
            scope.cancel()
        self._timers.clear()
        for request_id in list(self._pending):
            withdrawn = self._pending.pop(request_id)
            self._remember_answer(request_id, ev.PermissionOutcome.WITHDRAWN.value)  # 409, not 404
            self._emit(
                ev.PermissionResolved(
                    request_id,
                    ev.PermissionOutcome.WITHDRAWN,
                    "claude exited",
                    summary=withdrawn.summary,
                )
            )
        if self._current is not None:
            reason = "cli_exited" if crashed else self._stop_reason
            detail = f"claude exited with code {code}" + (f": {tail}" if tail else "")
            self._emit(ev.TurnFailed(self._current, reason, detail))
            self._current = None
        if crashed:
            self._crashes += 1
            self._errored = True
            log.warning(
                "session %s: claude (pid %s) exited unexpectedly with code %s (crash %d in a "
                "row)%s",
                self.id,
                process.pid,
                code,
                self._crashes,
                f": {tail}" if tail else "",
            )
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
            message_id, *_ = self._queue.popleft()
            self._emit(ev.TurnFailed(message_id, reason, detail))
        self._refresh_status()

    def _on_shutdown(self) -> None:
        """The daemon is stopping (or the session is deleted): messages that will not run now
        are failed, explicitly."""
        if self._mirror_request is not None:
            self._mirror_request.finish(
                Conflict("the session stopped before mirroring changed", code="session_stopped")
            )
            self._mirror_request = None
        if self._queue:
            why = "session was deleted" if self.closed else "daemon stopped"
            self._fail_queue(self._stop_reason, f"the {why} before this message ran")


class _Started:
    """Wraps ``task_status`` to record the process as the session's own before reporting."""

    def __init__(
        self, inner: trio.TaskStatus[None], supervisor: SessionSupervisor, process: ClaudeProcess
    ) -> None:
        self._inner, self._supervisor, self._process = inner, supervisor, process

    def started(self, value: object = None) -> None:
        self._supervisor._process = self._process
        self._inner.started()


def denial_text(by: str) -> str:
    """What Claude is told when a denial comes without a message: the same "denied by <who>"
    the transcript shows (``PermissionResolved.by``), never a guess at who answered."""
    return f"denied by {by}" if by else "denied"
