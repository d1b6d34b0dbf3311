"""One session's state machine, without I/O: what to do next, given what happened.

:class:`SessionCore` holds the message queue, the turn lifecycle, interrupts (including one that
arrives before the CLI began the turn), pending permission requests and their answers, client ids
and the mirroring state. It takes inputs -- commands (send, interrupt, answer a permission...),
the CLI's stdout frames, the process starting and exiting, what the store made durable, and the
time -- and returns outputs: the events to append, in order, and :class:`Action` values for the
driver (``sessions/supervisor.py``) to carry out: start or stop the CLI, write to its stdin, read
a file for a proposed edit's diff. It never blocks, reads a clock or touches a file, so a test
feeds it recorded frames and asserts the exact events and actions (``tests/test_session_core``).

The life of the run task and of the CLI is one explicit :class:`State`; every change of it goes
through :data:`TRANSITIONS` (``_move``), so an input the table does not expect is a bug that shows,
not a silent stall. Everything else (queue, pending requests...) is data beside the state.
"""

from __future__ import annotations

import enum
import logging
import os
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, TypeAlias

import attrs

from ..claude import messages as msg
from ..claude.framing import Frame
from ..claude.translate import Translator
from ..errors import BadRequest, CLIError, Conflict, NotFound, SidecodeError
from ..eventlog.fold import REFUSED, SessionFold
from ..views import diff as diffs
from ..wire import events as ev

log = logging.getLogger(__name__)

RECENT_IDS: Final = 512  # client ids and answered requests remembered for idempotency
FILE_TOOLS: Final = frozenset({"Edit", "MultiEdit", "Write"})
MIRROR_CONFIRM_TIMEOUT: Final = 30.0  # seconds a restarted CLI has to answer ``initialize``
SESSION_FAILED: Final = "session_failed"  #: code/reason of a run task's unexpected failure


class State(enum.Enum):
    """Where the session's run task and its CLI are."""

    ASLEEP = "asleep"  #: no run task (the registry starts one when there is work)
    AWAKE = "awake"  #: the run task is alive, no CLI
    SPAWNING = "spawning"  #: the CLI is being started
    CONFIRMING = "confirming"  #: restarted for mirroring; waiting for its ``initialize`` answer
    READY = "ready"  #: the CLI runs, no turn in flight
    DELIVERED = "delivered"  #: a message was written; the CLI has not begun its turn (no init)
    TURN = "turn"  #: the CLI began the turn
    STOPPING = "stopping"  #: stdin was closed (idle, or a restart for mirroring); until it exits
    ENDING = "ending"  #: nothing left to do: the run task is returning


class On(enum.Enum):
    """What moves the state (see :data:`TRANSITIONS`)."""

    WAKE = "wake"
    SPAWN = "spawn"
    SPAWN_FAILED = "spawn_failed"
    STARTED = "started"
    CONFIRM = "confirm"
    CONFIRMED = "confirmed"
    DELIVER = "deliver"
    BEGAN = "began"
    TURN_ENDED = "turn_ended"
    STOP = "stop"
    EXITED = "exited"
    END = "end"
    RESUME = "resume"  #: work arrived while the run task was ending: it goes on
    SLEEP = "sleep"
    FAILED = "failed"  #: the run task died of an unexpected error (see :meth:`SessionCore.failed`)


S = State
_MOVES: Final[Mapping[State, Mapping[On, State]]] = {
    S.ASLEEP: {On.WAKE: S.AWAKE},
    S.AWAKE: {On.SPAWN: S.SPAWNING, On.END: S.ENDING, On.SLEEP: S.ASLEEP},
    S.SPAWNING: {
        On.STARTED: S.READY,
        On.CONFIRM: S.CONFIRMING,
        On.SPAWN_FAILED: S.AWAKE,
        On.SLEEP: S.ASLEEP,  # the daemon stopped while the CLI was starting
    },
    S.CONFIRMING: {On.CONFIRMED: S.READY, On.STOP: S.STOPPING, On.EXITED: S.AWAKE},
    S.READY: {On.DELIVER: S.DELIVERED, On.STOP: S.STOPPING, On.EXITED: S.AWAKE},
    S.DELIVERED: {On.BEGAN: S.TURN, On.TURN_ENDED: S.READY, On.EXITED: S.AWAKE},
    S.TURN: {On.TURN_ENDED: S.READY, On.EXITED: S.AWAKE},
    S.STOPPING: {On.EXITED: S.AWAKE},
    S.ENDING: {On.RESUME: S.AWAKE, On.SLEEP: S.ASLEEP},
}
#: Every allowed change of state: ``TRANSITIONS[state][trigger]`` is the next state. A run task
#: that died of an unexpected error may have left the state anywhere: from every state but
#: asleep, its failure puts the session back to sleep (its CLI is already stopped by then).
TRANSITIONS: Final[Mapping[State, Mapping[On, State]]] = {
    state: {**moves, On.FAILED: S.ASLEEP} if state is not S.ASLEEP else moves
    for state, moves in _MOVES.items()
}
CLI_STATES: Final = frozenset(
    {S.CONFIRMING, S.READY, S.DELIVERED, S.TURN, S.STOPPING}
)  #: the CLI process runs


