"""Every operation a client can ask for, written once; transports only decode and encode.

Each method takes the :class:`~..security.auth.Principal` asking and a decoded request (a frozen
class from :mod:`..wire.requests`), checks the principal's scope, and returns a reply or raises a
:class:`~..errors.ClientError` that the transport turns into its own error shape. Writes wait until
their events are durable before replying, so a reply never acknowledges something a crash could
lose.

Scopes: ``approve`` reads everything and can answer permission requests (with the options
offered) and interrupt; ``chat`` also starts sessions, sends messages, switches the model,
narrows the permission mode and puts its own words in answers; ``admin`` also widens the
permission mode, applies rules that allow, and manages devices.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from .. import __version__
from ..claude.messages import PERMISSION_MODES
from ..claude.probe import CLIProbe
from ..errors import BadRequest, Forbidden, NotFound, StoreError, Unsupported
from ..eventlog.core import Position
from ..eventlog.log import EventLog, Replay, SnapshotRead, Subscription
from ..feed.paths import parse_events_path
from ..printable import check_device_name
from ..security.auth import MODE_RANK, Principal
from ..security.devices import Device, Scope
from ..security.guard import Guard
from ..security.pairing import PairingProof
from ..sessions import folders
from ..sessions.core import check_model
from ..sessions.registry import SessionFilter, SessionRegistry, inside_roots
from ..sessions.supervisor import Prompt
from ..views import tools
from ..wire import events as ev
from ..wire import requests as rq
from ..wire.snapshot import SessionInfo, Snapshot, ToolItem
from . import images as image_check

TITLE_MAX: Final = 200


@attrs.frozen
class Policy:
    """What paired devices may do beyond their scope (the local owner is not bound by it)."""

    remote_modes: frozenset[str] = frozenset({"default", "acceptEdits", "plan", "dontAsk", "auto"})

    def check_mode(self, who: Principal, mode: str) -> None:
        if who.device_id is not None and mode not in self.remote_modes:
            raise Forbidden(
                f"permission mode {mode!r} cannot be chosen from a paired device on this daemon "
                f"(allowed: {', '.join(sorted(self.remote_modes))}; see remote_modes)",
                code="mode_not_allowed",
            )


def check_permission_update(
    policy: Policy, who: Principal, rule: Any, current: str, roots: Sequence[Path] = ()
) -> None:
    """One permission update: a rule that allows, or that removes or replaces deny/ask rules,
    widens (``admin``); a device never writes the user's global settings, nor gives a session a
    directory outside the allowed ``roots`` (where it could not open a session either); a mode
    switch is checked like a direct one."""
    if not isinstance(rule, Mapping):
        who.require(Scope.ADMIN)  # not understood: it may widen
        return
    if who.device_id is not None and rule.get("destination") == "userSettings":
        raise Forbidden(
            "a paired device cannot change the user's global settings (userSettings)",
            code="destination_not_allowed",
        )
    if who.device_id is not None and rule.get("type") == "addDirectories":
        _check_directories(rule.get("directories"), roots)
    kind, behavior = rule.get("type"), rule.get("behavior")
    allows = kind in ("addRules", "replaceRules") and behavior == "allow"
    relaxes = kind in ("removeRules", "replaceRules") and behavior in ("deny", "ask")
    if allows or relaxes:  # lets more run without asking: widening
        who.require(Scope.ADMIN)
    if rule.get("type") == "setMode":
        mode = rule.get("mode")
        if not isinstance(mode, str) or mode not in PERMISSION_MODES:
            raise BadRequest(f"setMode needs a known mode, got {mode!r}")
        who.require_mode_change(current, mode)
        policy.check_mode(who, mode)


def _check_directories(directories: Any, roots: Sequence[Path]) -> None:
    """The directories a device adds to a session: each inside an allowed root (symlinks
    resolved), the check ``resolve_cwd`` makes of a session's own folder."""
    if not isinstance(directories, list) or not directories:
        raise BadRequest("addDirectories needs a list of directories")
    for directory in directories:
        if not isinstance(directory, str) or not directory or "\x00" in directory:
            raise BadRequest("addDirectories needs a list of directories")
        real = Path(os.path.realpath(Path(directory).expanduser()))
        if not inside_roots(real, roots):
            raise Forbidden(
                f"{directory} is outside the allowed roots: a paired device cannot give a "
                "session access to it",
                code="path_not_allowed",
            )


