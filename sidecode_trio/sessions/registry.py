"""The session registry: every known session, and the nursery their supervisors run in.

Sessions are created in a folder inside an allowed root, loaded from the event log at start-up
(where anything a dead daemon left open is closed with explicit events), and woken on demand: a
supervisor's task runs only while its session has work or a live CLI. The registry also keeps the
"all sessions at a glance" feed: a summary per session, pushed to subscribers when it changes.
"""

from __future__ import annotations

import logging
import os
import uuid as uuidlib
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final

import attrs
import trio

from ..claude.leash import reap
from ..claude.messages import transcript_path
from ..errors import BadRequest, Forbidden, NotFound, Unsupported
from ..eventlog.log import EventLog
from ..wire import events as ev
from ..wire.snapshot import SessionInfo
from .core import SESSION_FAILED
from .session import Remote
from .supervisor import (
    RECENT_IDS,
    SYSTEMIC,
    Prompt,
    RequestFailed,
    SessionSupervisor,
    SupervisorSettings,
)

log = logging.getLogger(__name__)

TITLE_CHARS: Final = 80
ACTIVITY_REPORT_INTERVAL: Final = 10.0  # seconds: activity-only changes are reported this often
#: A session whose run task fails unexpectedly is restarted at once (its queued messages kept)
#: unless this is its MAX_FAILURES-th failure within RESTART_WINDOW seconds: then its queued
#: messages fail as not delivered and it stays failed until the user sends a new message.
MAX_FAILURES: Final = 3
RESTART_WINDOW: Final = 600.0


@attrs.frozen
class SessionFilter:
    """Which sessions a list shows. The default hides archived ones."""

    archived: bool | None = False  #: False: not archived; True: only archived; None: both
    status: frozenset[ev.SessionStatus] = frozenset()  #: empty: any status
    cwd: str | None = None  #: only sessions in this folder or below it
    text: str = ""  #: only titles containing this (case-insensitive)
    limit: int | None = None

    def __call__(self, info: SessionInfo) -> bool:
        if self.archived is not None and info.archived != self.archived:
            return False
        if self.status and info.status not in self.status:
            return False
        if self.cwd is not None:
            base = self.cwd.rstrip("/") or "/"
            if not (info.cwd == base or info.cwd.startswith(base.rstrip("/") + "/")):
                return False
        return not self.text or self.text.casefold() in info.title.casefold()


def title_from(prompt: str | None, cwd: Path) -> str:
    first = (prompt or "").strip().splitlines()[0] if (prompt or "").strip() else ""
    if not first:
        return cwd.name or str(cwd)
    return first if len(first) <= TITLE_CHARS else first[: TITLE_CHARS - 1] + "…"


def inside_roots(real: Path, roots: Sequence[Path]) -> bool:
    """Whether the resolved path ``real`` is one of ``roots`` or below one."""
    return any(real == root or real.is_relative_to(root) for root in roots)


def resolve_cwd(cwd: str, roots: Sequence[Path]) -> Path:
    """The real path of ``cwd`` if it is a directory inside one of ``roots``."""
    if not isinstance(cwd, str) or not cwd or "\x00" in cwd:
        raise BadRequest("cwd must be a non-empty path")
    path = Path(cwd).expanduser()
    if not path.is_absolute():
        raise BadRequest(f"cwd must be an absolute path, got {cwd!r}")
    real = Path(os.path.realpath(path))
    if not inside_roots(real, roots):
        raise Forbidden(f"{cwd} is outside the allowed roots", code="path_not_allowed")
    if not real.is_dir():
        raise BadRequest(f"{cwd} is not a directory", code="not_a_directory")
    return real