class StateError(SidecodeError):
    """An input the transition table does not allow in the current state (a bug)."""


# -- outputs -------------------------------------------------------------------------------------


@attrs.frozen
class Prompt:
    """A user message ready for the CLI: its text, and image blocks (kept in memory only)."""

    text: str
    images: Sequence[ev.ImageRef] = ()
    blocks: Sequence[Mapping[str, Any]] = ()  #: the CLI's ``image`` content blocks


@attrs.frozen
class Spawn:
    """Start the CLI with these settings (``--resume`` is the driver's: it needs the disk)."""

    model: str | None
    permission_mode: str
    mirrored: bool
    mirror_name: str | None


@attrs.frozen
class Write:
    """Write ``frame`` to the CLI's stdin; ``delivers``: tell :meth:`SessionCore.delivered`."""

    frame: Mapping[str, Any]
    delivers: str | None = None


@attrs.frozen
class Control:
    """Send a control request to the CLI and wait for its answer.

    ``purpose`` says what the answer feeds: ``"command"`` (the caller's), ``"interrupt_again"``
    (none; an error is ignored) or ``"confirm_mirror"`` (:meth:`SessionCore.mirror_answer`)."""

    request: Mapping[str, Any]
    purpose: str = "command"
    timeout: float = 30.0


@attrs.frozen
class CloseStdin:
    """Ask the CLI to exit (it does on EOF)."""


@attrs.frozen
class Terminate:
    """The CLI ignored EOF for the whole grace: terminate it (bounded, in its own task)."""


@attrs.frozen
class ReadSource:
    """Read ``path`` (bounded) for the diff of permission request ``request_id``; answer with
    :meth:`SessionCore.source_read`."""

    request_id: str
    path: str


@attrs.frozen
class PutOutput:
    """Store a tool's whole output aside (its event carries only the first part)."""

    tool_use_id: str
    output: str


@attrs.frozen
class MirrorDone:
    """A change of mirroring is over: ``error`` is why it failed (None: confirmed)."""

    error: SidecodeError | None


Action: TypeAlias = (
    Spawn | Write | Control | CloseStdin | Terminate | ReadSource | PutOutput | MirrorDone
)
Output: TypeAlias = ev.Event | Action


@attrs.frozen
class Source:
    """What the driver read for a proposed edit: ``text`` (None: no such file), or unreadable."""

    text: str | None
    readable: bool = True


@attrs.define
class _Queued:
    message_id: str
    prompt: Prompt
    stored: bool = False  #: its ``message.queued`` is durable: it may run (issue 13.14)


@attrs.define
class _Mirror:
    enabled: bool
    name: str | None
    error: str = ""  #: why it failed, once it did (the CLI is then stopped before it is said)


@attrs.frozen
class CoreSettings:
    idle_timeout: float = 600.0  #: seconds a CLI may sit idle before it is stopped
    max_crashes: int = 3  #: consecutive crashes before queued messages are failed
    stop_grace: float = 10.0  #: seconds a CLI has to exit on EOF before it is terminated
    permission_timeout: float | None = None  #: deny a request nobody answered (None: wait)
    #: seconds a CLI started ahead of a message (a client opened the session) may stay idle
    warm_idle_timeout: float = 120.0


def check_model(model: str) -> None:
    """A model's name as the CLI's ``--model`` takes it (a new session's, or a change)."""
    # NUL: the name goes on the CLI's command line, where it raised (and ended the daemon)
    if not model or len(model) > 200 or any(c.isspace() or c == "\x00" for c in model):
        raise BadRequest("model must be a non-empty name without spaces")


