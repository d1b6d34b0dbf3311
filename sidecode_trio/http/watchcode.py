"""The compact watch view, and WatchCode-compatible routes so the WatchCode apps work unchanged.

Two ways in, one projection (:class:`~..views.watch.WatchProjection`):

* ``GET /v1/sessions/{id}/events?view=watch``: our own stream, in the watch view. Frames carry
  ``id: <epoch>:<cursor>`` like the full view, so resume is exact; a fresh client (or one whose
  position cannot be replayed) first gets one ``history`` frame.
* ``/api/*``: the routes, bodies and SSE format of the WatchCode relay
  (``reference/anchors-seeds.md`` §6.2): ``data:``-only frames of ``{type, content, summary,
  detail, timestamp}``, first ``{"type":"status","content":"SSE stream opened"}``. A paired
  device's credential travels in ``x-watchcode-secret`` (or ``?secret=`` for ``EventSource``).

Where it stays compatible, this does better than the WatchCode relay: frames carry ``id:``
lines (an ``EventSource`` resumes exactly with ``Last-Event-ID``); a watch that re-``connect``s
after its stream broke (its Swift client retries that way, keeping the events it has) gets at
most the last :data:`REWIND` seconds again, never the whole history, and loses nothing (see
:class:`Connections`); several devices on one session do not kick each other out; and every
buffer is the event log's bounded queue. ``protocol/PROTOCOL.md`` §9 lists every difference.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, Final, Protocol

import attrs
from quart import Response, g, request
from quart_trio import QuartTrio

from .. import feed
from ..errors import BadRequest, NotFound, SidecodeError
from ..eventlog.core import Position, StoredEvent, decode_event
from ..feed import SessionFeed
from ..ops import Operations
from ..security.auth import Principal
from ..security.devices import Scope
from ..security.guard import Credentials, Guard
from ..sessions.registry import SessionFilter
from ..views.watch import WatchEvent, WatchProjection, iso_time, summarize_tool_result
from ..wire import converter as wire
from ..wire import requests as rq
from ..wire.snapshot import SessionInfo
from . import sse

log = logging.getLogger(__name__)

PREFIX: Final = "/api/"
HISTORY_LIMIT: Final = 200  # watch events of history sent to a fresh client (a small screen)
#: a fresh /api client's history is the log replayed (the frames live clients got, with their
#: times) while the session has at most this many events; beyond, it is built from a snapshot
HISTORY_REPLAY_EVENTS: Final = 10_000
RETRY_WINDOW: Final = 30.0  # seconds after a stream ended in which a re-connect is a retry
REWIND: Final = 90.0  # a retry repeats what was written this long before it (see Connections)
MARKS: Final = 1024  # written positions remembered per stream (those of the last REWIND)
MAX_CONNECTIONS: Final = 32  # per device; the oldest is forgotten beyond that
WS_OPEN: Final = 1  # WebSocket.readyState OPEN: WatchCode's wsState (the daemon's feed is open)
MAX_LATEST: Final = 256  # (device, session) pairs whose latest connection is remembered
CORS: Final = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": (
        "Content-Type, Authorization, x-organization-uuid, x-watchcode-secret, Last-Event-ID"
    ),
}
# WatchCode's clients know these types; ours that they do not ("permission") go out as status.
WATCHCODE_TYPES: Final = frozenset(
    {"user", "assistant", "tool_use", "tool_result", "status", "error"}
)


class Settings(Protocol):
    """What the streams need from the HTTP settings."""

    @property
    def client_queue(self) -> int: ...


def _error(status: int, message: str) -> Response:
    return Response(
        wire.dumps({"error": message}), status=status, mimetype="application/json", headers=CORS
    )


def authenticate(guard: Guard) -> Response | None:
    """``before_request`` for ``/api/*``: CORS preflight, then the device's secret."""
    if request.method == "OPTIONS":
        return Response(b"", status=204, headers=CORS)
    secret = request.headers.get("x-watchcode-secret") or request.args.get("secret")
    offered = Credentials(  # our own device tokens work here too
        request.path, request.remote_addr, request.headers.get("Authorization"), secret=secret
    )
    try:
        g.principal = guard.admit(offered)
    except SidecodeError as exc:
        return _error(429 if exc.status == 429 else 401, "Unauthorized")
    return None


def error_response(exc: SidecodeError) -> Response:
    """An error on ``/api/*`` in WatchCode's shape: ``{"error": "<message>"}``."""
    return _error(exc.status, exc.message)


# -- connections -------------------------------------------------------------------------------


def wall_clock() -> float:
    """Unix time; one name so tests can move the connections' clock."""
    return time.time()


@attrs.define(eq=False)
class Written:
    """What one stream of a connection wrote: where it began (what the client proved with
    ``Last-Event-ID``, else the connection's ``start``), and each position the socket *took*
    (every byte up to that event's frame was sent, not just built), with when. Positions of the
    last :data:`REWIND` only: a retry needs the newest one at least that old."""

    since: Position | None
    marks: deque[tuple[float, Position]] = attrs.field(factory=lambda: deque(maxlen=MARKS))

    def mark(self, position: Position) -> None:
        now = wall_clock()
        self.marks.append((now, position))
        # A retry (later than now) steps back to the last mark at least REWIND old: of the
        # marks that old, only the newest can be that one.
        while len(self.marks) > 1 and self.marks[1][0] <= now - REWIND:
            self.marks.popleft()

    def before(self, cutoff: float) -> Position | None:
        """The last position taken at or before ``cutoff``, else where the stream began."""
        found = self.since
        for at, position in self.marks:
            if at > cutoff:
                break
            found = position
        return found


@attrs.define
class Connection:
    """WatchCode's "connection": a device following one session.

    ``start`` is where its next stream begins when the client proves nothing (no
    ``Last-Event-ID``): None for the whole history, else the position a retry continues from
    (``retry``: it was made by one). ``written`` is what its latest stream wrote, so a later
    retry can step back to what the client certainly had (see :meth:`Connections.connect`)."""

    id: str
    session_id: str
    device_id: str | None
    created_at: float
    start: Position | None = None
    retry: bool = False
    streams: int = 0
    streamed: bool = False  #: a stream of it ever started
    last_event: float | None = None
    broken_at: float | None = None  #: when its last stream ended
    deleted: bool = False  #: ended by DELETE: the client left the session (and clears its list)
    written: Written = attrs.field()
    closers: set[Callable[[], None]] = attrs.field(factory=set)

    @written.default
    def _nothing_written(self) -> Written:
        return Written(self.start)

    def begin(self, since: Position | None) -> Written:
        """A stream of it is asked for, from ``since``: the client has everything up to there
        (it said so, or it proves nothing and gets ``start``). Only this stream's writes count
        from now on; an older stream still writing writes into a socket the client left."""
        self.written = Written(since)
        return self.written

    def written_before(self, cutoff: float) -> Position | None:
        """What the client certainly has if it got all the latest stream's socket took at or
        before ``cutoff``."""
        return self.written.before(cutoff)


class Connections:
    """The connections, and per (device, session) the latest one, which tells a fresh
    ``POST /api/connect`` from the Swift client's retry (both send the same request):

    * the client left the session (DELETE), or its last stream ended more than
      :data:`RETRY_WINDOW` ago, or it never streamed (and was not itself a retry): a fresh
      connect. ``connect()`` in ``RelayClient.swift`` empties the watch's list first, so the
      stream starts with the whole history, once.
    * its stream is still open (a silent drop: the daemon still writes into a dead socket)
      or ended moments ago, and no DELETE came: ``attemptReconnect()``, which keeps the list.
      The client proves nothing (no ``Last-Event-ID``, a new connection id), so the new stream
      continues from the last position written at least :data:`REWIND` seconds ago: the watch
      noticed the break at most URLSession's 60 s idle timeout after its last bytes arrived
      (keep-alives flow every 15 s), then waited 2-6 s. Nothing is lost; what is repeated is
      at most the last :data:`REWIND` seconds, never the whole history again. "Written" is
      what the socket took (:class:`Written`), and the latest stream counts from where its
      request proved the client was.
    * it was a retry whose stream request never came (the link failed again), made less than
      :data:`RETRY_WINDOW` ago: ``attemptReconnect()``'s next attempt, a retry from where that
      one was to start.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, Connection] = {}
        self._latest: OrderedDict[tuple[str | None, str], Connection] = OrderedDict()

    def connect(self, who: Principal, session_id: str) -> Connection:
        now = wall_clock()
        key = (who.device_id, session_id)
        previous = self._latest.get(key)
        start, retry = None, False
        if previous is not None and self._retrying(previous, now):
            start, retry = previous.written_before(now - REWIND), True
            self.close(previous.id)  # a silently dropped stream stops writing into the void
        connection = Connection(secrets.token_hex(16), session_id, who.device_id, now, start, retry)
        self._by_id[connection.id] = connection
        self._latest[key] = connection
        self._latest.move_to_end(key)
        while len(self._latest) > MAX_LATEST:
            self._latest.popitem(last=False)
        mine = [c for c in self._by_id.values() if c.device_id == who.device_id]
        for stale in mine[: max(0, len(mine) - MAX_CONNECTIONS)]:
            self.close(stale.id)
        return connection

    @staticmethod
    def _retrying(previous: Connection, now: float) -> bool:
        if previous.deleted:
            return False
        if not previous.streamed:  # its stream request never came: a retry if it was one
            return previous.retry and now - previous.created_at <= RETRY_WINDOW
        if previous.streams:
            return True  # one stream per watch: an open one is dead on the client's side
        return previous.broken_at is not None and now - previous.broken_at <= RETRY_WINDOW

    def find(self, who: Principal, session_id: str, connection_id: str | None) -> Connection:
        if connection_id:
            found = self._by_id.get(connection_id)
            if found is not None and found.device_id == who.device_id:
                return found
        else:  # WatchCode's fallback: the first connection to that session
            for connection in self._by_id.values():
                if connection.session_id == session_id and connection.device_id == who.device_id:
                    return connection
        raise NotFound(f"No active connection for session {session_id}. POST /api/connect first.")

    def delete(self, who: Principal, connection_id: str) -> None:
        """``DELETE /api/connections/{id}``: the client left; its next connect is fresh."""
        found = self._by_id.get(connection_id)
        if found is None or found.device_id != who.device_id:
            raise NotFound(f"No active connection {connection_id}")
        found.deleted = True  # never a retry's starting point now
        self.close(found.id)

    def close(self, connection_id: str) -> Connection | None:
        connection = self._by_id.pop(connection_id, None)
        if connection is not None:
            for close in list(connection.closers):
                close()
        return connection

    def visible_to(self, who: Principal) -> list[Connection]:
        if who.scope is Scope.ADMIN:
            return list(self._by_id.values())
        return [c for c in self._by_id.values() if c.device_id == who.device_id]


# -- the projected stream ----------------------------------------------------------------------


def _data_frame(event: WatchEvent, position: Position | None, name: bytes | None) -> bytes:
    head = b"id: %s\n" % str(position).encode() if position is not None else b""
    if name is not None:
        head += b"event: %s\n" % name
    return head + b"data: %s\n\n" % wire.dumps(event)


def _watchcode_event(event: WatchEvent) -> WatchEvent:
    if event.type == "tool_result":
        # WatchCode's collapsed tool row shows the result's summary: a summary of the *output*
        # ("12 lines of output"), as its relay made it; our title ("Ran `ls`") goes in detail.
        return attrs.evolve(
            event, summary=summarize_tool_result(event.content), detail=event.summary
        )
    if event.type in WATCHCODE_TYPES:
        return event
    content = event.content if not event.summary else f"{event.content} {event.summary}"
    return attrs.evolve(event, type="status", content=content)


async def watch_stream(
    ops: Operations,
    guard: Guard,
    who: Principal,
    session_id: str,
    since: Position | None,
    settings: Settings,
    *,
    compatible: bool = False,
    connection: Connection | None = None,
    written: Written | None = None,
) -> AsyncIterator[bytes]:
    """A session's events in the watch view, resumable by ``(epoch, cursor)``.

    ``compatible`` writes WatchCode's format (``data:`` frames only, history as single events,
    the opening status); otherwise frames are named ``watch`` and history is one frame.
    ``written`` (with ``connection``) learns each position once the socket took its frames:
    this generator resumes after a ``yield`` only when the server has sent the chunk (hypercorn
    awaits ``send_all``), and never if the client stopped reading; so a position is marked
    after the yield of its chunk, not when its frame is built."""
    projection = WatchProjection()
    name = None if compatible else b"watch"
    built: tuple[Position, float | None] | None = None  #: the last position in what was yielded

    def taken() -> None:
        """Everything yielded so far was sent (or nothing was: an event with no frames).

        A chunk whose write failed (a reset) is marked too: hypercorn tells the app with a
        disconnect, not from the send. The stream ends then, so a retry comes within
        :data:`RETRY_WINDOW` of that mark and steps back :data:`REWIND` before it, never to it
        (later, a connect is fresh)."""
        nonlocal built
        if built is not None and written is not None and connection is not None:
            written.mark(built[0])
            if built[1] is not None:
                connection.last_event = built[1]
        built = None

    def frames(stored: StoredEvent) -> bytes:
        nonlocal built
        position = Position(stored.epoch, stored.cursor)
        watch = projection.feed(decode_event(stored), stored.at)
        built = position, stored.at
        if compatible:
            watch = [_watchcode_event(w) for w in watch]
        # Only the last frame of an event carries its id: a client cut off between two frames
        # of one event resumes before it, not after it.
        return b"".join(
            _data_frame(w, position if i == len(watch) - 1 else None, name)
            for i, w in enumerate(watch)
        )

    def history(item: feed.Snapshot) -> bytes:
        nonlocal built
        snap = item.snapshot
        position = Position(snap.epoch, snap.cursor)
        rows = projection.history(snap, snap.session.last_activity)[-HISTORY_LIMIT:]
        built = position, None
        if compatible:
            rows = [_watchcode_event(w) for w in rows]
            return (
                b"".join(
                    _data_frame(w, position if i == len(rows) - 1 else None, None)
                    for i, w in enumerate(rows)
                )
                or b": history is empty\n\n"
            )
        body = {
            "reason": item.reason,
            "session": wire.unstructure(snap.session),
            "events": wire.unstructure(rows),
        }
        return b"id: %s\nevent: history\ndata: %s\n\n" % (str(position).encode(), wire.dumps(body))

    replay_up_to = HISTORY_REPLAY_EVENTS if compatible else None
    queue = settings.client_queue
    fd = SessionFeed.open(
        ops, guard.links, who, session_id, since, queue, replay_up_to=replay_up_to
    )
    if connection is not None:
        connection.streams += 1
        connection.streamed = True
        connection.closers.add(fd.end)
    try:
        if compatible:
            opened = WatchEvent("status", "SSE stream opened", iso_time(time.time()))
            yield _data_frame(opened, None, None)
        else:
            yield sse.RETRY
        for item in fd.catch_up():
            if isinstance(item, feed.Snapshot):
                yield history(item)
            elif item.history:  # each frame with its event's time, Running and permission lines
                kept: deque[bytes] = deque(maxlen=HISTORY_LIMIT)
                for stored in item.events:
                    if chunk := frames(stored):
                        kept.append(chunk)
                yield b"".join(kept) or b": history is empty\n\n"
            elif chunk := b"".join(map(frames, item.events)):
                yield chunk
            taken()
        live = fd.live()
        async with aclosing(live):  # closed with this stream, not left to the GC (a warning)
            async for each in live:
                if isinstance(each, feed.Events):
                    chunk = b"".join(map(frames, each.events))
                    chunk += sse.KEEPALIVE if each.keepalive else b""
                else:
                    chunk = sse.KEEPALIVE if isinstance(each, feed.KeepAlive) else b""
                if chunk:  # the projection may have nothing to say about some events
                    yield chunk
                taken()
    finally:
        fd.close()
        if connection is not None:
            connection.streams -= 1
            connection.closers.discard(fd.end)
            connection.broken_at = wall_clock()


# -- the /api routes ---------------------------------------------------------------------------


def _session(info: SessionInfo, upstream: tuple[str | None, str | None]) -> dict[str, Any]:
    """WatchCode's session row. A relayed Remote Control session has the times upstream gives
    (as WatchCode showed and sorted by them), not when the daemon first saw it."""
    remote = info.source == "remote"  # relayed from Claude Code's Remote Control
    created, updated = upstream
    return {
        "id": info.id,
        "title": info.title or "Untitled",
        "status": info.status.value,
        "model": info.model or "default",
        "environmentId": "remote" if remote else "local",
        "createdAt": created or iso_time(info.created_at),
        "updatedAt": updated or iso_time(info.last_activity),
        "provider": "remote-control" if remote else "claude-code",
        "cwd": info.cwd,
        "pendingPermissions": info.pending_permissions,
    }


async def _json_body() -> dict[str, Any]:
    raw = await request.get_data(cache=False, as_text=False)
    g.body_read = True  # the connection may carry another request (app.close_after_unread_body)
    try:
        data = wire.loads(raw or b"{}")
        wire.check_text(data)  # no lone surrogates: they are not text
    except (ValueError, RecursionError):  # NaN, not UTF-8; RecursionError: nested past ~1000
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _text(body: dict[str, Any], key: str, what: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{what} is required")
    return value


def _ok(body: Any, status: int = 200) -> Response:
    return Response(wire.dumps(body), status=status, mimetype="application/json", headers=CORS)


def add_routes(app: QuartTrio, ops: Operations, guard: Guard, settings: Settings) -> None:
    connections = Connections()

    def who() -> Principal:
        principal: Principal = g.principal
        return principal

    @app.route("/api/<path:rest>", methods=["OPTIONS"])
    async def api_preflight(rest: str) -> Response:
        return Response(b"", status=204, headers=CORS)  # answered in authenticate() already

    @app.get("/api/sessions")
    async def api_sessions() -> Response:
        infos = ops.list_sessions(who(), SessionFilter()).sessions
        rows = [_session(info, ops.upstream_times(info.id)) for info in infos]
        return _ok({"sessions": rows})

    @app.post("/api/connect")
    async def api_connect() -> Response:
        body = await _json_body()
        session_id = _text(body, "sessionId", "sessionId")
        ops.snapshot_position(who(), session_id)  # 404 for an unknown session
        connection = connections.connect(who(), session_id)
        return _ok({"connectionId": connection.id, "status": "connected"})

    @app.get("/api/sessions/<session_id>/events")
    async def api_events(session_id: str) -> Response:
        principal = who()
        connection = connections.find(principal, session_id, request.args.get("connectionId"))
        ops.snapshot_position(principal, connection.session_id)  # 404 now, not mid-stream
        last = request.headers.get("Last-Event-ID")
        since = Position.parse(last) if last else connection.start
        written = connection.begin(since)  # the client's proof counts even if nothing is sent
        stream = watch_stream(
            ops,
            guard,
            principal,
            connection.session_id,
            since,
            settings,
            compatible=True,
            connection=connection,
            written=written,
        )
        response = Response(
            stream,
            status=200,
            mimetype="text/event-stream",
            headers={**CORS, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        response.timeout = None
        return response

    @app.post("/api/sessions/<session_id>/message")
    async def api_message(session_id: str) -> Response:
        body = await _json_body()
        text = _text(body, "content", "content")
        await ops.send_message(who(), session_id, rq.SendMessage(text))
        return _ok({"status": "sent"})

    @app.post("/api/sessions/<session_id>/control")
    async def api_control(session_id: str) -> Response:
        body = await _json_body()
        kind = _text(body, "type", "type")
        if kind != "interrupt":
            raise BadRequest(f"unsupported control type {kind!r} (only 'interrupt')")
        await ops.interrupt(who(), session_id)
        return _ok({"status": "sent"})

    @app.delete("/api/connections/<connection_id>")
    async def api_disconnect(connection_id: str) -> Response:
        connections.delete(who(), connection_id)
        return _ok({"status": "disconnected"})

    @app.get("/api/status")
    async def api_status() -> Response:
        return _ok(
            {
                "connections": [
                    {
                        "connectionId": c.id,
                        "sessionId": c.session_id,
                        "sseClients": c.streams,
                        "wsState": WS_OPEN,
                        "lastEvent": iso_time(c.last_event) if c.last_event else None,
                    }
                    for c in connections.visible_to(who())
                ]
            }
        )
