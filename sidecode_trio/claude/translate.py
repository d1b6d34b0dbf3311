"""Translate the CLI's stdout frames into domain events (pure, stateful per CLI process).

Frame shapes are those of ``reference/claude-code-cli.md`` §5-6. Parsing is lenient: unknown frame
types and subtypes are skipped, missing fields take defaults, and a field of the wrong type is
treated as missing. Nothing here raises on input from the CLI.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Final

from ..views import diff as diffs
from ..views import tools
from ..wire import events as ev
from .framing import Frame, TextDeltaLine

MAX_OUTPUT_CHARS: Final = 16 * 1024  # tool output kept in the event; all of it is stored aside
MAX_TOOLS_REMEMBERED: Final = 1024  # tool calls whose input is kept to title their results
MAX_RESULT_BYTES: Final = 256 * 1024  # structured tool results larger than this are dropped
INTERRUPTED_REASONS: Final = frozenset({"aborted_streaming", "aborted_tools"})
MAX_COALESCED: Final = 1024  # characters of text deltas merged into one event (see coalesce)


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def usage_of(value: Any) -> ev.Usage:
    usage = _dict(value)
    return ev.Usage(
        input_tokens=_int(usage.get("input_tokens")),
        output_tokens=_int(usage.get("output_tokens")),
        cache_creation_input_tokens=_int(usage.get("cache_creation_input_tokens")),
        cache_read_input_tokens=_int(usage.get("cache_read_input_tokens")),
    )


def _text_of(content: Any) -> str:
    """The text of a tool_result's ``content``: a string, or a list of text blocks."""
    if isinstance(content, str):
        return content
    parts = [_str(block.get("text")) for block in _list(content) if isinstance(block, dict)]
    return "\n".join(p for p in parts if p)


def _bounded_result(value: Any) -> Any:
    if value is None:
        return None
    try:
        size = len(json.dumps(value, separators=(",", ":")))
    except (TypeError, ValueError):
        return None
    return value if size <= MAX_RESULT_BYTES else None


