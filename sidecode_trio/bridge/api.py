"""The Remote Control API, sans I/O: request builders and response/frame parsers.

Shapes as WatchCode and Sidecode use them (``reference/anchors-seeds.md`` §5, §6.1): REST under
``/v1/sessions`` with ``Authorization: Bearer``, ``anthropic-version`` and ``anthropic-beta``
headers; live events over ``wss://…/v1/sessions/ws/{id}/subscribe?organization_uuid=…``, each
frame one JSON event or an array of them. These are beta APIs: parsers accept what they know and
skip the rest (a bad item is counted, never fatal).

Paging: a list body is either a bare array (one page) or ``{"data": [...], "has_more": bool,
"last_id"/"first_id": ...}``; while ``has_more`` is true the next page is asked for with
``after_id=<last_id>``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import attrs

ANTHROPIC_VERSION: Final = "2023-06-01"
ANTHROPIC_BETA: Final = "ccr-byoc-2025-07-29"
MAX_PAGES: Final = 1000  # a server that always says "has_more" must not loop us forever


class MalformedUpstream(ValueError):
    """The upstream sent something that is not the documented shape (never a token in it)."""


@attrs.frozen
class Request:
    method: str
    url: str
    headers: dict[str, str] = attrs.field(repr=False)  # carries the bearer token
    params: dict[str, str] = attrs.field(factory=dict)
    json: Any = None


def rest_headers(token: str, org: str | None, *, body: bool = False) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {token}",
        "anthropic-version": ANTHROPIC_VERSION,
        "anthropic-beta": ANTHROPIC_BETA,
    }
    if org:
        headers["x-organization-uuid"] = org
    if body:
        headers["Content-Type"] = "application/json"
    return headers


def ws_headers(token: str) -> list[tuple[str, str]]:
    """The subscribe handshake's headers (no organization header: it is in the query)."""
    return [
        ("Authorization", f"Bearer {token}"),
        ("anthropic-version", ANTHROPIC_VERSION),
        ("anthropic-beta", ANTHROPIC_BETA),
    ]


def _url(base: str, path: str) -> str:
    return base.rstrip("/") + path


def _session_path(session_id: str) -> str:
    return quote(session_id, safe="")


def list_sessions(base: str, token: str, org: str | None, after_id: str | None = None) -> Request:
    params = {"organization_uuid": org} if org else {}
    if after_id:
        params["after_id"] = after_id
    return Request("GET", _url(base, "/v1/sessions"), rest_headers(token, org), params)


def history(
    base: str, token: str, org: str | None, session_id: str, after_id: str | None = None
) -> Request:
    path = f"/v1/sessions/{_session_path(session_id)}/events"
    params = {"after_id": after_id} if after_id else {}
    return Request("GET", _url(base, path), rest_headers(token, org), params)


def post_events(
    base: str, token: str, org: str | None, session_id: str, events: list[dict[str, Any]]
) -> Request:
    path = f"/v1/sessions/{_session_path(session_id)}/events"
    headers = rest_headers(token, org, body=True)
    return Request("POST", _url(base, path), headers, json={"events": events})


def user_message(session_id: str, text: str, uuid: str) -> dict[str, Any]:
    return {
        "uuid": uuid,
        "session_id": session_id,
        "type": "user",
        "parent_tool_use_id": None,
        "message": {"role": "user", "content": text},
    }


def control(session_id: str, kind: str, uuid: str) -> dict[str, Any]:
    return {"uuid": uuid, "session_id": session_id, "type": "control", "data": {"type": kind}}


def subscribe_url(base: str, session_id: str, org: str | None) -> str:
    """``https://host`` → ``wss://host/v1/sessions/ws/{id}/subscribe?organization_uuid=…``."""
    parts = urlsplit(base.rstrip("/"))
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    path = f"{parts.path}/v1/sessions/ws/{_session_path(session_id)}/subscribe"
    query = urlencode({"organization_uuid": org}) if org else ""
    return urlunsplit((scheme, parts.netloc, path, query, ""))


# -- responses ---------------------------------------------------------------------------------


@attrs.frozen
class RemoteSessionInfo:
    id: str
    title: str
    status: str
    model: str | None
    environment_id: str | None = None
    created_at: str | None = None
    updated_at: str | None = None


@attrs.frozen
class Page:
    items: list[Any]
    next_after: str | None  #: ask for the next page with this ``after_id``; None: last page
    skipped: int = 0  #: items that were not JSON objects


def parse_page(body: Any) -> Page:
    """One page of a list: a bare array, or ``{data, has_more, last_id/first_id}``."""
    if isinstance(body, list):
        items, next_after = body, None
    elif isinstance(body, Mapping) and isinstance(body.get("data"), list):
        items = body["data"]
        next_after = None
        if body.get("has_more") is True:
            last = body.get("last_id") or _last_id(items)
            next_after = str(last) if last else None
    else:
        raise MalformedUpstream("a list response is neither an array nor {data: [...]}")
    good = [item for item in items if isinstance(item, Mapping)]
    return Page([dict(item) for item in good], next_after, len(items) - len(good))


def _last_id(items: list[Any]) -> str | None:
    for item in reversed(items):
        if isinstance(item, Mapping):
            found = item.get("id") or item.get("uuid")
            if isinstance(found, str):
                return found
    return None


def parse_session(item: Mapping[str, Any]) -> RemoteSessionInfo | None:
    session_id = item.get("id")
    if not isinstance(session_id, str) or not session_id:
        return None
    context = item.get("session_context")
    model = context.get("model") if isinstance(context, Mapping) else None
    return RemoteSessionInfo(
        id=session_id,
        title=_opt_str(item.get("title")) or "Untitled",
        status=_opt_str(item.get("session_status")) or "unknown",
        model=_opt_str(model),
        environment_id=_opt_str(item.get("environment_id")),
        created_at=_opt_str(item.get("created_at")),
        updated_at=_opt_str(item.get("updated_at")),
    )


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_frame(text: str | bytes) -> list[dict[str, Any]]:
    """A WebSocket message: one event object or an array of them.

    Raises :class:`MalformedUpstream` when it is not JSON or not that shape; array items that
    are not objects are dropped (the caller counts whole frames, not items)."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MalformedUpstream("a frame is not JSON") from None
    if isinstance(data, Mapping):
        return [dict(data)]
    if isinstance(data, list):
        return [dict(item) for item in data if isinstance(item, Mapping)]
    raise MalformedUpstream("a frame is neither an event object nor an array of them")
