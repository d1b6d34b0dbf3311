"""The HTTP/SSE v1 API: routes that decode a request, call :class:`~..ops.Operations`, and encode.

Every route but ``GET /v1/info`` and ``POST /v1/pair`` needs credentials, checked by the
:class:`~..security.guard.Guard` before the route runs: a paired device's signed token, a one-time
stream ticket, or (from this computer only) the local access token. On a loopback bind every
request must also name one of its addresses in ``Host`` (a guard against DNS rebinding; with TLS
too: loopback names, the served addresses and the ``--public-url`` names). Errors are
always ``{"error": {"code", "message"}}`` with the matching status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, TypeVar

import attrs
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from .. import web
from ..errors import BadRequest, SidecodeError
from ..eventlog.core import Position
from ..ops import Operations
from ..security.auth import Principal
from ..security.devices import Scope
from ..security.guard import Guard
from ..security.routes import OPEN_ROUTES
from ..sessions.registry import SessionFilter
from ..wire import converter as wire
from ..wire import events as ev
from ..wire import requests as rq
from . import bodies, direct, sse, watchcode

log = logging.getLogger(__name__)

T = TypeVar("T")


@attrs.frozen
class HTTPSettings:
    keepalive: float = 15.0
    client_queue: int = 4096
    max_body: int = 1024 * 1024


def json_reply(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """A reply of ``body`` (a wire class, or plain JSON data) with ``status``."""
    return Response(wire.dumps(body), status=status, mimetype="application/json", headers=headers)


def _error(status: int, code: str, message: str) -> Response:
    return json_reply(status, rq.ErrorReply(rq.ErrorDetail(code, message)))


async def read_body(cls: type[T]) -> T:
    """The request's JSON body as ``cls``; 400 ``invalid_json`` / ``invalid_field`` otherwise."""
    raw = await request.get_data(cache=False, as_text=False)
    g.body_read = True
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # nesting deeper than ~1000
        raise BadRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    try:
        return wire.structure(data, cls)
    except ValueError as exc:
        raise BadRequest(str(exc), code="invalid_field") from None


def _flag(name: str) -> bool:
    raw = (request.args.get(name) or "false").lower()
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("0", "false", "no"):
        return False
    raise BadRequest(f"query parameter {name!r} must be true or false, got {raw!r}")


def _limit(default: int | None) -> int | None:
    """``?limit=N``: a positive integer; anything else is refused rather than ignored."""
    raw = request.args.get("limit")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9 or int(raw) < 1:
        raise BadRequest(f"limit must be a positive integer, got {raw[:40]!r}")
    return int(raw)


def _session_filter() -> SessionFilter:
    statuses = [s for s in request.args.get("status", "").split(",") if s]
    try:
        status = frozenset(ev.SessionStatus(s) for s in statuses)
    except ValueError:
        choices = ", ".join(s.value for s in ev.SessionStatus)
        raise BadRequest(f"status must be a comma-separated list of {choices}") from None
    limit = _limit(None)
    return SessionFilter(
        archived=None if request.args.get("archived") == "all" else _flag("archived"),
        status=status,
        cwd=request.args.get("cwd") or None,
        text=request.args.get("q", ""),
        limit=limit,
    )


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


def current_principal() -> Principal:
    """Who sent this request (set by the app's credential check, which runs first)."""
    principal: Principal = g.principal
    return principal


