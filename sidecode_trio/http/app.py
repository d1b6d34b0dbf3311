"""The HTTP/SSE v1 API: routes that decode a request, call :class:`~..ops.Operations`, and encode.

Every route but ``GET /v1/info`` needs ``Authorization: Bearer <token>`` (the local access token,
0600 in the state directory, compared by hash in constant time), and every request must name the
bound address in ``Host`` (a guard against DNS rebinding). Errors are always
``{"error": {"code", "message"}}`` with the matching status.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import attrs
import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..errors import BadRequest, SidecodeError, Unauthorized
from ..eventlog.core import Position
from ..eventlog.log import SnapshotRead
from ..ops import Operations
from ..wire import converter as wire
from ..wire import requests as rq
from . import sse

log = logging.getLogger(__name__)

T = TypeVar("T")


@attrs.frozen
class HTTPSettings:
    token_hash: bytes  #: SHA-256 of the local access token
    keepalive: float = 15.0
    client_queue: int = 4096
    max_body: int = 1024 * 1024


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(wire.dumps(body), status=status, mimetype="application/json", headers=headers)


def _error(status: int, code: str, message: str) -> Response:
    return _json(status, rq.ErrorReply(rq.ErrorDetail(code, message)))


async def _body(cls: type[T]) -> T:
    raw = await request.get_data(cache=False, as_text=False)
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    try:
        return wire.structure(data, cls)
    except ValueError as exc:
        raise BadRequest(str(exc), code="invalid_field") from None


def _since() -> Position | None:
    """The client's position: ``Last-Event-ID`` wins over the ``since`` query parameter."""
    raw = request.headers.get("Last-Event-ID") or request.args.get("since")
    return Position.parse(raw) if raw else None


def _sse_response(stream: AsyncIterator[bytes]) -> Response:
    response = Response(
        stream,
        status=200,
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    response.timeout = None  # an event stream lives as long as the client wants
    return response


def create_app(
    ops: Operations, settings: HTTPSettings, allowed_hosts: Callable[[], set[str]]
) -> QuartTrio:
    app = QuartTrio("sidecode_trio")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body
    app.config["BODY_TIMEOUT"] = 30

    @app.before_request
    async def guard() -> Response | None:
        host = (request.headers.get("Host") or "").lower()
        if host not in allowed_hosts():
            return _error(403, "bad_host", f"Host {host!r} is not this daemon's address")
        if request.path == "/v1/info":
            return None
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        supplied = hash_token(token.strip()) if scheme.lower() == "bearer" else b""
        if not hmac.compare_digest(supplied, settings.token_hash):
            raise Unauthorized("missing or wrong access token (Authorization: Bearer <token>)")
        return None

    @app.errorhandler(SidecodeError)
    async def on_error(exc: SidecodeError) -> Response:
        if exc.status >= 500:
            log.warning("%s: %s", exc.code, exc.message)
        return _error(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    async def on_http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        response = _error(exc.code or 500, code, exc.description or exc.name or "error")
        if exc.code == 413:
            # The unread body is still in flight: this connection cannot carry another request.
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(Exception)
    async def on_crash(exc: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(500, "internal", "internal error; see the daemon's log")

    @app.get("/v1/info")
    async def info() -> Response:
        return _json(200, ops.info())

    @app.get("/v1/status")
    async def status() -> Response:
        return _json(200, ops.statistics())

    @app.get("/v1/sessions")
    async def list_sessions() -> Response:
        return _json(200, ops.list_sessions())

    @app.post("/v1/sessions")
    async def create_session() -> Response:
        reply = await ops.create_session(await _body(rq.CreateSession))
        return _json(201, reply, {"Location": f"/v1/sessions/{reply.session.id}"})

    @app.get("/v1/sessions/<session_id>")
    async def get_session(session_id: str) -> Response:
        return _json(200, ops.snapshot(session_id))

    @app.patch("/v1/sessions/<session_id>")
    async def update_session(session_id: str) -> Response:
        return _json(200, await ops.update_session(session_id, await _body(rq.UpdateSession)))

    @app.post("/v1/sessions/<session_id>/messages")
    async def send_message(session_id: str) -> Response:
        return _json(202, await ops.send_message(session_id, await _body(rq.SendMessage)))

    @app.post("/v1/sessions/<session_id>/interrupt")
    async def interrupt(session_id: str) -> Response:
        return _json(200, await ops.interrupt(session_id))

    @app.post("/v1/sessions/<session_id>/permissions/<request_id>")
    async def answer_permission(session_id: str, request_id: str) -> Response:
        await ops.answer_permission(session_id, request_id, await _body(rq.AnswerPermission))
        return _json(200, {"ok": True})

    @app.get("/v1/sessions/<session_id>/events")
    async def session_events(session_id: str) -> Response:
        since = _since()
        ops.snapshot_position(session_id)  # 404 before the stream starts, not inside it

        async def stream() -> AsyncIterator[bytes]:
            # Subscribed on the first iteration: a client gone before then leaves nothing behind.
            catch_up, sub = ops.subscribe(session_id, since, settings.client_queue)
            try:
                yield sse.RETRY
                if isinstance(catch_up, SnapshotRead):
                    yield sse.snapshot_frame(catch_up.snapshot, catch_up.reason)
                else:
                    events = catch_up.events
                    for start in range(0, len(events), sse.REPLAY_CHUNK):
                        yield sse.event_frames(events[start : start + sse.REPLAY_CHUNK])
                async for chunk in _live(sub.receive, sse.event_frame, settings.keepalive):
                    yield chunk
            finally:
                sub.close()

        return _sse_response(stream())

    @app.get("/v1/events")
    async def sessions_events() -> Response:
        async def stream() -> AsyncIterator[bytes]:
            infos, receive = ops.subscribe_sessions(settings.client_queue)
            try:
                yield sse.RETRY
                yield sse.sessions_frame(infos)
                async for chunk in _live(receive, sse.session_frame, settings.keepalive):
                    yield chunk
            finally:
                receive.close()

        return _sse_response(stream())

    return app


async def _live(
    receive: trio.MemoryReceiveChannel[T], encode: Callable[[T], bytes], keepalive: float
) -> AsyncIterator[bytes]:
    """Live frames: wait for one, then take everything already queued and send it as one write.

    This opportunistic batching costs nothing while the client keeps up and turns a burst into
    one write (per-write overhead dominates the SSE path: ``reference/sse-fanout.md``).
    """
    while True:
        with trio.move_on_after(keepalive) as quiet:
            try:
                first = await receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return  # dropped for lagging, or the daemon is stopping: the client reconnects
        if quiet.cancelled_caught:
            yield sse.KEEPALIVE
            continue
        frames = [encode(first)]
        while len(frames) < sse.REPLAY_CHUNK:
            try:
                frames.append(encode(receive.receive_nowait()))
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        yield b"".join(frames)