def _is_session_mode_switch(rule: Any) -> bool:
    """``{"type": "setMode", "destination": "session", ...}``: no rule is written; the mode it
    names is checked as a direct switch would be (:func:`check_permission_update`)."""
    return (
        isinstance(rule, Mapping)
        and rule.get("type") == "setMode"
        and rule.get("destination") == "session"
    )


def _check_text(text: str, field: str) -> None:
    if not text.strip():
        raise BadRequest(f"{field} must not be empty")
    if len(text) > rq.MAX_TEXT_CHARS:
        raise BadRequest(f"{field} is longer than {rq.MAX_TEXT_CHARS} characters", code="too_long")


def _check_mode(mode: str) -> None:
    if mode not in PERMISSION_MODES:
        raise BadRequest(f"unknown permission mode {mode!r}; one of {', '.join(PERMISSION_MODES)}")


class Operations:
    def __init__(
        self,
        registry: SessionRegistry,
        log: EventLog,
        guard: Guard,
        policy: Policy = Policy(),
        probes: Mapping[str, Callable[[], object]] | None = None,
        cli: CLIProbe | None = None,
    ) -> None:
        self._registry = registry
        self._log = log
        self._guard = guard
        self._policy = policy
        self._probes = dict(probes or {})  #: more parts of /v1/status (e.g. keep-awake)
        self._cli = cli  #: what the sessions' claude can do (mirroring needs --remote-control)

    def _not_done(self, what: str) -> StoreError:
        """The 503 of a send or create: it was taken back, so a retry is safe (PROTOCOL §4)."""
        return StoreError(
            f"the event store is failing ({self._log.store_error}); {what}: retry later",
            code="store_unavailable",
        )

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
            quic=list(self._guard.pairings.quic_urls),
            remote_modes=sorted(self._policy.remote_modes, key=lambda m: MODE_RANK.get(m, 99)),
        )

    def pair(self, request: rq.PairRequest, remote: str | None) -> rq.PairReply:
        proof = PairingProof(
            request.secret_id,
            request.device_public_key,
            request.name,
            request.mac,
            request.signature,
            request.box_public_key,
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
            **{name: probe() for name, probe in self._probes.items()},
        }

    def list_sessions(
        self, who: Principal, query: SessionFilter = SessionFilter()
    ) -> rq.SessionList:
        who.require(Scope.APPROVE)
        return rq.SessionList(self._registry.summaries(query))

    def upstream_times(self, session_id: str) -> tuple[str | None, str | None]:
        """A Remote Control session's ``created_at``/``updated_at`` as upstream lists them
        ((None, None) for a local session, or before the first listing)."""
        remote = self._registry.remote(session_id)
        return remote.upstream_times if remote is not None else (None, None)

    async def create_session(
        self, who: Principal, request: rq.CreateSession
    ) -> rq.SessionCreatedReply:
        who.require(Scope.CHAT)
        prompt = None
        if request.prompt is not None:
            _check_text(request.prompt, "prompt")
            prompt = _prompt(request.prompt, request.images)
        elif request.images:
            raise BadRequest("images need a prompt to go with them")
        if request.title is not None:
            _check_title(request.title)
        _check_mode(request.permission_mode)
        who.require_mode_change("default", request.permission_mode)
        self._policy.check_mode(who, request.permission_mode)
        _check_model(request.model)
        info, message_id, created = self._registry.create(
            request.cwd,
            prompt,
            request.model,
            request.permission_mode,
            request.client_id,
            request.title,
        )
        try:
            await self._log.flush()
        except StoreError as exc:
            if created and await self._registry.refuse_create(info.id, message_id):
                raise self._not_done("the session was not created") from exc
        return rq.SessionCreatedReply(self._registry.info(info.id), message_id, created)

    def snapshot_position(self, who: Principal, session_id: str) -> Position:
        """The session's current ``(epoch, cursor)``; raises ``NotFound`` for an unknown id."""
        who.require(Scope.APPROVE)
        self._registry.check(session_id)
        return self._log.position(session_id)

    def snapshot(self, who: Principal, session_id: str) -> Snapshot:
        who.require(Scope.APPROVE)
        self._registry.check(session_id)
        self._registry.follow(session_id)  # a remote session catches up while looked at
        return self._log.snapshot(session_id)

    async def send_message(
        self, who: Principal, session_id: str, request: rq.SendMessage
    ) -> rq.MessageAccepted:
        who.require(Scope.CHAT)
        _check_text(request.text, "text")
        remote = self._registry.remote(session_id)
        if remote is not None:
            if request.images:
                raise Unsupported("images cannot be sent to a Remote Control session from here")
            message_id = await remote.send(request.text, request.client_id)
            await self._log.flush()
            return rq.MessageAccepted(message_id, True)
        prompt = _prompt(request.text, request.images)
        message_id, created = self._registry.send(session_id, prompt, request.client_id)
        try:
            await self._log.flush()
        except StoreError as exc:
            if self._registry.withdraw(session_id, message_id):
                raise self._not_done("the message was not queued and will not run") from exc
        return rq.MessageAccepted(message_id, created)

    async def interrupt(self, who: Principal, session_id: str) -> rq.InterruptReply:
        who.require(Scope.APPROVE)
        remote = self._registry.remote(session_id)
        if remote is not None:
            interrupted = await remote.interrupt()
            await self._log.flush()
            return rq.InterruptReply(interrupted)
        interrupted = await self._registry.get(session_id).interrupt()
        await self._log.flush()  # a message stopped before it ran has its end event committed
        return rq.InterruptReply(interrupted)

    async def answer_permission(
        self, who: Principal, session_id: str, request_id: str, request: rq.AnswerPermission
    ) -> None:
        """Allow or deny. A plain yes/no, or an ``AskUserQuestion`` answer among the offered
        labels, needs ``approve``; anything that puts words before the model (a deny message, a
        label not offered) or changes what runs (edited input, rules, mode switches) needs
        ``chat``; a rule that allows something needs ``admin``, and a mode switch obeys the same
        rules as a direct one (scope and policy). Paired devices may apply only the request's
        own suggestions (by index), never one for the user's global settings, or switch this
        session's mode (``setMode`` to ``session``: what approving a plan does), which is checked
        like a direct mode switch."""
        who.require(Scope.APPROVE)
        supervisor = self._registry.get(session_id)
        pending = supervisor.pending(request_id)
        allow = request.behavior == "allow"
        if not allow and (request.suggestions or request.answers or request.updated_input):
            raise BadRequest("suggestions, answers and updated_input go with 'allow' only")
        if request.interrupt and allow:
            raise BadRequest("interrupt goes with 'deny' (deny and stop the turn)")
        if request.message and not who.scope.allows(Scope.CHAT):
            raise Forbidden(
                "a message to the model needs the 'chat' scope; deny without one "
                f"({who.name!r} has '{who.scope.value}')",
                code="scope_required",
            )
        updated_input = request.updated_input
        if request.answers is not None:
            updated_input = _answered_input(
                pending, request.answers, offered_only=not who.scope.allows(Scope.CHAT)
            )
        elif updated_input is not None:
            who.require(Scope.CHAT)
        if (
            request.updated_permissions
            and who.device_id is not None
            and not all(map(_is_session_mode_switch, request.updated_permissions))
        ):
            raise Forbidden(
                "a paired device may apply only this request's own suggestions (by index) "
                "and switch this session's mode",
                code="suggestions_only",
            )
        rules = [_suggestion(pending, i) for i in request.suggestions]
        rules += request.updated_permissions or []
        if rules:
            who.require(Scope.CHAT)
            current = self._registry.info(session_id).permission_mode
            for rule in rules:
                check_permission_update(self._policy, who, rule, current, self._registry.roots)
        await supervisor.answer_permission(
            request_id,
            allow,
            message=request.message,
            updated_input=updated_input,
            updated_permissions=rules,
            applied=[tools.suggestion_label(rule) for rule in rules],
            interrupt=request.interrupt,
            by=who.name,
        )
        await self._log.flush()

    async def update_session(
        self, who: Principal, session_id: str, request: rq.UpdateSession
    ) -> SessionInfo:
        who.require(Scope.CHAT)
        remote = self._registry.remote(session_id)
        only_archive = request == rq.UpdateSession(archived=request.archived)
        if remote is not None and only_archive and request.archived is not None:
            remote.set_archived(request.archived)  # the one label a remote session takes here
            await self._log.flush()
            return self._registry.info(session_id)
        supervisor = self._registry.get(session_id)
        if all(getattr(request, f.name) is None for f in attrs.fields(rq.UpdateSession)):
            raise BadRequest("nothing to update: give title, archived, permission_mode or model")
        if request.title is not None:
            _check_title(request.title)
        if request.permission_mode is not None:
            _check_mode(request.permission_mode)
            current = self._registry.info(session_id).permission_mode
            who.require_mode_change(current, request.permission_mode)
            self._policy.check_mode(who, request.permission_mode)
            await supervisor.set_permission_mode(request.permission_mode)
        if request.model is not None:
            await supervisor.set_model(request.model)
        if request.title is not None or request.archived is not None:
            supervisor.set_labels(title=request.title, archived=request.archived)
        await self._log.flush()
        return self._registry.info(session_id)

    async def set_mirror(
        self, who: Principal, session_id: str, request: rq.SetMirror
    ) -> rq.MirrorReply:
        """Mirror a local session to Claude Code's Remote Control, or stop: the CLI restarts
        (resuming the session) with or without ``--remote-control``. ``chat`` scope: it is the
        owner's own claude.ai account, but the conversation then leaves this machine."""
        who.require(Scope.CHAT)
        if self._registry.info(session_id).source != "local":
            raise Unsupported("only a local session can be mirrored", code="unsupported")
        if request.name is not None:
            _check_title(request.name)
        if request.enabled:
            support = await self._cli.check_async() if self._cli is not None else None
            if support is None or not support.remote_control:
                why = support.error if support is not None and support.error else ""
                raise Unsupported(
                    "this daemon's claude CLI cannot mirror a session: "
                    + (why or "its --help lists no --remote-control (update Claude Code)")
                )
        changed = await self._registry.set_mirror(session_id, request.enabled, request.name)
        await self._log.flush()
        info = self._registry.info(session_id)
        return rq.MirrorReply(info.mirrored, info.mirror_name, changed, info)

    async def delete_session(
        self, who: Principal, session_id: str, remove_log: bool
    ) -> rq.DeleteReply:
        """Stop the session's CLI and drop it from every list; ``remove_log`` also deletes the
        daemon's log of it and the CLI's transcript (otherwise both stay on disk)."""
        who.require(Scope.CHAT)
        await self._registry.delete(session_id, remove_log)
        return rq.DeleteReply(session_id, remove_log)

    def tool(self, who: Principal, session_id: str, tool_use_id: str) -> tools.ToolView:
        """One tool call in full: typed details, diff, and the whole output."""
        who.require(Scope.APPROVE)
        item = self._tool_item(session_id, tool_use_id)
        return tools.describe(
            item.tool_use_id,
            item.name,
            item.input,
            status=item.status.value,
            output=self._whole_output(session_id, item),
            result=item.result,
            is_error=item.status.value == "failed",
            diff=item.diff,  # computed once, when the result arrived
        )

    def tool_output(self, who: Principal, session_id: str, tool_use_id: str) -> rq.ToolOutput:
        who.require(Scope.APPROVE)
        output = self._whole_output(session_id, self._tool_item(session_id, tool_use_id))
        return rq.ToolOutput(tool_use_id, output, len(output))

    def _whole_output(self, session_id: str, item: ToolItem) -> str:
        """Events carry a bounded part of a long output; the log keeps all of it aside."""
        if not item.truncated:
            return item.output
        return self._log.output(session_id, item.tool_use_id) or item.output

    async def browse(
        self, who: Principal, path: str | None, *, hidden: bool, files: bool
    ) -> folders.FolderListing:
        """A folder inside the allowed roots (the roots themselves for ``path=None``)."""
        who.require(Scope.CHAT)  # it is for starting sessions
        return await folders.browse_async(path, self._registry.roots, hidden=hidden, files=files)

    async def recent_folders(self, who: Principal) -> rq.RecentFolders:
        who.require(Scope.CHAT)
        uses = self._registry.folder_uses()
        found = await folders.recent_folders_async(uses, self._registry.roots)
        return rq.RecentFolders(found)

    def _tool_item(self, session_id: str, tool_use_id: str) -> ToolItem:
        self._registry.check(session_id)
        item = self._log.fold(session_id).tool(tool_use_id)
        if item is None:
            raise NotFound(f"unknown tool call {tool_use_id!r}", code="unknown_tool")
        return item

    def subscribe_sessions(
        self, who: Principal, max_queue: int
    ) -> tuple[list[SessionInfo], trio.MemoryReceiveChannel[SessionInfo]]:
        who.require(Scope.APPROVE)
        return self._registry.subscribe_list(max_queue)

    def subscribe(
        self, who: Principal, session_id: str, since: Position | None, max_queue: int
    ) -> tuple[Replay | SnapshotRead, Subscription]:
        who.require(Scope.APPROVE)
        self._registry.check(session_id)
        # a remote session is followed upstream meanwhile; a local one's CLI is warmed
        self._registry.follow(session_id, opened=True)
        return self._log.subscribe(session_id, since, max_queue)

    def ticket(self, who: Principal, request: rq.TicketRequest) -> rq.TicketReply:
        who.require(Scope.APPROVE)
        stream = parse_events_path(request.path)
        if stream is None or stream.path != request.path:  # exactly a stream's path, no query
            raise BadRequest(
                "tickets are for event streams, by their exact path: /v1/events or "
                "/v1/sessions/{id}/events"
            )
        ticket, expires = self._guard.tickets.issue(who, request.path)
        return rq.TicketReply(ticket, expires)

    # -- devices -----------------------------------------------------------------------------

    def create_pairing(self, who: Principal, request: rq.PairingOfferRequest) -> dict[str, Any]:
        who.require(Scope.ADMIN)
        if not 10 <= request.ttl <= 3600:
            raise BadRequest("ttl must be between 10 and 3600 seconds")
        return self._guard.offer(Scope(request.scope), request.ttl)

    def add_watchcode_device(
        self, who: Principal, request: rq.WatchCodeDeviceRequest
    ) -> rq.WatchCodeDeviceReply:
        """A device for the WatchCode apps, which authenticate with a static secret."""
        who.require(Scope.ADMIN)
        name = request.name.strip()
        check_device_name(name)
        device, secret = self._guard.devices.add_secret(name, Scope(request.scope))
        return rq.WatchCodeDeviceReply(_device(device), secret, list(self._guard.urls))

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


