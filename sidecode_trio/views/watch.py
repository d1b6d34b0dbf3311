"""The compact feed for small screens, compatible with WatchCode's watch events.

A :class:`WatchEvent` has WatchCode's shape (``type``, ``content``, ``summary``, ``detail``,
``timestamp``; ``anchors-seeds.md`` §6.2-6.5) plus what WatchCode lacked: ``ref`` pairs a tool's
result with its call by id (WatchCode paired a ``tool_use`` with whatever came next, so parallel
calls paired wrongly), and permission prompts are surfaced with button labels.

The text rules are WatchCode's (§6.3), ported as written: :func:`strip_markdown`,
:func:`summarize_text`, :func:`summarize_tool_input` and :func:`summarize_tool_result`. Two small
deliberate differences: the list-marker rules never reach across a line break (JavaScript's
``\\s`` in ``^\\s*[-*+]\\s+`` does, and would join a bullet to the blank line above it), and a
whitespace-only tool result counts as empty ("Done").

Domain events map to watch events like this (:meth:`WatchProjection.feed`)::

    MessageQueued        user         content = text, summary = summarize_text, ref = message id
    AssistantText        assistant    content = the whole block, summary = summarize_text
      is_api_error       error        same fields
    TextDelta            -            a watch gets the completed block only
    ToolStarted          tool_use     content = tool name, summary = started_title,
                                      detail = summarize_tool_input, ref = tool_use_id
    ToolFinished         tool_result  content = output, summary = finished_title (of the call
                                      remembered by id), detail = summarize_tool_result
    PermissionRequested  permission   content = "Allow <tool>?" (AskUserQuestion: the question),
                                      summary = permission_summary, detail = summarize_tool_input,
                                      ref = request id, allow/deny labels or the options
    PermissionResolved   status       "Allowed" / "Denied" / "Withdrawn", summary = what was asked
    TurnCompleted        status       "Done", or "Done · $0.0123" when it cost something
    TurnFailed           error        "<reason>: <message>"
    TurnInterrupted      status       "Interrupted"
    SessionError         error        content = message, detail = code
    CLIStateChanged      error        only when it crashed: "Claude Code crashed (exit N)"
    StatusChanged        status       "Running" / "Waiting for approval" / "Idle" / "Error"
    SessionUpdated       status       "Mode: plan · Model: x · Renamed: y"
    UpstreamConnected    status       "Connected to Remote Control" / "Reconnected …"
    UpstreamDisconnected status       "Remote Control disconnected · retrying in 4 s";
                         error        when the login was refused (detail = the code)
    anything else        -

Turn ends carry ``ref`` = the turn id (the id of the user message that started the turn).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import attrs

from ..wire import events as ev
from ..wire import snapshot as snap
from ..wire.tools import AskUserQuestion, ExitPlanMode, Question
from . import tools

MAX_SUMMARY_CHARS: Final = 300
MAX_RESULT_SUMMARY_CHARS: Final = 120
MAX_INPUT_DETAIL_CHARS: Final = 200
MAX_INPUT_FIELD_CHARS: Final = 150
MEMORY: Final = 1024  #: tool calls and permission requests remembered per stream


@attrs.frozen
class WatchEvent:
    type: str  #: user | assistant | tool_use | tool_result | permission | status | error
    content: str
    timestamp: str  #: ISO-8601 UTC with milliseconds and "Z", like JavaScript's toISOString
    summary: str | None = None
    detail: str | None = None
    ref: str | None = None  #: message id, tool_use_id, or permission request id
    allow_label: str | None = None  #: permission only: the two buttons
    deny_label: str | None = None
    options: list[str] | None = None  #: AskUserQuestion: the first question's option labels


def iso_time(at: float) -> str:
    """``at`` (unix seconds) as JavaScript's ``Date.toISOString`` writes it: ms truncated, "Z"."""
    millis = math.floor(at * 1000) if math.isfinite(at) else 0
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=millis)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# -- WatchCode's text rules ----------------------------------------------------------------------

