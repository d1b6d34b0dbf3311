"""Fold a session's events into its current state (pure, no I/O).

The daemon folds every committed event; a client that applies a snapshot and then the events after
it must reach the same state. The fold is mutable internally (a long answer is thousands of deltas:
appending to a list beats rebuilding frozen objects) and hands out frozen :class:`Snapshot` values.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..wire import events as ev
from ..wire.snapshot import (
    AssistantItem,
    ErrorItem,
    Item,
    MessageState,
    SessionInfo,
    Snapshot,
    ToolItem,
    ToolStatus,
    TurnEndItem,
    UserItem,
)

REFUSED = "store_unavailable"  #: the reason a message refused with a 503 ends with; never ran


class _Text:
    """An assistant text block being streamed: chunks joined only when asked."""

    __slots__ = ("chunks", "complete", "index", "is_api_error", "message_id")

    def __init__(self, message_id: str, index: int) -> None:
        self.message_id = message_id
        self.index = index
        self.chunks: list[str] = []
        self.complete = False
        self.is_api_error = False

    def freeze(self) -> AssistantItem:
        if len(self.chunks) > 1:
            self.chunks = ["".join(self.chunks)]
        text = self.chunks[0] if self.chunks else ""
        return AssistantItem(self.message_id, self.index, text, self.complete, self.is_api_error)


class SessionFold:
    """The state of one session, advanced by :meth:`apply`."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.cwd = ""
        self.title = ""
        self.model: str | None = None
        self.permission_mode = "default"
        self.status = ev.SessionStatus.IDLE
        self.cli = ev.CLIState.STOPPED
        self.created_at = 0.0
        self.last_activity = 0.0
        self.cost_usd = 0.0
        self.turns = 0
        self.archived = False
        self.deleted = False
        self.source = "local"
        self.mirrored = False
        self.mirror_name: str | None = None
        self.created_client_id: str | None = None  #: the ``client_id`` of the create
        self.active_turn: str | None = None
        self.queued: list[str] = []
        self.pending: dict[str, ev.PermissionRequested] = {}
        # Transcript: frozen items, or a _Text still growing. Indexes find items by their ids.
        self._items: list[Item | _Text] = []
        self._users: dict[str, int] = {}
        self._texts: dict[tuple[str, int], int] = {}
        self._tools: dict[str, int] = {}

    # -- reading -----------------------------------------------------------------------------

    def info(self) -> SessionInfo:
        return SessionInfo(
            id=self.session_id,
            cwd=self.cwd,
            title=self.title,
            model=self.model,
            permission_mode=self.permission_mode,
            status=self.status,
            cli=self.cli,
            created_at=self.created_at,
            last_activity=self.last_activity,
            cost_usd=self.cost_usd,
            pending_permissions=len(self.pending),
            queued_messages=len(self.queued),
            turns=self.turns,
            archived=self.archived,
            deleted=self.deleted,
            source=self.source,
            mirrored=self.mirrored,
            mirror_name=self.mirror_name,
        )

    def message_client_ids(self) -> list[tuple[str, str]]:
        """``(client_id, message_id)`` of the messages accepted with one, oldest first; a
        message refused with a 503 (ended ``store_unavailable``: it never ran) is left out."""
        refused = {
            item.turn_id
            for item in self._items
            if isinstance(item, TurnEndItem) and item.reason == REFUSED
        }
        return [
            (item.client_id, item.message_id)
            for item in self._items
            if isinstance(item, UserItem)
            and item.client_id is not None
            and item.message_id not in refused
        ]

    def tool(self, tool_use_id: str) -> ToolItem | None:
        position = self._tools.get(tool_use_id)
        item = self._items[position] if position is not None else None
        return item if isinstance(item, ToolItem) else None

    def snapshot(self, epoch: str, cursor: int) -> Snapshot:
        items = [item.freeze() if isinstance(item, _Text) else item for item in self._items]
        return Snapshot(
            epoch=epoch,
            cursor=cursor,
            session=self.info(),
            items=items,
            pending_permissions=list(self.pending.values()),
            active_turn=self.active_turn,
            queued=list(self.queued),
            created_client_id=self.created_client_id,
        )

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> SessionFold:
        fold = cls(snap.session.id)
        info = snap.session
        fold.cwd, fold.title, fold.model = info.cwd, info.title, info.model
        fold.permission_mode, fold.status, fold.cli = info.permission_mode, info.status, info.cli
        fold.created_at, fold.last_activity = info.created_at, info.last_activity
        fold.cost_usd, fold.turns = info.cost_usd, info.turns
        fold.archived, fold.deleted = info.archived, info.deleted
        fold.source = info.source
        fold.mirrored, fold.mirror_name = info.mirrored, info.mirror_name
        fold.active_turn = snap.active_turn
        fold.queued = list(snap.queued)
        # Kept in the snapshot: a create without a prompt has no first message to take it from,
        # and a later message's client_id is not the create's.
        fold.created_client_id = snap.created_client_id
        fold.pending = {p.request_id: p for p in snap.pending_permissions}
        for item in snap.items:
            if isinstance(item, AssistantItem):
                text = _Text(item.message_id, item.index)
                text.chunks = [item.text]
                text.complete, text.is_api_error = item.complete, item.is_api_error
                fold._add(text)
            else:
                fold._add(item)
        return fold

    # -- advancing ---------------------------------------------------------------------------

    def apply(self, event: ev.Event, at: float) -> None:
        self.last_activity = at
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _add(self, item: Item | _Text) -> None:
        position = len(self._items)
        self._items.append(item)
        if isinstance(item, UserItem):
            self._users[item.message_id] = position
        elif isinstance(item, _Text):
            self._texts[(item.message_id, item.index)] = position
        elif isinstance(item, ToolItem):
            self._tools[item.tool_use_id] = position

    def _text(self, message_id: str, index: int) -> _Text:
        position = self._texts.get((message_id, index))
        if position is None:
            text = _Text(message_id, index)
            self._add(text)
            return text
        found = self._items[position]
        assert isinstance(found, _Text)
        return found

    def _set_user_state(self, message_id: str, state: MessageState) -> None:
        position = self._users.get(message_id)
        if position is not None:
            item = self._items[position]
            assert isinstance(item, UserItem)
            self._items[position] = attrs.evolve(item, state=state)

    def _end_turn(self, turn_id: str, state: MessageState, end: TurnEndItem) -> None:
        if self.active_turn == turn_id:
            self.active_turn = None
        if turn_id in self.queued:
            self.queued.remove(turn_id)
        self._set_user_state(turn_id, state)
        self._add(end)

    # One small function per event type; _HANDLERS dispatches by type.

    def _created(self, e: ev.SessionCreated) -> None:
        self.cwd, self.title, self.model = e.cwd, e.title, e.model
        self.permission_mode = e.permission_mode
        self.source = e.source
        self.created_client_id = e.client_id
        self.created_at = self.last_activity

    def _updated(self, e: ev.SessionUpdated) -> None:
        if e.title is not None:
            self.title = e.title
        if e.model is not None:
            self.model = e.model
        if e.permission_mode is not None:
            self.permission_mode = e.permission_mode
        if e.archived is not None:
            self.archived = e.archived

    def _deleted(self, e: ev.SessionDeleted) -> None:
        self.deleted = True

    def _status(self, e: ev.StatusChanged) -> None:
        self.status = e.status

    def _cli(self, e: ev.CLIStateChanged) -> None:
        self.cli = e.state

    def _queued(self, e: ev.MessageQueued) -> None:
        self._add(UserItem(e.message_id, e.text, MessageState.QUEUED, e.client_id, e.images))
        self.queued.append(e.message_id)

    def _delivered(self, e: ev.MessageDelivered) -> None:
        self._set_user_state(e.message_id, MessageState.DELIVERED)

    def _turn_started(self, e: ev.TurnStarted) -> None:
        self.active_turn = e.turn_id
        self.turns += 1
        if e.turn_id in self.queued:
            self.queued.remove(e.turn_id)
        self._set_user_state(e.turn_id, MessageState.STARTED)
        if e.model:
            self.model = e.model

    def _delta(self, e: ev.TextDelta) -> None:
        self._text(e.message_id, e.index).chunks.append(e.text)

    def _assistant_text(self, e: ev.AssistantText) -> None:
        text = self._text(e.message_id, e.index)
        text.chunks = [e.text]
        text.complete = True
        text.is_api_error = e.is_api_error

    def _tool_started(self, e: ev.ToolStarted) -> None:
        position = self._tools.get(e.tool_use_id)
        item = ToolItem(e.tool_use_id, e.name, e.input, ToolStatus.RUNNING, title=e.title)
        if position is None:
            self._add(item)
        else:
            self._items[position] = item

    def _tool_finished(self, e: ev.ToolFinished) -> None:
        status = ToolStatus.FAILED if e.is_error else ToolStatus.COMPLETED
        position = self._tools.get(e.tool_use_id)
        done = {"status": status, "output": e.output, "result": e.result, "diff": e.diff}
        done |= {"title": e.title, "truncated": e.truncated}
        if position is None:
            self._add(ToolItem(e.tool_use_id, "unknown", {}, **done))
            return
        old = self._items[position]
        assert isinstance(old, ToolItem)
        self._items[position] = attrs.evolve(old, **done)

    def _permission_requested(self, e: ev.PermissionRequested) -> None:
        self.pending[e.request_id] = e

    def _permission_resolved(self, e: ev.PermissionResolved) -> None:
        self.pending.pop(e.request_id, None)

    def _completed(self, e: ev.TurnCompleted) -> None:
        self.cost_usd = e.total_cost_usd
        end = TurnEndItem(e.turn_id, "completed", e.stop_reason or "", "", e.cost_usd, e.usage)
        self._end_turn(e.turn_id, MessageState.COMPLETED, end)

    def _failed(self, e: ev.TurnFailed) -> None:
        if e.total_cost_usd is not None:
            self.cost_usd = e.total_cost_usd
        end = TurnEndItem(e.turn_id, "failed", e.reason, e.message, e.cost_usd, e.usage)
        self._end_turn(e.turn_id, MessageState.FAILED, end)

    def _interrupted(self, e: ev.TurnInterrupted) -> None:
        if e.total_cost_usd is not None:
            self.cost_usd = e.total_cost_usd
        end = TurnEndItem(e.turn_id, "interrupted", "", "", e.cost_usd, e.usage)
        self._end_turn(e.turn_id, MessageState.INTERRUPTED, end)

    def _error(self, e: ev.SessionError) -> None:
        self._add(ErrorItem(e.code, e.message))

    def _mirror(self, e: ev.SessionMirror) -> None:
        self.mirrored = e.enabled
        self.mirror_name = e.name if e.enabled else None

    def _upstream_connected(self, e: ev.UpstreamConnected) -> None:
        self.cli = ev.CLIState.RUNNING  # for a remote session, "cli" is its link upstream

    def _upstream_disconnected(self, e: ev.UpstreamDisconnected) -> None:
        self.cli = ev.CLIState.STOPPED if e.retry_in is None else ev.CLIState.STARTING


_HANDLERS: dict[type[ev.Event], Any] = {
    ev.SessionCreated: SessionFold._created,
    ev.SessionUpdated: SessionFold._updated,
    ev.SessionDeleted: SessionFold._deleted,
    ev.StatusChanged: SessionFold._status,
    ev.CLIStateChanged: SessionFold._cli,
    ev.MessageQueued: SessionFold._queued,
    ev.MessageDelivered: SessionFold._delivered,
    ev.TurnStarted: SessionFold._turn_started,
    ev.TextDelta: SessionFold._delta,
    ev.AssistantText: SessionFold._assistant_text,
    ev.ToolStarted: SessionFold._tool_started,
    ev.ToolFinished: SessionFold._tool_finished,
    ev.PermissionRequested: SessionFold._permission_requested,
    ev.PermissionResolved: SessionFold._permission_resolved,
    ev.TurnCompleted: SessionFold._completed,
    ev.TurnFailed: SessionFold._failed,
    ev.TurnInterrupted: SessionFold._interrupted,
    ev.SessionError: SessionFold._error,
    ev.SessionMirror: SessionFold._mirror,
    ev.UpstreamConnected: SessionFold._upstream_connected,
    ev.UpstreamDisconnected: SessionFold._upstream_disconnected,
}
