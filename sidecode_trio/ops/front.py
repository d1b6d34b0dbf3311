"""The front door: every v1 JSON operation once, as a table that every transport dispatches into.

A :class:`Route` is a method, a path template (OpenAPI's ``{name}``), the body class it reads and
its handler (``Call`` in, :class:`Reply` out), and what the API's description says of it (summary,
reply, statuses, query parameters, credentials). HTTP registers a Quart route per row
(``http/app.py``); WebTransport requests dispatch here directly (:meth:`Front.dispatch`); a new
transport does the same. Errors are rendered once (:func:`render_error`). ``protocol/openapi.json``
is rendered from this table (``ops/openapi.py``): a new operation is one row here.

Event streams are not operations (they are feeds: ``sidecode_trio/feed``), nor are the WatchCode
``/api`` routes (WatchCode's own shapes) or the web app's files.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs

from ..errors import BadRequest, MethodNotAllowed, NotFound, SidecodeError, Unauthorized
from ..notify.service import Notifier
from ..security.auth import Principal
from ..sessions.registry import SessionFilter
from ..wire import converter as wire
from ..wire import events as ev
from ..wire import requests as rq
from ..wire.snapshot import SessionInfo, Snapshot
from ..wire.tools import ToolView
from .apidoc import (
    BODY_ERRORS,
    DEVICE,
    FLAG_VALUES,
    FREE_OBJECT,
    LIMIT,
    OK_REPLY,
    OPEN,
    PAIRING_OFFER,
    Param,
    flag_param,
    text_param,
)
from .operations import Operations

log = logging.getLogger(__name__)

PREFIX: Final = "/v1/"
#: werkzeug's texts, kept so that a request answered here reads as it did through Quart
NO_ROUTE: Final = (
    "The requested URL was not found on the server. If you entered the URL manually please "
    "check your spelling and try again."
)
NO_METHOD: Final = "The method is not allowed for the requested URL."
INTERNAL: Final = rq.ErrorReply(rq.ErrorDetail("internal", "internal error; see the daemon's log"))


@attrs.frozen
class Call:
    """One request, as any transport read it."""

    principal: Principal | None  #: None on an open route
    params: Mapping[str, str]  #: the path's ``{name}`` parts, decoded
    query: Mapping[str, str]  #: the first value of each query parameter
    body: Any  #: the body as the route's body class, or None
    remote: str | None

    @property
    def who(self) -> Principal:
        if self.principal is None:  # the transport's credential check runs first
            raise Unauthorized("credentials required")
        return self.principal


@attrs.frozen
class Reply:
    status: int
    body: Any  #: a wire class, or plain JSON data
    headers: Mapping[str, str] = attrs.field(factory=dict)


Handler = Callable[[Call], Awaitable[Reply]]


@attrs.frozen
class Route:
    """One operation: how it is served, and what the OpenAPI document says of it."""

    method: str
    path: str  #: OpenAPI template: ``/v1/sessions/{session_id}``
    handler: Handler
    body: type[Any] | None = None  #: the body class, if the route reads one
    summary: str = attrs.field(kw_only=True)
    reply: Any = attrs.field(kw_only=True)  #: a wire class, or a JSON Schema dict
    status: int = attrs.field(default=200, kw_only=True)  #: the success status
    #: client and server errors besides those of every route (credentials, rate limits, ...)
    errors: tuple[int, ...] = attrs.field(default=(), kw_only=True)
    query: tuple[Param, ...] = attrs.field(default=(), kw_only=True)
    security: tuple[str, ...] = attrs.field(default=DEVICE, kw_only=True)  #: ``apidoc`` names
    again: int | None = attrs.field(default=None, kw_only=True)  #: a retry's status, same reply

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path) + "$")


def render_error(exc: SidecodeError) -> tuple[int, rq.ErrorReply]:
    """The one error shape of the v1 API: ``{"error": {"code", "message"}}`` and its status."""
    if exc.status >= 500:
        log.warning("%s: %s", exc.code, exc.message)
    return exc.status, rq.ErrorReply(rq.ErrorDetail(exc.code, exc.message))


def structure_body(data: Any, cls: type[Any]) -> Any:
    """A decoded JSON body as ``cls``; 400 ``invalid_json`` / ``invalid_field`` otherwise."""
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    try:
        body = wire.structure(data, cls)
    except ValueError as exc:
        raise BadRequest(str(exc), code="invalid_field") from None
    try:
        wire.check_text(data)
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON text: {exc}", code="invalid_json") from None
    return body


def decode_body(raw: bytes | str, cls: type[Any]) -> Any:
    """A body's bytes as ``cls`` (empty: ``{}``)."""
    try:
        data = wire.loads(raw or b"{}")
    except (ValueError, RecursionError) as exc:  # NaN, not UTF-8, nesting deeper than ~1000
        raise BadRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    return structure_body(data, cls)


