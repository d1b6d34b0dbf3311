"""A fake Remote Control API (and OAuth token endpoint) on 127.0.0.1, for the bridge's tests.

Shapes follow ``reference/anchors-seeds.md`` §6.1/§6.4: ``GET /v1/sessions`` → ``{data: [...]}``;
``GET /v1/sessions/{id}/events`` pages ``{data, has_more, first_id, last_id}`` (``after_id``
asks for the next page); ``POST /v1/sessions/{id}/events`` takes ``{events: [...]}``; the live
stream is ``/v1/sessions/ws/{id}/subscribe?organization_uuid=…`` (frames: one event or an
array); ``POST /v1/oauth/token`` refreshes. Every call checks the bearer token and the
``anthropic-version``/``anthropic-beta`` headers the reference prescribes.

A posted user message is echoed on the stream and answered (``assistant`` then ``result``), like
a live session would. :class:`FreezableProxy` sits in front to make a connection go silent
without closing (a dead NAT mapping): the only way to exercise stall detection for real.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import attrs
import hypercorn.config
import hypercorn.trio
import trio
from quart import Response, request, websocket
from quart_trio import QuartTrio

VERSION = "2023-06-01"
BETA = "ccr-byoc-2025-07-29"


@attrs.define
class FakeSession:
    id: str
    title: str
    status: str = "idle"
    model: str = "claude-sonnet-4-5"
    events: list[dict[str, Any]] = attrs.field(factory=list)
    streams: set[trio.MemorySendChannel[str | None]] = attrs.field(factory=set)


def user(uuid: str, text: str) -> dict[str, Any]:
    return {"uuid": uuid, "type": "user", "message": {"role": "user", "content": text}}


def assistant(uuid: str, text: str, message_id: str | None = None) -> dict[str, Any]:
    return {
        "uuid": uuid,
        "type": "assistant",
        "message": {
            "id": message_id or f"msg-{uuid}",
            "role": "assistant",
            "content": [{"type": "text", "text": text}],
        },
    }


def result(uuid: str, text: str = "done") -> dict[str, Any]:
    return {"uuid": uuid, "type": "result", "subtype": "success", "result": text}


class FakeRemote:
    def __init__(self, *, page_size: int = 2) -> None:
        self.page_size = page_size
        self.sessions: dict[str, FakeSession] = {}
        self.org = "org-fake"
        self.access_tokens = {"access-1"}
        self.refresh_token = "refresh-1"
        self.refuse_refresh = False
        self.expires_in = 3600
        self.reply = True  #: answer posted user messages (assistant + result)
        self.resend_on_connect = 0  #: re-send this many recent events to a new subscriber
        self.posted: list[dict[str, Any]] = []
        self.refreshes: list[dict[str, Any]] = []
        self.history_pages = 0
        self.ws_connects = 0
        self.rejected = 0
        self.bad_headers: list[str] = []
        self._counter = itertools.count(2)
        self._changed = trio.Event()
        self.port = 0
        self.app = self._make_app()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- scripting ------------------------------------------------------------------------------

    def add_session(
        self, session_id: str, title: str, events: list[dict[str, Any]] | None = None
    ) -> FakeSession:
        session = FakeSession(session_id, title, events=list(events or []))
        self.sessions[session_id] = session
        return session

    def push(self, session_id: str, *events: dict[str, Any], live_only: bool = False) -> None:
        """New events: into the history (unless ``live_only``) and onto every stream."""
        session = self.sessions[session_id]
        if not live_only:
            session.events.extend(events)
        frame = json.dumps(events[0] if len(events) == 1 else list(events))
        self._send(session, frame)

    def push_raw(self, session_id: str, text: str) -> None:
        self._send(self.sessions[session_id], text)

    def drop(self, session_id: str) -> None:
        """Close every live stream of the session (the client must reconnect)."""
        self._send(self.sessions[session_id], None)

    def new_access_token(self) -> str:
        token = f"access-{next(self._counter)}"
        self.access_tokens.add(token)
        return token

    def _send(self, session: FakeSession, frame: str | None) -> None:
        for stream in list(session.streams):
            try:
                stream.send_nowait(frame)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                session.streams.discard(stream)

    def _changed_now(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    def streams(self, session_id: str) -> int:
        return len(self.sessions[session_id].streams)

    # -- checks ---------------------------------------------------------------------------------

    def _authorized(self, headers: Any, *, org_header: bool) -> bool:
        if headers.get("anthropic-version") != VERSION or headers.get("anthropic-beta") != BETA:
            self.bad_headers.append(request.path if not org_header else "rest")
            return False
        if org_header and headers.get("x-organization-uuid") not in (None, self.org):
            return False
        auth = headers.get("Authorization", "")
        return auth.startswith("Bearer ") and auth[7:] in self.access_tokens

    def _denied(self) -> Response:
        self.rejected += 1
        self._changed_now()
        body = {"type": "error", "error": {"type": "authentication_error"}}
        return Response(json.dumps(body), status=401, mimetype="application/json")

    # -- the app --------------------------------------------------------------------------------

    def _make_app(self) -> QuartTrio:
        app = QuartTrio(__name__)
        fake = self

        @app.get("/v1/sessions")
        async def list_sessions() -> Response:
            if not fake._authorized(request.headers, org_header=True):
                return fake._denied()
            data = [
                {
                    "id": s.id,
                    "title": s.title,
                    "session_status": s.status,
                    "session_context": {"model": s.model},
                    "environment_id": "env-1",
                    "created_at": "2026-01-01T00:00:00Z",
                    "updated_at": "2026-01-01T00:00:00Z",
                }
                for s in fake.sessions.values()
            ]
            return _json({"data": data, "has_more": False})

        @app.get("/v1/sessions/<session_id>/events")
        async def history(session_id: str) -> Response:
            if not fake._authorized(request.headers, org_header=True):
                return fake._denied()
            session = fake.sessions.get(session_id)
            if session is None:
                return _json({"error": "not found"}, 404)
            fake.history_pages += 1
            events = session.events
            start = 0
            after = request.args.get("after_id")
            if after:
                ids = [e.get("uuid") for e in events]
                start = ids.index(after) + 1 if after in ids else len(events)
            page = events[start : start + fake.page_size]
            body = {
                "data": page,
                "has_more": start + fake.page_size < len(events),
                "first_id": page[0]["uuid"] if page else None,
                "last_id": page[-1]["uuid"] if page else None,
            }
            return _json(body)

        @app.post("/v1/sessions/<session_id>/events")
        async def post_events(session_id: str) -> Response:
            if not fake._authorized(request.headers, org_header=True):
                return fake._denied()
            session = fake.sessions.get(session_id)
            if session is None:
                return _json({"error": "not found"}, 404)
            body = await request.get_json()
            for event in body["events"]:
                fake.posted.append(event)
                if event["type"] == "user":
                    fake.push(session_id, event)
                    if fake.reply:
                        n = next(fake._counter)
                        text = event["message"]["content"]
                        fake.push(session_id, assistant(f"a-{n}", f"echo: {text}"))
                        fake.push(session_id, result(f"r-{n}"))
            fake._changed_now()
            return _json({})

        @app.post("/v1/oauth/token")
        async def oauth() -> Response:
            body = await request.get_json()
            fake.refreshes.append(body)
            fake._changed_now()
            if fake.refuse_refresh or body.get("refresh_token") != fake.refresh_token:
                return _json({"error": "invalid_grant"}, 400)
            fake.refresh_token = f"refresh-{next(fake._counter)}"
            return _json(
                {
                    "access_token": fake.new_access_token(),
                    "refresh_token": fake.refresh_token,
                    "expires_in": fake.expires_in,
                    "organization": {"uuid": fake.org},
                }
            )

        @app.websocket("/v1/sessions/ws/<session_id>/subscribe")
        async def subscribe(session_id: str) -> Response | None:
            session = fake.sessions.get(session_id)
            if not fake._authorized(websocket.headers, org_header=False):
                return fake._denied()
            if session is None or websocket.args.get("organization_uuid") != fake.org:
                return _json({"error": "not found"}, 404)
            await websocket.accept()
            send, receive = trio.open_memory_channel[str | None](1000)
            session.streams.add(send)
            fake.ws_connects += 1
            fake._changed_now()
            try:
                if fake.resend_on_connect:
                    recent = session.events[-fake.resend_on_connect :]
                    await websocket.send(json.dumps(recent))
                async for frame in receive:
                    if frame is None:
                        return None  # closes the socket: the client sees a drop
                    await websocket.send(frame)
            finally:
                session.streams.discard(send)
                fake._changed_now()
            return None

        return app

    async def serve(
        self, *, task_status: trio.TaskStatus[FakeRemote] = trio.TASK_STATUS_IGNORED
    ) -> None:
        config = hypercorn.config.Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 0.1
        binds: list[str] = []

        async def started(task_status: trio.TaskStatus[list[str]]) -> None:
            await hypercorn.trio.serve(self.app, config, task_status=task_status)

        async with trio.open_nursery() as nursery:
            binds = await nursery.start(started)
            self.port = int(binds[0].rsplit(":", 1)[1])
            task_status.started(self)


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


class FreezableProxy:
    """A TCP proxy; :meth:`freeze_websockets` makes every open WebSocket through it go silent
    in both directions (nothing is forwarded, nothing is closed), as a dead network path does."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._websockets: list[list[bool]] = []  # per WebSocket connection: [frozen]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def freeze_websockets(self) -> int:
        for flag in self._websockets:
            flag[0] = True
        return len(self._websockets)

    async def serve(
        self, *, task_status: trio.TaskStatus[FreezableProxy] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        frozen = [False]
        async with client, upstream, trio.open_nursery() as nursery:
            first = await client.receive_some(65536)
            if b"/ws/" in first.split(b"\r\n", 1)[0]:
                self._websockets.append(frozen)
            await upstream.send_all(first)
            nursery.start_soon(_pump, client, upstream, frozen, nursery.cancel_scope)
            nursery.start_soon(_pump, upstream, client, frozen, nursery.cancel_scope)


async def _pump(
    source: trio.SocketStream, sink: trio.SocketStream, frozen: list[bool], done: trio.CancelScope
) -> None:
    try:
        while data := await source.receive_some(65536):
            if not frozen[0]:
                await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    done.cancel()  # one side closed: so does the other (a frozen path forwards no data only)
