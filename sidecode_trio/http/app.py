"""The HTTP/SSE v1 API: routes that decode a request, call :class:`~..ops.Operations`, and encode.

Every route but ``GET /v1/info`` and ``POST /v1/pair`` needs credentials, checked by the
:class:`~..security.guard.Guard` before the route runs: a paired device's signed token, a one-time
stream ticket, or (from this computer only) the local access token. On a loopback bind every
request must also name one of its addresses in ``Host`` (a guard against DNS rebinding; with TLS
too: loopback names, the served addresses and the ``--public-url`` names). Errors are
always ``{"error": {"code", "message"}}`` with the matching status.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing
from typing import Any, TypeVar

import attrs
from quart import Response, g, request
from quart.routing import QuartRule
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from .. import web
from ..errors import SidecodeError
from ..eventlog.core import Position
from ..feed import SessionListFeed
from ..ops import Operations, front
from ..security.auth import Principal
from ..security.devices import Scope
from ..security.guard import Credentials, Guard, check_host
from ..wire import converter as wire
from ..wire import requests as rq
from . import bodies, direct, sse, watchcode

log = logging.getLogger(__name__)

T = TypeVar("T")


@attrs.frozen
class HTTPSettings:
    keepalive: float = 15.0
    client_queue: int = 4096
    max_body: int = 1024 * 1024


class LazyBuildRule(QuartRule):
    """Quart's URL rule, whose URL builders are compiled when first used.

    Werkzeug compiles two builder functions per rule as it is added (generated source, for
    ``url_for``, which this app does not call): most of the ~12 ms that the app's 43 routes
    cost at start-up. Matching is unchanged; a build compiles the builder then, as before."""

    def _compile_builder(self, append_unknown: bool = True) -> Callable[..., tuple[str, str]]:
        compiled: Callable[..., tuple[str, str]] | None = None
        compile_now = super()._compile_builder

        def build(rule: QuartRule, /, *args: Any, **values: Any) -> tuple[str, str]:
            nonlocal compiled
            if compiled is None:
                compiled = compile_now(append_unknown)
            return compiled(rule, *args, **values)

        return build


class App(QuartTrio):
    url_rule_class = LazyBuildRule  # type: ignore[assignment]  # as Quart sets QuartRule


def json_reply(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """A reply of ``body`` (a wire class, or plain JSON data) with ``status``."""
    return Response(wire.dumps(body), status=status, mimetype="application/json", headers=headers)


def _error(status: int, code: str, message: str) -> Response:
    return json_reply(status, rq.ErrorReply(rq.ErrorDetail(code, message)))


async def read_body(cls: type[T]) -> T:
    """The request's JSON body as ``cls``; 400 ``invalid_json`` / ``invalid_field`` otherwise."""
    raw = await request.get_data(cache=False, as_text=False)
    g.body_read = True
    body: T = front.decode_body(raw, cls)
    return body


def register(app: QuartTrio, routes: Iterable[front.Route]) -> None:
    """A Quart route per row of the operation table (``ops/front.py``)."""
    for route in routes:
        rule = re.sub(r"\{(\w+)\}", r"<\1>", route.path)
        name = f"{route.method.lower()}_{route.path}"
        app.add_url_rule(rule, name, _view(route), methods=[route.method])


def _view(route: front.Route) -> Callable[..., Awaitable[Response]]:
    async def view(**params: str) -> Response:
        body = await read_body(route.body) if route.body is not None else None
        query = {name: request.args[name] for name in request.args}  # the first value of each
        call = front.Call(g.get("principal"), params, query, body, request.remote_addr)
        reply = await route.handler(call)
        return json_reply(reply.status, reply.body, dict(reply.headers) or None)

    return view


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


def request_credentials() -> Credentials:
    """What this request offers (a ticket counts on a GET only: an ``EventSource``'s)."""
    return Credentials(
        request.path,
        request.remote_addr,
        authorization=request.headers.get("Authorization"),
        ticket=request.args.get("ticket") if request.method == "GET" else None,
    )


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
    app = App("sidecode_trio")
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
            try:
                check_host((request.headers.get("Host") or "").lower(), allowed_hosts())
            except SidecodeError as exc:
                return _error(exc.status, exc.code, exc.message)  # the v1 shape, even on /api
            if guard.is_open(request.method, request.path):
                return None
            if web.is_public(request.method, request.path):
                return None  # the web app's static shell; its API calls carry device tokens
            if request.path.startswith(watchcode.PREFIX):
                refused = watchcode.authenticate(guard)
                if refused is None and g.get("principal") is not None:
                    limit = settings.max_body
                return refused
            g.principal = guard.admit(request_credentials())
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
        if request.path.startswith(watchcode.PREFIX):
            if exc.status >= 500:
                log.warning("%s: %s", exc.code, exc.message)
            return watchcode.error_response(exc)
        response = json_reply(*front.render_error(exc))
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

    register(app, front.routes(ops, None))

    # -- event streams (feeds, not operations) -----------------------------------------------

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
            with SessionListFeed.open(ops, guard.links, who, settings.client_queue) as fd:
                yield sse.RETRY
                yield sse.encode_list(fd.catch_up())
                live = fd.live(settings.keepalive)
                async with aclosing(live):  # closed with this stream, not left to the GC
                    async for each in live:
                        if chunk := sse.encode_list(each):
                            yield chunk

        return _sse_response(stream())

    watchcode.add_routes(app, ops, guard, settings)
    web.add_routes(app, lambda: guard.pairings.quic_urls, lambda: guard.pairings.rendezvous_url)
    return app