# -- query parameters ----------------------------------------------------------------------------


def flag(query: Mapping[str, str], name: str) -> bool:
    raw = (query.get(name) or "false").lower()
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("0", "false", "no"):
        return False
    raise BadRequest(f"query parameter {name!r} must be true or false, got {raw!r}")


def limit(query: Mapping[str, str], default: int | None) -> int | None:
    """``?limit=N``: a positive integer; anything else is refused rather than ignored."""
    raw = query.get("limit")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9 or int(raw) < 1:
        raise BadRequest(f"limit must be a positive integer, got {raw[:40]!r}")
    return int(raw)


def session_filter(query: Mapping[str, str]) -> SessionFilter:
    statuses = [s for s in query.get("status", "").split(",") if s]
    try:
        status = frozenset(ev.SessionStatus(s) for s in statuses)
    except ValueError:
        choices = ", ".join(s.value for s in ev.SessionStatus)
        raise BadRequest(f"status must be a comma-separated list of {choices}") from None
    most = limit(query, None)
    return SessionFilter(
        archived=None if query.get("archived") == "all" else flag(query, "archived"),
        status=status,
        cwd=query.get("cwd") or None,
        text=query.get("q", ""),
        limit=most,
    )


#: what :func:`session_filter` reads
SESSION_QUERY: Final = (
    Param(
        "archived",
        {"type": "string", "enum": [*FLAG_VALUES, "all"]},
        "Archived sessions only (true), only others (false, the default), or all.",
    ),
    text_param("status", "Comma-separated statuses: idle, running, requires_action, errored."),
    text_param("cwd", "Only sessions in this folder."),
    text_param("q", "Only sessions whose title contains this text."),
    LIMIT,
)
FOLDER_QUERY: Final = (
    text_param("path", "An absolute path; none for the allowed roots."),
    flag_param("hidden", "Include hidden entries."),
    flag_param("files", "Include files, not only directories."),
)
LOG_PARAM: Final = Param(
    "log",
    {"type": "string", "enum": ["keep", "remove"]},
    "Keep (the default) or remove the daemon's log and the CLI's transcript.",
)


# -- the table -----------------------------------------------------------------------------------


