"""Operation requests and responses: the bodies clients send and get back (any transport)."""

from __future__ import annotations

from typing import Any, Final, Literal

import attrs

from .snapshot import SessionInfo

PROTOCOL_VERSION: Final = 1
MAX_TEXT_CHARS: Final = 200_000


@attrs.frozen
class CreateSession:
    cwd: str
    prompt: str | None = None
    model: str | None = None
    permission_mode: str = "default"
    client_id: str | None = None


@attrs.frozen
class SendMessage:
    text: str
    client_id: str | None = None


@attrs.frozen
class AnswerPermission:
    behavior: Literal["allow", "deny"]
    message: str = ""
    updated_input: dict[str, Any] | None = None
    updated_permissions: list[Any] | None = None
    interrupt: bool = False


@attrs.frozen
class UpdateSession:
    permission_mode: str | None = None
    model: str | None = None


@attrs.frozen
class SessionCreatedReply:
    session: SessionInfo
    message_id: str | None = None


@attrs.frozen
class MessageAccepted:
    message_id: str
    created: bool  #: False when ``client_id`` repeated an earlier message (nothing was queued)


@attrs.frozen
class InterruptReply:
    interrupted: bool


@attrs.frozen
class SessionList:
    sessions: list[SessionInfo]


@attrs.frozen
class ErrorDetail:
    code: str
    message: str


@attrs.frozen
class ErrorReply:
    error: ErrorDetail


@attrs.frozen
class DaemonInfo:
    protocol: int
    version: str
    name: str = "sidecode-trio"
