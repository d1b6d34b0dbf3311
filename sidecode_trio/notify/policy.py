"""Which events notify, when, and in what words: pure logic, fed events and ``now``.

Kinds of notification, one per session and kind at a time:

* ``approval``: a ``permission.requested`` that nobody answered within ``hold`` seconds (an answer
  given right away, on any device or by a rule, cancels it). Carries Allow / Deny for the oldest
  open request and counts the others.
* ``finished``: ``turn.completed``.
* ``failed``: ``turn.failed`` or the session turning ``errored`` (one notification for both). A
  turn failed by the owner's own hand (``daemon_stopped``, ``session_deleted``) is not news.
* ``resolved``: the request an approval notification offered to answer was answered elsewhere;
  sent at once, it replaces that notification (same tag) so its buttons do not linger.

Debounce: the first event of a kind opens a window; whatever else of that kind arrives for that
session within ``hold`` seconds is folded into one notification, and a session sends each kind at
most once per ``cooldown`` seconds (what arrives meanwhile is folded into one sent when the
cooldown ends). A device that acted on a session (sent, answered, interrupted) in the last
``quiet`` seconds is looking at it: it gets no ``finished``, ``failed`` or ``resolved`` push for
that session.

Texts never carry more than a line of the session, pass through :func:`redact`, and with
``details="minimal"`` say only what kind of thing happened.
"""

from __future__ import annotations

import enum
import re
from pathlib import PurePath
from typing import Final, Literal

import attrs

from ..wire import events as ev
from ..wire.converter import as_text

Details = Literal["full", "minimal"]
ELLIPSIS: Final = "…"
TITLE_CHARS: Final = 100
BODY_CHARS: Final = 160
#: turn.failed reasons the owner caused themselves: nothing to tell them
SELF_INFLICTED: Final = frozenset({"daemon_stopped", "session_deleted"})


class Kind(enum.StrEnum):
    APPROVAL = "approval"
    FINISHED = "finished"
    FAILED = "failed"
    TEST = "test"  #: asked for from the settings screen
    RESOLVED = "resolved"  #: the request a shown approval was about got its answer elsewhere


ALL_KINDS: Final = frozenset({Kind.APPROVAL, Kind.FINISHED, Kind.FAILED})


@attrs.frozen
class Timing:
    hold: float = 1.0  #: seconds a burst is gathered (and an instant answer may cancel it)
    cooldown: float = 30.0  #: at most one notification per session and kind this often
    quiet: float = 15.0  #: a device that acted on a session hears nothing of its turn this long


@attrs.frozen
class SessionLabel:
    """What a notification may say about its session (the caller reads it from the log)."""

    title: str
    cwd: str

    @property
    def folder(self) -> str:
        return PurePath(self.cwd).name or self.cwd


@attrs.frozen
class Notification:
    kind: Kind
    session_id: str
    title: str
    body: str
    at: float
    request_id: str | None = None  #: approval: what Allow / Deny answer
    count: int = 1  #: events folded into this one
    quiet_devices: frozenset[str] = frozenset()  #: devices not to push to (they just acted)
    only_device: str | None = None  #: a test notification goes to one device

    @property
    def tag(self) -> str:
        """One per session: a newer notification of a session replaces the older one."""
        return f"sidecode-{self.session_id}"

    @property
    def urgent(self) -> bool:
        return self.kind in (Kind.APPROVAL, Kind.TEST)


# -- redaction -------------------------------------------------------------------------------

_SECRET_VALUE = re.compile(
    r"(?i)\b(authorization|bearer|token|secret|password|passwd|pwd|api[_-]?key|access[_-]?key"
    r"|private[_-]?key|client[_-]?secret)\b(\s*[:=]\s*|\s+)((?:bearer|basic|token)\s+)?"
    r"(['\"]?)[^\s'\"]+"
)
_KNOWN_TOKENS = re.compile(
    r"\b(sk-[A-Za-z0-9_-]{12,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|glpat-[A-Za-z0-9_-]{16,}|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})"
)
_URL_CREDENTIALS = re.compile(r"(://)[^/\s:@]+:[^/\s@]+@")
_OPAQUE = re.compile(r"(?<![\w/.-])[A-Za-z0-9+=_-]{32,}(?![\w/.-])")
HIDDEN: Final = "•••"