def routes(ops: Operations, notifier: Notifier | None) -> tuple[Route, ...]:
    """Every v1 JSON operation; the push routes when notifications are served."""

    async def info(call: Call) -> Reply:
        return Reply(200, ops.info())

    async def pair(call: Call) -> Reply:
        return Reply(201, ops.pair(call.body, call.remote))

    async def status(call: Call) -> Reply:
        return Reply(200, ops.statistics(call.who))

    async def list_sessions(call: Call) -> Reply:
        return Reply(200, ops.list_sessions(call.who, session_filter(call.query)))

    async def create_session(call: Call) -> Reply:
        reply = await ops.create_session(call.who, call.body)
        code = 201 if reply.created else 200  # 200: a retry, answered with the same session
        return Reply(code, reply, {"Location": f"/v1/sessions/{reply.session.id}"})

    async def get_session(call: Call) -> Reply:
        return Reply(200, ops.snapshot(call.who, call.params["session_id"]))

    async def update_session(call: Call) -> Reply:
        return Reply(200, await ops.update_session(call.who, call.params["session_id"], call.body))

    async def set_mirror(call: Call) -> Reply:
        return Reply(200, await ops.set_mirror(call.who, call.params["session_id"], call.body))

    async def delete_session(call: Call) -> Reply:
        keep = call.query.get("log", "keep")
        if keep not in ("keep", "remove"):
            raise BadRequest("log must be 'keep' (the default) or 'remove'")
        sid = call.params["session_id"]
        return Reply(200, await ops.delete_session(call.who, sid, keep == "remove"))

    async def tool(call: Call) -> Reply:
        p = call.params
        return Reply(200, ops.tool(call.who, p["session_id"], p["tool_use_id"]))

    async def tool_output(call: Call) -> Reply:
        p = call.params
        return Reply(200, ops.tool_output(call.who, p["session_id"], p["tool_use_id"]))

    async def folders(call: Call) -> Reply:
        q = call.query
        path = q.get("path") or None
        listing = await ops.browse(call.who, path, hidden=flag(q, "hidden"), files=flag(q, "files"))
        return Reply(200, listing)

    async def recent_folders(call: Call) -> Reply:
        return Reply(200, await ops.recent_folders(call.who))

    async def send_message(call: Call) -> Reply:
        return Reply(202, await ops.send_message(call.who, call.params["session_id"], call.body))

    async def interrupt(call: Call) -> Reply:
        return Reply(200, await ops.interrupt(call.who, call.params["session_id"]))

    async def answer_permission(call: Call) -> Reply:
        p = call.params
        await ops.answer_permission(call.who, p["session_id"], p["request_id"], call.body)
        return Reply(200, {"ok": True})

    async def ticket(call: Call) -> Reply:
        return Reply(201, ops.ticket(call.who, call.body))

    async def create_pairing(call: Call) -> Reply:
        return Reply(201, ops.create_pairing(call.who, call.body))

    async def add_watchcode_device(call: Call) -> Reply:
        return Reply(201, ops.add_watchcode_device(call.who, call.body))

    async def devices(call: Call) -> Reply:
        return Reply(200, ops.devices(call.who))

    async def update_device(call: Call) -> Reply:
        return Reply(200, ops.set_device_scope(call.who, call.params["device_id"], call.body))

    async def revoke_device(call: Call) -> Reply:
        return Reply(200, ops.revoke_device(call.who, call.params["device_id"]))

    async def audit(call: Call) -> Reply:
        return Reply(200, ops.audit(call.who, limit(call.query, 200) or 200))

    S, D = "/v1/sessions/{session_id}", "/v1/devices/{device_id}"
    table = [
        # -- open routes
        Route("GET", "/v1/info", info, security=OPEN, reply=rq.DaemonInfo,
              summary="The daemon's identity, certificates and versions"),
        Route("POST", "/v1/pair", pair, rq.PairRequest, security=OPEN, status=201,
              reply=rq.PairReply, errors=(*BODY_ERRORS, 403),
              summary="Complete a pairing with a one-time secret's proof"),
        # -- sessions
        Route("GET", "/v1/status", status, reply=FREE_OBJECT, summary="Daemon statistics (admin)"),
        Route("GET", "/v1/sessions", list_sessions, reply=rq.SessionList, errors=(400,),
              query=SESSION_QUERY, summary="List sessions, most recent activity first"),
        Route("POST", "/v1/sessions", create_session, rq.CreateSession, status=201, again=200,
              reply=rq.SessionCreatedReply, errors=(*BODY_ERRORS, 502, 503),
              summary="Start a session (and its first message)"),
        Route("GET", S, get_session, reply=Snapshot, errors=(404,), summary="A session's snapshot"),
        Route("PATCH", S, update_session, rq.UpdateSession, reply=SessionInfo,
              errors=(*BODY_ERRORS, 404, 422, 502),
              summary="Change mode or model, rename, archive"),
        Route("PUT", f"{S}/mirror", set_mirror, rq.SetMirror, reply=rq.MirrorReply,
              errors=(*BODY_ERRORS, 404, 409, 422, 502),
              summary="Mirror to Remote Control, or stop"),
        Route("DELETE", S, delete_session, reply=rq.DeleteReply, errors=(400, 404),
              query=(LOG_PARAM,), summary="Delete a session"),
        Route("GET", f"{S}/tools/{{tool_use_id}}", tool, reply=ToolView, errors=(404,),
              summary="One tool call in full"),
        Route("GET", f"{S}/tools/{{tool_use_id}}/output", tool_output, reply=rq.ToolOutput,
              errors=(404,), summary="A tool's whole output"),
        Route("POST", f"{S}/messages", send_message, rq.SendMessage, status=202,
              reply=rq.MessageAccepted, errors=(*BODY_ERRORS, 404, 422, 502, 503),
              summary="Queue a message"),
        Route("POST", f"{S}/interrupt", interrupt, reply=rq.InterruptReply, errors=(404, 502),
              summary="Interrupt the running turn"),
        Route("POST", f"{S}/permissions/{{request_id}}", answer_permission, rq.AnswerPermission,
              reply=OK_REPLY, errors=(*BODY_ERRORS, 404, 409, 502),
              summary="Answer a permission request"),
        # -- folders
        Route("GET", "/v1/folders", folders, reply=rq.FolderListing, errors=(400, 404),
              query=FOLDER_QUERY, summary="Browse folders under the allowed roots"),
        Route("GET", "/v1/folders/recent", recent_folders, reply=rq.RecentFolders,
              summary="Folders sessions ran in lately"),
        Route("POST", "/v1/tickets", ticket, rq.TicketRequest, status=201, reply=rq.TicketReply,
              errors=BODY_ERRORS, summary="A one-time ticket for an event stream"),
        # -- devices (admin)
        Route("POST", "/v1/pairings", create_pairing, rq.PairingOfferRequest, status=201,
              reply=PAIRING_OFFER, errors=BODY_ERRORS, summary="A one-time pairing offer"),
        Route("POST", "/v1/devices/watchcode", add_watchcode_device, rq.WatchCodeDeviceRequest,
              status=201, reply=rq.WatchCodeDeviceReply, errors=BODY_ERRORS,
              summary="A device for the WatchCode apps (secret shown once)"),
        Route("GET", "/v1/devices", devices, reply=rq.DeviceList, summary="Paired devices"),
        Route("PATCH", D, update_device, rq.DeviceUpdate, reply=rq.DeviceView,
              errors=(*BODY_ERRORS, 404), summary="Change a device's scope"),
        Route("DELETE", D, revoke_device, reply=rq.RevokeReply, errors=(404,),
              summary="Revoke a device"),
        Route("GET", "/v1/audit", audit, reply=rq.AuditLog, errors=(400,), query=(LIMIT,),
              summary="The audit log, newest first"),
    ]  # fmt: skip
    if notifier is not None:
        table += push_routes(notifier)
    return tuple(table)


