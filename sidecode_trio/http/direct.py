"""Session event streams written straight to the socket, beside hypercorn on the same listener.

The token path's cost is per write and per client: through Quart, hypercorn's HTTP stream, h11 and
hypercorn's locked, shielded send, each SSE chunk took about twice the Python work of a plain
``send_all`` (``tests/bench/RESULTS.md``; ``/work/shared/reference/sse-fanout.md``). So the HTTP
server here accepts each connection itself and reads the request head: ``GET
/v1/sessions/{id}/events`` over HTTP/1.1 with no body is answered here (the same checks, in the
same order, with the same error bodies as the Quart route, then ``send_all`` of each chunk);
every other request, and the rest of a connection after a stream ends, goes to hypercorn's own
connection handler with the bytes already read. The listener, TLS, lifespan and shutdown are
hypercorn's, set up as ``hypercorn.trio.serve`` (0.18) does it.

On a plain socket, live events of the full view do not even wake the client's task: while it
has nothing queued, the log's fan-out writes each event with one non-blocking ``send`` (a
:class:`_SocketDirect`, the feed's :class:`~..feed.Direct` path); the task only sends what did not
fit (``reference/sse-fanout.md``, mode A0 against A2). Under TLS, and for the watch view, the
task writes every chunk.

Quart's ``before_request``/``after_request`` hooks do not run for claimed requests:
:meth:`DirectEvents.check` makes the same checks through the same functions (``security.guard``'s
``check_host`` and ``Guard.admit``, in the same order, the same errors), and a new hook that
matters to this route must be added there as well (``tests/test_direct_sse.py`` compares the two
paths' errors).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from functools import partial
from typing import Any, Final
from urllib.parse import parse_qs
from wsgiref.handlers import format_date_time

import attrs
import h11
import hypercorn.config
import trio
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from ..errors import BadRequest, SidecodeError, Unauthorized
from ..eventlog.core import Position, StoredEvent
from ..eventlog.log import KEEPALIVE
from ..feed import SessionFeed, parse_events_path
from ..ops import Operations
from ..security.auth import Principal
from ..security.guard import Credentials, Guard, check_host
from ..wire import converter as wire
from ..wire import requests as rq
from . import sse, watchcode

log = logging.getLogger(__name__)

VIEWS: Final = ("full", "watch")
CLAIMED_PREFIX: Final = b"GET /v1/sessions/"
HEAD_LIMIT: Final = 16 * 1024  # hypercorn's h11_max_incomplete_size default
HEAD_TIMEOUT: Final = 5.0  # seconds for a request head (hypercorn's keep_alive_timeout default)
IDLE_READ_TIMEOUT: Final = 60.0  # an idle keep-alive connection (or a stalled upload) ends
RECEIVE_SIZE: Final = 65536
SSE_HEADERS: Final = (
    b"HTTP/1.1 200 \r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\n"
    b"x-content-type-options: nosniff\r\n"
    b"x-accel-buffering: no\r\n"
    b"transfer-encoding: chunked\r\n"
)
LAST_CHUNK: Final = b"0\r\n\r\n"
NOSNIFF: Final = b"x-content-type-options: nosniff\r\n"  # as the app's replies (http/app.py)

AllowedHosts = Callable[[], "set[str] | None"]


# -- what the Quart route and the direct path share ----------------------------------------------


def check_events(ops: Operations, who: Principal, session_id: str, view: str) -> None:
    """What the route checks before a stream starts: a known view, a session ``who`` may read."""
    if view not in VIEWS:
        raise BadRequest(f"view must be one of {', '.join(VIEWS)}")
    ops.snapshot_position(who, session_id)  # 404/403 before the stream starts, not inside it


def open_events(
    ops: Operations,
    guard: Guard,
    settings: watchcode.Settings,
    who: Principal,
    session_id: str,
    since: Position | None,
    view: str,
) -> AsyncIterator[bytes]:
    """A session's event stream for ``who``; raises (404, 403, 400) before its first byte."""
    check_events(ops, who, session_id, view)
    if view == "watch":
        return watchcode.watch_stream(ops, guard, who, session_id, since, settings)
    return _full_stream(ops, guard, settings, who, session_id, since)


