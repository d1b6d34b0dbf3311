"""What ``sidecode-trio attach`` prints, and what its keys ask the daemon to do (pure).

:class:`Renderer` takes the session's snapshot and events as the daemon writes them (the JSON
objects of ``protocol/PROTOCOL.md``: an event's ``type`` and fields, a snapshot's ``session``,
``items`` and ``pending_permissions``) and returns the text to write: streamed assistant text is
written as it arrives, on the current line; everything else is whole lines (a tool call is one
compact row titled by the daemon, a permission request a small box with its keys, a turn's end a
row with its cost). It also keeps the pending permission requests, so :meth:`Renderer.key` can
turn a key press into the HTTP call to make (:class:`Call`): ``a`` allow, ``A`` allow always (the
first suggested rule), ``d`` deny, ``1``-``9`` pick an ``AskUserQuestion`` option, ``i``
interrupt. No terminal, socket or clock is touched here.

It reads the JSON rather than the wire classes: structuring them would load the converter and
every class of ``wire/`` (with cattrs, most of ``attach``'s start-up beyond Trio), to show a few
fields of each. Each field it shows is checked as the converter would check it (a string is a
string, a number not a boolean; a field with a default may be absent): an event or snapshot with
a missing or mistyped one raises :class:`Malformed` and leaves the renderer as it was, so the
caller skips it, as it skips an event type it does not know (those render as nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote

import attrs

from ..printable import escape

ROW_CHARS: Final = 160  # a tool row or a prompt line is cut here (the details are a route away)
KEYS_HELP: Final = "keys: a allow · A allow always · d deny · i interrupt · q quit"

_COLORS: Final = {"dim": "2", "bold": "1", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}

Wire = Mapping[str, Any]  #: a JSON object as the daemon wrote it (an event, a snapshot, an item)


class Malformed(ValueError):
    """A field the renderer shows is missing or of the wrong type (the message names it)."""


# -- reading the fields it shows, checked --------------------------------------------------------

_REQUIRED: Final = object()


def _field(data: Wire, name: str, kinds: tuple[type, ...], what: str, default: object) -> Any:
    if name not in data:
        if default is _REQUIRED:
            raise Malformed(f"{name}: missing")
        return default
    value = data[name]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise Malformed(f"{name}: expected {what}, got {type(value).__name__}")
    return value


def string(data: Wire, name: str, default: str | object = _REQUIRED) -> str:
    value: str = _field(data, name, (str,), "a string", default)
    return value


def string_or_none(data: Wire, name: str) -> str | None:
    value: str | None = _field(data, name, (str, type(None)), "a string or null", None)
    return value


def integer(data: Wire, name: str, default: int | object = _REQUIRED) -> int:
    value: int = _field(data, name, (int,), "an integer", default)
    return value


def number(data: Wire, name: str, default: float | object = _REQUIRED) -> float:
    return float(_field(data, name, (int, float), "a number", default))


def number_or_none(data: Wire, name: str) -> float | None:
    value = _field(data, name, (int, float, type(None)), "a number or null", None)
    return None if value is None else float(value)


def flag(data: Wire, name: str, default: bool | object = _REQUIRED) -> bool:
    value: bool = _field(data, name, (bool,), "true or false", default)
    return value


def flag_or_none(data: Wire, name: str) -> bool | None:
    value: bool | None = _field(data, name, (bool, type(None)), "true, false or null", None)
    return value


def mapping(data: Wire, name: str) -> dict[str, Any]:
    value: dict[str, Any] = _field(data, name, (dict,), "an object", _REQUIRED)
    return value


def mapping_or_none(data: Wire, name: str) -> dict[str, Any] | None:
    value: dict[str, Any] | None = _field(data, name, (dict, type(None)), "an object", None)
    return value


def array(data: Wire, name: str, default: list[Any] | object = _REQUIRED) -> list[Any]:
    value: list[Any] = _field(data, name, (list,), "a list", default)
    return value


def objects(data: Wire, name: str) -> list[dict[str, Any]]:
    values = array(data, name)
    if not all(isinstance(value, dict) for value in values):
        raise Malformed(f"{name}: expected a list of objects")
    return values


def strings(data: Wire, name: str) -> list[str]:
    values = array(data, name, [])
    if not all(isinstance(value, str) for value in values):
        raise Malformed(f"{name}: expected a list of strings")
    return values


# -- output --------------------------------------------------------------------------------------


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
        #: the pending ``permission.requested`` events by request id, oldest first (checked)
        self.pending: dict[str, Wire] = {}
        self.ended = False  #: the session was deleted: nothing more will come
        self._at_line_start = True
        self._block: tuple[str, int] | None = None  # the text block being streamed
        self._streamed: set[tuple[str, int]] = set()

    def _keeping_state(self, render: Callable[[], str]) -> str:
        """``render()``; if it finds a malformed field, the state as it was before, and raise."""
        saved = (dict(self.pending), self.ended, self._at_line_start, self._block)
        streamed = set(self._streamed)
        try:
            return render()
        except Malformed:
            self.pending, self.ended, self._at_line_start, self._block = saved
            self._streamed = streamed
            raise

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

    def snapshot(self, snap: Wire, reason: str = "new_client") -> str:
        """The snapshot's text; :class:`Malformed` (nothing changed) if a field it shows is."""
        return self._keeping_state(lambda: self._snapshot(snap, reason))

    def _snapshot(self, snap: Wire, reason: str) -> str:
        info, pending = mapping(snap, "session"), objects(snap, "pending_permissions")
        all_items = objects(snap, "items")
        for request in pending:
            _checked_request(request)
        self.pending = {string(p, "request_id"): p for p in pending}
        self._streamed.clear()
        head = self.style("bold", f"● {string(info, 'title')}")
        status, mode = string(info, "status"), string(info, "permission_mode")
        facts = f"{status} · {mode} · {_money(number(info, 'cost_usd'))}"
        out = [
            self._lines(
                f"{head}  {self.style('dim', string(info, 'cwd'))}", self.style("dim", facts)
            )
        ]
        if reason not in ("new_client", ""):
            out.append(self.note(f"resynchronised from the daemon's state ({reason})"))
        items = all_items[-self.history :] if self.history > 0 else []
        if len(all_items) > len(items):
            out.append(self.note(f"{len(all_items) - len(items)} earlier items not shown"))
        out.extend(self._item(item) for item in items)
        out.extend(self._prompt(request) for request in pending)
        return "".join(out)

    def _item(self, item: Wire) -> str:
        kind = string(item, "type")
        if kind == "user":
            return self._user(string(item, "text"))
        if kind == "assistant":
            body = string(item, "text")
            if flag(item, "complete"):
                return self._lines(_text(body))
            key = (string(item, "message_id"), integer(item, "index"))  # still streaming: later
            out = self._lines() + _text(body)  # deltas continue it
            self._block, self._at_line_start = key, body.endswith("\n")
            self._streamed.add(key)
            return out
        if kind == "tool":
            status, name = string(item, "status"), string(item, "name")
            title = string(item, "title", "")
            if status == "running":
                return self._tool_row("▸", "cyan", title or name)
            failed = status == "failed"
            return self._tool_row("✗" if failed else "✓", "red" if failed else "green", title)
        if kind == "turn_end":
            outcome, reason = string(item, "outcome"), string(item, "reason", "")
            message, cost = string(item, "message", ""), number(item, "cost_usd", 0.0)
            return self._turn_end(outcome, reason, message, cost, None)
        if kind == "error":
            return self._lines(self.style("red", f"! {string(item, 'message')}"))
        return ""

    # -- events ------------------------------------------------------------------------------

    def event(self, event: Wire) -> str:
        """The event's text ("" for one that says nothing new, or of a type this client does not
        know); :class:`Malformed` (nothing changed) if a field it shows is."""
        return self._keeping_state(lambda: self._event(event))

    def _event(self, event: Wire) -> str:
        kind = string(event, "type")
        match kind:
            case "text.delta":
                return self._delta(event)
            case "assistant.text":
                key, body = (
                    (string(event, "message_id"), integer(event, "index")),
                    string(event, "text"),
                )
                if key in self._streamed:
                    self._streamed.discard(key)
                    return self._lines() if self._block == key else ""
                return self._lines(_text(body))
            case "message.queued":
                return self._user(string(event, "text"))
            case "tool.started":
                return self._tool_row(
                    "▸", "cyan", string(event, "title", "") or string(event, "name")
                )
            case "tool.finished":
                return self._finished(event)
            case "permission.requested":
                prompt = self._prompt(_checked_request(event))
                self.pending[string(event, "request_id")] = event
                return prompt
            case "permission.resolved":
                return self._resolved(event)
            case "turn.completed":
                cost, took = number(event, "cost_usd", 0.0), integer(event, "duration_ms", 0)
                total = number(event, "total_cost_usd", 0.0)
                return self._turn_end("completed", "", "", cost, total, took)
            case "turn.failed":
                reason, message = string(event, "reason"), string(event, "message", "")
                cost, so_far = (
                    number(event, "cost_usd", 0.0),
                    number_or_none(event, "total_cost_usd"),
                )
                return self._turn_end("failed", reason, message, cost, so_far)
            case "turn.interrupted":
                cost, so_far = (
                    number(event, "cost_usd", 0.0),
                    number_or_none(event, "total_cost_usd"),
                )
                return self._turn_end("interrupted", "", "", cost, so_far)
            case "session.status":
                return self.note(f"status: {string(event, 'status').replace('_', ' ')}")
        return self._session_event(kind, event)

    def _session_event(self, kind: str, event: Wire) -> str:
        match kind:
            case "cli.state":
                if string(event, "state") != "crashed":
                    return ""
                detail = string(event, "detail", "")
                detail = f": {_cut(detail, 200)}" if detail else ""
                return self._lines(self.style("red", f"! claude crashed{detail}"))
            case "session.error":
                return self._lines(self.style("red", f"! {_cut(string(event, 'message'), 400)}"))
            case "session.updated":
                fields = (
                    ("title", string_or_none(event, "title")),
                    ("model", string_or_none(event, "model")),
                    ("mode", string_or_none(event, "permission_mode")),
                    ("archived", flag_or_none(event, "archived")),
                )
                changes = [f"{name} → {value}" for name, value in fields if value is not None]
                return self.note(", ".join(changes)) if changes else ""
            case "session.mirror":
                name, detail = string_or_none(event, "name"), string(event, "detail", "")
                state = f"mirrored to Remote Control as {name!r}" if flag(event, "enabled") else ""
                line = state or "not mirrored to Remote Control"
                return self.note(line + (f" ({detail})" if detail else ""))
            case "session.deleted":
                self.ended = True
                return self.note("the session was deleted")
        return ""  # other events (delivery, turn start, CLI start/stop...) say nothing new

    def _delta(self, event: Wire) -> str:
        key, body = (string(event, "message_id"), integer(event, "index")), string(event, "text")
        out = ""
        if self._block != key:
            out = self._lines()  # a new block starts on its own line
            self._block = key
            self._streamed.add(key)
        if body:
            self._at_line_start = body.endswith("\n")
        return out + _text(body)

    def _user(self, text: str) -> str:
        first, *rest = text.splitlines() or [""]
        rest_lines = (f"  {_text(line)}" for line in rest)
        return self._lines(self.style("bold", f"> {first}"), *rest_lines)

    def _tool_row(self, mark: str, color: str, title: str) -> str:
        return self._lines(f"  {self.style(color, mark)} {_cut(title)}")

    def _finished(self, event: Wire) -> str:
        title = string(event, "title", "") or string(event, "tool_use_id")
        if not flag(event, "is_error"):
            return self._tool_row("✓", "green", title)
        output = string(event, "output")
        row = self._tool_row("✗", "red", title)
        first = next((line for line in output.splitlines() if line.strip()), "")
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

    def _prompt(self, request: Wire) -> str:
        """A checked request's box (:func:`_checked_request`)."""
        bar = self.style("yellow", "│")
        what = _cut(request.get("summary", "") or request["tool_name"])
        lines = [self.style("yellow", f"┌ permission: {what}")]
        if request.get("description"):
            lines.append(f"{bar} {_cut(request['description'])}")
        diff = request.get("diff")
        if diff is not None:
            lines.append(f"{bar} {diff['path']} +{diff['added']} -{diff['removed']}")
        for number_, label in enumerate(_options(request), 1):
            lines.append(f"{bar} {number_}. {_cut(label)}")
        always = ""
        labels = request.get("suggestion_labels", [])
        if labels:
            always = f"  [A] allow always: {_cut(labels[0], 60)}"
        choices = "[1-9] answer" if _options(request) else "[a] allow"
        keys = f"{choices}{always}  [d] deny  [i] interrupt"
        lines.append(self.style("yellow", "└ ") + keys)
        return self._lines(*lines)

    def _resolved(self, event: Wire) -> str:
        request_id, outcome = string(event, "request_id"), string(event, "outcome")
        by, applied = string(event, "by", ""), strings(event, "applied")
        request = self.pending.pop(request_id, None)
        if request is None:
            return ""
        who = f" by {by}" if by else ""
        applied_text = f" (always: {', '.join(applied)})" if applied else ""
        color = "green" if outcome == "allowed" else "yellow"
        out = self._lines(self.style(color, f"  → {outcome}{who}{applied_text}"))
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
        path = f"{base}/permissions/{quote(request['request_id'], safe='')}"
        options = _options(request)
        if key.isdigit() and 1 <= int(key) <= len(options):
            question = _questions(request)[0]["question"]
            body = {"behavior": "allow", "answers": {question: options[int(key) - 1]}}
            return Call("POST", path, body, f"answer {options[int(key) - 1]!r}")
        if key == "a" and not options:
            return Call("POST", path, {"behavior": "allow"}, "allow")
        if key == "A" and request.get("suggestions"):
            body = {"behavior": "allow", "suggestions": [0]}
            return Call("POST", path, body, "allow always")
        if key == "d":
            return Call("POST", path, {"behavior": "deny"}, "deny")
        return None