def push_routes(notifier: Notifier) -> list[Route]:
    """``/v1/push/*``: a subscription belongs to the device that made it."""

    async def vapid(call: Call) -> Reply:
        _ = call.who  # authenticated like the rest: the key is public, the route is not
        return Reply(200, rq.VapidKeyReply(notifier.vapid.public_key_b64))

    async def subscriptions(call: Call) -> Reply:
        return Reply(200, notifier.subscriptions(call.who))

    async def subscribe(call: Call) -> Reply:
        return Reply(201, notifier.subscribe(call.who, call.body))

    async def unsubscribe(call: Call) -> Reply:
        return Reply(200, notifier.unsubscribe(call.who, call.params["subscription_id"]))

    async def test(call: Call) -> Reply:
        return Reply(202, notifier.send_test(call.who))

    subscriptions_path = "/v1/push/subscriptions"
    return [
        Route("GET", "/v1/push/vapid", vapid, reply=rq.VapidKeyReply,
              summary="The VAPID key to subscribe with"),
        Route("GET", subscriptions_path, subscriptions, reply=rq.PushSubscriptionList,
              summary="This device's push subscriptions"),
        Route("POST", subscriptions_path, subscribe, rq.PushSubscriptionRequest, status=201,
              reply=rq.PushSubscription, errors=BODY_ERRORS,
              summary="Add (or renew) a push subscription"),
        Route("DELETE", f"{subscriptions_path}/{{subscription_id}}", unsubscribe,
              reply=rq.PushSubscriptionRemoved, errors=(404,),
              summary="Remove a push subscription"),
        Route("POST", "/v1/push/test", test, status=202, reply=rq.PushTestReply,
              summary="Push a test notification to this device"),
    ]  # fmt: skip


