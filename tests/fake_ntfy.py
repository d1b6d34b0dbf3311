"""A minimal, faithful ntfy server on loopback (the tests cannot reach ntfy.sh): the part of ntfy's
HTTP API that the rendezvous driver (``sidecode_trio/rtc/ntfy.py``) uses, as documented at
docs.ntfy.sh ("Publishing", "Subscribe via API") and as ntfy's ``server/server.go`` does it:

* ``POST|PUT /<topic>``: the body is the message if it is valid UTF-8 of at most
  ``message_limit`` bytes (4,096 by default); a longer or binary body would be an attachment,
  which a server without an attachment cache refuses: ``400 {"code": 40014, ...}``. The reply is
  the stored message as JSON. Topic names are ``[-_A-Za-z0-9]{1,64}``, else ``400`` (40009).
* ``GET /<t1>,<t2>,.../json[?since=all|none|<id>|<unix time>][&poll=1]``: newline-delimited JSON,
  first ``{"event": "open", "topic": "t1,t2"}``, then the cached messages ``since`` asks for
  (ntfy's default is none), then every new message on those topics, and a ``keepalive`` every
  ``keepalive`` seconds. ``poll=1`` sends the cached messages (``since`` defaulting to all) and
  ends.

With ``tokens`` or ``users`` given, it is a server with ``auth-default-access: deny-all`` whose
users have read-write access: every request needs ``Authorization: Bearer <token>``, or HTTP basic
with a user's password or with an empty user and a token as the password (as ntfy's
``server/server.go`` ``maybeAuthenticate`` takes them). None is ``403 {"code": 40301,
"error": "forbidden"}``; credentials it does not know are ``401 {"code": 40101, "error":
"unauthorized"}``.

Messages are cached in memory for the server's life (ntfy: 12 h). Everything else ntfy does
(per-topic access lists, rate limits, attachments, SSE/WebSocket, priorities, titles) is not here.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import secrets
import string
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import trio

TOPIC = re.compile(r"^[-_A-Za-z0-9]{1,64}$")
ID_CHARS = string.ascii_letters + string.digits


def _id() -> str:
    return "".join(secrets.choice(ID_CHARS) for _ in range(12))


@attrs.define
class _Subscriber:
    topics: frozenset[str]
    send: trio.MemorySendChannel[dict[str, Any]]


class FakeNtfy:
    """The server; :func:`fake_ntfy` runs it. ``published`` is every message stored, in order."""

    def __init__(
        self,
        message_limit: int = 4096,
        keepalive: float = 45.0,
        tokens: Iterable[str] = (),
        users: dict[str, str] | None = None,
    ) -> None:
        self.message_limit, self.keepalive = message_limit, keepalive
        self.tokens = set(tokens)  #: access tokens it takes (any: deny-all for anyone else)
        self.users = dict(users or {})  #: user -> password it takes
        self.unauthorized = 0  #: requests refused for want of (good) credentials
        self.targets: list[str] = []  #: every request's target (path and query), in order
        self.published: list[dict[str, Any]] = []
        self.refused: list[tuple[int, str]] = []  #: (status, reason) of refused publications
        self.streams_opened = 0
        self.headers_seen: list[dict[str, str]] = []  #: each publication's headers
        self._subscribers: list[_Subscriber] = []
        self.port = 0
        self.refuse_publishing = False  #: answer every publication 429 (rate-limited, as ntfy)
        self.refuse_subscribing = False  #: answer every subscription 429 (rate-limited)
        self.refuse_topics: set[str] = set()  #: answer publications to these topics 429
        #: raw bytes each new stream sends right after its "open" event (a hostile server's junk)
        self.junk: list[bytes] = []
        #: acknowledge publications with a body that never ends (a hostile server)
        self.endless_replies = False

    @property
    def url(self) -> str:
        return f"ntfy+http://127.0.0.1:{self.port}"

    def subscribers(self) -> int:
        return len(self._subscribers)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    # --- HTTP ----------------------------------------------------------------------------------

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                request, body = await self._request(conn, stream)
                if request is None:
                    return
                streaming = await self._handle(conn, stream, request, body)
                if streaming or conn.our_state is h11.MUST_CLOSE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return

    async def _request(
        self, conn: h11.Connection, stream: trio.SocketStream
    ) -> tuple[h11.Request | None, bytes]:
        request, body = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None, b""
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return request, body
            else:  # ConnectionClosed, PAUSED
                return None, b""

    async def _send_json(
        self, conn: h11.Connection, stream: trio.SocketStream, status: int, body: Any
    ) -> None:
        data = (json.dumps(body) + "\n").encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        out = conn.send(h11.Response(status_code=status, headers=headers)) or b""
        out += conn.send(h11.Data(data=data)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(out)

    async def _handle(
        self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request, body: bytes
    ) -> bool:
        """Answer one request; True when it was a stream (the connection is done after it)."""
        self.targets.append(request.target.decode())
        target = urllib.parse.urlsplit(request.target.decode())
        params = dict(urllib.parse.parse_qsl(target.query))
        parts = target.path.split("/")
        method = request.method.decode()
        refused = self._access(request.headers)
        if refused is not None:
            self.unauthorized += 1
            await self._send_json(conn, stream, refused[1]["http"], refused[1])
            return False
        if method in ("POST", "PUT") and len(parts) == 2:
            status, reply = self._publish(parts[1], body, request.headers)
            if self.endless_replies:
                head = h11.Response(status_code=status, headers=[("Content-Type", "text/plain")])
                await stream.send_all(conn.send(head) or b"")
                try:
                    while True:  # until the client hangs up
                        await stream.send_all(conn.send(h11.Data(data=b"x" * 65536)) or b"")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return True  # the connection is done
            await self._send_json(conn, stream, status, reply)
            return False
        if method == "GET" and len(parts) == 3 and parts[2] == "json":
            names = [name for name in parts[1].split(",") if name]
            if self.refuse_subscribing:
                error = _error(42905, 429, "limit reached: too many active subscriptions")
                await self._send_json(conn, stream, 429, error)
                return False
            if names and all(TOPIC.match(name) for name in names):
                await self._stream(conn, stream, names, params)
                return True
            await self._send_json(conn, stream, 400, _error(40009, 400, "invalid topic"))
            return False
        await self._send_json(conn, stream, 404, _error(40401, 404, "page not found"))
        return False

    def _access(self, headers: Iterable[tuple[bytes, bytes]]) -> tuple[int, dict[str, Any]] | None:
        """None when the request may go on, else the refusal (a server that lets anyone in
        takes every request, credentials or not, as ntfy's default ``read-write`` does)."""
        if not self.tokens and not self.users:
            return None
        given = {k.decode().lower(): v.decode(errors="replace") for k, v in headers}
        header = given.get("authorization")
        if header is None:
            return 403, _error(40301, 403, "forbidden")
        kind, _, value = header.partition(" ")
        ok = False
        if kind.lower() == "bearer":
            ok = any(hmac.compare_digest(value, token) for token in self.tokens)
        elif kind.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value).decode().partition(":")
            except ValueError:
                user, password = "", ""
            if user == "":
                ok = any(hmac.compare_digest(password, token) for token in self.tokens)
            else:
                wanted = self.users.get(user)
                ok = wanted is not None and hmac.compare_digest(password, wanted)
        return None if ok else (401, _error(40101, 401, "unauthorized"))

    # --- publish and subscribe -----------------------------------------------------------------

    def _publish(
        self, topic: str, body: bytes, headers: Iterable[tuple[bytes, bytes]]
    ) -> tuple[int, dict[str, Any]]:
        if not TOPIC.match(topic):
            return 400, _error(40009, 400, "invalid request: topic invalid")
        if self.refuse_publishing or topic in self.refuse_topics:
            self.refused.append((429, "limit reached: too many requests"))
            return 429, _error(42901, 429, "limit reached: too many requests")
        try:
            text = body.decode()
        except UnicodeDecodeError:
            text = None
        if text is None or len(body) > self.message_limit:
            # ntfy: not a message, so an attachment; refused without an attachment cache
            self.refused.append((400, "attachments not allowed"))
            return 400, _error(40014, 400, "invalid request: attachments not allowed")
        self.headers_seen.append({k.decode().lower(): v.decode() for k, v in headers})
        message = {
            "id": _id(),
            "time": int(time.time()),
            "expires": int(time.time()) + 43200,
            "event": "message",
            "topic": topic,
            "message": text,
        }
        self.published.append(message)
        for subscriber in list(self._subscribers):
            if topic in subscriber.topics:
                try:
                    subscriber.send.send_nowait(message)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # ntfy drops a subscriber that cannot keep up
        return 200, message

    def _cached(self, names: list[str], since: str | None, poll: bool) -> list[dict[str, Any]]:
        wanted = [m for m in self.published if m["topic"] in names]
        if since is None:
            since = "all" if poll else "none"
        if since == "none":
            return []
        if since == "all":
            return wanted
        ids = [m["id"] for m in self.published]
        if since in ids:  # a message id: the ones stored after it
            after = ids.index(since)
            return [m for m in self.published[after + 1 :] if m["topic"] in names]
        if since.isdigit():
            return [m for m in wanted if m["time"] >= int(since)]
        return []

    async def _stream(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        names: list[str],
        params: dict[str, str],
    ) -> None:
        headers = [("Content-Type", "application/x-ndjson; charset=utf-8")]
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)) or b"")

        async def line(message: dict[str, Any]) -> None:
            data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
            await stream.send_all(conn.send(h11.Data(data=data)) or b"")

        def event(kind: str) -> dict[str, Any]:
            return {"id": _id(), "time": int(time.time()), "event": kind, "topic": ",".join(names)}

        poll = params.get("poll") in ("1", "yes", "true")
        send, receive = trio.open_memory_channel[dict[str, Any]](1000)
        subscriber = _Subscriber(frozenset(names), send)
        if not poll:
            self._subscribers.append(subscriber)  # before "open", as ntfy subscribes first
        self.streams_opened += 1

        async def pump() -> None:
            if not poll:
                await line(event("open"))
                for junk in self.junk:
                    await stream.send_all(conn.send(h11.Data(data=junk)) or b"")
            for cached in self._cached(names, params.get("since"), poll):
                await line(cached)
            if poll:
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                return
            while True:
                message: dict[str, Any] | None = None
                with trio.move_on_after(self.keepalive):
                    try:
                        message = await receive.receive()
                    except trio.EndOfChannel:  # drop_streams: the server ends the stream
                        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                        return
                await line(message if message is not None else event("keepalive"))

        async def closed_by_client() -> None:
            while await stream.receive_some(4096):
                pass

        try:
            async with trio.open_nursery() as nursery:
                for task in (pump, closed_by_client):  # either ending ends the stream
                    nursery.start_soon(_until_done, task, nursery.cancel_scope)
        finally:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

    async def drop_streams(self) -> None:
        """End every open stream, as a restarted server or a dropped connection would."""
        for subscriber in list(self._subscribers):
            self._subscribers.remove(subscriber)
            await subscriber.send.aclose()


async def _until_done(task: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
    """Run ``task``; a broken or closed connection ends it quietly. Then cancel ``scope``."""
    try:
        await task()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        scope.cancel()


def _error(code: int, http: int, message: str) -> dict[str, Any]:
    return {"code": code, "http": http, "error": message, "link": "https://ntfy.sh/docs/"}


@asynccontextmanager
async def fake_ntfy(
    message_limit: int = 4096,
    keepalive: float = 45.0,
    tokens: Iterable[str] = (),
    users: dict[str, str] | None = None,
) -> AsyncIterator[FakeNtfy]:
    """The server on 127.0.0.1 (a free port) while the body runs."""
    server = FakeNtfy(message_limit, keepalive, tokens, users)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server
        nursery.cancel_scope.cancel()