# Each rule is (pattern, replacement), applied in order; see anchors-seeds.md §6.3.
_MARKDOWN_RULES: Final = (
    (re.compile(r"```[\s\S]*?```"), "[code block]"),
    (re.compile(r"^#{1,6}\s+", re.MULTILINE), ""),
    (re.compile(r"\*\*(.+?)\*\*"), r"\1"),
    (re.compile(r"\*(.+?)\*"), r"\1"),
    (re.compile(r"__(.+?)__"), r"\1"),
    (re.compile(r"_(.+?)_"), r"\1"),
    (re.compile(r"~~(.+?)~~"), r"\1"),
    (re.compile(r"`(.+?)`"), r"\1"),
    (re.compile(r"^[^\S\n]*[-*+][^\S\n]+", re.MULTILINE), "- "),
    (re.compile(r"^[^\S\n]*\d+\.[^\S\n]+", re.MULTILINE), ""),
    (re.compile(r"\[([^\]]+)\]\(([^)]+)\)"), r"\1"),
    (re.compile(r"\n{3,}"), "\n\n"),
)


def strip_markdown(text: str) -> str:
    """Plain text for a small screen: code blocks become "[code block]", emphasis and link
    targets go, list bullets become "- ", runs of blank lines shrink to one."""
    for pattern, replacement in _MARKDOWN_RULES:
        text = pattern.sub(replacement, text)
    return text.strip()


def summarize_text(text: str, limit: int = MAX_SUMMARY_CHARS) -> str:
    """The markdown-free text, cut to ``limit`` characters with "…" when longer."""
    plain = strip_markdown(text)
    return plain if len(plain) <= limit else plain[:limit] + "…"


def summarize_tool_input(name: str, input: Mapping[str, Any]) -> str:
    """One line saying what a call works on (WatchCode's table): "$ ls", a path, a pattern."""
    fields = input if isinstance(input, Mapping) else {}
    match name:
        case "Bash":
            return "$ " + _text(fields.get("command"))[:MAX_INPUT_DETAIL_CHARS]
        case "Read" | "Write" | "Edit" | "MultiEdit":
            return _text(fields.get("file_path"))
        case "Glob":
            return "Pattern: " + _text(fields.get("pattern"))
        case "Grep":
            return "Search: " + _text(fields.get("pattern"))
        case "WebFetch" | "WebSearch":
            return _text(fields.get("url")) or _text(fields.get("query"))
        case "Agent" | "Subagent" | "Task":
            prompt = _text(fields.get("prompt"))[:MAX_INPUT_DETAIL_CHARS]
            return prompt or _text(fields.get("description"))
    return _summarize_fields(fields)


def _summarize_fields(fields: Mapping[str, Any]) -> str:
    """Short string fields as ``k: v, ...`` (at most 200 chars), else the JSON's first 150."""
    pairs = [
        f"{key}: {value}"
        for key, value in fields.items()
        if isinstance(value, str) and len(value) < MAX_INPUT_FIELD_CHARS
    ]
    if pairs:
        return ", ".join(pairs)[:MAX_INPUT_DETAIL_CHARS]
    try:
        encoded = json.dumps(fields, ensure_ascii=False, separators=(",", ":"), default=str)
    except (TypeError, ValueError):  # keys that are not strings, circular data
        encoded = repr(fields)
    return encoded[:MAX_INPUT_FIELD_CHARS]


_LINE_NUMBERED: Final = re.compile(r"^\s*\d+→")


def summarize_tool_result(text: str) -> str:
    """A tool's output in a few words: "Done" when empty; short text as is; "<n> lines" of a
    file read (line-numbered); "<n> lines of output" when more than 3 lines have text; else the
    first 120 characters and "…"."""
    if not text.strip():
        return "Done"
    if len(text) < MAX_RESULT_SUMMARY_CHARS:
        return text
    if _LINE_NUMBERED.match(text):
        return f"{len(text.splitlines())} lines"
    filled = sum(1 for line in text.splitlines() if line.strip())
    if filled > 3:
        return f"{filled} lines of output"
    return text[:MAX_RESULT_SUMMARY_CHARS] + "…"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