def open_routes(table: tuple[Route, ...] | None = None) -> frozenset[tuple[str, str]]:
    """``(method, path)`` of the rows served without credentials (``security=OPEN``), of
    ``table`` or of the described one: what the daemon hands its guard. Open rows take no path
    parameters, so the set holds the paths requests name."""
    rows = described_routes() if table is None else table
    found = frozenset((r.method, r.path) for r in rows if r.security == OPEN)
    assert not any("{" in path for _, path in found), "an open route with a path parameter"
    return found


class _Unserved:
    """Stands for the services in a table that is only described, never served."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"the described operation table serves nothing (asked for {name!r})")


def described_routes() -> tuple[Route, ...]:
    """Every row, the push routes included, as ``ops/openapi.py`` renders them; the handlers
    are built but never called."""
    return routes(cast(Operations, _Unserved()), cast(Notifier, _Unserved()))


class Front:
    """The table, matched: what a transport without its own router dispatches into."""

    def __init__(self, table: tuple[Route, ...]) -> None:
        self.routes = table
        self._patterns = [(route, route.pattern) for route in table]

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for ``method`` and ``path`` (its parameters decoded); 404 or 405."""
        found_path = False
        for route, pattern in self._patterns:
            matched = pattern.match(path)
            if matched is None:
                continue
            found_path = True
            if route.method == method:
                return route, {k: unquote(v) for k, v in matched.groupdict().items()}
        if found_path:
            raise MethodNotAllowed(NO_METHOD, code="method_not_allowed")
        raise NotFound(NO_ROUTE, code="not_found")

    async def dispatch(
        self, who: Principal | None, method: str, target: str, body: Any, remote: str | None
    ) -> tuple[int, bytes]:
        """``(status, JSON body bytes)`` of one request (a decoded JSON ``body``, or None)."""
        try:
            reply = await self._call(who, method, target, body, remote)
        except SidecodeError as exc:
            status, error = render_error(exc)
            return status, wire.dumps(error)
        except Exception:
            log.exception("unhandled error in %s %s", method, target)
            return 500, wire.dumps(INTERNAL)
        return reply.status, wire.dumps(reply.body)

    async def _call(
        self, who: Principal | None, method: str, target: str, body: Any, remote: str | None
    ) -> Reply:
        try:
            parts = urlsplit(target)
            wire.check_text(target)  # a request over a link: a JSON string, "\\ud800" and all
        except ValueError:  # "//[": a network location that is not one (was a 500)
            raise BadRequest(f"not a request target: {target[:80]!r}") from None
        path = parts.path
        if not path.startswith(PREFIX):
            raise NotFound(f"no route {path!r} (the API is under {PREFIX})", code="not_found")
        if path.endswith("/events"):
            raise BadRequest(f"{path} is an event stream: use 'subscribe'")
        route, params = self.match(method.upper(), path)
        query: dict[str, str] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            query.setdefault(name, value)
        decoded = None
        if route.body is not None:
            decoded = structure_body({} if body is None else body, route.body)
        return await route.handler(Call(who, params, query, decoded, remote))