async def _full_stream(
    ops: Operations,
    guard: Guard,
    settings: watchcode.Settings,
    who: Principal,
    session_id: str,
    since: Position | None,
) -> AsyncGenerator[bytes, None]:
    # Subscribed on the first iteration: a client gone before then leaves nothing behind.
    with SessionFeed.open(ops, guard.links, who, session_id, since, settings.client_queue) as fd:
        yield sse.RETRY
        for item in fd.catch_up():
            yield sse.encode(item)
        live = fd.live()
        async with aclosing(live):  # closed with this stream, not left to the GC (a warning)
            async for each in live:
                if chunk := sse.encode(each):
                    yield chunk


def error_body(exc: SidecodeError) -> bytes:
    return wire.dumps(rq.ErrorReply(rq.ErrorDetail(exc.code, exc.message)))


# -- the direct path -----------------------------------------------------------------------------


@attrs.frozen
class EventsRequest:
    """The parts of a claimed request the checks need (header names lower case, first wins)."""

    session_id: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    remote: str | None

    @classmethod
    def parse(cls, request: h11.Request, remote: str | None) -> EventsRequest | None:
        """The request if the direct path answers it, else None (hypercorn does)."""
        if request.method != b"GET" or request.http_version != b"1.1":
            return None
        target = request.target.decode("ascii", "replace")
        path, _, query = target.partition("?")
        stream = parse_events_path(path)
        if stream is None or stream.session_id is None or stream.path != path or "%" in path:
            return None  # the session list, or an unusual spelling: the Quart route answers
        args = {name: values[0] for name, values in parse_qs(query, True).items()}
        headers: dict[str, str] = {}
        for name, value in request.headers:
            headers.setdefault(name.decode("ascii"), value.decode("latin-1"))
        return cls(stream.session_id, path, args, headers, remote)


