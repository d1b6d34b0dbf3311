"""The folded state of a session: what a client holds after applying every event.

A :class:`Snapshot` is sent when a client's ``(epoch, cursor)`` cannot be replayed exactly; applying
events on top of it must give the same state as applying them from the start (the property tests
check this). :class:`SessionInfo` is the one-line summary that the session list shows.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

import attrs

from . import share_repr
from .events import CLIState, FileDiff, ImageRef, PermissionRequested, SessionStatus, Usage


class MessageState(enum.StrEnum):
    QUEUED = "queued"
    DELIVERED = "delivered"
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class ToolStatus(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


@attrs.frozen(repr=False)
class SessionInfo:
    id: str
    cwd: str
    title: str
    model: str | None
    permission_mode: str
    status: SessionStatus
    cli: CLIState
    created_at: float
    last_activity: float
    cost_usd: float
    pending_permissions: int = 0
    queued_messages: int = 0
    turns: int = 0  #: turns the CLI has started; > 0 means its transcript exists (resumable)
    source: str = "local"
    archived: bool = False  #: hidden from the default list; still usable
    deleted: bool = False  #: only in the list feed: drop this session
    mirrored: bool = False  #: mirrored to Remote Control on demand (``session.mirror``)
    mirror_name: str | None = None  #: its Remote Control session name


@attrs.frozen(repr=False)
class Item:
    """Base of transcript items; the ``type`` tag tells them apart on the wire."""

    TYPE: ClassVar[str] = ""


@attrs.frozen(repr=False)
class UserItem(Item):
    TYPE: ClassVar[str] = "user"
    message_id: str
    text: str
    state: MessageState
    client_id: str | None = None
    images: list[ImageRef] = attrs.field(factory=list)


@attrs.frozen(repr=False)
class AssistantItem(Item):
    TYPE: ClassVar[str] = "assistant"
    message_id: str
    index: int
    text: str
    complete: bool
    is_api_error: bool = False


@attrs.frozen(repr=False)
class ToolItem(Item):
    TYPE: ClassVar[str] = "tool"
    tool_use_id: str
    name: str
    input: dict[str, Any]
    status: ToolStatus
    output: str = ""
    result: Any = None
    title: str = ""
    diff: FileDiff | None = None
    truncated: bool = False  #: ``output`` is cut; the tool-output route has all of it


@attrs.frozen(repr=False)
class TurnEndItem(Item):
    """How a turn ended: ``outcome`` is ``completed``, ``failed`` or ``interrupted``."""

    TYPE: ClassVar[str] = "turn_end"
    turn_id: str
    outcome: str
    reason: str = ""
    message: str = ""
    cost_usd: float = 0.0
    usage: Usage = Usage()


@attrs.frozen(repr=False)
class ErrorItem(Item):
    TYPE: ClassVar[str] = "error"
    code: str
    message: str


ITEM_CLASSES: dict[str, type[Item]] = {
    cls.TYPE: cls for cls in (UserItem, AssistantItem, ToolItem, TurnEndItem, ErrorItem)
}


@attrs.frozen(repr=False)
class Snapshot:
    """The whole state of one session at ``(epoch, cursor)``."""

    epoch: str
    cursor: int
    session: SessionInfo
    items: list[Item]
    pending_permissions: list[PermissionRequested]
    active_turn: str | None = None
    queued: list[str] = attrs.field(factory=list)
    #: the ``client_id`` the session was created with: the log's compaction drops
    #: ``session.created``, and a create retried after a restart must still find this session
    created_client_id: str | None = None


share_repr(globals())  # one __repr__ for all, not one compiled per class (see __init__)
