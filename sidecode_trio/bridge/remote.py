"""Remote sessions in the daemon: a follower per session and the bridge service.

A :class:`RemoteSession` stands in the session registry beside the local supervisors. Its events
go to the same event log, so a client follows it exactly like a local one (``(epoch, cursor)``
resume, snapshot, watch view, ``/api/*``). It is followed upstream on demand: while any client
follows it in the log, plus ``follow_grace`` after the last one left. Each (re)connection opens
the WebSocket first, then reads the whole history (paged), then the live frames; every upstream
event is applied at most once, by its id, remembered in the log's store in the same transaction
as the events it produced, so neither a reconnect nor a daemon restart duplicates anything.

:class:`Bridge` owns the HTTP client, polls the session list, and reports its state.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import httpx
import trio
import trio_websocket

from ..errors import UpstreamError
from ..eventlog.log import EventLog
from ..wire import events as ev
from . import api
from .client import RemoteControlClient
from .credentials import UNAUTHORIZED, Credentials, discover, organization, unauthorized
from .link import Action, Timing, UpstreamLink
from .mapping import RemoteTranslator, status_of, upstream_id
from .settings import BridgeSettings

if TYPE_CHECKING:
    from ..sessions.registry import SessionRegistry

log = logging.getLogger(__name__)

SEEN_PREFIX: Final = "rc-seen:"  # output keys marking upstream event ids as applied
CLOSE_GRACE: Final = 0.5  # seconds a WebSocket close handshake may take before we just drop it
HISTORY_CHUNK: Final = 256  # upstream events applied between two yields to the event loop
MAX_CHECK: Final = 5.0  # seconds between checks that someone still follows the session


class RemoteSession:
    """One Remote Control session: its follower task and the operations it supports."""

    source = "remote"

    def __init__(self, session_id: str, log: EventLog, bridge: Bridge) -> None:
        self.id = session_id
        self._log = log
        self._bridge = bridge
        self.active = False  #: the follower task runs (set by the registry when it starts it)
        self.closed = False
        self.link = UpstreamLink(bridge.timing)
        self.malformed = 0  #: frames or events that could not be read (skipped)
        #: ``created_at``/``updated_at`` as the upstream list gives them (WatchCode shows these)
        self.upstream_times: tuple[str | None, str | None] = (None, None)
        self.duplicates = 0  #: upstream events skipped because they were applied before
        self._seen: set[str] = set()
        self._translator: RemoteTranslator | None = None
        self._wanted_until = -math.inf
        self._down_announced = False

    def __repr__(self) -> str:
        return f"<RemoteSession {self.id} {self.link!r}>"

    # -- following ---------------------------------------------------------------------------

    def follow(self) -> None:
        """A client looks at the session: follow it upstream (for at least the grace)."""
        self._wanted_until = trio.current_time() + self._bridge.settings.follow_grace

    def has_work(self) -> bool:
        return not self.closed and self._wanted(trio.current_time())

    def _wanted(self, now: float) -> bool:
        if self._log.subscriber_count(self.id) > 0:
            self._wanted_until = now + self._bridge.settings.follow_grace
            return True
        return now < self._wanted_until

    async def run(self) -> None:
        """Follow the session upstream until nobody needs it (or the registry stops)."""
        try:
            await self._log.flush()  # the fold must include every event before we seed from it
            while self._wanted(trio.current_time()):
                await self._attempt()
        finally:
            self.active = False
            if self.link.connects and not self._down_announced:
                self._append([ev.UpstreamDisconnected("unfollowed")])
                self._down_announced = True
            self.link.stop()
            self.link = UpstreamLink(self._bridge.timing)

    async def _attempt(self) -> None:
        step = self.link.poll(trio.current_time())
        if step.action is not Action.CONNECT:
            deadline = step.deadline if step.deadline is not None else math.inf
            await trio.sleep_until(min(deadline, trio.current_time() + self._check_interval()))
            return
        self.link.connecting(trio.current_time())
        try:
            reason, error = await self._connection()
        except UpstreamError as exc:
            reason, error = _failure(exc)
        if reason == "unfollowed":
            return
        delay = self.link.failed(trio.current_time(), stalled=reason == "stalled")
        log.info("remote session %s: upstream %s; retrying in %.1fs", self.id, reason, delay)
        if not self._down_announced:
            self._append(
                [
                    ev.UpstreamDisconnected(
                        reason,
                        round(delay, 3),
                        error.code if error else "",
                        error.message if error else "",
                    )
                ]
            )
            self._down_announced = True

    def _check_interval(self) -> float:
        return min(MAX_CHECK, self._bridge.settings.follow_grace / 2)

    async def _connection(self) -> tuple[str, UpstreamError | None]:
        """One connection's life: why it ended (``closed``, ``stalled``, ``unfollowed``,
        ``error``, ``unauthorized``) and the error, if one ended it."""
        client = self._bridge.require_client()
        async with client.subscribe(self.id, CLOSE_GRACE) as ws:
            self.link.connected(trio.current_time())
            try:
                history = await client.history(self.id)
            except UpstreamError as exc:
                return _failure(exc)
            recovered = 0
            for start in range(0, len(history), HISTORY_CHUNK):
                recovered += self._apply(history[start : start + HISTORY_CHUNK])
                await trio.lowlevel.checkpoint()  # a long history must not stall other sessions
            reconnect = self.link.connects > 1 or self._down_announced
            self._append([ev.UpstreamConnected(reconnect, recovered if reconnect else 0)])
            self._down_announced = False
            return await self._live(ws), None

    async def _live(self, ws: trio_websocket.WebSocketConnection) -> str:
        ended: list[str] = []
        async with trio.open_nursery() as nursery:

            def end(reason: str) -> None:
                ended.append(reason)
                nursery.cancel_scope.cancel()

            nursery.start_soon(self._read, ws, end)
            while True:
                now = trio.current_time()
                if not self._wanted(now):
                    end("unfollowed")
                    break
                step = self.link.poll(now)
                if step.action is Action.STALLED:
                    end("stalled")
                    break
                if step.action is Action.PING:
                    self.link.pinged(now)
                    nursery.start_soon(self._ping, ws)
                    continue
                deadline = step.deadline if step.deadline is not None else math.inf
                await trio.sleep_until(min(deadline, now + self._check_interval()))
        return ended[0]

    async def _read(
        self, ws: trio_websocket.WebSocketConnection, end: Callable[[str], None]
    ) -> None:
        while True:
            try:
                message = await ws.get_message()
            except trio_websocket.ConnectionClosed:
                end("closed")
                return
            self.link.received(trio.current_time())
            try:
                raws = api.parse_frame(message)
            except api.MalformedUpstream:
                self.malformed += 1
                self._bridge.malformed += 1
                continue
            self._apply(raws)

    async def _ping(self, ws: trio_websocket.WebSocketConnection) -> None:
        try:
            await ws.ping(os.urandom(8))
        except (trio_websocket.ConnectionClosed, ValueError):
            return  # the reader sees the close; a stall is the link's business
        self.link.received(trio.current_time())

    # -- applying upstream events -------------------------------------------------------------

    def translator(self) -> RemoteTranslator:
        if self._translator is None:
            fold = self._log.fold(self.id)
            self._translator = RemoteTranslator(
                fold.active_turn, list(fold.queued), fold.cost_usd, fold.status
            )
        return self._translator

    def _seen_before(self, event_id: str) -> bool:
        if event_id in self._seen:
            return True
        if self._log.output(self.id, SEEN_PREFIX + event_id) is not None:
            self._seen.add(event_id)
            return True
        return False

    def _mark(self, event_id: str) -> None:
        self._seen.add(event_id)
        self._log.put_output(self.id, SEEN_PREFIX + event_id, "")

    def _apply(self, raws: Iterable[Mapping[str, Any]]) -> int:
        """Apply upstream events not applied before; returns how many were new."""
        translator = self.translator()
        new = 0
        for raw in raws:
            event_id = upstream_id(raw)
            if self._seen_before(event_id):
                self.duplicates += 1
                continue
            try:
                events = translator.feed(raw)
            except (KeyError, TypeError, ValueError, AttributeError):
                self.malformed += 1  # a shape we do not understand: skipped, never fatal
                self._bridge.malformed += 1
                events = []
            self._mark(event_id)  # committed with these events, in one transaction
            self._append(events)
            for key, text in translator.take_outputs():
                self._log.put_output(self.id, key, text)
            new += 1
        return new

    def _append(self, events: Iterable[ev.Event]) -> None:
        for event in events:
            self._log.append(self.id, event)

    # -- operations ---------------------------------------------------------------------------

    async def send(self, text: str, client_id: str | None = None) -> str:
        """Post a user message upstream; once accepted it is in the log as queued."""
        message_id = str(uuidlib.uuid4())
        self._seen.add(message_id)  # its echo may arrive before the POST returns
        try:
            await self._bridge.require_client().post_event(
                self.id, api.user_message(self.id, text, message_id)
            )
        except BaseException:
            self._seen.discard(message_id)
            raise
        self._mark(message_id)
        self._append(self.translator().local_message(message_id, text, client_id))
        self.follow()
        return message_id

    async def interrupt(self) -> bool:
        event_id = str(uuidlib.uuid4())
        self._seen.add(event_id)
        await self._bridge.require_client().post_event(
            self.id, api.control(self.id, "interrupt", event_id)
        )
        self._mark(event_id)
        events = self.translator().interrupted()
        self._append(events)
        return bool(events)

    def set_archived(self, archived: bool) -> None:
        """Archiving is ours (it hides the session here); nothing changes upstream."""
        self._append([ev.SessionUpdated(archived=archived)])

    def update_from_list(self, info: api.RemoteSessionInfo) -> None:
        """Take the title, model and (when not followed live) status from the session list."""
        self.upstream_times = (info.created_at, info.updated_at)
        fold = self._log.fold(self.id)
        title = info.title if info.title != fold.title else None
        model = info.model if info.model and info.model != fold.model else None
        if title is not None or model is not None:
            self._append([ev.SessionUpdated(title=title, model=model)])
        status = status_of(info.status)
        translator = self.translator()
        if status is not None and not self.active and status is not translator.status:
            translator.status = status
            self._append([ev.StatusChanged(status)])

    def statistics(self) -> dict[str, object]:
        return {
            **self.link.statistics(),
            "following": self.active,
            "malformed": self.malformed,
            "duplicates": self.duplicates,
        }


def _failure(error: UpstreamError) -> tuple[str, UpstreamError]:
    return ("unauthorized" if error.code == UNAUTHORIZED else "error"), error


class Bridge:
    """The Remote Control bridge: credentials, the HTTP client, the session-list poll."""

    def __init__(
        self,
        settings: BridgeSettings,
        log: EventLog,
        registry: SessionRegistry,
        env: Mapping[str, str],
    ) -> None:
        self.settings = settings
        self.timing = Timing(
            settings.ping_interval,
            settings.stall_timeout,
            settings.backoff_initial,
            settings.backoff_max,
        )
        self._log = log
        self._registry = registry
        source = discover(env, settings)
        self.credentials = (
            Credentials(source, organization(env, settings), settings) if source else None
        )
        self.client: RemoteControlClient | None = None
        self.error: UpstreamError | None = None  #: the last failure of the list poll
        self.polls = 0
        self.malformed = 0
        self.listed = trio.Event()  #: set after each successful poll (replaced by the next one)
        if self.credentials is None:
            self.error = unauthorized(
                "no Claude login found (CLAUDE_CODE_OAUTH_TOKEN, the keychain, or "
                ".credentials.json); run `claude` and log in"
            )

    def session_for(self, session_id: str) -> RemoteSession:
        return RemoteSession(session_id, self._log, self)

    def require_client(self) -> RemoteControlClient:
        if self.client is None:
            raise self.error or UpstreamError("the Remote Control bridge is not running")
        return self.client

    async def run(
        self, stop: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with httpx.AsyncClient(follow_redirects=False) as http:
            if self.credentials is not None:
                self.client = RemoteControlClient(self.settings, self.credentials, http)
            try:
                async with trio.open_nursery() as nursery:
                    if self.client is not None:
                        nursery.start_soon(self._poll_loop)
                    task_status.started()
                    await stop.wait()
                    nursery.cancel_scope.cancel()
            finally:
                self.client = None

    async def _poll_loop(self) -> None:
        while True:
            await self.refresh()
            await trio.sleep(self.settings.poll_interval)

    async def refresh(self) -> None:
        """Read the session list once: new sessions join the registry, known ones update."""
        try:
            infos = await self.require_client().list_sessions()
        except UpstreamError as exc:
            if self.error is None or self.error.message != exc.message:
                log.warning("Remote Control: %s", exc.message)
            self.error = exc
            return
        self.error = None
        self.polls += 1
        for info in infos:
            self._update(info)
        listed, self.listed = self.listed, trio.Event()
        listed.set()

    def _update(self, info: api.RemoteSessionInfo) -> None:
        known = self._registry.remote(info.id)
        if known is not None:
            assert isinstance(known, RemoteSession)  # the registry's remotes are all the bridge's
            known.update_from_list(info)
            return
        if self._log.has(info.id):
            if self._log.fold(info.id).source != RemoteSession.source:
                return  # a local session with that id: never ours to touch
        else:
            self._log.create(info.id)
            self._log.append(
                info.id,
                ev.SessionCreated("", info.title, info.model, source=RemoteSession.source),
            )
        session = self.session_for(info.id)
        self._registry.add_remote(session)
        session.update_from_list(info)

    def status(self) -> dict[str, object]:
        remotes = self._registry.remotes()
        error = self.error or (self.credentials.error if self.credentials else None)
        return {
            "enabled": True,
            "api": self.settings.api_url,
            "credentials": self.credentials.status() if self.credentials else None,
            "error": None if error is None else {"code": error.code, "message": error.message},
            "polls": self.polls,
            "sessions": len(remotes),
            "malformed": self.malformed,
            "following": {s.id: s.statistics() for s in remotes if s.active},
            "checked_at": time.time(),
        }