class SessionCore:
    """The session's state machine; see the module docstring. ``now`` is any one clock (the
    driver uses wall time: ``expires_at`` of a permission request is shown to people)."""

    def __init__(self, session_id: str, fold: SessionFold, settings: CoreSettings) -> None:
        self.id = session_id
        self.settings = settings
        self.state = State.ASLEEP
        self.cwd = fold.cwd
        self.model = fold.model
        self.mode = fold.permission_mode
        self.status = fold.status
        self.mirrored, self.mirror_name = fold.mirrored, fold.mirror_name
        self.closed = False  #: deleted: no more work is accepted
        self.stop_reason = "daemon_stopped"
        self._queue: deque[_Queued] = deque()
        self.current: str | None = None  #: delivered message whose turn has not ended
        self._interrupt_on_start = False  # asked to stop before the CLI began the turn
        self._pending: dict[str, ev.PermissionRequested] = {}
        self._expiry: dict[str, float] = {}  # request id -> when it is denied
        self._answered: OrderedDict[str, str] = OrderedDict()  # request id -> outcome
        # client id -> message id, from the log: a retry after a restart is still the same one
        self._client_ids: OrderedDict[str, str] = OrderedDict(
            fold.message_client_ids()[-RECENT_IDS:]
        )
        self._translator = Translator(fold.cost_usd)
        self._errored = fold.status is ev.SessionStatus.ERRORED
        self._crashes = 0
        self._mirror: _Mirror | None = None
        self._stop_deadline: float | None = None
        self._idle_since: float | None = None
        self._warm = False  #: start the CLI ahead of a message (see warm())
        self.warm_only = False  #: the CLI runs because of warm() and has run no turn since
        self._cool = False  #: stop that warm CLI now (the registry's cap)
        # a permission request waits for its file to be read; what the CLI said after it waits
        # behind it, so the log keeps the CLI's order
        self._held: list[ev.Event] | None = None
        self._held_request: ev.PermissionRequested | None = None

    def __repr__(self) -> str:
        return (
            f"<SessionCore {self.id} {self.state.name} {self.status.value} "
            f"queued={len(self._queue)} current={self.current} pending={len(self._pending)}"
            f"{' mirrored' if self.mirrored else ''}{' closed' if self.closed else ''}>"
        )

    def statistics(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "status": self.status.value,
            "queued": len(self._queue),
            "current": self.current,
            "pending": len(self._pending),
            "crashes": self._crashes,
            "mirrored": self.mirrored,
            "mirror_changing": self._mirror is not None,
            "closed": self.closed,
        }

    # -- state ---------------------------------------------------------------------------------

    def _move(self, trigger: On) -> None:
        target = TRANSITIONS.get(self.state, {}).get(trigger)
        if target is None:
            raise StateError(f"session {self.id}: {trigger.value} is not allowed in {self.state}")
        self.state = target

    @property
    def cli_running(self) -> bool:
        return self.state in CLI_STATES

    def has_work(self) -> bool:
        """Something for a run task to do (the registry starts one when asleep)."""
        return (
            bool(self._queue)
            or self.current is not None
            or self.cli_running
            or self._mirror is not None
            or self._warm
        )

    def warm(self) -> bool:
        """A client opened the session: start its CLI now, ahead of a message, so that a message
        starts its turn at once (stopped again after ``warm_idle_timeout`` without one). False
        if there is nothing to do (a CLI runs or will; the session errored or is deleted)."""
        if self.closed or self._errored or self.state is not State.ASLEEP or self.has_work():
            return False
        self._warm, self.warm_only, self._cool = True, True, False
        return True

    def cool(self) -> None:
        """Stop the CLI now if it is still only warm (idle since warm() started it)."""
        if self.warm_only:
            self._cool = True

    def wants_run(self) -> bool:
        return self.state is State.ASLEEP and self.has_work()

    def _refresh_status(self, out: list[Output]) -> None:
        if self._pending:
            status = ev.SessionStatus.REQUIRES_ACTION
        elif self.current is not None or self._queue:
            status = ev.SessionStatus.RUNNING
        elif self._errored:
            status = ev.SessionStatus.ERRORED
        else:
            status = ev.SessionStatus.IDLE
        if status is not self.status:
            self.status = status
            out.append(ev.StatusChanged(status))

    # -- the store's view ----------------------------------------------------------------------

    def recover(self, fold: SessionFold) -> list[Output]:
        """After a daemon restart: close what the dead daemon left open, with explicit events."""
        out: list[Output] = []
        if fold.active_turn is not None:
            out.append(
                ev.TurnFailed(
                    fold.active_turn, "daemon_restarted", "the daemon restarted during this turn"
                )
            )
        for message_id in fold.queued:
            if message_id != fold.active_turn:
                out.append(
                    ev.TurnFailed(
                        message_id,
                        "daemon_restarted",
                        "the daemon restarted before this message ran",
                    )
                )
        for request_id in fold.pending:
            out.append(
                ev.PermissionResolved(
                    request_id, ev.PermissionOutcome.WITHDRAWN, "daemon restarted"
                )
            )
        if fold.cli is not ev.CLIState.STOPPED and fold.cli is not ev.CLIState.CRASHED:
            out.append(ev.CLIStateChanged(ev.CLIState.STOPPED, detail="daemon restarted"))
        self._refresh_status(out)
        if fold.mirrored:  # a mirror lives in a running CLI: start it again, and confirm it
            self._mirror = _Mirror(True, fold.mirror_name)
        return out

    def created(self, cwd: str, model: str | None, permission_mode: str) -> None:
        """A new session: its creation event is appended but not yet folded."""
        self.cwd, self.model, self.mode = cwd, model, permission_mode

    def stored(self, message_id: str) -> None:
        """``message_id``'s ``message.queued`` is durable: it may now run."""
        for entry in self._queue:
            if entry.message_id == message_id:
                entry.stored = True

    # -- commands ------------------------------------------------------------------------------

    def send(
        self, message_id: str, prompt: Prompt, client_id: str | None = None
    ) -> tuple[str, bool, list[Output]]:
        """Queue a user message: ``(message_id, created, outputs)``; a repeated ``client_id`` is
        accepted once and answers with the first message's id."""
        if client_id is not None and client_id in self._client_ids:
            return self._client_ids[client_id], False, []
        if self.closed:
            raise NotFound(f"session {self.id} was deleted", code="unknown_session")
        if client_id is not None:
            self._client_ids[client_id] = message_id
            while len(self._client_ids) > RECENT_IDS:
                self._client_ids.popitem(last=False)
        out: list[Output] = [
            ev.MessageQueued(message_id, prompt.text, client_id, list(prompt.images))
        ]
        self._queue.append(_Queued(message_id, prompt))
        self._crashes = 0
        self._refresh_status(out)
        return message_id, True, out

    def withdraw(self, message_id: str) -> list[Output] | None:
        """The store failed before ``message_id`` was durable (its sender gets a 503): take it
        back unrun; its client id is forgotten. None if it is stored or no longer queued."""
        entry = next((e for e in self._queue if e.message_id == message_id), None)
        if entry is None or entry.stored:
            return None
        self._queue.remove(entry)
        for client_id, known in list(self._client_ids.items()):
            if known == message_id:
                del self._client_ids[client_id]
        out: list[Output] = [
            ev.TurnFailed(
                message_id,
                REFUSED,
                "refused with 503 store_unavailable: the event store was failing; never ran",
            )
        ]
        self._refresh_status(out)
        return out

    def interrupt(self) -> tuple[bool, list[Output]]:
        """Interrupt the running turn: ``(whether something was running, outputs)``.

        A message not yet delivered (the CLI is starting, or the loop has not sent it) already
        shows the session as running: interrupting it means it never runs, and it ends with
        ``turn.interrupted`` like a turn stopped half-way. Later messages stay queued."""
        out: list[Output] = []
        if self.current is None and self._queue:
            entry = self._queue.popleft()
            out.append(ev.TurnInterrupted(entry.message_id))
            self._refresh_status(out)
            return True, out
        if self.current is None or not self.cli_running:
            return False, out
        # The CLI acks an interrupt that finds it idle and forgets it: one sent before the CLI
        # has begun the turn would be lost, so it is sent again when the turn begins.
        self._interrupt_on_start = self.state is State.DELIVERED
        out.append(Control({"subtype": "interrupt"}))
        return True, out

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

    def answer(
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
    ) -> list[Output]:
        """Answer a pending tool permission request; the first answer wins (then 409)."""
        request = self.pending(request_id)
        del self._pending[request_id]
        self._expiry.pop(request_id, None)
        outcome = ev.PermissionOutcome.ALLOWED if allow else ev.PermissionOutcome.DENIED
        self._remember_answer(request_id, outcome.value)
        out: list[Output] = [
            ev.PermissionResolved(
                request_id, outcome, message, by, list(applied), summary=request.summary
            )
        ]
        self._refresh_status(out)
        if allow:
            answer = msg.permission_allow(request.input, updated_input, updated_permissions)
        else:
            answer = msg.permission_deny(message or denial_text(by), interrupt)
        if self.cli_running:
            out.append(Write(msg.control_success(request_id, answer)))
        return out

    def check_mode(self, mode: str) -> None:
        if mode not in msg.PERMISSION_MODES:
            raise BadRequest(
                f"unknown permission mode {mode!r}; one of {', '.join(msg.PERMISSION_MODES)}"
            )

    def set_settings(self, *, mode: str | None = None, model: str | None = None) -> list[Output]:
        """The CLI took the new mode/model (or none runs): say so, if it is a change."""
        mode = mode if mode is not None and mode != self.mode else None
        model = model if model is not None and model != self.model else None
        if mode is None and model is None:
            return []
        self.mode = mode or self.mode
        self.model = model or self.model
        return [ev.SessionUpdated(model=model, permission_mode=mode)]

    def request_mirror(self, enabled: bool, name: str | None, title: str | None) -> bool:
        """Ask to restart the CLI with (or without) ``--remote-control``; only while idle, since
        a restart would cut a turn short. False: it is so already, nothing to restart."""
        if self.closed:
            raise NotFound(f"session {self.id} was deleted", code="unknown_session")
        if self._mirror is not None:
            raise Conflict("mirroring is already being changed", code="mirror_in_progress")
        if self.current is not None or self._queue or self._pending:
            raise Conflict(
                "the session is running a turn or waiting for a permission answer; change "
                "mirroring when it is idle (a restart of the CLI would cut the turn short)",
                code="session_busy",
            )
        name = (name or self.mirror_name or title) if enabled else None
        live = self.cli_running or not enabled
        if enabled == self.mirrored and name == self.mirror_name and live:
            return False
        self._mirror = _Mirror(enabled, name)
        return True

    def close(self) -> None:
        """Deleting the session: no more work; what still runs ends ``session_deleted``."""
        self.closed = True
        self.stop_reason = "session_deleted"

    # -- the run task --------------------------------------------------------------------------

    def wake(self) -> None:
        """The driver started the run task."""
        self._move(On.WAKE)

    def poll(self, now: float) -> list[Output]:
        """What to do now that nobody asked for: spawn, deliver, stop, time out, end. The
        driver calls it whenever it wakes (an input, or the :meth:`deadline`), until it returns
        nothing new, and returns from its run task once the state is ``ENDING``."""
        out: list[Output] = []
        for request_id, due in list(self._expiry.items()):
            if due <= now and request_id in self._pending:
                timeout = self.settings.permission_timeout
                note = f"no answer within {timeout:g} s (the daemon's permission_timeout)"
                out.extend(self.answer(request_id, False, message=note, by="timeout"))
        if self.state is State.STOPPING:
            if self._stop_deadline is not None and self._stop_deadline <= now:
                self._stop_deadline = None
                out.append(Terminate())
            return out
        mirror = self._mirror
        if self.state is State.AWAKE:
            if mirror is not None and self.current is None:
                self.mirrored, self.mirror_name = mirror.enabled, mirror.name
                self._spawn(out)
            elif self._queue and self._queue[0].stored:
                self._spawn(out)
            elif self._warm and not self._queue and self.current is None:
                self._warm = False
                self._spawn(out)
            elif not self._queue and self.current is None:
                self.warm_only = self._warm = False
                self._move(On.END)
        elif self.state is State.READY:
            if mirror is not None and self.current is None:
                self._stop(now, out)
            elif self._queue and self._queue[0].stored:
                self._deliver(out)
            elif self._idle() and ((self._cool and self.warm_only) or self.deadline(now) <= now):
                self._stop(now, out)
        return out

    def deadline(self, now: float) -> float:
        """When :meth:`poll` has something to do by itself (``inf``: nothing): re-arm to it."""
        if not self._idle():
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now
        times = list(self._expiry.values())
        if self._idle_since is not None:
            idle = self.settings.idle_timeout
            if self.warm_only:
                idle = 0.0 if self._cool else min(idle, self.settings.warm_idle_timeout)
            times.append(self._idle_since + idle)
        if self._stop_deadline is not None:
            times.append(self._stop_deadline)
        return min(times, default=float("inf"))

    def _idle(self) -> bool:
        """The CLI waits for nothing: it is stopped after ``idle_timeout``."""
        return (
            self.state is State.READY
            and not self._queue
            and not self._pending
            and self._mirror is None
            and not self.mirrored  # a mirrored CLI is the link to claude.ai: it stays up
        )

    def run_ended(self, cancelled: bool) -> tuple[bool, list[Output]]:
        """The run task's body returned (``cancelled``: the daemon or a delete stopped it).
        ``(go on, outputs)``: a send that came in while it was ending is not left unstarted."""
        out: list[Output] = []
        if not cancelled and not self.closed and self.state is State.ENDING and self.has_work():
            self._move(On.RESUME)
            return True, out
        if self._mirror is not None:
            self._mirror = None
            out.append(MirrorDone(_stopped()))
        if self._queue:
            why = "session was deleted" if self.closed else "daemon stopped"
            self._fail_queue(self.stop_reason, f"the {why} before this message ran", out)
        self._move(On.SLEEP)
        return False, out

    def failed(self, detail: str, restart: bool) -> list[Output]:
        """The driver's run task died of an unexpected error (a bug; the registry contained it)
        and its CLI is already stopped: close what was open with explicit events and go back
        to sleep with the transient state reset, keeping what is durable (queue, client ids,
        settings). ``restart``: the queued messages stay, for the fresh run task the registry
        starts; otherwise they fail as not delivered and the session waits for a new message."""
        out: list[Output] = []
        cli_was = self.state in CLI_STATES or self.state is State.SPAWNING
        if self.state is not State.ASLEEP:  # it may fail after run_ended() put it to sleep
            self._move(On.FAILED)
        self._held = self._held_request = None
        self._expiry.clear()
        self._stop_deadline = self._idle_since = None
        self._interrupt_on_start = False
        self._warm = self.warm_only = self._cool = False
        self._withdraw_pending("the session failed", out)
        if self.current is not None:
            out.append(
                ev.TurnFailed(
                    self.current, SESSION_FAILED, f"the session failed during this turn ({detail})"
                )
            )
            self.current = None
        if cli_was:
            out.append(ev.CLIStateChanged(ev.CLIState.STOPPED, detail="the session failed"))
        if self._mirror is not None:
            self._mirror = None
            out.append(MirrorDone(Conflict("the session failed", code=SESSION_FAILED)))
        self._errored = True
        if restart:
            if self.mirrored:  # a mirror lives in a running CLI: start it again (as recover())
                self._mirror = _Mirror(True, self.mirror_name)
            note = "restarted" if self.has_work() else "the next message starts it again"
        else:
            note = "queued messages were not delivered; a new message starts it again"
            why = f"the session failed before this message ran ({detail}): not delivered"
            while self._queue:
                out.append(ev.TurnFailed(self._queue.popleft().message_id, SESSION_FAILED, why))
        out.append(ev.SessionError(SESSION_FAILED, f"the session failed ({detail}); {note}"))
        self._refresh_status(out)
        return out

    def _spawn(self, out: list[Output]) -> None:
        self._move(On.SPAWN)
        out.append(ev.CLIStateChanged(ev.CLIState.STARTING))
        out.append(Spawn(self.model, self.mode, self.mirrored, self.mirror_name))

    def _deliver(self, out: list[Output]) -> None:
        entry = self._queue.popleft()
        self._move(On.DELIVER)
        self.current = entry.message_id
        self._warm = self.warm_only = False
        self._interrupt_on_start = False
        self._translator.delivered = entry.message_id
        prompt = entry.prompt
        out.append(
            Write(msg.user_message(prompt.text, entry.message_id, prompt.blocks), entry.message_id)
        )

    def _stop(self, now: float, out: list[Output]) -> None:
        self._move(On.STOP)
        self._idle_since = None
        self._stop_deadline = now + self.settings.stop_grace
        out.append(CloseStdin())

    # -- the process ---------------------------------------------------------------------------

    def spawn_failed(self, detail: str) -> list[Output]:
        self._move(On.SPAWN_FAILED)
        self.warm_only = self._cool = False
        out: list[Output] = [ev.CLIStateChanged(ev.CLIState.CRASHED, detail=detail)]
        self._errored = True
        self._fail_queue("cli_unavailable", detail, out)
        if self._mirror is not None:
            self._mirror.error = detail or "claude could not be started"
            self._mirror_failed(out)
        return out

    def started(self, pid: int | None, cost_usd: float) -> list[Output]:
        """The CLI runs (``cost_usd``: the session's total so far, from the store)."""
        self._translator = Translator(cost_usd)
        out: list[Output] = [ev.CLIStateChanged(ev.CLIState.RUNNING, pid=pid)]
        if self._mirror is not None:
            self._move(On.CONFIRM)
            out.append(Control({"subtype": "initialize"}, "confirm_mirror", MIRROR_CONFIRM_TIMEOUT))
        else:
            self._move(On.STARTED)
        return out

    def delivered(self, message_id: str) -> list[Output]:
        """The message was written to the CLI's stdin."""
        return [ev.MessageDelivered(message_id)]

    def mirror_answer(
        self, answer: Mapping[str, Any] | None, now: float, error: str = ""
    ) -> list[Output]:
        """The restarted CLI answered ``initialize`` (``answer``), or did not (``error``)."""
        mirror = self._mirror
        out: list[Output] = []
        if mirror is None or self.state is not State.CONFIRMING:
            return out  # it exited first: that already ended the change
        if answer is None:
            mirror.error = f"claude did not confirm: {error}"
            self._stop(now, out)
            return out
        note = ""
        if mirror.enabled and answer.get("remote_control_available") is False:
            note = "claude says Remote Control is not available for this login"
        self._move(On.CONFIRMED)
        self._mirror = None
        out.append(ev.SessionMirror(mirror.enabled, mirror.name, True, note))
        out.append(MirrorDone(None))
        return out

    def exited(self, code: int | None, tail: Sequence[str], cancelled: bool) -> list[Output]:
        """The CLI exited (``cancelled``: the daemon or a delete stopped it)."""
        out: list[Output] = []
        self.warm_only = self._cool = False
        confirming = self.state is State.CONFIRMING
        expected = cancelled or self.closed or self.state is State.STOPPING
        self._move(On.EXITED)
        self._stop_deadline = None
        self._release_held(None, out)
        self._expiry.clear()
        joined = " | ".join(list(tail)[-3:])
        self._withdraw_pending("claude exited", out)
        if self.current is not None:
            reason = "cli_exited" if not expected else self.stop_reason
            detail = f"claude exited with code {code}" + (f": {joined}" if joined else "")
            out.append(ev.TurnFailed(self.current, reason, detail))
            self.current = None
        if not expected:
            self._crashes += 1
            self._errored = True
            log.warning(
                "session %s: claude exited unexpectedly with code %s (crash %d in a row)%s",
                self.id,
                code,
                self._crashes,
                f": {joined}" if joined else "",
            )
            out.append(ev.CLIStateChanged(ev.CLIState.CRASHED, exit_code=code, detail=joined))
            out.append(
                ev.SessionError(
                    "cli_exited",
                    f"claude exited unexpectedly (code {code})" + (f": {joined}" if joined else ""),
                )
            )
            if self._crashes >= self.settings.max_crashes:
                self._fail_queue(
                    "cli_crashed", f"claude crashed {self._crashes} times in a row", out
                )
        else:
            out.append(ev.CLIStateChanged(ev.CLIState.STOPPED, exit_code=code))
        self._refresh_status(out)
        if self._mirror is not None and confirming and not self._mirror.error:
            last = " | ".join(list(tail)[-2:])
            self._mirror.error = f"claude did not confirm: claude exited with code {code}" + (
                f": {last}" if last else ""
            )
        if self._mirror is not None and self._mirror.error:
            self._mirror_failed(out)
        return out

    def _mirror_failed(self, out: list[Output]) -> None:
        """The CLI of a failed change is gone: mirroring is off, and the requester is told."""
        assert self._mirror is not None
        detail = self._mirror.error
        self._mirror = None
        self.mirrored, self.mirror_name = False, None
        out.append(ev.SessionMirror(False, None, False, detail))
        out.append(MirrorDone(CLIError(f"mirroring is off: {detail}", code="mirror_failed")))

    # -- what the CLI says ---------------------------------------------------------------------

    def frames(self, frames: Iterable[Frame], now: float) -> list[Output]:
        """Frames read from the CLI's stdout, in order (text-delta lines may come from the
        framer's fast path, as :class:`TextDeltaLine`)."""
        out: list[Output] = []
        for event in self._translator.feed_all(frames):  # text deltas coalesced
            self._take(event, now, out)
        for tool_use_id, output in self._translator.take_outputs():
            out.append(PutOutput(tool_use_id, output))
        self._refresh_status(out)
        return out

    def _request(self, event: ev.PermissionRequested, now: float, out: list[Output]) -> None:
        path = event.input.get("file_path")
        if event.tool_name in FILE_TOOLS and isinstance(path, str) and path:
            full = path if os.path.isabs(path) else os.path.join(self.cwd, path)
            self._held, self._held_request = [], event
            out.append(ReadSource(event.request_id, full))
        else:
            self._accept(event, now, out)

    def source_read(self, request_id: str, source: Source, now: float) -> list[Output]:
        """The file a held permission request edits was read: the request (with its diff) and
        what the CLI said after it are released, in order."""
        out: list[Output] = []
        held = self._held_request
        if held is None or held.request_id != request_id:
            return out  # the CLI exited meanwhile: it was released without a diff
        diff = None
        if source.readable:
            diff = diffs.proposed(held.tool_name, held.input, source.text)
        self._release_held(diff, out, now)
        self._refresh_status(out)
        return out

    def _release_held(
        self, diff: ev.FileDiff | None, out: list[Output], now: float | None = None
    ) -> None:
        held, request, self._held, self._held_request = self._held, self._held_request, None, None
        if request is None or held is None:
            return
        self._accept(attrs.evolve(request, diff=diff), now, out)
        for event in held:
            self._take(event, now, out)

    def _take(self, event: ev.Event, now: float | None, out: list[Output]) -> None:
        if self._held is not None:
            self._held.append(event)
        elif isinstance(event, ev.PermissionRequested) and now is not None:
            self._request(event, now, out)
        else:
            self._accept(event, now, out)

    def _accept(self, event: ev.Event, now: float | None, out: list[Output]) -> None:
        """Update the state from ``event`` and emit it (a redundant one is dropped)."""
        match event:
            case ev.TurnStarted():
                self._errored = False
                if event.model:
                    self.model = event.model
                if event.turn_id == self.current and self.state is State.DELIVERED:
                    self._move(On.BEGAN)
                    if self._interrupt_on_start:
                        self._interrupt_on_start = False
                        out.append(event)
                        out.append(Control({"subtype": "interrupt"}, "interrupt_again"))
                        return
            case ev.PermissionRequested():
                timeout = self.settings.permission_timeout
                if timeout is not None and now is not None:
                    self._expiry[event.request_id] = now + timeout
                    event = attrs.evolve(event, expires_at=now + timeout)
                self._pending[event.request_id] = event
            case ev.PermissionResolved():
                if self._pending.pop(event.request_id, None) is None:
                    return  # a cancel for a request already answered
                self._expiry.pop(event.request_id, None)
                self._remember_answer(event.request_id, event.outcome.value)
            case ev.TurnCompleted() | ev.TurnFailed() | ev.TurnInterrupted():
                if event.turn_id == self.current:
                    self.current = None
                    self._move(On.TURN_ENDED)
                if isinstance(event, ev.TurnCompleted):
                    self._crashes = 0
            case ev.SessionUpdated():
                if event.permission_mode == self.mode or event.permission_mode is None:
                    return
                self.mode = event.permission_mode
        out.append(event)

    # -- helpers -------------------------------------------------------------------------------

    def _withdraw_pending(self, reason: str, out: list[Output]) -> None:
        """Withdraw every pending permission request (no CLI is left to take an answer); an
        answer that comes later is told it was withdrawn (409)."""
        for request_id, withdrawn in list(self._pending.items()):
            del self._pending[request_id]
            self._remember_answer(request_id, ev.PermissionOutcome.WITHDRAWN.value)
            out.append(
                ev.PermissionResolved(
                    request_id, ev.PermissionOutcome.WITHDRAWN, reason, summary=withdrawn.summary
                )
            )

    def _remember_answer(self, request_id: str, outcome: str) -> None:
        self._answered[request_id] = outcome
        while len(self._answered) > RECENT_IDS:
            self._answered.popitem(last=False)

    def _fail_queue(self, reason: str, detail: str, out: list[Output]) -> None:
        while self._queue:
            out.append(ev.TurnFailed(self._queue.popleft().message_id, reason, detail))
        self._refresh_status(out)


def _stopped() -> SidecodeError:
    return Conflict("the session stopped before mirroring changed", code="session_stopped")


def denial_text(by: str) -> str:
    """What Claude is told when a denial comes without a message: the same "denied by <who>"
    the transcript shows (``PermissionResolved.by``), never a guess at who answered."""
    return f"denied by {by}" if by else "denied"
