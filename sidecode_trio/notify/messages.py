"""A notification in the shapes it travels in: a Web Push payload, a JSON webhook, an ntfy post.

Pure functions. No credential ever goes into any of them: a webhook's "actions" describe the API
call to make (with the caller's own credentials), and an ntfy post gets only an "Open" link,
because an ntfy topic is readable by whoever knows its name, and an Allow button there would
have to carry a token able to approve a command.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Final, Literal
from urllib.parse import quote, urlsplit

import attrs

from ..wire.converter import as_text, json_bytes
from .policy import Kind, Notification

WebhookFormat = Literal["auto", "ntfy", "json"]
APP_PATH: Final = "/app/"  #: where the daemon serves the web app
PUSH_TTL: Final = {
    Kind.APPROVAL: 3600,
    Kind.FINISHED: 86400,
    Kind.FAILED: 86400,
    Kind.TEST: 600,
    Kind.RESOLVED: 3600,
}
NTFY_PRIORITY: Final = {
    Kind.APPROVAL: "4",
    Kind.FAILED: "4",
    Kind.FINISHED: "3",
    Kind.TEST: "3",
    Kind.RESOLVED: "2",
}
NTFY_TAGS: Final = {
    Kind.APPROVAL: "raised_hand",
    Kind.FINISHED: "white_check_mark",
    Kind.FAILED: "x",
    Kind.TEST: "bell",
    Kind.RESOLVED: "ballot_box_with_check",
}


@attrs.frozen
class Outgoing:
    """One HTTP POST to make."""

    url: str
    headers: dict[str, str]
    body: bytes


def app_link(session_id: str) -> str:
    """The web app's path that opens a session (relative to the daemon's URL; the app routes
    on ``#s=<id>``)."""
    return APP_PATH + (f"#s={quote(as_text(session_id), safe='')}" if session_id else "")


def answer_path(note: Notification) -> str | None:
    if note.request_id is None:
        return None
    # a lone surrogate (a CLI's request id) has no URL form: such an id cannot be answered
    session = quote(as_text(note.session_id), safe="")
    request = quote(as_text(note.request_id), safe="")
    return f"/v1/sessions/{session}/permissions/{request}"


def actions(note: Notification) -> list[dict[str, Any]]:
    """Allow / Deny for an approval: the call that answers it, without credentials."""
    path = answer_path(note)
    if note.kind is not Kind.APPROVAL or path is None:
        return []
    return [
        {"action": behavior, "title": title, "method": "POST", "path": path,
         "body": {"behavior": behavior}}
        for behavior, title in (("allow", "Allow"), ("deny", "Deny"))
    ]  # fmt: skip


def push_payload(note: Notification) -> bytes:
    """What the service worker receives (encrypted on the way): everything it needs to show
    the notification and to answer from its buttons."""
    payload = {
        "v": 1,
        "kind": note.kind.value,
        "session_id": note.session_id,
        "request_id": note.request_id,
        "title": as_text(note.title),
        "body": as_text(note.body),
        "tag": note.tag,
        "url": app_link(note.session_id),
        "count": note.count,
        "at": note.at,
        "actions": [{"action": a["action"], "title": a["title"]} for a in actions(note)],
    }
    return json_bytes(payload)  # any other string with a lone surrogate: an ASCII escape


def push_topic(note: Notification) -> str:
    """A ``Topic`` header: a push service keeps only the newest undelivered message per topic
    (RFC 8030 §5.4), so a phone that was offline gets one per session and kind, not a pile."""
    digest = hashlib.sha256(f"{note.session_id}\0{note.kind}".encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()[:32]


def push_headers(note: Notification, authorization: str) -> dict[str, str]:
    return {
        "Authorization": authorization,
        "Content-Encoding": "aes128gcm",
        "Content-Type": "application/octet-stream",
        "TTL": str(PUSH_TTL[note.kind]),
        "Urgency": "high" if note.urgent else "normal",
        "Topic": push_topic(note),
    }


def looks_like_ntfy(url: str) -> bool:
    return "ntfy" in (urlsplit(url).hostname or "")


def webhook_request(
    note: Notification,
    url: str,
    format: WebhookFormat,
    base_url: str | None,
    extra_headers: dict[str, str] | None = None,
) -> Outgoing:
    """The webhook POST for ``note``: ntfy's headers and a text body, or a JSON document."""
    link = base_url.rstrip("/") + app_link(note.session_id) if base_url else None
    ntfy = format == "ntfy" or (format == "auto" and looks_like_ntfy(url))
    if ntfy:
        headers = _ntfy_headers(note, link)
        body = as_text(note.body).encode()
    else:
        headers = {"Content-Type": "application/json"}
        body = json_bytes(_json_body(note, link))
    headers["User-Agent"] = "sidecode-trio"
    return Outgoing(url, {**headers, **(extra_headers or {})}, body)


def _json_body(note: Notification, link: str | None) -> dict[str, Any]:
    return {
        "source": "sidecode-trio",
        "kind": note.kind.value,
        "session_id": note.session_id or None,
        "request_id": note.request_id,
        "title": as_text(note.title),
        "message": as_text(note.body),
        "count": note.count,
        "at": note.at,
        "url": link,
        "actions": actions(note),
    }


def _ntfy_headers(note: Notification, link: str | None) -> dict[str, str]:
    headers = {
        "Title": header_text(note.title),
        "Priority": NTFY_PRIORITY[note.kind],
        "Tags": f"{NTFY_TAGS[note.kind]},sidecode",
        "Content-Type": "text/plain; charset=utf-8",
    }
    if link:
        headers["Click"] = link
        headers["Actions"] = f"view, Open, {link}, clear=true"
    return headers


def header_text(text: str) -> str:
    """A header value: as is when ASCII, else an RFC 2047 encoded word (ntfy decodes it)."""
    flat = " ".join(as_text(text).split())
    if flat.isascii():
        return flat
    return "=?UTF-8?B?" + base64.b64encode(flat.encode()).decode() + "?="