def _check_title(title: str) -> None:
    # NUL: a mirror's name goes on the CLI's command line, where it raised (ending the daemon)
    if not title.strip() or len(title) > TITLE_MAX or "\n" in title or "\x00" in title:
        raise BadRequest(f"a title is one non-empty line of at most {TITLE_MAX} characters")


def _check_model(model: str | None) -> None:
    if model is not None:
        check_model(model)


def _prompt(text: str, images: Sequence[rq.Image]) -> Prompt:
    refs, blocks = image_check.prepare(images)
    return Prompt(text, refs, blocks)


def _suggestion(request: ev.PermissionRequested, index: int) -> Any:
    if not 0 <= index < len(request.suggestions):
        raise BadRequest(
            f"suggestion {index} does not exist; this request has {len(request.suggestions)}",
            code="unknown_suggestion",
        )
    return request.suggestions[index]


def _answered_input(
    request: ev.PermissionRequested,
    answers: Mapping[str, str | list[str]],
    *,
    offered_only: bool,
) -> dict[str, Any]:
    """``AskUserQuestion``'s input with the answers, in the shape the CLI expects: question text
    to the chosen label (several labels of a multi-select joined with ", "). ``offered_only``
    (an ``approve`` device): every label must be one the question offered, one per question
    unless it is a multi-select."""
    if request.tool_name != "AskUserQuestion":
        raise BadRequest("answers are for AskUserQuestion requests only")
    questions = request.input.get("questions")
    asked = {
        q.get("question"): q
        for q in (questions if isinstance(questions, list) else [])
        if isinstance(q, dict)
    }
    unknown = [q for q in answers if q not in asked]
    if unknown:
        raise BadRequest(f"no such question: {unknown[0]!r}", code="unknown_question")
    if not answers:
        raise BadRequest("answers must answer at least one question")
    if offered_only:
        for question, answer in answers.items():
            _check_offered(asked[question], answer)
    chosen = {q: a if isinstance(a, str) else ", ".join(a) for q, a in answers.items()}
    return {**request.input, "answers": chosen}


def _check_offered(question: Mapping[str, Any], answer: str | list[str]) -> None:
    options = question.get("options")
    listed = options if isinstance(options, list) else []
    offered = {o.get("label") for o in listed if isinstance(o, dict)}
    labels = [answer] if isinstance(answer, str) else answer
    several = len(labels) != 1 and not question.get("multiSelect")
    if several or not labels or any(label not in offered for label in labels):
        raise Forbidden(
            "an answer other than the offered options needs the 'chat' scope",
            code="scope_required",
        )


def _device(device: Device) -> rq.DeviceView:
    return rq.DeviceView(
        id=device.id,
        name=device.name,
        fingerprint=device.fingerprint,
        scope=device.scope.value,
        paired_at=device.paired_at,
        last_seen=device.last_seen,
        revoked_at=device.revoked_at,
        kind=device.kind,
    )
