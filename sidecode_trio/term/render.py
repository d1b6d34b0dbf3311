"""What ``sidecode-trio attach`` prints, and what its keys ask the daemon to do (pure).

:class:`Renderer` takes the session's snapshot and events (the wire classes, already decoded) and
returns the text to write: streamed assistant text is written as it arrives, on the current line;
everything else is whole lines (a tool call is one compact row titled by the daemon, a permission
request a small box with its keys, a turn's end a row with its cost). It also keeps the pending
permission requests, so :meth:`Renderer.key` can turn a key press into the HTTP call to make
(:class:`Call`): ``a`` allow, ``A`` allow always (the first suggested rule), ``d`` deny, ``1``-``9``
pick an ``AskUserQuestion`` option, ``i`` interrupt. No terminal, socket or clock is touched here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import quote

import attrs

from ..printable import escape
from ..wire import events as ev
from ..wire.snapshot import (
    AssistantItem,
    ErrorItem,
    Item,
    Snapshot,
    ToolItem,
    ToolStatus,
    TurnEndItem,
    UserItem,
)

ROW_CHARS: Final = 160  # a tool row or a prompt line is cut here (the details are a route away)
KEYS_HELP: Final = "keys: a allow · A allow always · d deny · i interrupt · q quit"

_COLORS: Final = {"dim": "2", "bold": "1", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}


@attrs.frozen
class Call:
    """An HTTP request a key press asks for; ``what`` names it in an error note."""

    method: str
    path: str
    body: dict[str, Any] | None
    what: str


@attrs.frozen
class Style:
    color: bool = False

    def __call__(self, name: str, text: str) -> str:
        text = escape(text)  # names, titles and paths from the daemon never drive the terminal
        return f"\x1b[{_COLORS[name]}m{text}\x1b[0m" if self.color and text else text


def _cut(text: str, limit: int = ROW_CHARS) -> str:
    line = escape(" ".join(text.split()))
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _text(text: str) -> str:
    """Model or user text: its lines and tabs kept, every other control character shown as an
    escape (a tool's output quoted by the model must not drive the owner's terminal)."""
    return escape(text, keep="\n\t")


def _money(value: float) -> str:
    return f"${value:.4f}"


class Renderer:
    def __init__(self, session_id: str, *, color: bool = False, history: int = 20) -> None:
        self.session_id = session_id
        self.style = Style(color)
        self.history = history
        self.pending: dict[str, ev.PermissionRequested] = {}  #: oldest first
        self.ended = False  #: the session was deleted: nothing more will come
        self._at_line_start = True
        self._block: tuple[str, int] | None = None  # the text block being streamed
        self._streamed: set[tuple[str, int]] = set()

    # -- output helpers ----------------------------------------------------------------------

    def _lines(self, *lines: str) -> str:
        """Whole lines, after ending a streamed line that is still open."""
        head = "" if self._at_line_start else "\n"
        self._at_line_start, self._block = True, None
        return head + "".join(line + "\n" for line in lines)

    def note(self, text: str) -> str:
        """A line from the client itself (connection state, a key's result)."""
        return self._lines(self.style("dim", f"· {text}"))

    # -- a snapshot: the state when following starts (or when replay was impossible) --------

    def snapshot(self, snap: Snapshot, reason: str = "new_client") -> str:
        info = snap.session
        self.pending = {p.request_id: p for p in snap.pending_permissions}
        self._streamed.clear()
        head = self.style("bold", f"● {info.title}")
        facts = f"{info.status.value} · {info.permission_mode} · {_money(info.cost_usd)}"
        out = [self._lines(f"{head}  {self.style('dim', info.cwd)}", self.style("dim", facts))]
        if reason not in ("new_client", ""):
            out.append(self.note(f"resynchronised from the daemon's state ({reason})"))
        items = snap.items[-self.history :] if self.history > 0 else []
        if len(snap.items) > len(items):
            out.append(self.note(f"{len(snap.items) - len(items)} earlier items not shown"))
        out.extend(self._item(item) for item in items)
        out.extend(self._prompt(request) for request in snap.pending_permissions)
        return "".join(out)

    def _item(self, item: Item) -> str:
        if isinstance(item, UserItem):
            return self._user(item.text)
        if isinstance(item, AssistantItem):
            if item.complete:
                return self._lines(_text(item.text))
            key = (item.message_id, item.index)  # still streaming: later deltas continue it
            out = self._lines() + _text(item.text)
            self._block, self._at_line_start = key, item.text.endswith("\n")
            self._streamed.add(key)
            return out
        if isinstance(item, ToolItem):
            if item.status is ToolStatus.RUNNING:
                return self._tool_row("▸", "cyan", item.title or item.name)
            failed = item.status is ToolStatus.FAILED
            return self._tool_row("✗" if failed else "✓", "red" if failed else "green", item.title)
        if isinstance(item, TurnEndItem):
            return self._turn_end(item.outcome, item.reason, item.message, item.cost_usd, None)
        if isinstance(item, ErrorItem):
            return self._lines(self.style("red", f"! {item.message}"))
        return ""

    # -- events ------------------------------------------------------------------------------

    def event(self, event: ev.Event) -> str:
        match event:
            case ev.TextDelta():
                return self._delta(event)
            case ev.AssistantText():
                key = (event.message_id, event.index)
                if key in self._streamed:
                    self._streamed.discard(key)
                    return self._lines() if self._block == key else ""
                return self._lines(_text(event.text))
            case ev.MessageQueued():
                return self._user(event.text)
            case ev.ToolStarted():
                return self._tool_row("▸", "cyan", event.title or event.name)
            case ev.ToolFinished():
                return self._finished(event)
            case ev.PermissionRequested():
                self.pending[event.request_id] = event
                return self._prompt(event)
            case ev.PermissionResolved():
                return self._resolved(event)
            case ev.TurnCompleted():
                return self._turn_end(
                    "completed", "", "", event.cost_usd, event.total_cost_usd, event.duration_ms
                )
            case ev.TurnFailed():
                total = event.total_cost_usd
                return self._turn_end("failed", event.reason, event.message, event.cost_usd, total)
            case ev.TurnInterrupted():
                return self._turn_end("interrupted", "", "", event.cost_usd, event.total_cost_usd)
            case ev.StatusChanged():
                return self.note(f"status: {event.status.value.replace('_', ' ')}")
            case _:
                return self._session_event(event)

    def _session_event(self, event: ev.Event) -> str:
        match event:
            case ev.CLIStateChanged(state=ev.CLIState.CRASHED):
                detail = f": {_cut(event.detail, 200)}" if event.detail else ""
                return self._lines(self.style("red", f"! claude crashed{detail}"))
            case ev.SessionError():
                return self._lines(self.style("red", f"! {_cut(event.message, 400)}"))
            case ev.SessionUpdated():
                changes = [
                    f"{name} → {value}"
                    for name, value in (
                        ("title", event.title),
                        ("model", event.model),
                        ("mode", event.permission_mode),
                        ("archived", event.archived),
                    )
                    if value is not None
                ]
                return self.note(", ".join(changes)) if changes else ""
            case ev.SessionMirror():
                state = f"mirrored to Remote Control as {event.name!r}" if event.enabled else ""
                text = state or "not mirrored to Remote Control"
                return self.note(text + (f" ({event.detail})" if event.detail else ""))
            case ev.SessionDeleted():
                self.ended = True
                return self.note("the session was deleted")
        return ""  # other events (delivery, turn start, CLI start/stop...) say nothing new

    def _delta(self, event: ev.TextDelta) -> str:
        key = (event.message_id, event.index)
        out = ""
        if self._block != key:
            out = self._lines()  # a new block starts on its own line
            self._block = key
            self._streamed.add(key)
        if event.text:
            self._at_line_start = event.text.endswith("\n")
        return out + _text(event.text)

    def _user(self, text: str) -> str:
        first, *rest = text.splitlines() or [""]
        rest_lines = (f"  {_text(line)}" for line in rest)
        return self._lines(self.style("bold", f"> {first}"), *rest_lines)

    def _tool_row(self, mark: str, color: str, title: str) -> str:
        return self._lines(f"  {self.style(color, mark)} {_cut(title)}")

    def _finished(self, event: ev.ToolFinished) -> str:
        if not event.is_error:
            return self._tool_row("✓", "green", event.title or event.tool_use_id)
        row = self._tool_row("✗", "red", event.title or event.tool_use_id)
        first = next((line for line in event.output.splitlines() if line.strip()), "")
        return row + (self._lines(self.style("dim", f"    {_cut(first)}")) if first else "")

    def _turn_end(
        self,
        outcome: str,
        reason: str,
        message: str,
        cost: float,
        total: float | None,
        duration_ms: int = 0,
    ) -> str:
        spent = _money(cost) + (f" (session {_money(total)})" if total is not None else "")
        took = f" in {duration_ms / 1000:.1f} s" if duration_ms else ""
        if outcome == "completed":
            return self._lines(self.style("green", f"✓ done{took} · {spent}"))
        if outcome == "interrupted":
            return self._lines(self.style("yellow", f"■ interrupted · {spent}"))
        why = f"{reason}: {_cut(message, 400)}" if message else reason
        return self._lines(self.style("red", f"✗ failed ({why}) · {spent}"))

    # -- permission requests -----------------------------------------------------------------

    def _prompt(self, request: ev.PermissionRequested) -> str:
        bar = self.style("yellow", "│")
        what = _cut(request.summary or request.tool_name)
        lines = [self.style("yellow", f"┌ permission: {what}")]
        if request.description:
            lines.append(f"{bar} {_cut(request.description)}")
        if request.diff is not None:
            diff = request.diff
            lines.append(f"{bar} {diff.path} +{diff.added} -{diff.removed}")
        for number, label in enumerate(_options(request), 1):
            lines.append(f"{bar} {number}. {_cut(label)}")
        always = ""
        if request.suggestion_labels:
            always = f"  [A] allow always: {_cut(request.suggestion_labels[0], 60)}"
        choices = "[1-9] answer" if _options(request) else "[a] allow"
        keys = f"{choices}{always}  [d] deny  [i] interrupt"
        lines.append(self.style("yellow", "└ ") + keys)
        return self._lines(*lines)

    def _resolved(self, event: ev.PermissionResolved) -> str:
        request = self.pending.pop(event.request_id, None)
        if request is None:
            return ""
        who = f" by {event.by}" if event.by else ""
        applied = f" (always: {', '.join(event.applied)})" if event.applied else ""
        color = "green" if event.outcome is ev.PermissionOutcome.ALLOWED else "yellow"
        out = self._lines(self.style(color, f"  → {event.outcome.value}{who}{applied}"))
        following = next(iter(self.pending.values()), None)
        return out + (self._prompt(following) if following is not None else "")

    def key(self, key: str) -> Call | None:
        """The call a key asks for: keys answer the oldest pending request."""
        base = f"/v1/sessions/{quote(self.session_id, safe='')}"
        if key == "i":
            return Call("POST", f"{base}/interrupt", None, "interrupt")
        request = next(iter(self.pending.values()), None)
        if request is None:
            return None
        path = f"{base}/permissions/{quote(request.request_id, safe='')}"
        options = _options(request)
        if key.isdigit() and 1 <= int(key) <= len(options):
            question = _questions(request)[0]["question"]
            body = {"behavior": "allow", "answers": {question: options[int(key) - 1]}}
            return Call("POST", path, body, f"answer {options[int(key) - 1]!r}")
        if key == "a" and not options:
            return Call("POST", path, {"behavior": "allow"}, "allow")
        if key == "A" and request.suggestions:
            body = {"behavior": "allow", "suggestions": [0]}
            return Call("POST", path, body, "allow always")
        if key == "d":
            return Call("POST", path, {"behavior": "deny"}, "deny")
        return None


def _questions(request: ev.PermissionRequested) -> list[dict[str, Any]]:
    questions = request.input.get("questions") if request.tool_name == "AskUserQuestion" else None
    if not isinstance(questions, list):
        return []
    return [q for q in questions if isinstance(q, dict) and isinstance(q.get("question"), str)]


def _options(request: ev.PermissionRequested) -> Sequence[str]:
    """The first question's option labels of an ``AskUserQuestion`` (digits pick one)."""
    questions = _questions(request)
    options = questions[0].get("options") if questions else None
    if not isinstance(options, list):
        return []
    labels = [o.get("label") for o in options if isinstance(o, dict)]
    return [label for label in labels if isinstance(label, str)][:9]