def redact(text: str) -> str:
    """Hide what looks like a credential: ``KEY=value`` pairs, known token shapes, URL
    passwords and long opaque strings. A notification leaves this computer (a push service, a
    webhook) and sits on a lock screen; a command line is where secrets hide."""
    text = _URL_CREDENTIALS.sub(r"\1" + HIDDEN + "@", text)
    text = _SECRET_VALUE.sub(lambda m: f"{m[1]}{m[2]}{m[3] or ''}{m[4]}{HIDDEN}", text)
    text = _KNOWN_TOKENS.sub(HIDDEN, text)
    return _OPAQUE.sub(lambda m: HIDDEN if _looks_random(m[0]) else m[0], text)


def _looks_random(word: str) -> bool:
    return any(c.isdigit() for c in word) and any(c.isalpha() for c in word)


def one_line(text: str, limit: int) -> str:
    """The first non-empty line of ``text``, redacted, cut to ``limit`` characters."""
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    line = redact(" ".join(as_text(line).split()))  # CLI output: a lone surrogate is U+FFFD
    return line if len(line) <= limit else line[: limit - 1].rstrip() + ELLIPSIS


# -- texts -----------------------------------------------------------------------------------

MINIMAL_TEXT: Final = {
    Kind.APPROVAL: ("Approval needed", "A session is waiting for your answer"),
    Kind.FINISHED: ("Turn finished", "A session is done"),
    Kind.FAILED: ("Session failed", "A session needs a look"),
    Kind.TEST: ("Notifications work", "sidecode-trio can reach this device"),
    Kind.RESOLVED: ("Answered", "A request was answered"),
}


def _with_folder(text: str, label: SessionLabel) -> str:
    folder = one_line(label.folder, 40)
    return f"{text} — {folder}" if text else folder


def approval_text(summary: str, label: SessionLabel, more: int) -> tuple[str, str]:
    title = "Approve: " + one_line(summary, TITLE_CHARS - 9)
    session = one_line(label.title, BODY_CHARS - 50)
    body = _with_folder(session, label)
    if more:
        body = f"(+{more} more) {body}"
    return title, body


def resolved_text(summary: str, how: str, label: SessionLabel) -> tuple[str, str]:
    return "Answered: " + one_line(summary, TITLE_CHARS - 10), _with_folder(how, label)


def finished_text(result: str, label: SessionLabel) -> tuple[str, str]:
    return "Finished: " + one_line(label.title, TITLE_CHARS - 10), _with_folder(
        one_line(result, BODY_CHARS - 45), label
    )


def failed_text(why: str, label: SessionLabel) -> tuple[str, str]:
    return "Failed: " + one_line(label.title, TITLE_CHARS - 8), _with_folder(
        one_line(why, BODY_CHARS - 45), label
    )


# -- the decider -----------------------------------------------------------------------------


@attrs.define
class _Pending:
    """A notification being gathered: sent at ``due`` unless cancelled first."""

    kind: Kind
    session_id: str
    due: float
    label: SessionLabel
    text: str = ""  #: finished: the result; failed: what went wrong
    count: int = 1
    requests: dict[str, str] = attrs.field(factory=dict)  #: approval: open request id -> summary


