"""The control stream's state machine (pure: bytes and ``now`` in, actions out).

::

    HELLO --hello (a version in common)--> AUTH --auth verified--> READY
      |                                     |                        |
      +-- anything else: close ------------ + -- timeout: close      +-- requests, subscriptions

Before ``READY`` only the open requests (``GET /v1/info``, ``POST /v1/pair``) are served; other
requests are answered ``401`` and counted as errors, and frames may be at most ``open_frame``
bytes (the open routes' small body limit). A frame that is not JSON, not an object, of
an unknown type or with bad fields gets an ``error`` frame; past ``max_errors`` of them, or on a
frame over ``max_frame`` bytes (the framing cannot be trusted after that), the session is closed
with a code. The machine never raises on peer input.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from typing import Any, Final

import attrs

from ..security.auth import Principal
from ..wire import converter as wire
from . import frames as fr
from .frames import CloseCode

HANDSHAKE_TIMEOUT: Final = 10.0  # seconds from the session's start to a verified auth
MAX_ERRORS: Final = 16  # bad frames tolerated per session


class Phase(enum.Enum):
    HELLO = "hello"
    AUTH = "auth"
    READY = "ready"
    CLOSED = "closed"


# -- actions for the driver ------------------------------------------------------------------


@attrs.frozen
class Send:
    payload: bytes  #: one JSON object (the driver frames it)


@attrs.frozen
class Close:
    code: CloseCode
    message: str


@attrs.frozen
class Authenticate:
    auth: fr.Auth


@attrs.frozen
class Call:
    request: fr.Request
    principal: Principal | None  #: None before authentication (open routes only)


@attrs.frozen
class Open:
    subscribe: fr.Subscribe
    principal: Principal


@attrs.frozen
class Cancel:
    sub: int


Action = Send | Close | Authenticate | Call | Open | Cancel


class ControlProtocol:
    def __init__(
        self,
        *,
        welcome: bytes,
        max_frame: int,
        now: float,
        open_routes: Collection[tuple[str, str]] = (),
        open_frame: int | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_errors: int = MAX_ERRORS,
    ) -> None:
        self._welcome = welcome
        self._max_frame = max_frame
        self._decoder = fr.FrameDecoder(min(max_frame, open_frame or max_frame))
        self._open_routes = frozenset(open_routes)
        self._deadline: float | None = now + handshake_timeout
        self._max_errors = max_errors
        self.phase = Phase.HELLO
        self.principal: Principal | None = None
        self.errors = 0
        self.frames = 0

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    def __repr__(self) -> str:
        return f"<ControlProtocol {self.phase.value} frames={self.frames} errors={self.errors}>"

    # -- input -------------------------------------------------------------------------------

    def receive(self, data: bytes, ended: bool) -> list[Action]:
        if self.phase is Phase.CLOSED:
            return []
        try:
            payloads = self._decoder.feed(data)
        except fr.FrameTooLarge as exc:
            return self._close(CloseCode.FRAME_TOO_LARGE, str(exc))
        actions: list[Action] = []
        for payload in payloads:
            actions += self._frame(payload)
            if self.closed:
                return actions
        if ended:
            actions += self._close(CloseCode.NORMAL, "the client ended the control stream")
        return actions

    def _frame(self, payload: bytes) -> list[Action]:
        self.frames += 1
        try:
            data = wire.loads(payload)
        except (ValueError, RecursionError) as exc:  # not UTF-8, NaN, nested too deep, ...
            return self._bad("bad_frame", f"a frame is not JSON: {exc}")
        if not isinstance(data, dict):
            return self._bad("bad_frame", "a frame must be a JSON object")
        kind = data.get("type")
        if not isinstance(kind, str) or kind not in fr.CLIENT_MESSAGES:  # a list: unhashable
            if self.phase is Phase.HELLO:
                return self._close(CloseCode.PROTOCOL_ERROR, "the first frame must be 'hello'")
            return self._bad("unknown_type", f"unknown frame type {str(kind)[:40]!r}", data)
        try:
            message = wire.structure(data, fr.ClientMessage)
        except ValueError as exc:
            if self.phase is Phase.HELLO:
                return self._close(CloseCode.PROTOCOL_ERROR, f"bad hello: {exc}")
            return self._bad("invalid_field", str(exc), data)
        return self._message(message)

    def _message(self, message: fr.ClientMessage) -> list[Action]:
        if self.phase is Phase.HELLO:
            if not isinstance(message, fr.Hello):
                return self._close(CloseCode.PROTOCOL_ERROR, "the first frame must be 'hello'")
            if not set(message.versions) & set(fr.VERSIONS):
                supported = ", ".join(map(str, fr.VERSIONS))
                text = f"no protocol version in common; this daemon speaks {supported}"
                return [
                    Send(fr.error("unsupported_version", text)),
                    *self._close(CloseCode.UNSUPPORTED_VERSION, text),
                ]
            self.phase = Phase.AUTH
            return [Send(self._welcome)]
        if isinstance(message, fr.Request):
            if self.phase is Phase.READY:
                return [Call(message, self.principal)]
            if (message.method.upper(), message.path) in self._open_routes:
                return [Call(message, None)]
            self._count_error()
            return [
                Send(fr.error_reply(message.id, 401, "unauthorized", "authenticate first")),
                *self._too_many(),
            ]
        if isinstance(message, fr.Subscribe):
            if self.principal is None:
                self._count_error()
                return [
                    Send(fr.error_reply(message.id, 401, "unauthorized", "authenticate first")),
                    *self._too_many(),
                ]
            return [Open(message, self.principal)]
        if isinstance(message, fr.Unsubscribe) and self.phase is Phase.READY:
            return [Cancel(message.id)]
        if isinstance(message, fr.Auth) and self.phase is Phase.AUTH:
            return [Authenticate(message)]
        return self._bad("unexpected_frame", f"'{message.TYPE}' is not expected now")

    # -- results from the driver -------------------------------------------------------------

    def authenticated(self, principal: Principal) -> list[Action]:
        if self.phase is not Phase.AUTH:
            return []
        self.phase, self.principal, self._deadline = Phase.READY, principal, None
        self._decoder.max_frame = self._max_frame
        return [Send(fr.ready(principal.device_id, principal.name, principal.scope.value))]

    def auth_failed(self, message: str) -> list[Action]:
        return [
            Send(fr.error("unauthorized", message)),
            *self._close(CloseCode.UNAUTHORIZED, message),
        ]

    def close(self, code: CloseCode, message: str) -> list[Action]:
        """The daemon closes on purpose (revoked, lagging, stopping)."""
        if self.phase is Phase.CLOSED:
            return []
        return [Send(fr.closing(code, message)), *self._close(code, message)]

    # -- time --------------------------------------------------------------------------------

    def timer(self) -> float | None:
        return self._deadline if self.phase is not Phase.CLOSED else None

    def handle_timer(self, now: float) -> list[Action]:
        if self._deadline is None or now < self._deadline or self.phase is Phase.CLOSED:
            return []
        message = "no authentication in time"
        return [
            Send(fr.error("unauthorized", message)),
            *self._close(CloseCode.UNAUTHORIZED, message),
        ]

    def statistics(self) -> dict[str, object]:
        return {
            "phase": self.phase.value,
            "frames": self.frames,
            "errors": self.errors,
            "buffered": self._decoder.buffered,
        }

    # -- helpers -----------------------------------------------------------------------------

    def _bad(self, code: str, message: str, data: dict[str, Any] | None = None) -> list[Action]:
        self._count_error()
        request_id = data.get("id") if data is not None else None
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            request_id = None
        return [Send(fr.error(code, message, request_id)), *self._too_many()]

    def _count_error(self) -> None:
        self.errors += 1

    def _too_many(self) -> list[Action]:
        if self.errors <= self._max_errors:
            return []
        return self._close(CloseCode.PROTOCOL_ERROR, f"more than {self._max_errors} bad frames")

    def _close_unauthorized(self, message: str) -> list[Action]:
        return self._close(CloseCode.UNAUTHORIZED, message)

    def _close(self, code: CloseCode, message: str) -> list[Action]:
        self.phase, self._deadline = Phase.CLOSED, None
        return [Close(code, message)]
