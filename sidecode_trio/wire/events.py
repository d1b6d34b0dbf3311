"""Domain events: what happened in a session, in the order it happened.

These frozen classes are what the event log stores and what every transport carries (SSE ``data``,
WebTransport frames), through the one converter. Each has a ``TYPE`` tag, written as ``"type"`` on
the wire. Consumers must ignore event types they do not know: new ones are added without a
protocol version bump (see ``protocol/PROTOCOL.md``).
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

import attrs

from . import share_repr


class SessionStatus(enum.StrEnum):
    IDLE = "idle"  #: no turn running; the CLI may be stopped (it is resumed on the next message)
    RUNNING = "running"  #: a turn is in progress
    REQUIRES_ACTION = "requires_action"  #: a turn waits for a permission answer
    ERRORED = "errored"  #: the CLI died or failed; the next message respawns it


class CLIState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"  #: exited on purpose (idle timeout, shutdown)
    CRASHED = "crashed"  #: exited on its own, or could not start


class PermissionOutcome(enum.StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"
    WITHDRAWN = "withdrawn"  #: the CLI cancelled the request (interrupt) or the CLI went away


@attrs.frozen(repr=False)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


@attrs.frozen(repr=False)
class ImageRef:
    """An image attached to a user message: what it was, not its bytes (those go to the CLI)."""

    media_type: str
    bytes: int
    sha256: str


@attrs.frozen(repr=False)
class FileDiff:
    """A file change as a unified diff (``--- a/path`` / ``+++ b/path`` headers, ``@@`` hunks)."""

    path: str
    unified: str
    added: int
    removed: int
    created: bool = False  #: the file did not exist before
    truncated: bool = False  #: ``unified`` was cut at a line boundary; the counts are exact


@attrs.frozen(repr=False)
class Event:
    """Base of every domain event. Never instantiated itself."""

    TYPE: ClassVar[str] = ""


@attrs.frozen(repr=False)
class SessionCreated(Event):
    TYPE: ClassVar[str] = "session.created"
    cwd: str
    title: str
    model: str | None = None
    permission_mode: str = "default"
    source: str = "local"  #: "remote": a Claude Code Remote Control session relayed by the bridge
    client_id: str | None = None  #: the create's ``client_id``: a retried create is one


@attrs.frozen(repr=False)
class SessionUpdated(Event):
    """Title, model or permission mode changed; fields left ``None`` are unchanged."""

    TYPE: ClassVar[str] = "session.updated"
    title: str | None = None
    model: str | None = None
    permission_mode: str | None = None
    archived: bool | None = None


@attrs.frozen(repr=False)
class SessionDeleted(Event):
    """The session was deleted: its CLI is stopped and it leaves every list. The last event of a
    session; with ``log_removed`` the daemon's log and the CLI's transcript are gone too."""

    TYPE: ClassVar[str] = "session.deleted"
    log_removed: bool = False


@attrs.frozen(repr=False)
class StatusChanged(Event):
    TYPE: ClassVar[str] = "session.status"
    status: SessionStatus


@attrs.frozen(repr=False)
class CLIStateChanged(Event):
    """The session's ``claude`` process started, stopped or crashed."""

    TYPE: ClassVar[str] = "cli.state"
    state: CLIState
    pid: int | None = None
    exit_code: int | None = None
    detail: str = ""


@attrs.frozen(repr=False)
class MessageQueued(Event):
    """A user message was accepted; it runs when the turns before it are done."""

    TYPE: ClassVar[str] = "message.queued"
    message_id: str
    text: str
    client_id: str | None = None
    images: list[ImageRef] = attrs.field(factory=list)


@attrs.frozen(repr=False)
class MessageDelivered(Event):
    """The message was written to the CLI's stdin."""

    TYPE: ClassVar[str] = "message.delivered"
    message_id: str


@attrs.frozen(repr=False)
class TurnStarted(Event):
    """The CLI began the turn for ``turn_id`` (the id of the message that caused it)."""

    TYPE: ClassVar[str] = "turn.started"
    turn_id: str
    model: str | None = None


@attrs.frozen(repr=False)
class TextDelta(Event):
    """Streamed assistant text, coalesced: several CLI deltas may arrive as one."""

    TYPE: ClassVar[str] = "text.delta"
    message_id: str
    index: int
    text: str


@attrs.frozen(repr=False)
class AssistantText(Event):
    """A text block of the assistant is complete; ``text`` is the whole block."""

    TYPE: ClassVar[str] = "assistant.text"
    message_id: str
    index: int
    text: str
    is_api_error: bool = False


@attrs.frozen(repr=False)
class ToolStarted(Event):
    TYPE: ClassVar[str] = "tool.started"
    tool_use_id: str
    name: str
    input: dict[str, Any]
    title: str = ""  #: one line for a list: "Running `pytest -q`", "Editing app.py"


@attrs.frozen(repr=False)
class ToolFinished(Event):
    """A tool ran or was refused. ``output`` is the text the model saw, cut to a bounded size
    (``truncated``; ``output_chars`` is the full length, fetchable from the tool-output route);
    ``result`` is the CLI's structured ``tool_use_result`` where it gave one (and small enough);
    ``diff`` is the change a file tool made."""

    TYPE: ClassVar[str] = "tool.finished"
    tool_use_id: str
    is_error: bool
    output: str
    result: Any = None
    title: str = ""  #: one line: "Ran `pytest -q`", "Edited app.py (+3 -1)" (U+2212 minus)
    diff: FileDiff | None = None
    truncated: bool = False
    output_chars: int = 0