class DirectEvents:
    """Answers ``GET /v1/sessions/{id}/events`` on a connection (see the module's docstring)."""

    def __init__(
        self,
        ops: Operations,
        guard: Guard,
        settings: watchcode.Settings,
        allowed_hosts: AllowedHosts,
    ) -> None:
        self._ops, self._guard, self._settings = ops, guard, settings
        self._allowed_hosts = allowed_hosts
        self._encoder = _Encoder()

    def check(self, req: EventsRequest) -> tuple[Principal, Position | None, str]:
        """The checks of the Quart app's ``before_request`` and route, in the same order."""
        check_host(req.headers.get("host", "").lower(), self._allowed_hosts())
        offered = Credentials(
            req.path, req.remote, req.headers.get("authorization"), req.query.get("ticket")
        )
        who = self._guard.admit(offered)
        raw = req.headers.get("last-event-id") or req.query.get("since")
        since = Position.parse(raw) if raw else None
        view = req.query.get("view", "full")
        check_events(self._ops, who, req.session_id, view)
        return who, since, view

    async def respond(self, stream: trio.abc.Stream, req: EventsRequest, spare: bytearray) -> bool:
        """Answer ``req``; True if the connection can carry another request (bytes the client
        sent meanwhile are added to ``spare``)."""
        try:
            who, since, view = self.check(req)
        except SidecodeError as exc:
            return await _send_error(stream, exc)
        except Exception:
            log.exception("unhandled error in GET %s", req.path)
            return await _send_error(stream, SidecodeError("internal error; see the daemon's log"))
        sock = _plain_socket(stream) if view == "full" else None
        if sock is None:
            ops, guard, settings = self._ops, self._guard, self._settings
            frames = open_events(ops, guard, settings, who, req.session_id, since, view)
            return await _pump(stream, frames, spare)
        with sock:
            return await self._fast(stream, sock, who, req.session_id, since, spare)

    async def _fast(
        self,
        stream: trio.abc.Stream,
        sock: socket.socket,
        who: Principal,
        session_id: str,
        since: Position | None,
        spare: bytearray,
    ) -> bool:
        """The full view on a plain socket: live events written by the publisher."""
        queue = self._settings.client_queue
        fd = SessionFeed.open(self._ops, self._guard.links, who, session_id, since, queue)
        gone = trio.Event()
        with fd:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_peer, stream, spare, gone, nursery.cancel_scope)
                try:
                    await stream.send_all(SSE_HEADERS + _date() + b"\r\n" + _chunk(sse.RETRY))
                    for item in fd.catch_up():
                        await stream.send_all(_chunk(sse.encode(item)))
                    live = fd.live(_SocketDirect(fd, stream, sock, self._encoder))
                    async with aclosing(live):
                        async for each in live:
                            if data := sse.encode(each):
                                await stream.send_all(_chunk(data))
                    await stream.send_all(LAST_CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    gone.set()
                nursery.cancel_scope.cancel()
        return not gone.is_set()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Encoder:
    """An event's HTTP chunk, made once for all subscribers: the publisher offers one event to
    every subscriber in turn, so remembering the last one is enough."""

    def __init__(self) -> None:
        self.last: StoredEvent | None = None
        self.data = b""  #: the chunk of ``last``

    def __call__(self, item: StoredEvent) -> bytes:
        if item is not self.last:
            frame = sse.KEEPALIVE if item is KEEPALIVE else sse.event_frame(item)
            self.last, self.data = item, _chunk(frame)
        return self.data


class _SocketDirect:
    """The feed's direct path on a plain socket (:class:`~..feed.Direct`): each event the
    publisher offers is one non-blocking ``send``; what does not fit (a full socket buffer) is
    kept for the writer, which the feed wakes to :meth:`flush` it."""

    def __init__(
        self, fd: SessionFeed, stream: trio.abc.Stream, sock: socket.socket, encode: _Encoder
    ) -> None:
        self._feed, self._stream, self._sock, self._encode = fd, stream, sock, encode
        self._pending = b""

    def write(self, item: StoredEvent) -> bool:
        encode = self._encode  # (its cache checked here: this runs once per event and client)
        data = encode.data if item is encode.last else encode(item)
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False  # gone: the writer finds out when it writes this event
        if sent < len(data):
            self._pending = data[sent:]
            self._feed.wake()
        return True

    async def flush(self) -> None:
        if self._pending:
            data, self._pending = self._pending, b""
            await self._stream.send_all(data)


def _plain_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """A second handle on a plain TCP stream's socket, for the sink's synchronous sends (the
    stream keeps its own; closing this one leaves the connection open). None under TLS."""
    if not isinstance(stream, trio.SocketStream):
        return None
    sock = socket.socket(fileno=os.dup(stream.socket.fileno()))
    sock.setblocking(False)
    return sock


async def _send_error(stream: trio.abc.Stream, exc: SidecodeError) -> bool:
    if exc.status >= 500:
        log.warning("%s: %s", exc.code, exc.message)
    body = error_body(exc)
    head = b"HTTP/1.1 %d \r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s" % (
        exc.status,
        len(body),
        NOSNIFF,
    )
    if isinstance(exc, Unauthorized):
        head += b'www-authenticate: Sidecode realm="sidecode-trio"\r\n'
    try:
        await stream.send_all(head + _date() + b"\r\n" + body)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


def _date() -> bytes:
    return b"date: %s\r\n" % format_date_time(time.time()).encode()


async def _pump(stream: trio.abc.Stream, frames: AsyncIterator[bytes], spare: bytearray) -> bool:
    """Write the response: the head, each chunk in one ``send_all``, the last chunk."""
    gone = trio.Event()
    async with _closing(frames), trio.open_nursery() as nursery:
        nursery.start_soon(_watch_peer, stream, spare, gone, nursery.cancel_scope)
        try:
            await stream.send_all(SSE_HEADERS + _date() + b"\r\n")
            async for chunk in frames:
                await stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await stream.send_all(LAST_CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            gone.set()
        nursery.cancel_scope.cancel()
    return not gone.is_set()


@asynccontextmanager
async def _closing(frames: AsyncIterator[bytes]) -> AsyncIterator[None]:
    """Close the stream's generator when the response ends, however it ends (its ``finally``
    unsubscribes): Trio would otherwise finalise it only later, from a system task."""
    try:
        yield
    finally:
        aclose = getattr(frames, "aclose", None)
        if aclose is not None:
            await aclose()


async def _watch_peer(
    stream: trio.abc.Stream, spare: bytearray, gone: trio.Event, scope: trio.CancelScope
) -> None:
    """Cancel the response when the client goes away; keep anything it sends meanwhile, up to
    a request head's worth (more is not a pipelined request but a flood: the connection ends)."""
    try:
        while data := await stream.receive_some(RECEIVE_SIZE):
            spare += data
            if len(spare) > HEAD_LIMIT:
                break
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    gone.set()
    scope.cancel()


# -- the HTTP server: hypercorn's, with the direct path in front ---------------------------------


class _Prefixed:
    """A connection's stream for hypercorn, giving back first the bytes already read from it
    (everything else, TLS details included, is the stream's own).

    It also ends idle connections. Hypercorn reads only between requests or while a request
    body arrives (during a response it waits for the response to end), and its own keep-alive
    timer never fires under Trio (0.18), so an idle keep-alive connection would stay open for
    good and hold up a clean stop for the whole grace period. A read that waits longer than
    ``IDLE_READ_TIMEOUT``, or any read once the server stops, ends the connection instead.
    Idle means nothing read *and nothing written*: hypercorn also reads while a response
    streams (an ``/api`` event stream), and a stream that writes keep-alives is not idle.
    """

    def __init__(self, stream: trio.abc.Stream, prefix: bytes, server: _Connections) -> None:
        self._stream, self._prefix, self._server = stream, prefix, server
        self._active = trio.current_time()  #: when bytes last went either way

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._active = trio.current_time()
        await self._stream.send_all(data)
        self._active = trio.current_time()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            await trio.lowlevel.checkpoint()
            return data
        reads = self._server.reads
        while not self._server.stopping:
            with trio.CancelScope(deadline=self._active + IDLE_READ_TIMEOUT) as waiting:
                reads.add(waiting)
                try:
                    received = await self._stream.receive_some(max_bytes)
                    self._active = trio.current_time()
                    return received
                finally:
                    reads.discard(waiting)
            if trio.current_time() >= self._active + IDLE_READ_TIMEOUT:
                break  # nothing either way for that long (a write since then moved the deadline)
        raise trio.ClosedResourceError("idle, or the server is stopping")  # hypercorn closes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


async def _read_head(stream: trio.abc.Stream, scope: trio.CancelScope) -> bytes:
    """The request head, or as much as shows it is not one the direct path answers (or as much
    as came before ``scope`` was cancelled: hypercorn then deals with the connection)."""
    buffer = bytearray()
    with scope:
        while b"\r\n\r\n" not in buffer and len(buffer) < HEAD_LIMIT:
            seen = min(len(buffer), len(CLAIMED_PREFIX))
            if buffer[:seen] != CLAIMED_PREFIX[:seen]:
                break
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                break
            buffer += data
    return bytes(buffer)


def _parse_head(head: bytes) -> h11.Request | None:
    """A complete GET head with no body and nothing after it, else None."""
    if not head.startswith(CLAIMED_PREFIX) or b"\r\n\r\n" not in head:
        return None
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
    conn.receive_data(head)
    try:
        request, end = conn.next_event(), conn.next_event()
    except h11.RemoteProtocolError:
        return None  # hypercorn answers it (400)
    if not isinstance(request, h11.Request) or not isinstance(end, h11.EndOfMessage):
        return None
    return None if conn.trailing_data[0] else request


def _peer(stream: trio.abc.Stream) -> str | None:
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    try:
        sock: Any = getattr(transport, "socket", None)
        return str(sock.getpeername()[0])
    except (OSError, AttributeError, IndexError):
        return None


class _Connections:
    """Each accepted connection: the direct path if it claims the first request, then
    hypercorn's ``TCPServer`` for the rest of the connection."""

    def __init__(
        self, app: Any, config: hypercorn.config.Config, context: Any, state: Any, direct: Any
    ) -> None:
        self._app, self._config, self._context, self._state = app, config, context, state
        self._direct = direct
        self._waiting: set[trio.CancelScope] = set()  # connections whose request head is due
        self.reads: set[trio.CancelScope] = set()  # hypercorn's connections waiting for bytes
        self.stopping = False

    def stop_waiting(self) -> None:
        """Shutting down: connections waiting for a request (ours or hypercorn's) end now;
        a request already received is still answered."""
        self.stopping = True
        for scope in (*self._waiting, *self.reads):
            scope.cancel()

    async def handle(self, stream: trio.abc.Stream) -> None:
        if isinstance(stream, trio.SSLStream):
            try:
                with trio.fail_after(self._config.ssl_handshake_timeout):
                    await stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError):
                await trio.aclose_forcefully(stream)
                return
            if stream.selected_alpn_protocol() == "h2":
                await self._hypercorn(stream, b"")
                return
        waiting = trio.CancelScope(deadline=trio.current_time() + HEAD_TIMEOUT)
        self._waiting.add(waiting)
        try:
            head = await _read_head(stream, waiting)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await trio.aclose_forcefully(stream)
            return
        finally:
            self._waiting.discard(waiting)
        request = _parse_head(head)
        claimed = EventsRequest.parse(request, _peer(stream)) if request is not None else None
        if claimed is not None:
            spare = bytearray()
            try:
                reusable = await self._direct.respond(stream, claimed, spare)
            except Exception:  # one connection's failure (e.g. out of file descriptors) must
                log.exception("event stream %s failed", claimed.path)  # not stop the server
                reusable = False
            if not reusable:
                await trio.aclose_forcefully(stream)
                return
            head = bytes(spare)
        await self._hypercorn(stream, head)

    async def _hypercorn(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        if self.stopping and not prefix:  # nothing asked of a server that is going away
            await trio.aclose_forcefully(stream)
            return
        prefixed: Any = _Prefixed(stream, prefix, self)
        await TCPServer(self._app, self._config, self._context, self._state, prefixed).run()


async def serve(
    app: Any,
    config: hypercorn.config.Config,
    direct: DirectEvents,
    *,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``hypercorn.trio.serve(app, config, shutdown_trigger=...)`` with the direct path in
    front: the same listeners, TLS, lifespan, graceful shutdown and ``started`` value."""
    wrapped = wrap_app(app, config.wsgi_max_body_size, None)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            listeners, binds = _listeners(config)
            state = ConnectionState(lifespan_state.copy())
            connections = _Connections(wrapped, config, context, state, direct)
            task_status.started(binds)
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(
                        partial(
                            trio.serve_listeners,
                            connections.handle,
                            listeners,
                            handler_nursery=server_nursery,
                        )
                    )
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, others = error.split((ShutdownError, KeyboardInterrupt))
                if others is not None:
                    raise others from None
            finally:
                await context.terminated.set()
                connections.stop_waiting()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


def _listeners(config: hypercorn.config.Config) -> tuple[list[Any], list[str]]:
    sockets = config.create_sockets()
    listeners: list[Any] = []
    binds: list[str] = []
    ssl_context = config.create_ssl_context()
    for sock in sockets.secure_sockets:
        assert ssl_context is not None  # secure sockets exist only with a certificate
        sock.listen(config.backlog)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        listeners.append(trio.SSLListener(listener, ssl_context, https_compatible=True))
        binds.append(f"https://{repr_socket_addr(sock.family, sock.getsockname())}")
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
    return listeners, binds
