"""Every operation a client can ask for, written once; transports only decode and encode.

Each method takes a decoded request (a frozen class from :mod:`sidecode_trio.wire.requests`) and
returns a reply, or raises a :class:`~sidecode_trio.errors.ClientError` that the transport turns
into its own error shape. Writes wait until their events are durable before replying, so a reply
never acknowledges something a crash could lose.
"""

from __future__ import annotations

import trio

from .. import __version__
from ..claude.messages import PERMISSION_MODES
from ..errors import BadRequest
from ..eventlog.core import Position
from ..eventlog.log import EventLog, Replay, SnapshotRead, Subscription
from ..sessions.registry import SessionRegistry
from ..wire import requests as rq
from ..wire.snapshot import SessionInfo, Snapshot


def _check_text(text: str, field: str) -> None:
    if not text.strip():
        raise BadRequest(f"{field} must not be empty")
    if len(text) > rq.MAX_TEXT_CHARS:
        raise BadRequest(f"{field} is longer than {rq.MAX_TEXT_CHARS} characters", code="too_long")


def _check_mode(mode: str) -> None:
    if mode not in PERMISSION_MODES:
        raise BadRequest(f"unknown permission mode {mode!r}; one of {', '.join(PERMISSION_MODES)}")


class Operations:
    def __init__(self, registry: SessionRegistry, log: EventLog) -> None:
        self._registry = registry
        self._log = log

    def info(self) -> rq.DaemonInfo:
        return rq.DaemonInfo(protocol=rq.PROTOCOL_VERSION, version=__version__)

    def statistics(self) -> dict[str, object]:
        return {"log": self._log.statistics(), "sessions": self._registry.statistics()}

    def list_sessions(self) -> rq.SessionList:
        return rq.SessionList(self._registry.summaries())

    async def create_session(self, request: rq.CreateSession) -> rq.SessionCreatedReply:
        if request.prompt is not None:
            _check_text(request.prompt, "prompt")
        _check_mode(request.permission_mode)
        info, message_id = self._registry.create(
            request.cwd, request.prompt, request.model, request.permission_mode, request.client_id
        )
        await self._log.flush()
        return rq.SessionCreatedReply(self._registry.info(info.id), message_id)

    def snapshot_position(self, session_id: str) -> Position:
        """The session's current ``(epoch, cursor)``; raises ``NotFound`` for an unknown id."""
        self._registry.get(session_id)
        return self._log.position(session_id)

    def snapshot(self, session_id: str) -> Snapshot:
        self._registry.get(session_id)
        return self._log.snapshot(session_id)

    async def send_message(self, session_id: str, request: rq.SendMessage) -> rq.MessageAccepted:
        _check_text(request.text, "text")
        message_id, created = self._registry.send(session_id, request.text, request.client_id)
        await self._log.flush()
        return rq.MessageAccepted(message_id, created)

    async def interrupt(self, session_id: str) -> rq.InterruptReply:
        interrupted = await self._registry.get(session_id).interrupt()
        return rq.InterruptReply(interrupted)

    async def answer_permission(
        self, session_id: str, request_id: str, request: rq.AnswerPermission
    ) -> None:
        supervisor = self._registry.get(session_id)
        await supervisor.answer_permission(
            request_id,
            request.behavior == "allow",
            message=request.message,
            updated_input=request.updated_input,
            updated_permissions=request.updated_permissions,
            interrupt=request.interrupt,
        )
        await self._log.flush()

    async def update_session(self, session_id: str, request: rq.UpdateSession) -> SessionInfo:
        supervisor = self._registry.get(session_id)
        if request.permission_mode is None and request.model is None:
            raise BadRequest("nothing to update: give permission_mode and/or model")
        if request.permission_mode is not None:
            _check_mode(request.permission_mode)
            await supervisor.set_permission_mode(request.permission_mode)
        if request.model is not None:
            await supervisor.set_model(request.model)
        await self._log.flush()
        return self._registry.info(session_id)

    def subscribe_sessions(
        self, max_queue: int
    ) -> tuple[list[SessionInfo], trio.MemoryReceiveChannel[SessionInfo]]:
        return self._registry.subscribe_list(max_queue)

    def subscribe(
        self, session_id: str, since: Position | None, max_queue: int
    ) -> tuple[Replay | SnapshotRead, Subscription]:
        self._registry.get(session_id)
        return self._log.subscribe(session_id, since, max_queue)
