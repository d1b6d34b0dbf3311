"""One control session: the framed protocol driven against the operations (Trio), whatever
carries it (a WebTransport session in ``quic/``, a WebRTC DataChannel in ``rtc/``).

The transport feeds the control stream's bytes to :meth:`Link.data_received` (synchronously);
what the protocol asks for is done at once when it is synchronous (authenticate, subscribe,
answer a protocol error) and in the link's nursery otherwise: one task per request in flight
(at most ``max_calls``), one pump per subscription, and one writer. Everything outbound goes
through the :class:`~.outbox.Outbox` and moves to the transport only while it holds less than
``high_water`` unacknowledged (QUIC) or queued (a DataChannel's ``bufferedAmount``) bytes (at
once when there is room, else by the writer once room is made), so a client that stops reading
fills its outbox, overflows it, and is dropped with ``lagging``; it resumes exactly after
reconnecting, like an SSE client.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import aclosing
from typing import Final, Protocol

import attrs
import trio

from ..errors import BadRequest, NotFound, SidecodeError
from ..eventlog.core import Position, StoredEvent
from ..eventlog.log import KEEPALIVE
from ..feed import End, Item, SessionChanged, SessionFeed, SessionListFeed, parse_events_path
from ..ops import Operations
from ..security.auth import Principal
from ..security.guard import Guard
from ..security.identity import b64
from ..security.routes import OPEN_BODY_LIMIT
from . import frames as fr
from .control import (
    Action,
    Authenticate,
    Call,
    Cancel,
    Close,
    ControlProtocol,
    Open,
    Phase,
    Send,
)
from .frames import CloseCode
from .outbox import ControlWrite, Limits, Outbox, Overflow, StreamWrite
from .routes import Requests

log = logging.getLogger(__name__)

MAX_DATAGRAM_ECHO: Final = 256  # bytes of a ping datagram echoed back


@attrs.frozen
class LinkSettings:
    max_frame: int = 1024 * 1024  #: longest frame a client may send (the HTTP body limit)
    client_queue: int = 4096  #: events queued per subscription in the log before a drop
    outbox: Limits = Limits()
    high_water: int = 1024 * 1024  #: unacknowledged bytes per connection before writes wait
    max_calls: int = 16  #: requests in flight per session
    max_subscriptions: int = 64
    linger: float = 2.0  #: seconds a closing session gets to deliver its last frames
    heartbeat: float = 15.0  #: advertised: ping (datagram) at least this often when idle


def link_settings(max_body: int, client_queue: int, keepalive: float) -> LinkSettings:
    """A session's limits from the daemon's (``config.max_body``, ``client_queue``,
    ``sse_keepalive``), the same for every transport."""
    return LinkSettings(
        max_frame=max_body,
        client_queue=client_queue,
        outbox=Limits(max_frames=client_queue),
        heartbeat=keepalive,
    )


class Transport(Protocol):
    """What a link needs from what carries it (``quic/endpoint._Connection``,
    ``rtc/link.DataChannelTransport``). ``buffered`` is the back-pressure signal: bytes written
    but not yet acknowledged (QUIC) or still queued to send (a DataChannel's bufferedAmount).
    A transport without streams of its own is given ``inline_limit`` above any payload, so
    ``open_stream``/``write_stream`` are never called on it."""

    def buffered(self) -> int: ...
    def write_control(self, data: bytes) -> None: ...
    def write_live(self, data: bytes) -> None:
        """Like ``write_control``, and on the wire before returning when the transport can:
        a live event, written from the log's publisher."""

    def open_stream(self) -> int: ...
    def write_stream(self, stream_id: int, data: bytes, end: bool) -> None: ...
    def send_datagram(self, data: bytes) -> None: ...
    def close_session(self, code: CloseCode, message: str) -> None: ...
    def close_now(self, code: CloseCode, message: str) -> None: ...


class Link:
    def __init__(
        self,
        transport: Transport,
        requests: Requests,
        ops: Operations,
        guard: Guard,
        settings: LinkSettings,
        *,
        nonce: bytes,
        cert_sha256: bytes,
        version: str,
        remote: str | None,
        kind: str = "WebTransport",
        peer_key: bytes | None = None,
    ) -> None:
        """``kind`` names the transport in the audit log; ``peer_key`` is the device key the
        transport already pinned (WebRTC: the signed DTLS fingerprint), which the device that
        authenticates must own."""
        self._transport = transport
        self._requests = requests
        self._ops = ops
        self._guard = guard
        self._settings = settings
        self._nonce, self._cert, self._remote = nonce, cert_sha256, remote
        self._kind, self._peer_key = kind, peer_key
        welcome = fr.welcome(
            version,
            b64(nonce),
            cert_sha256.hex(),
            settings.max_frame,
            settings.outbox.inline_limit,
            settings.heartbeat,
        )
        self.protocol = ControlProtocol(
            welcome=welcome,
            max_frame=settings.max_frame,
            now=trio.current_time(),
            open_routes=guard.open_routes,
            open_frame=OPEN_BODY_LIMIT + 1024,  # an open route's body and the frame around it
        )
        self.outbox = Outbox(settings.outbox)
        self._calls_send, self._calls = trio.open_memory_channel[Call](settings.max_calls)
        self._call_slots = trio.Semaphore(settings.max_calls)
        self._subs: dict[int, tuple[int, trio.CancelScope, SessionFeed | SessionListFeed]] = {}
        self._next_lane = 1
        self._streams: dict[int, int] = {}  # outbox ref -> QUIC stream id
        self._kick = trio.Event()
        self._closing: tuple[CloseCode, str] | None = None
        self._forget_device: Callable[[], None] = lambda: None
        self._lists: set[int] = set()  # subscriptions to the session list
        self._stopping = False
        self._nursery: trio.Nursery | None = None
        self.close_code: CloseCode | None = None
        self.peak_buffered = 0

    def __repr__(self) -> str:
        return f"<Link {self.protocol!r} subs={len(self._subs)} {self.outbox.statistics()}>"

    # -- the link's tasks --------------------------------------------------------------------

    def start(self, nursery: trio.Nursery) -> None:
        """Run in the connection's nursery (set here, synchronously: the client's first frames
        may arrive in the same packet as its CONNECT, before any task of ours has run)."""
        self._nursery = nursery
        nursery.start_soon(self._run)

    async def _run(self) -> None:
        """Until the connection is gone (its nursery is cancelled) or the link closed."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                nursery.start_soon(self._run_calls)
                nursery.start_soon(self._handshake_timer)
        finally:
            self._forget_device()
            self._calls_send.close()

    async def _handshake_timer(self) -> None:
        deadline = self.protocol.timer()
        if deadline is None:
            return
        await trio.sleep_until(deadline)
        self._act(self.protocol.handle_timer(trio.current_time()))

    async def _run_calls(self) -> None:
        async with trio.open_nursery() as nursery:
            async for call in self._calls:
                await self._call_slots.acquire()
                nursery.start_soon(self._call, call)

    async def _call(self, call: Call) -> None:
        try:
            request = call.request
            who = call.principal and self._current(call.principal)
            if call.principal is not None and who is None:
                return  # revoked meanwhile: the link is closing
            status, body = await self._requests(
                who, request.method, request.path, request.body, self._remote
            )
            self._push(0, fr.reply_json(request.id, status, body))
        finally:
            self._call_slots.release()

    async def _writer(self) -> None:
        """Move the outbox to the QUIC streams while the connection has room; then close."""
        deadline = math.inf
        while True:
            self._kick = trio.Event()
            if self.outbox.pending and self._transport.buffered() < self._settings.high_water:
                self._write_now()
                continue
            if self._closing is not None:
                if deadline == math.inf:
                    deadline = trio.current_time() + self._settings.linger
                if not self.outbox.pending or trio.current_time() >= deadline:
                    self._transport.close_session(*self._closing)
                    return
            with trio.move_on_at(deadline):
                await self._kick.wait()

    def _write(self, writes: list[ControlWrite | StreamWrite]) -> None:
        for write in writes:
            if isinstance(write, ControlWrite):
                self._transport.write_control(write.data)
                continue
            if write.first:
                self._streams[write.ref] = self._transport.open_stream()
            stream_id = self._streams[write.ref]
            self._transport.write_stream(stream_id, write.data, write.last)
            if write.last:
                del self._streams[write.ref]

    # -- from the connection (synchronous) ---------------------------------------------------

    def live(self, lane: int, payload: bytes) -> None:
        """A live event from the log's publisher (:class:`_OutboxDirect`). While nothing waits
        in the outbox and the connection holds less than ``high_water`` unacknowledged bytes,
        its frame goes to the transport and the wire in this call: the order and the bounds
        are those of the outbox, which it skips only when it would have written the frame at
        once. Otherwise (and while closing) it is queued like any frame."""
        if self.close_code is None:
            buffered = self._transport.buffered()
            self.peak_buffered = max(self.peak_buffered, buffered)
            if buffered < self._settings.high_water:
                data = self.outbox.bypass(payload)
                if data is not None:
                    self._transport.write_live(data)
                    return
        self._push(lane, payload)

    def kick(self) -> None:
        """Acknowledgements may have made room: wake the writer if it waits for any (frames
        queued, or a close waiting for them to drain), not on every acknowledgement."""
        if self.outbox.pending or self._closing is not None:
            self._kick.set()

    def data_received(self, data: bytes, ended: bool) -> None:
        self._act(self.protocol.receive(data, ended))

    def datagram_received(self, data: bytes) -> None:
        if self.protocol.phase is Phase.READY and len(data) <= MAX_DATAGRAM_ECHO:
            self._transport.send_datagram(data)  # a ping: echoed as is, for round-trip times

    def peer_closed(self) -> None:
        self.protocol.close(CloseCode.NORMAL, "closed by the client")
        self.close_code = CloseCode.NORMAL
        self._transport.close_now(CloseCode.NORMAL, "closed by the client")

    def close(self, code: CloseCode, message: str) -> None:
        """The daemon ends the session (revoked, stopping): last frame, then the close."""
        self._act(self.protocol.close(code, message))

    def end(self, message: str) -> None:
        """The transport ended the link under the protocol (a dead keep-alive): read no more,
        send nothing more."""
        self.protocol.close(CloseCode.NORMAL, message)
        self.close_code = CloseCode.NORMAL
        self._cancel_all()

    def stop(self) -> None:
        """The daemon is stopping: end the session once its event streams have ended (the
        log ends them after the sessions stopped, so clients see how their turns ended)."""
        self._stopping = True
        for sub in list(self._lists):
            self._unsubscribe(sub, "stopping")
        if not self._subs:
            self.close(CloseCode.GOING_AWAY, "the daemon is stopping")

    # -- protocol actions --------------------------------------------------------------------

    def _act(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._push(0, action.payload)
            elif isinstance(action, Close):
                self._close(action.code, action.message)
            elif isinstance(action, Authenticate):
                self._act(self._authenticate(action.auth))
            elif isinstance(action, Call):
                try:
                    self._calls_send.send_nowait(action)
                except trio.WouldBlock:
                    self._act(self.protocol.close(CloseCode.OVERLOADED, "too many requests"))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the link is ending
            elif isinstance(action, Open):
                self._subscribe(action.subscribe, action.principal)
            elif isinstance(action, Cancel):
                if action.sub in self._subs:
                    self._unsubscribe(action.sub, "unsubscribed")
                else:  # said, not counted as a bad frame: it may have ended as it was sent
                    text = f"no subscription {action.sub} on this session"
                    self._push(0, fr.error("unknown_subscription", text[:80], action.sub))

    def _push(self, lane: int, payload: bytes) -> None:
        if self.close_code is CloseCode.LAGGING:
            return
        try:
            self.outbox.push(lane, payload)
        except Overflow as exc:
            self._lagging(str(exc))
            return
        if self._closing is None:
            self._write_now()  # a live event goes out at once when there is room: no task hop
        if self.outbox.pending:
            self._kick.set()  # the writer waits for room

    def _write_now(self) -> None:
        buffered = self._transport.buffered()
        self.peak_buffered = max(self.peak_buffered, buffered)
        room = self._settings.high_water - buffered
        if room > 0:
            self._write(self.outbox.pull(room))

    def _lagging(self, why: str) -> None:
        """The client does not read: drop the connection now (it resumes exactly later)."""
        if self.close_code is CloseCode.LAGGING:
            return
        log.info("dropping a %s client that does not keep up: %s", self._kind, why)
        self.protocol.close(CloseCode.LAGGING, why)
        self.close_code = CloseCode.LAGGING
        self._cancel_all()
        self._transport.close_now(CloseCode.LAGGING, why)

    def _close(self, code: CloseCode, message: str) -> None:
        if self.close_code is not None:
            return
        self.close_code = code
        self._closing = (code, message)
        self._cancel_all()
        self._calls_send.close()
        self._kick.set()

    def _cancel_all(self) -> None:
        for sub in list(self._subs):
            _, scope, fd = self._subs.pop(sub)
            scope.cancel()
            fd.detach()  # at once (maybe inside the publisher): no more direct writes

    # -- authentication ----------------------------------------------------------------------

    def _authenticate(self, auth: fr.Auth) -> list[Action]:
        message = fr.auth_message(self._nonce, self._cert, auth.device)
        try:
            principal = self._guard.admit_signed(
                auth.device, auth.signature, message, self._remote, self._kind, self._peer_key
            )
        except SidecodeError as exc:  # Unauthorized, or RateLimited past the limit
            return self.protocol.auth_failed(exc.message)
        self._forget_device = self._guard.links.register(
            principal, lambda: self.close(CloseCode.REVOKED, "this device was revoked")
        )
        return self.protocol.authenticated(principal)

    def _current(self, principal: Principal) -> Principal | None:
        """The principal as the device store has it now; a revoked device closes the link."""
        who = self._guard.current(principal)
        if who is None:
            self.close(CloseCode.REVOKED, "this device was revoked")
        return who

    # -- subscriptions -----------------------------------------------------------------------

    def _subscribe(self, request: fr.Subscribe, principal: Principal) -> None:
        who = self._current(principal)
        if who is None:
            return
        if self._stopping:
            self._push(0, fr.error_reply(request.id, 503, "going_away", "the daemon is stopping"))
            return
        if request.id in self._subs:
            self._push(0, fr.error_reply(request.id, 409, "conflict", "this id is in use"))
            return
        if len(self._subs) >= self._settings.max_subscriptions:
            text = f"at most {self._settings.max_subscriptions} subscriptions per session"
            self._push(0, fr.error_reply(request.id, 429, "too_many_subscriptions", text))
            return
        lane, self._next_lane = self._next_lane, self._next_lane + 1
        try:
            start = self._open(request, who, lane)
        except SidecodeError as exc:
            self._push(0, fr.error_reply(request.id, exc.status, exc.code, exc.message))
            return
        scope = trio.CancelScope()
        self._subs[request.id] = (lane, scope, start.feed)
        assert self._nursery is not None
        self._nursery.start_soon(start, scope)

    def _open(self, request: fr.Subscribe, who: Principal, lane: int) -> _Pump:
        stream = parse_events_path(request.path)
        if stream is None:
            if request.path.split("?", 1)[0].strip("/").split("/")[0] != "v1":
                raise BadRequest(f"not an event stream: {request.path!r}")
            raise NotFound(f"no event stream {request.path!r}")
        queue = self._settings.client_queue
        # The link's own registration ends every subscription when the device is revoked.
        fd: SessionFeed | SessionListFeed
        if stream.session_id is None:
            fd = SessionListFeed.open(self._ops, None, who, queue)
        else:
            since = Position.parse(request.since) if request.since else None
            fd = SessionFeed.open(self._ops, None, who, stream.session_id, since, queue)
        self._push(lane, fr.reply(request.id, 200, {"subscribed": request.path}))
        if isinstance(fd, SessionListFeed):
            self._lists.add(request.id)
            for frame in fr.feed_frames(request.id, fd.catch_up()):
                self._push(lane, frame)
        else:
            frames = (f for item in fd.catch_up() for f in fr.feed_frames(request.id, item))
            first = next(frames, None)  # a snapshot goes as one frame (large: its own stream)
            if first is not None:
                self._push(lane, first)
                self.outbox.push_lazy(lane, frames)
        return _Pump(self, request.id, lane, fd)

    def _unsubscribe(self, sub: int, reason: str) -> None:
        entry = self._subs.pop(sub, None)
        self._lists.discard(sub)
        if entry is None:
            return
        lane, scope, fd = entry
        scope.cancel()
        fd.detach()  # at once: the publisher must not write to this lane any more
        self.outbox.clear(lane)
        self._push(0, fr.ended(sub, reason))

    def _pumped(self, sub: int, lane: int, lagged: bool) -> None:
        """A subscription's feed ended on the daemon's side."""
        if lagged:
            self._lagging("a subscription's queue in the event log filled up")
        elif sub in self._subs:
            del self._subs[sub]
            self._lists.discard(sub)
            self._push(lane, fr.ended(sub, "closed"))
            if self._stopping and not self._subs:
                self.close(CloseCode.GOING_AWAY, "the daemon is stopping")


@attrs.frozen
class _Pump:
    """Moves one subscription's live feed into the outbox (never waits on the client). A
    session's events mostly skip it: the publisher hands them to :class:`_OutboxDirect` while
    the pump waits, and they go onto the wire at once when there is room."""

    link: Link
    sub: int
    lane: int
    feed: SessionFeed | SessionListFeed

    async def __call__(self, scope: trio.CancelScope) -> None:
        try:
            with scope:
                end: End | None = None
                if isinstance(self.feed, SessionFeed):
                    live = self.feed.live(_OutboxDirect(self.link, self.sub, self.lane))
                    async with aclosing(live):
                        async for item in live:
                            end = self._push(item)
                else:
                    changes = self.feed.live()
                    async with aclosing(changes):
                        async for each in changes:
                            end = self._push(each)
                self.link._pumped(self.sub, self.lane, end is not None and end.reason == "lagging")
        finally:
            self.feed.close()

    def _push(self, item: Item | list[SessionChanged]) -> End | None:
        for frame in fr.feed_frames(self.sub, item):
            self.link._push(self.lane, frame)
        return item if isinstance(item, End) else None


@attrs.frozen
class _OutboxDirect:
    """The feed's direct path (:class:`~..feed.Direct`) for one subscription: while the link
    has nothing waiting, the publisher hands each live event to :meth:`Link.live`, which puts
    it on the wire at once when the connection has room (else in the outbox). While something
    waits, the event is queued in the log as without it, so a client that does not read is
    dropped by the same bound."""

    link: Link
    sub: int
    lane: int

    def write(self, event: StoredEvent) -> bool:
        if self.link.outbox.pending:
            return False  # not caught up: queued in the log, whose bound drops a lagging client
        if event is not KEEPALIVE:  # the session has its own heartbeat
            self.link.live(self.lane, fr.event(self.sub, event))
        return True

    async def flush(self) -> None:
        pass