class SessionRegistry:
    def __init__(
        self,
        log: EventLog,
        settings: SupervisorSettings,
        roots: Sequence[Path],
        warm_limit: int = 0,
    ) -> None:
        self._log = log
        self._settings = settings
        #: CLIs started ahead of a message because a client opened their session, at most
        #: ``warm_limit`` at once: the least recently opened is stopped first
        self._warm_limit = warm_limit
        self._warmed: OrderedDict[str, None] = OrderedDict()
        self._roots = [Path(os.path.realpath(root)) for root in roots]
        self._supervisors: dict[str, SessionSupervisor] = {}
        #: client id of a create -> (session id, first message id): a retried create is one
        self._created: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        self._remotes: dict[str, Remote] = {}  #: Remote Control sessions (the bridge's)
        #: makes the driver of a stored remote session (None: the bridge is off, they are hidden)
        self.remote_factory: Callable[[str], Remote] | None = None
        self._nursery: trio.Nursery | None = None
        self._list_subscribers: set[trio.MemorySendChannel[SessionInfo]] = set()
        self._reported: dict[str, tuple[SessionInfo, float]] = {}
        #: session id -> when (trio clock) its run task failed unexpectedly, within the window
        self._failures: dict[str, deque[float]] = {}
        self._stop = trio.Event()
        self.stopped = trio.Event()  #: set once every supervisor (and so every CLI) has ended
        log.on_commit(self._on_commit)

    @property
    def roots(self) -> list[Path]:
        return list(self._roots)

    # -- lifetime ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the sessions, recover them, and own their supervisors until cancelled.

        First of all, any CLI a dead daemon left running is stopped: no session resumes while
        an orphan still writes to its transcript."""
        if self._settings.records is not None:
            await reap(self._settings.records)
        for session_id in self._log.ids():
            if self._log.fold(session_id).deleted:
                continue  # deleted with its log kept: on disk, out of every list
            if self._log.fold(session_id).source == "remote":
                if self.remote_factory is not None:
                    self._remotes[session_id] = self.remote_factory(session_id)
                continue
            supervisor = self._supervisor(session_id)
            supervisor.recover()
            self._supervisors[session_id] = supervisor
        self._remember_creates()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for supervisor in self._supervisors.values():
                    self._wake(supervisor)  # a mirrored session's CLI starts again at once
                task_status.started()
                await self._stop.wait()
                nursery.cancel_scope.cancel()  # each supervisor stops its CLI, shielded and bounded
        finally:
            self._nursery = None
            self.close_feeds()
            self.stopped.set()

    def _remember_creates(self) -> None:
        """Rebuild the creates' client ids from the log: a create retried after a restart
        returns the session it made, as it would have before."""
        folds = sorted(
            (self._log.fold(session_id) for session_id in self._supervisors),
            key=lambda fold: fold.created_at,
        )
        for fold in folds[-RECENT_IDS:]:
            client_id = fold.created_client_id
            if client_id is not None:
                first = dict(fold.message_client_ids()).get(client_id)
                self._created[client_id] = (fold.session_id, first)

    def stop(self) -> None:
        """Stop every session (their CLIs are terminated) and end the list feeds."""
        self._stop.set()
        self.close_feeds()

    def close_feeds(self) -> None:
        for channel in list(self._list_subscribers):
            channel.close()
        self._list_subscribers.clear()

    def _supervisor(self, session_id: str) -> SessionSupervisor:
        return SessionSupervisor(
            session_id,
            self._log,
            self._settings,
            on_failure=lambda error: self._request_failed(session_id, error),
        )

    def _request_failed(self, session_id: str, error: Exception) -> None:
        """A request's operation failed unexpectedly on a session with no run task (else that
        task dies of it, and :meth:`_contained` sees it): the same failure path."""
        try:
            self._failed(session_id, error)
        except Exception:
            log.exception("session %s: recording its failure failed too", session_id)

    def _wake(self, supervisor: SessionSupervisor) -> None:
        if not supervisor.active and supervisor.wants_run() and self._nursery is not None:
            supervisor.active = True  # set now so a second call in the same tick starts nothing
            self._nursery.start_soon(self._contained, supervisor.id, supervisor.run)

    async def _contained(self, session_id: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run one session's task (a supervisor's, a remote session's follower) as an error
        boundary: an unexpected error in it is that session's failure, not the daemon's. It is
        logged with its traceback and the session is marked failed (:meth:`_failed`); every
        other session and link goes on. Cancellation, ``KeyboardInterrupt`` and the
        :data:`SYSTEMIC` errors still propagate (and end the daemon, as they should)."""
        try:
            await run()
        except BaseException as exc:
            bug: Exception | None
            rest: BaseException | None
            if isinstance(exc, BaseExceptionGroup):
                bug, rest = exc.split(Exception)
            elif isinstance(exc, Exception):
                bug, rest = exc, None
            else:
                raise
            if bug is None or _systemic(bug):
                raise
            try:
                self._failed(session_id, bug)
            except Exception:  # a bug in the failure's own handling: still only this session
                log.exception("session %s: recording its failure failed too", session_id)
            if rest is not None:
                raise rest from None  # a cancellation that came with it

    def _failed(self, session_id: str, error: Exception) -> None:
        """A session's task died of ``error``: record it, and restart it unless it failed
        :data:`MAX_FAILURES` times within :data:`RESTART_WINDOW` seconds."""
        now = trio.current_time()
        failures = self._failures.setdefault(session_id, deque())
        failures.append(now)
        while failures and failures[0] < now - RESTART_WINDOW:
            failures.popleft()
        restart = len(failures) < MAX_FAILURES and not self._stop.is_set()
        log.error(
            "session %s: its task failed unexpectedly (%d time(s) in %.0f s); %s",
            session_id,
            len(failures),
            RESTART_WINDOW,
            "it may start again at once" if restart else "it stays failed until a client acts",
            exc_info=error,
        )
        # the error's kind only: its text may hold anything (paths, a client's input)
        detail = f"internal error {_kinds(error)}, logged by the daemon"
        supervisor = self._supervisors.get(session_id)
        if supervisor is not None:
            restart = restart and not supervisor.closed
            supervisor.failed(detail, restart)
            if restart:
                self._wake(supervisor)
            return
        remote = self._remotes.get(session_id)
        if remote is not None:
            self._log.append(
                session_id,
                ev.SessionError(
                    SESSION_FAILED,
                    f"following the session failed ({detail}); "
                    + ("restarted" if restart else "opening it again restarts it"),
                ),
            )
            self._log.commit()
            if restart:
                self._follow_remote(remote)

    # -- operations --------------------------------------------------------------------------

    def create(
        self,
        cwd: str,
        prompt: Prompt | str | None = None,
        model: str | None = None,
        permission_mode: str = "default",
        client_id: str | None = None,
        title: str | None = None,
    ) -> tuple[SessionInfo, str | None, bool]:
        """Create a session (and queue its first prompt). Returns its summary, the message id
        and whether it is new: a ``client_id`` seen before returns that session again (a
        client retrying after a lost reply or a 503 must not start a second one)."""
        known = self._created.get(client_id) if client_id is not None else None
        if known is not None and known[0] in self._supervisors:
            return self.info(known[0]), known[1], False
        real = resolve_cwd(cwd, self._roots)
        prompt = Prompt(prompt) if isinstance(prompt, str) else prompt
        session_id = str(uuidlib.uuid4())
        self._log.create(session_id)
        title = title or title_from(prompt.text if prompt else None, real)
        self._log.append(
            session_id,
            ev.SessionCreated(str(real), title, model, permission_mode, client_id=client_id),
        )
        supervisor = self._supervisor(session_id)
        supervisor.init_created(str(real), model, permission_mode)
        self._supervisors[session_id] = supervisor
        message_id = None
        if prompt is not None and prompt.text.strip():
            message_id, _ = supervisor.send(prompt, client_id)
            self._wake(supervisor)
        if client_id is not None:
            self._created[client_id] = (session_id, message_id)
            while len(self._created) > RECENT_IDS:
                self._created.popitem(last=False)
        return self.info(session_id), message_id, True

    async def refuse_create(self, session_id: str, message_id: str | None) -> bool:
        """A create is answered 503 (the store failed before it was durable): undo it, so it
        is not done. Its first message is withdrawn unrun, the session ends deleted (on disk
        once the store recovers, in no list) and its client id is forgotten. False: it was
        durable after all (or a retry found it), so it stands."""
        supervisor = self._supervisors.get(session_id)
        if supervisor is None or self._log.durable(session_id, 1):
            return False
        if message_id is not None:
            supervisor.withdraw(message_id)
        supervisor.close()
        await supervisor.wait_stopped()  # never spawned: its message was not durable
        self._log.append(session_id, ev.SessionDeleted(False))
        self._supervisors.pop(session_id, None)
        self._reported.pop(session_id, None)
        self._failures.pop(session_id, None)
        self._log.end_subscriptions(session_id)
        for client_id, (known, _) in list(self._created.items()):
            if known == session_id:
                del self._created[client_id]
        return True

    def withdraw(self, session_id: str, message_id: str) -> bool:
        """A send is answered 503: take the message back unless it is durable (see
        :meth:`SessionSupervisor.withdraw`)."""
        supervisor = self._supervisors.get(session_id)
        return supervisor is not None and supervisor.withdraw(message_id)

    async def delete(self, session_id: str, remove_log: bool) -> None:
        """Stop the session's CLI, record its end, and forget it (and maybe its logs)."""
        supervisor = self.get(session_id)
        if supervisor.closed:
            raise NotFound(f"session {session_id} is being deleted", code="unknown_session")
        supervisor.close()
        await supervisor.wait_stopped()  # bounded: the CLI's shutdown grace
        cwd = self._log.fold(session_id).cwd
        self._log.append(session_id, ev.SessionDeleted(remove_log))
        await self._log.flush()  # list followers hear of it (still registered for _on_commit)
        self._supervisors.pop(session_id, None)
        self._reported.pop(session_id, None)
        self._failures.pop(session_id, None)
        self._log.end_subscriptions(session_id)
        if remove_log:
            self._log.remove(session_id)
            env = {**os.environ, **self._settings.env}
            await trio.to_thread.run_sync(_unlink, transcript_path(cwd, session_id, env))

    def get(self, session_id: str) -> SessionSupervisor:
        """The local session's supervisor; a remote session cannot do what needs one."""
        try:
            return self._supervisors[session_id]
        except KeyError:
            if session_id in self._remotes:
                raise Unsupported(
                    f"session {session_id} is a Remote Control session: only sending messages, "
                    "interrupting and archiving reach it from here"
                ) from None
            raise NotFound(f"unknown session {session_id!r}", code="unknown_session") from None

    def check(self, session_id: str) -> None:
        """Raise ``NotFound`` unless the session (local or remote) is known."""
        if session_id not in self._supervisors and session_id not in self._remotes:
            raise NotFound(f"unknown session {session_id!r}", code="unknown_session")

    # -- remote sessions (the Remote Control bridge) ------------------------------------------

    def add_remote(self, session: Remote) -> None:
        self._remotes[session.id] = session

    def remote(self, session_id: str) -> Remote | None:
        return self._remotes.get(session_id)

    def remotes(self) -> list[Remote]:
        return list(self._remotes.values())

    def follow(self, session_id: str, *, opened: bool = False) -> None:
        """A client looks at ``session_id``: a remote one is followed upstream meanwhile. If it
        ``opened`` the session (subscribed to its events), a local one whose CLI is stopped has
        it started in the background (warm), so that a message starts its turn at once."""
        remote = self._remotes.get(session_id)
        if remote is None:
            if opened:
                self._warm_up(session_id)
            return
        remote.follow()
        if opened or not self._exhausted(session_id):  # past its budget: a client opens it
            self._follow_remote(remote)

    def _exhausted(self, session_id: str) -> bool:
        """Whether the session failed :data:`MAX_FAILURES` times within the window (then it
        is not restarted on its own: a snapshot read would start a broken follower at each
        poll)."""
        failures = self._failures.get(session_id, ())
        since = trio.current_time() - RESTART_WINDOW
        return sum(1 for at in failures if at >= since) >= MAX_FAILURES

    def _follow_remote(self, remote: Remote) -> None:
        if not remote.active and remote.has_work() and self._nursery is not None:
            remote.active = True
            self._nursery.start_soon(self._contained, remote.id, remote.run)

    def _warm_up(self, session_id: str) -> None:
        supervisor = self._supervisors.get(session_id)
        if supervisor is None or self._warm_limit <= 0:
            return
        if supervisor.warm():
            self._wake(supervisor)
        elif not supervisor.warm_only:
            return  # its CLI runs for real work (or cannot start): not one of the warm ones
        self._warmed[session_id] = None
        self._warmed.move_to_end(session_id)
        for warmed in list(self._warmed):  # forget those no longer only warm
            other = self._supervisors.get(warmed)
            if other is None or not other.warm_only:
                del self._warmed[warmed]
        while len(self._warmed) > self._warm_limit:
            oldest, _ = self._warmed.popitem(last=False)
            if (other := self._supervisors.get(oldest)) is not None:
                other.cool()

    def send(
        self, session_id: str, prompt: Prompt | str, client_id: str | None = None
    ) -> tuple[str, bool]:
        supervisor = self.get(session_id)
        result = supervisor.send(prompt, client_id)
        self._wake(supervisor)
        return result

    async def set_mirror(self, session_id: str, enabled: bool, name: str | None) -> bool:
        """Restart the session's CLI with/without Remote Control and wait until it confirmed.
        Returns False when nothing had to change."""
        supervisor = self.get(session_id)
        request = supervisor.request_mirror(enabled, name)
        if request is None:
            return False
        self._wake(supervisor)
        await request.wait()
        return True

    def info(self, session_id: str) -> SessionInfo:
        self.check(session_id)
        return self._log.info(session_id)

    def summaries(self, query: SessionFilter = SessionFilter(archived=None)) -> list[SessionInfo]:
        """Sessions matching ``query``, most recently active first."""
        infos = [self._log.info(session_id) for session_id in [*self._supervisors, *self._remotes]]
        infos = sorted(filter(query, infos), key=lambda info: info.last_activity, reverse=True)
        return infos[: query.limit] if query.limit is not None else infos

    def folder_uses(self) -> list[tuple[str, float]]:
        """``(cwd, last activity)`` of every session: what "recent folders" is made of."""
        return [
            (fold.cwd, fold.last_activity)
            for fold in (self._log.fold(session_id) for session_id in self._supervisors)
        ]

    def statistics(self) -> dict[str, object]:
        return {
            "sessions": len(self._supervisors),
            "live": sum(1 for s in self._supervisors.values() if s.active),
            #: how many sessions are in each state of the core (sessions/core.State)
            "states": dict(Counter(s.core.state.value for s in self._supervisors.values())),
            "remote": len(self._remotes),
            "list_subscribers": len(self._list_subscribers),
        }

    # -- the session-list feed ---------------------------------------------------------------

    def subscribe_list(
        self, max_queue: int
    ) -> tuple[list[SessionInfo], trio.MemoryReceiveChannel[SessionInfo]]:
        send, receive = trio.open_memory_channel[SessionInfo](max_queue)
        self._list_subscribers.add(send)
        return self.summaries(), receive

    def _on_commit(self, session_ids: set[str]) -> None:
        if not self._list_subscribers:
            return  # a new follower gets the whole list; nothing to compute per commit
        for session_id in session_ids:
            if session_id not in self._supervisors and session_id not in self._remotes:
                continue
            info = self._log.info(session_id)
            if self._worth_reporting(session_id, info):
                self._push(info)

    def _worth_reporting(self, session_id: str, info: SessionInfo) -> bool:
        """Skip reports where only ``last_activity`` moved, unless the last one is old."""
        previous = self._reported.get(session_id)
        if previous is not None:
            old, at = previous
            same = old == _with_activity(info, old.last_activity)
            if same and info.last_activity - at < ACTIVITY_REPORT_INTERVAL:
                return False
        self._reported[session_id] = (info, info.last_activity)
        return True

    def _push(self, info: SessionInfo) -> None:
        for channel in list(self._list_subscribers):
            try:
                channel.send_nowait(info)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                channel.close()  # lagging or gone: it reconnects and gets the full list
                self._list_subscribers.discard(channel)


def _systemic(error: BaseException) -> bool:
    """Whether ``error`` (or any error of a group) is the process's, not one session's."""
    if isinstance(error, BaseExceptionGroup):
        return any(_systemic(inner) for inner in error.exceptions)
    return isinstance(error, SYSTEMIC)


def _kinds(error: BaseException) -> str:
    """The class names of ``error``'s leaves (a group's members), e.g. ``RuntimeError``."""
    if isinstance(error, BaseExceptionGroup):
        return ", ".join(dict.fromkeys(_kinds(inner) for inner in error.exceptions))
    if isinstance(error, RequestFailed) and error.__cause__ is not None:
        return _kinds(error.__cause__)  # a request's error, which the run task raised for it
    return type(error).__name__


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # the transcript is the CLI's; failing to remove it must not fail the delete


def _with_activity(info: SessionInfo, last_activity: float) -> SessionInfo:
    return attrs.evolve(info, last_activity=last_activity)