class Translator:
    """Feed frames with :meth:`feed`; it returns the domain events they mean.

    ``delivered`` is set by the supervisor to the id of the message it last wrote to stdin: it
    names the turn when the CLI does not stamp ``user_message_uuid`` on its frames.
    """

    def __init__(self, total_cost_usd: float = 0.0) -> None:
        self.total_cost_usd = total_cost_usd
        self.delivered: str | None = None
        self.turn_id: str | None = None
        self._starting: str | None = None  # from command_lifecycle "started": the next turn
        self.model: str | None = None
        self._open_block: dict[str, int] = {}  # API message id -> index of the streaming block
        self._blocks_seen: dict[str, int] = {}  # API message id -> blocks seen without streaming
        self._tools: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()  # id -> call
        self._outputs: list[tuple[str, str]] = []  # (tool_use_id, whole output) when cut

    def take_outputs(self) -> list[tuple[str, str]]:
        """Whole outputs of tools whose event carries only the first part (then forgotten)."""
        outputs, self._outputs = self._outputs, []
        return outputs

    def feed_all(self, frames: Iterable[Frame]) -> list[ev.Event]:
        """The events of one read's frames, text deltas coalesced: ``coalesce`` of :meth:`feed`
        of each frame, but a run of :class:`TextDeltaLine` (the framer's fast path) costs no
        event per line, only one ``TextDelta`` per coalesced piece (a property test holds the two
        ways equal)."""
        out: list[ev.Event] = []
        texts: list[str] = []  # the piece being gathered: its texts, block and length
        key: tuple[str, int] | None = None
        size = 0
        for frame in frames:
            if type(frame) is TextDeltaLine:
                # the dominant line, inline: no tuple for the piece, none for its key
                text = frame.text
                if not text:
                    continue  # as feed(): an empty delta is no event
                if (
                    key is not None
                    and frame.message_id == key[0]
                    and frame.block == key[1]
                    and size + len(text) <= MAX_COALESCED
                ):
                    texts.append(text)
                    size += len(text)
                    continue
                if key is not None:
                    out.append(ev.TextDelta(key[0], key[1], "".join(texts)))
                key, texts, size = (frame.message_id, frame.block), [text], len(text)
                continue
            assert isinstance(frame, dict)
            for piece in self.feed(frame):
                if isinstance(piece, ev.TextDelta):
                    text, here = piece.text, (piece.message_id, piece.index)
                else:
                    if key is not None:
                        out.append(ev.TextDelta(key[0], key[1], "".join(texts)))
                        key = None
                    out.append(piece)
                    continue
                if not text:
                    continue  # as feed(): an empty delta is no event
                if here == key and size + len(text) <= MAX_COALESCED:
                    texts.append(text)
                    size += len(text)
                    continue
                if key is not None:
                    out.append(ev.TextDelta(key[0], key[1], "".join(texts)))
                key, texts, size = here, [text], len(text)
        if key is not None:
            out.append(ev.TextDelta(key[0], key[1], "".join(texts)))
        return out

    def feed(self, frame: Mapping[str, Any]) -> list[ev.Event]:
        kind = frame.get("type")
        if kind == "stream_event":
            return self._stream_event(frame)
        if kind == "assistant":
            return self._assistant(frame)
        if kind == "user":
            return self._user(frame)
        if kind == "system":
            return self._system(frame)
        if kind == "result":
            return self._result(frame)
        if kind == "control_request":
            return self._control_request(frame)
        if kind == "command_lifecycle":
            if frame.get("state") == "started":
                self._starting = _str(frame.get("command_uuid")) or None
            return []
        if kind == "control_cancel_request":
            request_id = _str(frame.get("request_id"))
            if request_id:
                return [ev.PermissionResolved(request_id, ev.PermissionOutcome.WITHDRAWN)]
        return []

    # -- turns -------------------------------------------------------------------------------

    def _turn_of(self, frame: Mapping[str, Any]) -> str:
        stamped = _str(frame.get("user_message_uuid"))
        if not stamped:
            uuids = [u for u in _list(frame.get("user_message_uuids")) if isinstance(u, str)]
            stamped = uuids[-1] if uuids else ""
        return stamped or self._starting or self.delivered or _str(frame.get("uuid"), "turn")

    def _system(self, frame: Mapping[str, Any]) -> list[ev.Event]:
        subtype = frame.get("subtype")
        if subtype == "init":
            self.model = _str(frame.get("model")) or self.model
            turn_id = self._turn_of(frame)
            if turn_id == self.turn_id:
                return []
            self.turn_id = turn_id
            return [ev.TurnStarted(turn_id, self.model)]
        if subtype == "status":
            mode = frame.get("permissionMode")
            if isinstance(mode, str) and mode:
                return [ev.SessionUpdated(permission_mode=mode)]
            return []
        if subtype == "api_retry":
            attempt, most = _int(frame.get("attempt")), _int(frame.get("max_retries"))
            status = frame.get("error_status")
            return [
                ev.SessionError(
                    "api_retry", f"API request failed (HTTP {status}); retry {attempt}/{most}"
                )
            ]
        return []

    def _result(self, frame: Mapping[str, Any]) -> list[ev.Event]:
        turn_id = self._turn_of(frame) if self.turn_id is None else self.turn_id
        stamped = _str(frame.get("user_message_uuid"))
        if stamped:
            turn_id = stamped
        self.turn_id = None
        self._starting = None
        total = _float(frame.get("total_cost_usd"))
        cost = 0.0
        if total is not None:
            cost = max(0.0, total - self.total_cost_usd)
            self.total_cost_usd = total
        usage = usage_of(frame.get("usage"))
        terminal = _str(frame.get("terminal_reason"))
        subtype = _str(frame.get("subtype"), "success")
        if terminal in INTERRUPTED_REASONS:
            return [ev.TurnInterrupted(turn_id, usage, cost, total)]
        if frame.get("is_error") is True or subtype != "success":
            errors = [e for e in _list(frame.get("errors")) if isinstance(e, str)]
            message = _str(frame.get("result")) or "; ".join(errors)
            reason = terminal if terminal and terminal != "completed" else subtype
            if reason == "success":  # older CLIs: an API error ends "completed" with is_error
                reason = "api_error"
            return [ev.TurnFailed(turn_id, reason, message, usage, cost, total)]
        return [
            ev.TurnCompleted(
                turn_id=turn_id,
                result=_str(frame.get("result")),
                stop_reason=_str(frame.get("stop_reason")) or None,
                usage=usage,
                cost_usd=cost,
                total_cost_usd=self.total_cost_usd,
                duration_ms=_int(frame.get("duration_ms")),
                num_turns=_int(frame.get("num_turns")),
            )
        ]

    # -- streamed text -----------------------------------------------------------------------

    def _stream_event(self, frame: Mapping[str, Any]) -> list[ev.Event]:
        event = _dict(frame.get("event"))
        kind = event.get("type")
        message_id = _str(frame.get("api_message_id"))
        if kind == "message_start" and not message_id:
            message_id = _str(_dict(event.get("message")).get("id"))
        if kind == "content_block_start":
            self._open_block[message_id] = _int(event.get("index"))
        elif kind == "content_block_delta":
            delta = _dict(event.get("delta"))
            text = delta.get("text")
            if delta.get("type") == "text_delta" and isinstance(text, str) and text:
                return [ev.TextDelta(message_id, _int(event.get("index")), text)]
        return []

    def _assistant(self, frame: Mapping[str, Any]) -> list[ev.Event]:
        message = _dict(frame.get("message"))
        message_id = _str(message.get("id")) or _str(frame.get("uuid"))
        is_error = frame.get("is_api_error_message") is True
        out: list[ev.Event] = []
        for block in _list(message.get("content")):
            if not isinstance(block, dict):
                continue
            index = self._block_index(message_id)
            kind = block.get("type")
            if kind == "text":
                out.append(ev.AssistantText(message_id, index, _str(block.get("text")), is_error))
            elif kind == "tool_use":
                tool_id = _str(block.get("id"))
                if tool_id:
                    name, tool_input = _str(block.get("name")), _dict(block.get("input"))
                    self._remember_tool(tool_id, name, tool_input)
                    title = tools.started_title(name, tool_input)
                    out.append(ev.ToolStarted(tool_id, name, tool_input, title))
        return out

    def _block_index(self, message_id: str) -> int:
        """The index of the block an ``assistant`` frame completes (one block per frame)."""
        if message_id in self._open_block:
            return self._open_block[message_id]
        index = self._blocks_seen.get(message_id, 0)
        self._blocks_seen[message_id] = index + 1
        return index

    def _user(self, frame: Mapping[str, Any]) -> list[ev.Event]:
        if frame.get("isReplay") is True:
            return []
        content = _dict(frame.get("message")).get("content")
        out: list[ev.Event] = []
        for block in _list(content):
            if isinstance(block, dict) and block.get("type") == "tool_result":
                tool_id = _str(block.get("tool_use_id"))
                if tool_id:
                    out.append(self._tool_finished(tool_id, block, frame.get("tool_use_result")))
        return out

    def _remember_tool(self, tool_id: str, name: str, tool_input: dict[str, Any]) -> None:
        self._tools[tool_id] = (name, tool_input)
        while len(self._tools) > MAX_TOOLS_REMEMBERED:
            self._tools.popitem(last=False)

    def _tool_finished(
        self, tool_id: str, block: Mapping[str, Any], result: Any
    ) -> ev.ToolFinished:
        """A tool's result, paired with its call by ``tool_use_id`` (never by adjacency)."""
        output = _text_of(block.get("content"))
        is_error = block.get("is_error") is True
        truncated = len(output) > MAX_OUTPUT_CHARS
        if truncated:
            self._outputs.append((tool_id, output))
        name, tool_input = self._tools.pop(tool_id, ("", {}))
        diff = None if is_error else diffs.from_result(name, tool_input, result)
        return ev.ToolFinished(
            tool_use_id=tool_id,
            is_error=is_error,
            output=output[:MAX_OUTPUT_CHARS] if truncated else output,
            result=_bounded_result(result),
            title=tools.finished_title(name, tool_input, result, is_error, output, diff=diff),
            diff=diff,
            truncated=truncated,
            output_chars=len(output),
        )

    # -- permission requests -----------------------------------------------------------------

    def _control_request(self, frame: Mapping[str, Any]) -> list[ev.Event]:
        request = _dict(frame.get("request"))
        request_id = _str(frame.get("request_id"))
        if request.get("subtype") != "can_use_tool" or not request_id:
            return []
        name, tool_input = _str(request.get("tool_name"), "unknown"), _dict(request.get("input"))
        suggestions = _list(request.get("permission_suggestions"))
        return [
            ev.PermissionRequested(
                request_id=request_id,
                tool_name=name,
                input=tool_input,
                tool_use_id=_str(request.get("tool_use_id")) or None,
                description=_str(request.get("description")),
                suggestions=suggestions,
                blocked_path=_str(request.get("blocked_path")) or None,
                requires_user_interaction=request.get("requires_user_interaction") is True,
                summary=tools.permission_summary(name, tool_input),
                suggestion_labels=[tools.suggestion_label(s) for s in suggestions],
            )
        ]


def coalesce(events: list[ev.Event], max_chars: int = MAX_COALESCED) -> list[ev.Event]:
    """Merge runs of text deltas of the same block (up to ``max_chars``) into one event.

    Applied to the events of one stdout read: it adds no latency (nothing waits for more), and a
    burst of tokens becomes one log row and one SSE frame instead of dozens.
    """
    if len(events) < 2:
        return events
    out: list[ev.Event] = []
    for event in events:
        last = out[-1] if out else None
        if (
            isinstance(event, ev.TextDelta)
            and isinstance(last, ev.TextDelta)
            and last.message_id == event.message_id
            and last.index == event.index
            and len(last.text) + len(event.text) <= max_chars
        ):
            out[-1] = ev.TextDelta(last.message_id, last.index, last.text + event.text)
        else:
            out.append(event)
    return out