@attrs.frozen(repr=False)
class PermissionRequested(Event):
    TYPE: ClassVar[str] = "permission.requested"
    request_id: str
    tool_name: str
    input: dict[str, Any]
    tool_use_id: str | None = None
    description: str = ""
    suggestions: list[Any] = attrs.field(factory=list)
    blocked_path: str | None = None
    requires_user_interaction: bool = False
    summary: str = ""  #: what allowing does, in words: "Run `rm -rf build`", "Edit app.py"
    suggestion_labels: list[str] = attrs.field(factory=list)  #: one per suggestion, same order
    diff: FileDiff | None = None  #: for file edits: the change against the file as it is now
    expires_at: float | None = None  #: when the timeout policy will deny it (None: it waits)


@attrs.frozen(repr=False)
class PermissionResolved(Event):
    TYPE: ClassVar[str] = "permission.resolved"
    request_id: str
    outcome: PermissionOutcome
    message: str = ""
    by: str = ""  #: who answered: a device's name, "timeout", or "" (the CLI withdrew it)
    applied: list[str] = attrs.field(factory=list)  #: labels of the suggestions applied
    summary: str = ""  #: the request's ``summary``, so an answer read alone says what it answered


@attrs.frozen(repr=False)
class TurnCompleted(Event):
    TYPE: ClassVar[str] = "turn.completed"
    turn_id: str
    result: str = ""
    stop_reason: str | None = None
    usage: Usage = Usage()
    cost_usd: float = 0.0
    total_cost_usd: float = 0.0
    duration_ms: int = 0
    num_turns: int = 0


@attrs.frozen(repr=False)
class TurnFailed(Event):
    """The turn ended in error. ``reason``: ``api_error``, ``max_turns``, ``cli_exited``,
    ``daemon_restarted``, ``error_during_execution``, ``store_unavailable`` (refused with a 503:
    it never ran), ``session_failed`` (the session's supervisor failed), ... (open set)."""

    TYPE: ClassVar[str] = "turn.failed"
    turn_id: str
    reason: str
    message: str = ""
    usage: Usage = Usage()
    cost_usd: float = 0.0
    total_cost_usd: float | None = None


@attrs.frozen(repr=False)
class TurnInterrupted(Event):
    TYPE: ClassVar[str] = "turn.interrupted"
    turn_id: str
    usage: Usage = Usage()
    cost_usd: float = 0.0
    total_cost_usd: float | None = None


@attrs.frozen(repr=False)
class SessionError(Event):
    """Something went wrong that is not one turn's failure (e.g. the CLI's stderr on a crash).
    ``code``: ``cli_exited``, ``session_failed`` (the session's supervisor failed), ..."""

    TYPE: ClassVar[str] = "session.error"
    code: str
    message: str


@attrs.frozen(repr=False)
class SessionMirror(Event):
    """Mirroring the session to Claude Code's Remote Control (claude.ai) was turned on or off.

    ``enabled`` is the setting every later CLI of this session starts with (``--remote-control
    <name>``). ``confirmed``: a CLI started with that setting answered ``initialize`` (appended
    each time the daemon restarts the CLI for it, after a daemon restart too); False: the setting
    is recorded but no CLI proved it, and ``detail`` says why (e.g. the CLI failed to start)."""

    TYPE: ClassVar[str] = "session.mirror"
    enabled: bool
    name: str | None = None  #: the Remote Control session name (when enabled)
    confirmed: bool = False
    detail: str = ""


@attrs.frozen(repr=False)
class UpstreamConnected(Event):
    """A remote session's live link to the Remote Control API is up. After a reconnect,
    ``recovered`` counts the events fetched from its history that the gap had missed."""

    TYPE: ClassVar[str] = "upstream.connected"
    reconnect: bool = False
    recovered: int = 0


@attrs.frozen(repr=False)
class UpstreamDisconnected(Event):
    """A remote session's live link dropped (``reason``: ``closed``, ``stalled``, ``error``,
    ``unauthorized``, ``unfollowed``). ``retry_in`` is the delay before the next attempt in
    seconds; ``None`` means the bridge is not retrying (nobody follows the session, or the
    credentials were refused)."""

    TYPE: ClassVar[str] = "upstream.disconnected"
    reason: str
    retry_in: float | None = None
    code: str = ""  #: the error code when one applies, e.g. ``upstream_unauthorized``
    message: str = ""


EVENT_CLASSES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        SessionCreated,
        SessionUpdated,
        SessionDeleted,
        StatusChanged,
        CLIStateChanged,
        MessageQueued,
        MessageDelivered,
        TurnStarted,
        TextDelta,
        AssistantText,
        ToolStarted,
        ToolFinished,
        PermissionRequested,
        PermissionResolved,
        TurnCompleted,
        TurnFailed,
        TurnInterrupted,
        SessionError,
        SessionMirror,
        UpstreamConnected,
        UpstreamDisconnected,
    )
}


share_repr(globals())  # one __repr__ for all, not one compiled per class (see __init__)