def _checked_request(request: Wire) -> Wire:
    """A ``permission.requested`` event (or a snapshot's pending request) whose fields that
    :meth:`Renderer._prompt` and :meth:`Renderer.key` read are all there and of their types."""
    for name in ("request_id", "tool_name"):
        string(request, name)
    for name in ("summary", "description"):
        string(request, name, "")
    mapping(request, "input")
    strings(request, "suggestion_labels")
    array(request, "suggestions", [])
    diff = mapping_or_none(request, "diff")
    if diff is not None:
        string(diff, "path")
        integer(diff, "added")
        integer(diff, "removed")
    return request


def _questions(request: Wire) -> list[dict[str, Any]]:
    questions = (
        request["input"].get("questions") if request["tool_name"] == "AskUserQuestion" else None
    )
    if not isinstance(questions, list):
        return []
    return [q for q in questions if isinstance(q, dict) and isinstance(q.get("question"), str)]


def _options(request: Wire) -> Sequence[str]:
    """The first question's option labels of an ``AskUserQuestion`` (digits pick one)."""
    questions = _questions(request)
    options = questions[0].get("options") if questions else None
    if not isinstance(options, list):
        return []
    labels = [o.get("label") for o in options if isinstance(o, dict)]
    return [label for label in labels if isinstance(label, str)][:9]