class Decider:
    """Events in, notifications out. Holds no clock: every call says what time it is."""

    def __init__(
        self,
        timing: Timing = Timing(),
        kinds: frozenset[Kind] = ALL_KINDS,
        details: Details = "full",
    ) -> None:
        self.timing = timing
        self.kinds = kinds
        self.details = details
        self._pending: dict[tuple[str, Kind], _Pending] = {}
        self._last_sent: dict[tuple[str, Kind], float] = {}
        self._acted: dict[tuple[str, str], float] = {}  #: (device, session) -> when
        #: session -> (request id, summary) its last approval notification offered to answer
        self._shown: dict[str, tuple[str, str]] = {}
        self.suppressed = 0  #: events folded into another notification or cancelled

    def __repr__(self) -> str:
        return f"<Decider pending={len(self._pending)} suppressed={self.suppressed}>"

    def observe(self, session_id: str, event: ev.Event, label: SessionLabel, now: float) -> None:
        """Take one event of a session (others than the kinds above are ignored)."""
        if isinstance(event, ev.PermissionRequested):
            pending = self._open(session_id, Kind.APPROVAL, label, now)
            if pending is not None:
                pending.requests[event.request_id] = event.summary or event.tool_name
        elif isinstance(event, ev.PermissionResolved):
            self._resolved(session_id, event, label, now)
        elif isinstance(event, ev.TurnCompleted):
            pending = self._open(session_id, Kind.FINISHED, label, now)
            if pending is not None:
                pending.text = event.result
        elif isinstance(event, ev.TurnFailed) and event.reason not in SELF_INFLICTED:
            pending = self._open(session_id, Kind.FAILED, label, now)
            if pending is not None:
                pending.text = event.message or event.reason.replace("_", " ")
        elif isinstance(event, ev.StatusChanged) and event.status is ev.SessionStatus.ERRORED:
            pending = self._open(session_id, Kind.FAILED, label, now)
            if pending is not None and not pending.text:
                pending.text = "the session stopped with an error"
        elif isinstance(event, ev.SessionDeleted):
            self.forget(session_id)

    def acted(self, device_id: str, session_id: str, now: float) -> None:
        """A device did something to a session: it is looking at it right now."""
        self._acted[(device_id, session_id)] = now

    def forget(self, session_id: str) -> None:
        for key in [k for k in self._pending if k[0] == session_id]:
            del self._pending[key]
        self._shown.pop(session_id, None)

    def next_due(self) -> float | None:
        """When :meth:`due` next has something to say (None: nothing pending)."""
        return min((p.due for p in self._pending.values()), default=None)

    def due(self, now: float) -> list[Notification]:
        """The notifications whose time has come, oldest first."""
        ready = sorted(
            (p for p in self._pending.values() if p.due <= now), key=lambda p: (p.due, p.kind)
        )
        for pending in ready:
            key = (pending.session_id, pending.kind)
            del self._pending[key]
            self._last_sent[key] = now
        self._prune(now)
        notes = [self._notification(p, now) for p in ready]
        for pending, note in zip(ready, notes, strict=True):
            if note.kind is Kind.APPROVAL and note.request_id is not None:
                summary = pending.requests[note.request_id]
                self._shown[note.session_id] = (note.request_id, summary)
        return notes

    def _open(
        self, session_id: str, kind: Kind, label: SessionLabel, now: float
    ) -> _Pending | None:
        if kind not in self.kinds:
            return None
        key = (session_id, kind)
        pending = self._pending.get(key)
        if pending is not None:
            pending.count += 1
            pending.label = label
            self.suppressed += 1
            return pending
        last = self._last_sent.get(key)
        due = now + self.timing.hold
        if last is not None:
            due = max(due, last + self.timing.cooldown)
        pending = self._pending[key] = _Pending(kind, session_id, due, label)
        return pending

    def _resolved(
        self, session_id: str, event: ev.PermissionResolved, label: SessionLabel, now: float
    ) -> None:
        shown = self._shown.get(session_id)
        if shown is not None and shown[0] == event.request_id:
            # The notification on the lock screen offers to answer something already answered:
            # replace it (same tag), right away and quietly.
            del self._shown[session_id]
            how = event.outcome.value.capitalize() + (f" by {event.by}" if event.by else "")
            resolved = _Pending(Kind.RESOLVED, session_id, now, label, text=how)
            resolved.requests[event.request_id] = shown[1]
            self._pending[(session_id, Kind.RESOLVED)] = resolved
        key = (session_id, Kind.APPROVAL)
        pending = self._pending.get(key)
        if pending is None or pending.requests.pop(event.request_id, None) is None:
            return
        if not pending.requests:
            del self._pending[key]  # answered before anyone had to be told
            self.suppressed += 1

    def _prune(self, now: float) -> None:
        self._last_sent = {
            k: t for k, t in self._last_sent.items() if t + self.timing.cooldown > now
        }
        self._acted = {k: t for k, t in self._acted.items() if t + self.timing.quiet > now}

    def _notification(self, pending: _Pending, now: float) -> Notification:
        kind, label = pending.kind, pending.label
        request_id = next(iter(pending.requests), None)
        if self.details == "minimal":
            title, body = MINIMAL_TEXT[kind]
        elif kind is Kind.APPROVAL:
            summary = pending.requests.get(request_id or "", "")
            title, body = approval_text(summary, label, len(pending.requests) - 1)
        elif kind is Kind.RESOLVED:
            title, body = resolved_text(pending.requests[request_id or ""], pending.text, label)
            request_id = None  # nothing left to answer
        elif kind is Kind.FINISHED:
            title, body = finished_text(pending.text, label)
        else:
            title, body = failed_text(pending.text, label)
        quiet: frozenset[str] = frozenset()
        if kind is not Kind.APPROVAL:  # an approval is always worth a push
            quiet = frozenset(d for d, s in self._acted if s == pending.session_id)
        return Notification(
            kind,
            pending.session_id,
            title,
            body,
            now,
            request_id=request_id,
            count=pending.count,
            quiet_devices=quiet,
        )


def trial_notification(device_id: str | None, now: float) -> Notification:
    """The one the settings screen asks for, to see that pushes reach this device."""
    title, body = MINIMAL_TEXT[Kind.TEST]
    return Notification(Kind.TEST, "", title, body, now, only_device=device_id or "")
