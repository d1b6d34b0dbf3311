"""Generate the OpenAPI 3.1 document of the HTTP API into ``protocol/openapi.json``.

``python -m sidecode_trio.ops.openapi protocol/openapi.json`` rewrites it. The bodies' schemas
come from the wire classes (the same builder as ``protocol/schema/``). The v1 operations are
described by their rows in the operation table (``ops/front.py``: what HTTP registers and
WebTransport dispatches into), which carry what the classes cannot say (summary, statuses,
query parameters, credentials); the few routes that are not operations (event streams,
WatchCode's ``/api``, the web app) are :data:`OTHER_ROUTES` here. Tests fail when the committed
file differs from what this module renders, and when the daemon's app has a route (or a method)
that :data:`OPERATIONS` lacks, or the other way round.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

import attrs

from .. import __version__
from ..defaults import DEFAULT_PORT
from ..wire import requests as rq
from ..wire.schema import UNIONS, SchemaBuilder
from ..wire.tools import TOOL_DETAIL_CLASSES, ToolDetail
from .apidoc import BODY_ERRORS, DEVICE, OPEN, STREAM, WATCHCODE, Param, text_param
from .front import Route, described_routes

OPENAPI_VERSION: Final = "3.1.0"
PREFIX: Final = "#/components/schemas/"
JSON: Final = "application/json"
SSE: Final = "text/event-stream"

SECURITY_SCHEMES: Final[dict[str, Any]] = {
    "sidecode": {
        "type": "http",
        "scheme": "Sidecode",
        "description": (
            "A paired device's signed token: `Authorization: Sidecode <payload>.<signature>`, "
            "payload = base64url JSON {dev, iat, exp, cert, n}, signature = the device key's "
            "Ed25519 signature of 'sidecode-trio auth v1\\n' + payload (PROTOCOL.md section 2)."
        ),
    },
    "localToken": {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "The owner's local access token from <state-dir>/token; accepted from loopback only."
        ),
    },
    "ticket": {
        "type": "apiKey",
        "in": "query",
        "name": "ticket",
        "description": (
            "A one-time ticket from POST /v1/tickets, for an event stream's GET only "
            "(EventSource cannot set headers); valid 60 s, for one path."
        ),
    },
    "watchcodeSecret": {
        "type": "apiKey",
        "in": "header",
        "name": "x-watchcode-secret",
        "description": "A WatchCode device's secret (POST /v1/devices/watchcode); /api/* only.",
    },
    "watchcodeSecretQuery": {
        "type": "apiKey",
        "in": "query",
        "name": "secret",
        "description": "The WatchCode secret as a query parameter, for EventSource.",
    },
}


@attrs.frozen
class Op:
    """One route and method: what it takes and what it answers."""

    method: str
    path: str  #: OpenAPI template, ``{name}`` for a path parameter
    summary: str
    status: int = 200  #: the success status
    reply: Any = None  #: a wire class, a JSON Schema dict, or None for no body
    body: type[Any] | dict[str, Any] | None = None
    errors: tuple[int, ...] = ()  #: client and server errors besides the common ones
    query: tuple[Param, ...] = ()
    security: tuple[str, ...] = DEVICE
    stream: bool = False  #: the reply is an SSE stream (``text/event-stream``)
    tag: str = ""  #: "watchcode" (``/api/*``: WatchCode's error shape) or "web" (the web app)
    media: str = JSON  #: the success reply's content type (``stream`` means SSE)
    bare: tuple[int, ...] = ()  #: other statuses, without a JSON body (redirects, 304, web 404)
    again: int | None = None  #: the status of a retry (a repeated ``client_id``): the same reply

    @property
    def watchcode(self) -> bool:
        return self.tag == "watchcode"

    @property
    def operation_id(self) -> str:
        words = [w.strip("{}") for w in self.path.split("/") if w and w not in ("v1", "api")]
        head = f"{self.tag}_" if self.tag else ""
        name = "_".join(words).replace("-", "_") or "root"
        return head + self.method.lower() + "_" + name


SINCE = text_param("since", "Resume after '<epoch>:<cursor>' (Last-Event-ID wins over it).")
LAST_EVENT_ID = Param(
    "Last-Event-ID",
    {"type": "string"},
    "Resume after this '<epoch>:<cursor>' (what EventSource sends by itself).",
    "header",
)
SSE_BODY: Final = {
    "type": "string",
    "description": "Server-Sent Events (PROTOCOL.md sections 6 to 9).",
}


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


STRING: Final = {"type": "string"}
FILE: Final = {"type": "string", "format": "binary"}
WATCHCODE_SESSION = _object(
    id=STRING,
    title=STRING,
    status=STRING,
    model=STRING,
    environmentId=STRING,
    createdAt=STRING,
    updatedAt=STRING,
    provider=STRING,
    cwd=STRING,
    pendingPermissions={"type": "integer"},
)
WATCHCODE_SENT = _object(status={"const": "sent"})
WATCHCODE_CONNECTION = _object(
    connectionId=STRING,
    sessionId=STRING,
    sseClients={"type": "integer"},
    wsState=STRING,
    lastEvent={"type": ["string", "null"]},
)


#: The routes that are not operations of the table (``ops/front.py``): event streams (feeds),
#: WatchCode's ``/api`` routes (its own shapes), the web app's files.
OTHER_ROUTES: Final[tuple[Op, ...]] = (
    # -- event streams (PROTOCOL.md sections 6 to 8)
    Op("GET", "/v1/sessions/{session_id}/events", "Follow a session (SSE)", 200, SSE_BODY,
       errors=(400, 404), query=(
           Param("view", {"type": "string", "enum": ["full", "watch"]},
                 "'watch' for the compact watch view (section 8)."),
           SINCE, LAST_EVENT_ID,
       ), security=STREAM, stream=True),
    Op("GET", "/v1/events", "Follow the session list (SSE)", 200, SSE_BODY, security=STREAM,
       stream=True),
    # -- WatchCode-compatible routes (section 9)
    Op("OPTIONS", "/api/{rest}", "CORS preflight", 204, None, security=OPEN, tag="watchcode"),
    Op("GET", "/api/sessions", "Sessions, WatchCode's shape", 200,
       _object(sessions={"type": "array", "items": WATCHCODE_SESSION}), security=WATCHCODE,
       tag="watchcode"),
    Op("POST", "/api/connect", "Follow a session (a connection)", 200,
       _object(connectionId=STRING, status={"const": "connected"}),
       _object(sessionId=STRING), (*BODY_ERRORS, 404), security=WATCHCODE, tag="watchcode"),
    Op("GET", "/api/sessions/{session_id}/events", "A connection's watch events (SSE)", 200,
       SSE_BODY, errors=(400, 404), query=(
           text_param("connectionId", "The connection (default: this device's first on it)."),
           LAST_EVENT_ID,
       ), security=WATCHCODE, stream=True, tag="watchcode"),
    Op("POST", "/api/sessions/{session_id}/message", "Send a message", 200, WATCHCODE_SENT,
       _object(content=STRING), (*BODY_ERRORS, 404, 422, 502, 503), security=WATCHCODE,
       tag="watchcode"),
    Op("POST", "/api/sessions/{session_id}/control", "Interrupt", 200, WATCHCODE_SENT,
       _object(type={"const": "interrupt"}), (*BODY_ERRORS, 404, 502), security=WATCHCODE,
       tag="watchcode"),
    Op("DELETE", "/api/connections/{connection_id}", "End a connection", 200,
       _object(status={"const": "disconnected"}), errors=(404,), security=WATCHCODE,
       tag="watchcode"),
    Op("GET", "/api/status", "This device's connections", 200,
       _object(connections={"type": "array", "items": WATCHCODE_CONNECTION}),
       security=WATCHCODE, tag="watchcode"),
    # -- the web app (sidecode_trio/web): its static shell, no credentials
    Op("GET", "/", "Redirect to the web app", 302, None, security=OPEN, tag="web"),
    Op("GET", "/app", "Redirect to the web app", 302, None, security=OPEN, tag="web"),
    Op("GET", "/app/", "The web app's page", 200, STRING, security=OPEN, tag="web",
       media="text/html", bare=(304, 404)),
    Op("GET", "/app/{name}", "One of the web app's files", 200, FILE, security=OPEN, tag="web",
       media="*/*", bare=(304, 404)),
)  # fmt: skip


def _of(route: Route) -> Op:
    """A row of the operation table, as the document describes it."""
    return Op(
        route.method,
        route.path,
        route.summary,
        route.status,
        route.reply,
        route.body,
        route.errors,
        route.query,
        route.security,
        again=route.again,
    )


#: Every route the daemon serves, described: the operation table's rows, then the others.
OPERATIONS: Final[tuple[Op, ...]] = (*map(_of, described_routes()), *OTHER_ROUTES)

# Statuses any route may answer besides its own: credentials, the Host guard, rate limits and
# methods (every route); the store failing (any route that reads or writes it).
COMMON_ERRORS: Final = (401, 403, 405, 429, 500)
OPEN_ERRORS: Final = (403, 405, 429, 500)
ERROR_TEXT: Final = {
    400: "Bad request: malformed body, field or query parameter",
    401: "Missing or bad credentials",
    403: "Wrong Host, a path outside the allowed roots, or a scope too narrow",
    404: "Unknown session, request, tool, device or connection",
    405: "Method not allowed",
    409: "Already answered",
    413: "Body (or an image) too large",
    422: "This session or CLI cannot do that",
    429: "Rate limited",
    500: "Internal error (a bug: see the daemon's log)",
    502: "The Claude Code CLI failed or refused",
    503: "The state store is unavailable",
}
BARE_TEXT: Final = {
    302: "Redirect to /app/",
    304: "Not modified (If-None-Match matched the ETag)",
    404: "No such file (text/plain)",
}
WATCHCODE_ERROR: Final = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
    "description": "WatchCode's error shape: {'error': '<message>'}.",
}


class _Document:
    def __init__(self) -> None:
        unions = {**UNIONS, ToolDetail: list(TOOL_DETAIL_CLASSES.values())}
        self.builder = SchemaBuilder(unions, PREFIX)

    def schema(self, value: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        return self.builder.ref(value)

    def operation(self, op: Op) -> dict[str, Any]:
        out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
        if op.tag:
            out["tags"] = [op.tag]
        params = [self._path_param(name) for name in _path_names(op.path)]
        params += [
            {
                "name": p.name,
                "in": p.location,
                "required": False,
                "description": p.description,
                "schema": p.schema,
            }
            for p in op.query
        ]
        if params:
            out["parameters"] = params
        if op.body is not None:
            out["requestBody"] = {
                "required": False,
                "content": {JSON: {"schema": self.schema(op.body)}},
            }
        out["responses"] = self._responses(op)
        out["security"] = [{name: []} for name in op.security]
        return out

    @staticmethod
    def _path_param(name: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}

    def _responses(self, op: Op) -> dict[str, Any]:
        success: dict[str, Any] = {"description": op.summary}
        if op.reply is not None:
            media = SSE if op.stream else op.media
            success["content"] = {media: {"schema": self.schema(op.reply)}}
        responses: dict[str, Any] = {str(op.status): success}
        if op.again is not None:
            responses[str(op.again)] = {**success, "description": "A retry: the earlier result"}
        for status in op.bare:
            responses[str(status)] = {"description": BARE_TEXT[status]}
        common = OPEN_ERRORS if not op.security else COMMON_ERRORS
        for status in sorted({*common, *op.errors}):
            responses[str(status)] = {"$ref": f"#/components/responses/{_error_name(op, status)}"}
        return responses

    @staticmethod
    def error_responses() -> dict[str, Any]:
        """One shared response per error status and shape, referred to by the operations."""
        out: dict[str, Any] = {}
        for op in OPERATIONS:
            for status in {*(OPEN_ERRORS if not op.security else COMMON_ERRORS), *op.errors}:
                shape = WATCHCODE_ERROR if op.watchcode else {"$ref": f"{PREFIX}ErrorReply"}
                out[_error_name(op, status)] = {
                    "description": ERROR_TEXT[status],
                    "content": {JSON: {"schema": shape}},
                }
        return dict(sorted(out.items()))

    def render(self) -> dict[str, Any]:
        self.builder.ref(rq.ErrorReply)
        paths: dict[str, dict[str, Any]] = {}
        for op in OPERATIONS:
            paths.setdefault(op.path, {})[op.method.lower()] = self.operation(op)
        return {
            "openapi": OPENAPI_VERSION,
            "info": {
                "title": "sidecode-trio HTTP API",
                "version": __version__,
                "description": (
                    "Version 1 of the daemon's HTTP/SSE API, generated from the code by "
                    "`python -m sidecode_trio.ops.openapi protocol/openapi.json`. "
                    "protocol/PROTOCOL.md is the normative text; errors are "
                    "{'error': {'code', 'message'}} (WatchCode's /api/* routes: "
                    "{'error': '<message>'}). On a loopback bind every request must name the "
                    "bound address in Host (403 bad_host)."
                ),
            },
            "servers": [
                {"url": f"http://127.0.0.1:{DEFAULT_PORT}", "description": "a loopback daemon"}
            ],
            "tags": [
                {"name": "watchcode", "description": "WatchCode-compatible routes"},
                {"name": "web", "description": "The phone web app's static shell (no credentials)"},
            ],
            "paths": dict(sorted(paths.items())),
            "components": {
                "responses": self.error_responses(),
                "schemas": dict(sorted(self.builder.defs.items())),
                "securitySchemes": SECURITY_SCHEMES,
            },
        }


def _error_name(op: Op, status: int) -> str:
    return f"{'watchcode' if op.watchcode else 'error'}{status}"


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def document() -> dict[str, Any]:
    """The OpenAPI document, as a JSON value."""
    return _Document().render()


def render() -> str:
    return json.dumps(document(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path("protocol/openapi.json")
    out.write_text(render())
    print(f"wrote {len(OPERATIONS)} operations to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