# -- domain events -> watch events ---------------------------------------------------------------

_STATUS_LABELS: Final = {
    ev.SessionStatus.RUNNING: "Running",
    ev.SessionStatus.REQUIRES_ACTION: "Waiting for approval",
    ev.SessionStatus.IDLE: "Idle",
    ev.SessionStatus.ERRORED: "Error",
}
_OUTCOME_LABELS: Final = {
    ev.PermissionOutcome.ALLOWED: "Allowed",
    ev.PermissionOutcome.DENIED: "Denied",
    ev.PermissionOutcome.WITHDRAWN: "Withdrawn",
}


@attrs.frozen
class _Call:
    name: str
    input: Mapping[str, Any]


@attrs.frozen
class _Request:
    summary: str
    tool_use_id: str | None


_V = TypeVar("_V")


class _Bounded(OrderedDict[str, _V]):
    """A dict that forgets its oldest entries beyond ``limit``: a stream may run for weeks."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, key: str, value: _V) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class WatchProjection:
    """Per-stream state: remembers each tool call's name and input by ``tool_use_id`` (the
    :data:`MEMORY` most recent) so a result is paired with its call by id, never by adjacency,
    and each permission request, so its answer can say what was answered and mark a denied
    call as refused."""

    def __init__(self, memory: int = MEMORY) -> None:
        self._calls: _Bounded[_Call] = _Bounded(memory)
        self._requests: _Bounded[_Request] = _Bounded(memory)
        self._refused: _Bounded[bool] = _Bounded(memory)  # calls whose permission was denied
        self._handlers: dict[type[ev.Event], Callable[[Any, str], list[WatchEvent]]] = {
            ev.MessageQueued: self._message_queued,
            ev.AssistantText: self._assistant_text,
            ev.ToolStarted: self._tool_started,
            ev.ToolFinished: self._tool_finished,
            ev.PermissionRequested: self._permission_requested,
            ev.PermissionResolved: self._permission_resolved,
            ev.TurnCompleted: self._turn_completed,
            ev.TurnFailed: self._turn_failed,
            ev.TurnInterrupted: self._turn_interrupted,
            ev.SessionError: self._session_error,
            ev.CLIStateChanged: self._cli_state_changed,
            ev.StatusChanged: self._status_changed,
            ev.SessionUpdated: self._session_updated,
            ev.UpstreamConnected: self._upstream_connected,
            ev.UpstreamDisconnected: self._upstream_disconnected,
        }

    def feed(self, event: ev.Event, at: float) -> list[WatchEvent]:
        """The watch events (0..n) for one domain event that happened at unix time ``at``."""
        handler = self._handlers.get(type(event))
        return handler(event, iso_time(at)) if handler is not None else []

    def history(self, snapshot: snap.Snapshot, at: float) -> list[WatchEvent]:
        """A fresh client's backlog: the transcript, the pending prompts, then the status.

        Everything is stamped ``at`` (a snapshot keeps no times). Tool calls still running are
        remembered, so their results, fed later, pair with them.
        """
        when = iso_time(at)
        out: list[WatchEvent] = []
        items = snapshot.items
        for position, item in enumerate(items):
            out.extend(self._item(item, when, last=position == len(items) - 1))
        for request in snapshot.pending_permissions:
            out.extend(self._permission_requested(request, when))
        out.append(WatchEvent("status", _STATUS_LABELS[snapshot.session.status], when))
        return out

    # -- transcript items ----------------------------------------------------------------------

    def _item(self, item: snap.Item, when: str, *, last: bool) -> list[WatchEvent]:
        match item:
            case snap.UserItem():
                return [_user(item.message_id, item.text, when)]
            case snap.AssistantItem() if item.complete or last:
                return _assistant(item.text, item.is_api_error, when)
            case snap.ToolItem():
                return self._tool_item(item, when)
            case snap.TurnEndItem():
                return [_turn_end(item, when)]
            case snap.ErrorItem():
                return [WatchEvent("error", item.message, when, detail=item.code or None)]
        return []

    def _tool_item(self, item: snap.ToolItem, when: str) -> list[WatchEvent]:
        started = self._tool_started(ev.ToolStarted(item.tool_use_id, item.name, item.input), when)
        if item.status is snap.ToolStatus.RUNNING:
            return started
        finished = ev.ToolFinished(
            item.tool_use_id, item.status is snap.ToolStatus.FAILED, item.output, item.result
        )
        return started + self._tool_finished(finished, when)

    # -- live events ---------------------------------------------------------------------------

    def _message_queued(self, event: ev.MessageQueued, when: str) -> list[WatchEvent]:
        return [_user(event.message_id, event.text, when)]

    def _assistant_text(self, event: ev.AssistantText, when: str) -> list[WatchEvent]:
        return _assistant(event.text, event.is_api_error, when)

    def _tool_started(self, event: ev.ToolStarted, when: str) -> list[WatchEvent]:
        self._calls.remember(event.tool_use_id, _Call(event.name, event.input))
        return [
            WatchEvent(
                "tool_use",
                event.name,
                when,
                summary=tools.started_title(event.name, event.input),
                detail=summarize_tool_input(event.name, event.input),
                ref=event.tool_use_id,
            )
        ]

    def _tool_finished(self, event: ev.ToolFinished, when: str) -> list[WatchEvent]:
        call = self._calls.pop(event.tool_use_id, None)
        refused = self._refused.pop(event.tool_use_id, False)
        if event.title and not refused:
            title = event.title  # the daemon titled it once, with its diff; not per stream
        else:
            call = call or _Call("", {})
            title = tools.finished_title(
                call.name,
                call.input,
                event.result,
                event.is_error,
                event.output,
                refused=refused,
                diff=event.diff,
            )
        return [
            WatchEvent(
                "tool_result",
                event.output,
                when,
                summary=title,
                detail=summarize_tool_result(event.output),
                ref=event.tool_use_id,
            )
        ]

    def _permission_requested(self, event: ev.PermissionRequested, when: str) -> list[WatchEvent]:
        summary = tools.permission_summary(event.tool_name, event.input)
        self._requests.remember(event.request_id, _Request(summary, event.tool_use_id))
        detail = summarize_tool_input(event.tool_name, event.input)
        prompt = WatchEvent(
            "permission",
            f"Allow {event.tool_name}?",
            when,
            summary=summary,
            detail=detail,
            ref=event.request_id,
            allow_label="Allow",
            deny_label="Deny",
        )
        asked = tools.detail_of(event.tool_name, event.input)
        if isinstance(asked, AskUserQuestion) and asked.questions:
            return [_question_prompt(prompt, asked.questions[0])]
        if isinstance(asked, ExitPlanMode):
            prompt = attrs.evolve(prompt, allow_label="Approve", deny_label="Keep planning")
        return [prompt]

    def _permission_resolved(self, event: ev.PermissionResolved, when: str) -> list[WatchEvent]:
        request = self._requests.pop(event.request_id, None)
        allowed = event.outcome is ev.PermissionOutcome.ALLOWED
        if request is not None and request.tool_use_id and not allowed:
            self._refused.remember(request.tool_use_id, True)
        return [
            WatchEvent(
                "status",
                _OUTCOME_LABELS[event.outcome],
                when,
                summary=request.summary if request is not None else (event.summary or None),
                detail=event.message or None,
                ref=event.request_id,
            )
        ]

    def _turn_completed(self, event: ev.TurnCompleted, when: str) -> list[WatchEvent]:
        return [WatchEvent("status", _done(event.cost_usd), when, ref=event.turn_id)]

    def _turn_failed(self, event: ev.TurnFailed, when: str) -> list[WatchEvent]:
        return [WatchEvent("error", _failure(event.reason, event.message), when, ref=event.turn_id)]

    def _turn_interrupted(self, event: ev.TurnInterrupted, when: str) -> list[WatchEvent]:
        return [WatchEvent("status", "Interrupted", when, ref=event.turn_id)]

    def _session_error(self, event: ev.SessionError, when: str) -> list[WatchEvent]:
        return [WatchEvent("error", event.message, when, detail=event.code or None)]

    def _cli_state_changed(self, event: ev.CLIStateChanged, when: str) -> list[WatchEvent]:
        if event.state is not ev.CLIState.CRASHED:
            return []
        code = f" (exit {event.exit_code})" if event.exit_code is not None else ""
        return [
            WatchEvent("error", f"Claude Code crashed{code}", when, detail=event.detail or None)
        ]

    def _status_changed(self, event: ev.StatusChanged, when: str) -> list[WatchEvent]:
        return [WatchEvent("status", _STATUS_LABELS[event.status], when)]

    def _session_updated(self, event: ev.SessionUpdated, when: str) -> list[WatchEvent]:
        changes = [
            f"{label}: {value}"
            for label, value in (
                ("Mode", event.permission_mode),
                ("Model", event.model),
                ("Renamed", event.title),
            )
            if value is not None
        ]
        return [WatchEvent("status", " · ".join(changes), when)] if changes else []

    def _upstream_connected(self, event: ev.UpstreamConnected, when: str) -> list[WatchEvent]:
        text = "Reconnected to Remote Control" if event.reconnect else "Connected to Remote Control"
        if event.recovered:
            text += f" · {event.recovered} missed events recovered"
        return [WatchEvent("status", text, when)]

    def _upstream_disconnected(self, event: ev.UpstreamDisconnected, when: str) -> list[WatchEvent]:
        if event.reason == "unfollowed":  # nobody watches it any more: nothing to tell a watch
            return []
        if event.code:
            message = event.message or "Remote Control refused the connection"
            return [WatchEvent("error", message, when, detail=event.code)]
        retry = f" · retrying in {event.retry_in:.0f} s" if event.retry_in is not None else ""
        return [WatchEvent("status", f"Remote Control disconnected{retry}", when)]


def _user(message_id: str, text: str, when: str) -> WatchEvent:
    return WatchEvent("user", text, when, summary=summarize_text(text), ref=message_id)


def _assistant(text: str, is_api_error: bool, when: str) -> list[WatchEvent]:
    if not text.strip():
        return []
    kind = "error" if is_api_error else "assistant"
    return [WatchEvent(kind, text, when, summary=summarize_text(text))]


def _question_prompt(prompt: WatchEvent, question: Question) -> WatchEvent:
    """An AskUserQuestion prompt: the question and its options instead of Allow; Deny stays so
    the question can be dismissed."""
    return attrs.evolve(
        prompt,
        content=question.question or prompt.content,
        allow_label=None,
        options=[option.label for option in question.options],
    )


def _done(cost_usd: float) -> str:
    return f"Done · ${cost_usd:.4f}" if cost_usd > 0 else "Done"


def _failure(reason: str, message: str) -> str:
    return f"{reason}: {message}" if message else reason


def _turn_end(item: snap.TurnEndItem, when: str) -> WatchEvent:
    if item.outcome == "completed":
        return WatchEvent("status", _done(item.cost_usd), when, ref=item.turn_id)
    if item.outcome == "interrupted":
        return WatchEvent("status", "Interrupted", when, ref=item.turn_id)
    failure = _failure(item.reason or item.outcome, item.message)
    return WatchEvent("error", failure, when, ref=item.turn_id)
