"""Every operation a client can ask for, written once; transports only decode and encode.

Each method takes the :class:`~..security.auth.Principal` asking and a decoded request (a frozen
class from :mod:`..wire.requests`), checks the principal's scope, and returns a reply or raises a
:class:`~..errors.ClientError` that the transport turns into its own error shape. Writes wait until
their events are durable before replying, so a reply never acknowledges something a crash could
lose.

Scopes: ``approve`` reads everything and can answer permission requests and interrupt; ``chat``
also starts sessions, sends messages, switches the model and narrows the permission mode;
``admin`` also widens the permission mode and manages devices.
"""

from __future__ import annotations

from typing import Any

import trio

from .. import __version__
from ..claude.messages import PERMISSION_MODES
from ..errors import BadRequest
from ..eventlog.core import Position
from ..eventlog.log import EventLog, Replay, SnapshotRead, Subscription
from ..security.auth import Principal
from ..security.devices import Device, Scope
from ..security.guard import Guard
from ..security.pairing import PairingProof
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
    def __init__(self, registry: SessionRegistry, log: EventLog, guard: Guard) -> None:
        self._registry = registry
        self._log = log
        self._guard = guard

    # -- open to anyone ----------------------------------------------------------------------

    def info(self) -> rq.DaemonInfo:
        identity = self._guard.identity
        return rq.DaemonInfo(
            protocol=rq.PROTOCOL_VERSION,
            version=__version__,
            public_key=identity.public_key_b64,
            fingerprint=identity.fingerprint,
            certificates=[
                rq.CertificateHash(c.sha256, c.signature, c.not_before, c.not_after)
                for c in self._guard.certificates.info()
            ],
        )

    def pair(self, request: rq.PairRequest, remote: str | None) -> rq.PairReply:
        proof = PairingProof(
            request.secret_id,
            request.device_public_key,
            request.name,
            request.mac,
            request.signature,
        )
        device = self._guard.pair(proof, remote)
        return rq.PairReply(device=_device(device), daemon=self.info())

    # -- sessions ----------------------------------------------------------------------------

    def statistics(self, who: Principal) -> dict[str, object]:
        who.require(Scope.ADMIN)
        return {
            "log": self._log.statistics(),
            "sessions": self._registry.statistics(),
            "links": self._guard.links.count(),
        }

    def list_sessions(self, who: Principal) -> rq.SessionList:
        who.require(Scope.APPROVE)
        return rq.SessionList(self._registry.summaries())

    async def create_session(
        self, who: Principal, request: rq.CreateSession
    ) -> rq.SessionCreatedReply:
        who.require(Scope.CHAT)
        if request.prompt is not None:
            _check_text(request.prompt, "prompt")
        _check_mode(request.permission_mode)
        who.require_mode_change("default", request.permission_mode)
        info, message_id = self._registry.create(
            request.cwd, request.prompt, request.model, request.permission_mode, request.client_id
        )
        await self._log.flush()
        return rq.SessionCreatedReply(self._registry.info(info.id), message_id)

    def snapshot_position(self, who: Principal, session_id: str) -> Position:
        """The session's current ``(epoch, cursor)``; raises ``NotFound`` for an unknown id."""
        who.require(Scope.APPROVE)
        self._registry.get(session_id)
        return self._log.position(session_id)

    def snapshot(self, who: Principal, session_id: str) -> Snapshot:
        who.require(Scope.APPROVE)
        self._registry.get(session_id)
        return self._log.snapshot(session_id)

    async def send_message(
        self, who: Principal, session_id: str, request: rq.SendMessage
    ) -> rq.MessageAccepted:
        who.require(Scope.CHAT)
        _check_text(request.text, "text")
        message_id, created = self._registry.send(session_id, request.text, request.client_id)
        await self._log.flush()
        return rq.MessageAccepted(message_id, created)

    async def interrupt(self, who: Principal, session_id: str) -> rq.InterruptReply:
        who.require(Scope.APPROVE)
        interrupted = await self._registry.get(session_id).interrupt()
        return rq.InterruptReply(interrupted)

    async def answer_permission(
        self, who: Principal, session_id: str, request_id: str, request: rq.AnswerPermission
    ) -> None:
        who.require(Scope.APPROVE)
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

    async def update_session(
        self, who: Principal, session_id: str, request: rq.UpdateSession
    ) -> SessionInfo:
        who.require(Scope.CHAT)
        supervisor = self._registry.get(session_id)
        if request.permission_mode is None and request.model is None:
            raise BadRequest("nothing to update: give permission_mode and/or model")
        if request.permission_mode is not None:
            _check_mode(request.permission_mode)
            current = self._registry.info(session_id).permission_mode
            who.require_mode_change(current, request.permission_mode)
            await supervisor.set_permission_mode(request.permission_mode)
        if request.model is not None:
            await supervisor.set_model(request.model)
        await self._log.flush()
        return self._registry.info(session_id)

    def subscribe_sessions(
        self, who: Principal, max_queue: int
    ) -> tuple[list[SessionInfo], trio.MemoryReceiveChannel[SessionInfo]]:
        who.require(Scope.APPROVE)
        return self._registry.subscribe_list(max_queue)

    def subscribe(
        self, who: Principal, session_id: str, since: Position | None, max_queue: int
    ) -> tuple[Replay | SnapshotRead, Subscription]:
        who.require(Scope.APPROVE)
        self._registry.get(session_id)
        return self._log.subscribe(session_id, since, max_queue)

    def ticket(self, who: Principal, request: rq.TicketRequest) -> rq.TicketReply:
        who.require(Scope.APPROVE)
        if not request.path.startswith("/v1/") or not request.path.endswith("events"):
            raise BadRequest(
                "tickets are for event streams: /v1/events or /v1/sessions/{id}/events"
            )
        ticket, expires = self._guard.tickets.issue(who, request.path)
        return rq.TicketReply(ticket, expires)

    # -- devices -----------------------------------------------------------------------------

    def create_pairing(self, who: Principal, request: rq.PairingOfferRequest) -> dict[str, Any]:
        who.require(Scope.ADMIN)
        if not 10 <= request.ttl <= 3600:
            raise BadRequest("ttl must be between 10 and 3600 seconds")
        return self._guard.offer(Scope(request.scope), request.ttl)

    def devices(self, who: Principal) -> rq.DeviceList:
        who.require(Scope.ADMIN)
        return rq.DeviceList([_device(d) for d in self._guard.devices.all()])

    def set_device_scope(
        self, who: Principal, device_id: str, request: rq.DeviceUpdate
    ) -> rq.DeviceView:
        who.require(Scope.ADMIN)
        return _device(self._guard.devices.set_scope(device_id, Scope(request.scope)))

    def revoke_device(self, who: Principal, device_id: str) -> rq.RevokeReply:
        who.require(Scope.ADMIN)
        device, closed = self._guard.revoke(device_id)
        return rq.RevokeReply(_device(device), closed)

    def audit(self, who: Principal, limit: int) -> rq.AuditLog:
        who.require(Scope.ADMIN)
        entries = self._guard.devices.audit_log(max(1, min(limit, 1000)))
        return rq.AuditLog([rq.AuditView(e.at, e.kind, e.device_id, e.detail) for e in entries])


def _device(device: Device) -> rq.DeviceView:
    return rq.DeviceView(
        id=device.id,
        name=device.name,
        fingerprint=device.fingerprint,
        scope=device.scope.value,
        paired_at=device.paired_at,
        last_seen=device.last_seen,
        revoked_at=device.revoked_at,
    )