def create_app(
    ops: Operations,
    guard: Guard,
    settings: HTTPSettings,
    allowed_hosts: Callable[[], set[str] | None],
) -> QuartTrio:
    """The v1 app. ``allowed_hosts()`` is the set of acceptable ``Host`` headers (a guard against
    DNS rebinding: loopback names, the served addresses, the configured public names), or None
    when any host is fine."""
    app = QuartTrio("sidecode_trio")
    app.request_class = bodies.GatedRequest
    app.asgi_http_class = bodies.GatedHTTPConnection
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body
    app.config["BODY_TIMEOUT"] = 30

    @app.before_request
    async def authenticate() -> Response | None:
        # The body is read only from here on: the big limit once credentials verified, a small
        # one for open routes (and whatever else gets this far without them).
        limit = bodies.OPEN_BODY_LIMIT
        try:
            hosts = allowed_hosts()
            host = (request.headers.get("Host") or "").lower()
            if hosts is not None and host not in hosts:
                return _error(403, "bad_host", f"Host {host!r} is not this daemon's address")
            if (request.method, request.path) in OPEN_ROUTES:
                return None
            if web.is_public(request.method, request.path):
                return None  # the web app's static shell; its API calls carry device tokens
            if request.path.startswith(watchcode.PREFIX):
                refused = watchcode.authenticate(guard)
                if refused is None and g.get("principal") is not None:
                    limit = settings.max_body
                return refused
            ticket = request.args.get("ticket") if request.method == "GET" else None
            g.principal = guard.authenticate(
                request.headers.get("Authorization"), ticket, request.path, request.remote_addr
            )
            limit = settings.max_body
            return None
        finally:
            bodies.admit(request, limit)

    @app.after_request
    async def close_after_unread_body(response: Response) -> Response:
        # A reply decided without reading the request's body (a 401, 404 or 405, a preflight, a
        # body sent where none is expected) leaves it on a kept-alive connection, and hypercorn
        # then never serves that connection's next request: the client hangs (found by
        # schemathesis). Such a connection is closed instead.
        declared = request.content_length or "chunked" in request.headers.get(
            "Transfer-Encoding", ""
        )
        if declared and not g.get("body_read"):
            response.headers["Connection"] = "close"
        # Every reply says what it is; a browser must not guess HTML into a JSON error that
        # echoes a path or a name.
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.errorhandler(SidecodeError)
    async def on_error(exc: SidecodeError) -> Response:
        if exc.status >= 500:
            log.warning("%s: %s", exc.code, exc.message)
        if request.path.startswith(watchcode.PREFIX):
            return watchcode.error_response(exc)
        response = _error(exc.status, exc.code, exc.message)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Sidecode realm="sidecode-trio"'
        return response

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

    # -- open routes -------------------------------------------------------------------------

    @app.get("/v1/info")
    async def info() -> Response:
        return json_reply(200, ops.info())

    @app.post("/v1/pair")
    async def pair() -> Response:
        return json_reply(201, ops.pair(await read_body(rq.PairRequest), request.remote_addr))

    # -- sessions ----------------------------------------------------------------------------

    @app.get("/v1/status")
    async def status() -> Response:
        return json_reply(200, ops.statistics(current_principal()))

    @app.get("/v1/sessions")
    async def list_sessions() -> Response:
        return json_reply(200, ops.list_sessions(current_principal(), _session_filter()))

    @app.post("/v1/sessions")
    async def create_session() -> Response:
        reply = await ops.create_session(current_principal(), await read_body(rq.CreateSession))
        status = 201 if reply.created else 200  # 200: a retry, answered with the same session
        return json_reply(status, reply, {"Location": f"/v1/sessions/{reply.session.id}"})

    @app.get("/v1/sessions/<session_id>")
    async def get_session(session_id: str) -> Response:
        return json_reply(200, ops.snapshot(current_principal(), session_id))

    @app.patch("/v1/sessions/<session_id>")
    async def update_session(session_id: str) -> Response:
        body = await read_body(rq.UpdateSession)
        return json_reply(200, await ops.update_session(current_principal(), session_id, body))

    @app.put("/v1/sessions/<session_id>/mirror")
    async def set_mirror(session_id: str) -> Response:
        body = await read_body(rq.SetMirror)
        return json_reply(200, await ops.set_mirror(current_principal(), session_id, body))

    @app.delete("/v1/sessions/<session_id>")
    async def delete_session(session_id: str) -> Response:
        keep = request.args.get("log", "keep")
        if keep not in ("keep", "remove"):
            raise BadRequest("log must be 'keep' (the default) or 'remove'")
        return json_reply(
            200, await ops.delete_session(current_principal(), session_id, keep == "remove")
        )

    @app.get("/v1/sessions/<session_id>/tools/<tool_use_id>")
    async def tool(session_id: str, tool_use_id: str) -> Response:
        return json_reply(200, ops.tool(current_principal(), session_id, tool_use_id))

    @app.get("/v1/sessions/<session_id>/tools/<tool_use_id>/output")
    async def tool_output(session_id: str, tool_use_id: str) -> Response:
        return json_reply(200, ops.tool_output(current_principal(), session_id, tool_use_id))

    @app.get("/v1/folders")
    async def folders() -> Response:
        listing = await ops.browse(
            current_principal(),
            request.args.get("path") or None,
            hidden=_flag("hidden"),
            files=_flag("files"),
        )
        return json_reply(200, listing)

    @app.get("/v1/folders/recent")
    async def recent_folders() -> Response:
        return json_reply(200, await ops.recent_folders(current_principal()))

    @app.post("/v1/sessions/<session_id>/messages")
    async def send_message(session_id: str) -> Response:
        body = await read_body(rq.SendMessage)
        return json_reply(202, await ops.send_message(current_principal(), session_id, body))

    @app.post("/v1/sessions/<session_id>/interrupt")
    async def interrupt(session_id: str) -> Response:
        return json_reply(200, await ops.interrupt(current_principal(), session_id))

    @app.post("/v1/sessions/<session_id>/permissions/<request_id>")
    async def answer_permission(session_id: str, request_id: str) -> Response:
        body = await read_body(rq.AnswerPermission)
        await ops.answer_permission(current_principal(), session_id, request_id, body)
        return json_reply(200, {"ok": True})

    @app.post("/v1/tickets")
    async def ticket() -> Response:
        return json_reply(201, ops.ticket(current_principal(), await read_body(rq.TicketRequest)))

    @app.get("/v1/sessions/<session_id>/events")
    async def session_events(session_id: str) -> Response:
        who, since = current_principal(), _since()
        view = request.args.get("view", "full")
        # The same stream is served by http/direct.py for plain HTTP/1.1 GETs (the token path).
        frames = direct.open_events(ops, guard, settings, who, session_id, since, view)
        return _sse_response(frames)

    @app.get("/v1/events")
    async def sessions_events() -> Response:
        who = current_principal()
        who.require(Scope.APPROVE)

        async def stream() -> AsyncIterator[bytes]:
            infos, receive = ops.subscribe_sessions(who, settings.client_queue)
            forget = guard.links.register(who, receive.close)
            try:
                yield sse.RETRY
                yield sse.sessions_frame(infos)
                live = sse.live(receive, sse.session_frame, settings.keepalive)
                async with aclosing(live):  # closed with this stream, not left to the GC
                    async for chunk in live:
                        yield chunk
            finally:
                forget()
                receive.close()

        return _sse_response(stream())

    # -- devices -----------------------------------------------------------------------------

    @app.post("/v1/pairings")
    async def create_pairing() -> Response:
        return json_reply(
            201, ops.create_pairing(current_principal(), await read_body(rq.PairingOfferRequest))
        )

    @app.post("/v1/devices/watchcode")
    async def add_watchcode_device() -> Response:
        body = await read_body(rq.WatchCodeDeviceRequest)
        return json_reply(201, ops.add_watchcode_device(current_principal(), body))

    @app.get("/v1/devices")
    async def devices() -> Response:
        return json_reply(200, ops.devices(current_principal()))

    @app.patch("/v1/devices/<device_id>")
    async def update_device(device_id: str) -> Response:
        body = await read_body(rq.DeviceUpdate)
        return json_reply(200, ops.set_device_scope(current_principal(), device_id, body))

    @app.delete("/v1/devices/<device_id>")
    async def revoke_device(device_id: str) -> Response:
        return json_reply(200, ops.revoke_device(current_principal(), device_id))

    @app.get("/v1/audit")
    async def audit() -> Response:
        return json_reply(200, ops.audit(current_principal(), _limit(200) or 200))

    watchcode.add_routes(app, ops, guard, settings)
    web.add_routes(app, lambda: guard.pairings.quic_urls)
    return app
