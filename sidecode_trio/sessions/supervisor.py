"""One session's supervisor: the Trio driver of its :class:`~.core.SessionCore`.

The supervisor's task (:meth:`SessionSupervisor.run`) is alive while the session is live: it owns
a nursery holding the CLI process and runs the core's actions -- spawn the CLI (``--resume`` once
a transcript exists), write to it, stop it after a quiet period, read a file for a diff (off the
Trio thread) -- and returns when the core says there is nothing left to do. What the session *is*
(queue, turns, permission requests, interrupts, client ids, mirroring) lives in the core, which
does no I/O; the state clients see is only ever changed by appending the events the core returns.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Final

import attrs
import trio

from ..claude import messages as msg
from ..claude.framing import Frame
from ..claude.leash import Records
from ..claude.process import ClaudeProcess, Grace
from ..errors import CLIError, Conflict, SidecodeError
from ..eventlog.log import EventLog
from ..wire import events as ev
from .core import (
    RECENT_IDS,
    SESSION_FAILED,
    Action,
    CloseStdin,
    Control,
    CoreSettings,
    MirrorDone,
    Output,
    Prompt,
    PutOutput,
    ReadSource,
    SessionCore,
    Source,
    Spawn,
    State,
    Terminate,
    Write,
    check_model,
)

__all__ = [
    "RECENT_IDS",
    "SYSTEMIC",
    "MirrorRequest",
    "Prompt",
    "RequestFailed",
    "SessionSupervisor",
    "SupervisorSettings",
]

log = logging.getLogger(__name__)

MAX_DIFF_SOURCE: Final = 2 * 1024 * 1024  # bytes of a file read to show a proposed edit's diff
#: Errors of the whole process, not of one session: never contained, they end the daemon (or,
#: in a request's task, are that request's 500 only, as before).
SYSTEMIC: Final = (MemoryError, SystemError, trio.TrioInternalError)


class RequestFailed(Exception):
    """A request's operation on a session (an answer, an interrupt...) failed unexpectedly,
    perhaps half-way through the core's transition: the session's run task raises this (its
    ``__cause__`` the error) so that the registry fails the session as for its own errors."""


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
    #: where each running CLI is recorded, so a daemon started after a crash stops it first
    records: Records | None = None
    #: seconds a CLI started ahead of a message (a client opened the session) may stay idle
    warm_idle_timeout: float = 120.0


class SessionSupervisor:
    """The Trio driver of one session's :class:`~.core.SessionCore`: it feeds the core its
    inputs, appends the events the core returns and carries out its actions (the process, the
    one timer, file reads off the Trio thread)."""

    def __init__(
        self,
        session_id: str,
        log: EventLog,
        settings: SupervisorSettings,
        on_failure: Callable[[Exception], None] | None = None,
    ) -> None:
        self.id = session_id
        #: the registry's failure path, for a request's unexpected error while no run task is
        #: alive to die of it (with one, the run task raises it: :meth:`_request`)
        self._on_failure = on_failure
        self._log = log
        self._settings = settings
        grace = settings.grace
        self.core = SessionCore(
            session_id,
            log.fold(session_id),
            CoreSettings(
                idle_timeout=settings.idle_timeout,
                max_crashes=settings.max_crashes,
                stop_grace=grace.close_stdin + grace.terminate,
                permission_timeout=settings.permission_timeout,
                warm_idle_timeout=settings.warm_idle_timeout,
            ),
        )
        #: message id -> cursor of its ``message.queued`` until it is durable (then the core
        #: is told, and it may run); one refused with a 503 can be withdrawn unrun
        self._unstored: dict[str, int] = {}
        self._process: ClaudeProcess | None = None
        self._cost_usd = 0.0  # the store's total when the CLI starts (its translator's base)
        self._after_start: list[Action] = []
        self._seen = (self.core.state, self.core.status)  # as the loop last woke for them
        self._process_scope: trio.CancelScope | None = None
        self._mirror_request: MirrorRequest | None = None
        self._run_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self.active = False  #: the run task is alive
        self._stopped = trio.Event()
        #: the run task is dying of an unexpected error: its teardown tells the core nothing
        #: (its state is not to be trusted); the registry then calls :meth:`failed`
        self._failing = False
        #: a request's unexpected error, for the run task to raise (:meth:`_request`)
        self._request_failure: RequestFailed | None = None

    def __repr__(self) -> str:
        return f"<SessionSupervisor {self.core!r} cli={self._process!r}>"

    @property
    def closed(self) -> bool:
        """Deleted: no more work is accepted."""
        return self.core.closed

    def statistics(self) -> dict[str, object]:
        return {**self.core.statistics(), "pid": self._process.pid if self._process else None}

    # -- carrying out what the core says -------------------------------------------------------

    def _apply(self, outputs: list[Output]) -> list[Action]:
        """Append the events (in order) and do the instant actions; the rest is returned."""
        later: list[Action] = []
        for item in outputs:
            if isinstance(item, PutOutput):
                self._log.put_output(self.id, item.tool_use_id, item.output)
            elif isinstance(item, MirrorDone):
                request, self._mirror_request = self._mirror_request, None
                if request is not None:
                    request.finish(item.error)
            elif isinstance(item, ev.Event):
                self._log.append(self.id, item)
            elif not self._failing:  # dying, its CLI being stopped: nothing more goes to it
                later.append(item)
        seen = (self.core.state, self.core.status)
        if later or seen != self._seen:  # the loop may have something to do, or to re-arm
            self._seen = seen
            self._wake.set()
        return later

    def _background(self, actions: list[Action]) -> None:
        """Actions of an input that came from another task (the CLI's reader, an answer)."""
        for action in actions:
            if self._nursery is not None:
                self._nursery.start_soon(self._guarded, self._execute, action)

    async def _guarded(self, work: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run one of the run task's own tasks; an unexpected error in it marks the run task
        failing at once, before its siblings (the CLI's task) are torn down by it."""
        try:
            await work(*args)
        except Exception:
            self._failing = True
            raise

    async def _execute(self, action: Action) -> None:
        process = self._process
        match action:
            case Spawn():
                await self._spawn(action)
            case Write():
                if process is None:
                    return
                try:
                    await process.send(action.frame)
                except CLIError:
                    return  # the process died; its exit fails the current turn
                if action.delivers is not None:
                    self._apply(self.core.delivered(action.delivers))
            case Control(purpose="confirm_mirror"):
                await self._confirm_mirror(action)
            case Control():
                if process is not None:
                    with contextlib.suppress(CLIError):  # the CLI exited: the turn ended too
                        await process.request(action.request, action.timeout)
            case CloseStdin():
                if process is not None:
                    await process.close_stdin()
            case Terminate():
                if self._process_scope is not None:
                    self._process_scope.cancel()  # bounded, in the process's task
            case ReadSource():
                source = await trio.to_thread.run_sync(read_source, action.path)
                self._apply(self.core.source_read(action.request_id, source, time.time()))
                self._log.commit()

    async def _confirm_mirror(self, action: Control) -> None:
        process = self._process
        answer: dict[str, Any] | None = None
        error = "claude exited"
        if process is not None:
            try:
                answer = await process.request(action.request, action.timeout)
            except CLIError as exc:
                tail = " | ".join(list(process.stderr_tail)[-2:])
                error = exc.message + (f": {tail}" if tail else "")
        for later in self._apply(self.core.mirror_answer(answer, time.time(), error)):
            await self._execute(later)

    # -- inputs from the store -----------------------------------------------------------------

    def init_created(self, cwd: str, model: str | None, permission_mode: str) -> None:
        """A new session: its creation event is appended but not yet folded."""
        self.core.created(cwd, model, permission_mode)

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
        self._apply(self.core.recover(fold))

    def _note_stored(self) -> None:
        for message_id, cursor in list(self._unstored.items()):
            if self._log.durable(self.id, cursor):
                del self._unstored[message_id]
                self.core.stored(message_id)

    # -- operations (called by ops/, from any task) --------------------------------------------

    @contextlib.contextmanager
    def _request(self, what: str) -> Iterator[None]:
        """The error boundary of an operation run in a request's task (an answer, an interrupt,
        a change of mode...): it may have changed the core and not yet carried out what the
        core said, so an unexpected error in it fails the session, as one in the run task does
        (the CLI stopped and reaped, :meth:`~.core.SessionCore.failed`, the restart policy).
        The error still propagates: the request is a 500. The package's own errors (a 404, a
        409, the CLI's 502...) are the request's only, as are :data:`SYSTEMIC` ones."""
        try:
            yield
        except SidecodeError:
            raise
        except Exception as exc:
            if not isinstance(exc, SYSTEMIC):
                self._fail_from_request(what, exc)
            raise

    def _fail_from_request(self, what: str, error: Exception) -> None:
        log.error("session %s: %s failed unexpectedly; the session fails", self.id, what)
        failure = RequestFailed(f"{what} failed")
        failure.__cause__ = error
        if self.active:  # the run task dies of it (a first error wins), stopping the CLI
            self._failing = True
            if self._request_failure is None:
                self._request_failure = failure
            if self._run_scope is not None:
                self._run_scope.cancel()
        elif self._on_failure is not None:  # asleep: no CLI to stop, the core to reset
            self._on_failure(failure)

    def send(self, prompt: Prompt | str, client_id: str | None = None) -> tuple[str, bool]:
        """Queue a user message. Returns ``(message_id, created)``; a repeated ``client_id`` is
        accepted once and answers with the first message's id."""
        prompt = Prompt(prompt) if isinstance(prompt, str) else prompt
        with self._request("sending a message"):
            message_id, created, outputs = self.core.send(str(uuidlib.uuid4()), prompt, client_id)
            if created:
                queued, *rest = outputs
                assert isinstance(queued, ev.MessageQueued)
                self._unstored[message_id] = self._log.append(self.id, queued)
                self._apply(rest)
                self._wake.set()
        return message_id, created

    def withdraw(self, message_id: str) -> bool:
        """The store failed before ``message_id`` was durable (its sender gets a 503): take it
        back, so it never runs; it ends ``turn.failed`` ``store_unavailable`` and its client id
        is forgotten (a retry queues it anew). False if it is durable or no longer queued."""
        with self._request("withdrawing a message"):
            cursor = self._unstored.get(message_id)
            if cursor is None or self._log.durable(self.id, cursor):
                return False
            outputs = self.core.withdraw(message_id)
            if outputs is None:
                return False
            del self._unstored[message_id]
            self._apply(outputs)
        return True

    async def interrupt(self) -> bool:
        """Interrupt the running turn (or a message not yet delivered). False: nothing ran."""
        with self._request("an interrupt"):
            process = self._process
            interrupted, outputs = self.core.interrupt()
            for action in self._apply(outputs):
                if process is None or not isinstance(action, Control):
                    continue
                try:
                    await process.request(action.request)
                except CLIError as exc:
                    if self._process is not process:
                        return True  # the CLI exited meanwhile: the turn ended anyway
                    raise CLIError(f"interrupt failed: {exc.message}") from exc
        return interrupted

    def pending(self, request_id: str) -> ev.PermissionRequested:
        """The pending request ``request_id``: 409 if it was answered, 404 if never seen."""
        return self.core.pending(request_id)

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
        with self._request("answering a permission request"):
            outputs = self.core.answer(
                request_id,
                allow,
                message=message,
                updated_input=updated_input,
                updated_permissions=updated_permissions,
                applied=applied,
                interrupt=interrupt,
                by=by,
            )
            process = self._process
            for action in self._apply(outputs):
                if isinstance(action, Write) and process is not None:
                    await process.send(action.frame)

    async def set_permission_mode(self, mode: str) -> None:
        with self._request("changing the permission mode"):
            self.core.check_mode(mode)
            process = self._process
            if process is not None:
                await process.request({"subtype": "set_permission_mode", "mode": mode})
            self._apply(self.core.set_settings(mode=mode))

    async def set_model(self, model: str) -> None:
        with self._request("changing the model"):
            check_model(model)
            process = self._process
            if process is not None:
                await process.request({"subtype": "set_model", "model": model})
            self._apply(self.core.set_settings(model=model))

    def set_labels(self, *, title: str | None = None, archived: bool | None = None) -> None:
        """Rename and/or (un)archive: metadata only, the CLI is not involved."""
        with self._request("relabelling the session"):
            fold = self._log.fold(self.id)
            title = title if title is not None and title != fold.title else None
            archived = archived if archived is not None and archived != fold.archived else None
            if title is not None or archived is not None:
                self._log.append(self.id, ev.SessionUpdated(title=title, archived=archived))

    def request_mirror(self, enabled: bool, name: str | None) -> MirrorRequest | None:
        """Ask to restart the CLI with (or without) ``--remote-control``; only while idle, since
        a restart would cut a turn short. None: it is so already, nothing to restart."""
        with self._request("changing mirroring"):
            title = self._log.fold(self.id).title if enabled else None
            if not self.core.request_mirror(enabled, name, title):
                return None
            request = self._mirror_request = MirrorRequest(enabled, name)
            self._wake.set()
        return request

    def has_work(self) -> bool:
        return self.core.has_work()

    def warm(self) -> bool:
        """A client opened the session: start its stopped CLI in the background (the core's
        :meth:`~.core.SessionCore.warm`); the registry then starts the run task."""
        return self.core.warm()

    def cool(self) -> None:
        """Stop the CLI now if it is still only warm (the registry's cap on warm CLIs)."""
        self.core.cool()
        self._wake.set()

    @property
    def warm_only(self) -> bool:
        return self.core.warm_only

    def wants_run(self) -> bool:
        """Asleep with work to do: the registry starts :meth:`run`."""
        return self.core.wants_run()

    # -- the supervisor task -------------------------------------------------------------------

    async def run(self) -> None:
        """Live until the queue is empty and the CLI has been stopped; then the session sleeps."""
        self.active = True
        self._stopped = trio.Event()
        self.core.wake()
        go_on = True
        try:
            while go_on:
                cancelled = True
                with trio.CancelScope() as self._run_scope:
                    if self.closed or self._request_failure is not None:
                        self._run_scope.cancel()
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        await self._guarded(self._loop)
                        nursery.cancel_scope.cancel()
                    cancelled = self._run_scope.cancel_called
                self._nursery = self._run_scope = None
                self._raise_request_failure()  # a request failed: so does this task
                # a send that came in while the nursery closed finds the task still active:
                # the core says whether to go on (it did not start another one)
                go_on, outputs = self.core.run_ended(cancelled)
                self._apply(outputs)
        except Exception:
            self._failing = True  # a bug: the registry contains it and calls failed()
            raise
        except BaseException:  # cancelled (shutdown, delete): the normal end of a stop
            if not self._failing and self.core.state is not State.ASLEEP:
                self._apply(self.core.run_ended(True)[1])
            raise
        finally:
            self.active = False
            self._nursery = self._run_scope = None
            self._stopped.set()

    def _raise_request_failure(self) -> None:
        if self._request_failure is not None:
            raise self._request_failure

    def failed(self, detail: str, restart: bool) -> None:
        """The run task died of an unexpected error (the registry caught it, after its nursery
        stopped and reaped the CLI): reset to asleep, recording what ended (the core's
        :meth:`~.core.SessionCore.failed`); a mirror change waiting on it is told it failed."""
        assert not self.active
        self._failing = False
        self._request_failure = None
        self._process = None
        self._process_scope = self._run_scope = self._nursery = None
        self._after_start = []
        self._wake = trio.Event()
        request, self._mirror_request = self._mirror_request, None
        self._apply(self.core.failed(detail, restart))
        if request is not None and not request.done.is_set():
            request.finish(Conflict("the session failed", code=SESSION_FAILED))
        self._log.commit()

    async def wait_stopped(self) -> None:
        """Return once the run task (and so the CLI) is gone."""
        while self.active:
            await self._stopped.wait()

    def close(self) -> None:
        """Deleting the session: stop its CLI (bounded, as at shutdown) and fail what is queued.

        The registry waits for :attr:`active` to drop before it writes the last event."""
        self.core.close()
        if self._run_scope is not None:
            self._run_scope.cancel()

    async def _loop(self) -> None:
        """Feed the core, carry out its actions, re-arm the one timer; until it is ending."""
        while True:
            committed = self._log.next_commit()  # taken before the check: no commit is missed
            self._note_stored()
            outputs = self.core.poll(time.time())
            actions = self._apply(outputs)
            for action in actions:
                await self._execute(action)
            if outputs:
                self._log.commit()  # e.g. a permission request denied for want of an answer
                continue
            if self.core.state is State.ENDING:
                return
            if self._wake.is_set():
                self._wake = trio.Event()
                continue
            delay = self.core.deadline(time.time()) - time.time()
            with trio.move_on_after(max(delay, 0.0)):
                await self._until_woken(committed)
            self._wake = trio.Event()

    async def _until_woken(self, committed: trio.Event) -> None:
        """Until an input wakes the loop, or the log commits a message that may now run."""
        wake = self._wake
        if not self._unstored:
            await wake.wait()
            return
        async with trio.open_nursery() as nursery:

            async def until(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(until, committed)
            nursery.start_soon(until, wake)

    async def _spawn(self, action: Spawn) -> None:
        nursery = self._nursery
        assert nursery is not None
        fold = self._log.fold(self.id)
        resume = fold.turns > 0 or await trio.to_thread.run_sync(self._transcript_exists)
        spec = msg.LaunchSpec(
            claude=self._settings.claude,
            cwd=self.core.cwd,
            session_id=self.id,
            resume=resume,
            model=action.model,
            permission_mode=action.permission_mode,
            env=self._settings.env,
            extra_args=self._settings.extra_args,
            remote_control=action.mirrored,
            remote_control_name=action.mirror_name,
        )
        process = ClaudeProcess(spec, self._on_frames, self._settings.grace)
        self._cost_usd = fold.cost_usd
        try:
            await nursery.start(self._run_process, process)
        except CLIError as exc:
            for later in self._apply(self.core.spawn_failed(exc.message)):
                await self._execute(later)
            return
        after, self._after_start = self._after_start, []
        for later in after:
            await self._execute(later)

    def _started(self, process: ClaudeProcess) -> None:
        """The CLI runs: the core is told at once, before its exit can be seen."""
        self._process = process
        records, pid = self._settings.records, process.pid
        if records is not None and pid is not None:
            # inline, with no await between the start and the first delivery; small (a /proc
            # read and a tiny file, no fsync; on macOS one ps), and only once per CLI start
            records.add(self.id, pid)
        self._after_start = self._apply(self.core.started(pid, self._cost_usd))

    def _transcript_exists(self) -> bool:
        env = {**os.environ, **self._settings.env}
        return msg.transcript_path(self.core.cwd, self.id, env).exists()

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
        except Exception:
            if self._process is process:  # it ran (a CLIError before that is a failed spawn)
                self._failing = True
            raise
        finally:
            # -inf: this task is being cancelled, i.e. the daemon or the session is stopping it
            cancelled = trio.current_effective_deadline() == -math.inf
            self._on_exit(process, cancelled)

    # -- what the CLI says ---------------------------------------------------------------------

    def _on_frames(self, frames: list[Frame]) -> None:
        with self._log.inline():  # durable, then delivered, with no hop to another task
            self._background(self._apply(self.core.frames(frames, time.time())))

    def _on_exit(self, process: ClaudeProcess, cancelled: bool) -> None:
        records, pid = self._settings.records, process.pid
        if records is not None and pid is not None:
            records.remove(self.id, pid)  # it is reaped: nothing left to stop after a crash
        if self._process is not process:
            return
        self._process = None
        if self._failing:
            return  # stopped because the run task is failing: failed() records it
        code = process.exit_code
        self._apply(self.core.exited(code, list(process.stderr_tail), cancelled))
        self._wake.set()


class _Started:
    """Wraps ``task_status`` to record the process as the session's own before reporting."""

    def __init__(
        self, inner: trio.TaskStatus[None], supervisor: SessionSupervisor, process: ClaudeProcess
    ) -> None:
        self._inner, self._supervisor, self._process = inner, supervisor, process

    def started(self, value: object = None) -> None:
        self._supervisor._started(self._process)
        self._inner.started()


def read_source(path: str) -> Source:
    """The file a proposed edit changes (blocking: run it in a thread). Small and local, and
    bounded: a phone shows the change, not the file."""
    try:
        if os.path.getsize(path) > MAX_DIFF_SOURCE:
            return Source(None, readable=False)
        with open(path, encoding="utf-8", errors="replace", newline="") as file:
            return Source(file.read())
    except FileNotFoundError:
        return Source(None)
    except OSError:
        return Source(None, readable=False)
