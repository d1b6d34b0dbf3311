"""Remote Control events → our domain events (pure, stateful per followed session).

Remote Control relays the session's stream-json frames (``user``, ``assistant``, ``result``,
``system``, ``stream_event``, ...), so those go through the CLI's own
:class:`~..claude.translate.Translator`. On top of it this adds what a local session learns from
its supervisor instead: a user message typed elsewhere (claude.ai, the phone app) becomes
``message.queued`` and starts a turn, and the session's status follows its turns. It also accepts
the looser shapes WatchCode's transformer does (``human``; string content; top-level
``tool_use``/``tool_result``/``error``). Anything else yields no event.

Every upstream event has an identity (:func:`upstream_id`: its ``uuid``, else its ``id``, else
a hash of its content) by which the driver de-duplicates: history re-read after a reconnect,
events re-sent by the server, and echoes of messages we sent ourselves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ..claude.translate import Translator as CLITranslator
from ..wire import events as ev


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def upstream_id(raw: Mapping[str, Any]) -> str:
    """The identity of an upstream event, stable across re-sends and history reads."""
    for key in ("uuid", "id"):
        value = raw.get(key)
        if isinstance(value, str) and value:
            return value
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _user_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            _str(block.get("text"))
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        ]
        return "\n".join(part for part in parts if part)
    return ""


class RemoteTranslator:
    """Feed upstream events with :meth:`feed`; it returns the domain events they mean.

    Seed it with the session's folded state (``active_turn``, ``queued``, ``total_cost_usd``)
    so a daemon restart or a new follow continues the same turn bookkeeping."""

    def __init__(
        self,
        active_turn: str | None = None,
        queued: list[str] | None = None,
        total_cost_usd: float = 0.0,
        status: ev.SessionStatus = ev.SessionStatus.IDLE,
    ) -> None:
        self._cli = CLITranslator(total_cost_usd)
        self.active_turn = active_turn
        self._cli.turn_id = active_turn
        self._cli.delivered = active_turn
        self.queued = list(queued or [])
        self.status = status

    def take_outputs(self) -> list[tuple[str, str]]:
        """Whole outputs of tools whose event carries only the first part."""
        return self._cli.take_outputs()

    # -- our own sends -------------------------------------------------------------------------

    def local_message(self, message_id: str, text: str, client_id: str | None) -> list[ev.Event]:
        """A message we posted upstream; its echo is de-duplicated by the same uuid."""
        return [ev.MessageQueued(message_id, text, client_id), *self._queue(message_id)]

    def interrupted(self) -> list[ev.Event]:
        """The upstream accepted our interrupt: the turn ends now (its ``result``, if one
        follows, finds no turn and is dropped)."""
        if self.active_turn is None:
            return []
        turn, self.active_turn = self.active_turn, None
        self._cli.turn_id = None
        return [ev.TurnInterrupted(turn), *self._settle()]

    # -- upstream events -----------------------------------------------------------------------

    def feed(self, raw: Mapping[str, Any]) -> list[ev.Event]:
        kind = raw.get("type")
        if kind in ("user", "human"):
            return self._user(raw)
        if kind == "assistant":
            return self._assistant(raw)
        if kind == "result":
            return self._result(raw)
        if kind == "tool_use":
            return self._top_level_tool_use(raw)
        if kind == "tool_result":
            return self._top_level_tool_result(raw)
        if kind == "error":
            error = raw.get("message") or raw.get("error")
            text = _str(error) or _str(_dict(error).get("message")) or "upstream error"
            return [ev.SessionError("upstream_error", text)]
        if kind == "control" and _dict(raw.get("data")).get("type") == "interrupt":
            return self.interrupted()
        if kind in ("system", "stream_event"):
            return self._turn_started_for(raw) + self._cli.feed(raw)
        return []

    def _user(self, raw: Mapping[str, Any]) -> list[ev.Event]:
        if raw.get("isReplay") is True or raw.get("isMeta") is True:
            return []
        message = _dict(raw.get("message"))
        content = message.get("content", raw.get("content"))
        out: list[ev.Event] = []
        text = _user_text(content)
        if text.strip():
            message_id = upstream_id(raw)
            out += [ev.MessageQueued(message_id, text), *self._queue(message_id)]
        if isinstance(content, list):  # tool results ride in user messages
            out += self._cli.feed(
                {**raw, "type": "user", "message": {**message, "content": content}}
            )
        return out

    def _assistant(self, raw: Mapping[str, Any]) -> list[ev.Event]:
        message = _dict(raw.get("message")) or {"content": raw.get("content")}
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not message.get("id"):
            message = {**message, "id": upstream_id(raw)}
        frame = {**raw, "message": {**message, "content": content}}
        return self._turn_started_for(raw, _str(message.get("model")) or None) + self._cli.feed(
            frame
        )

    def _result(self, raw: Mapping[str, Any]) -> list[ev.Event]:
        if self.active_turn is None:
            return []  # a turn we already ended (interrupted), or one before our history
        self._cli.turn_id = self.active_turn
        ended = self._cli.feed(raw)
        self.active_turn = None
        return [*ended, *self._settle()]

    def _top_level_tool_use(self, raw: Mapping[str, Any]) -> list[ev.Event]:
        tool_id = _str(raw.get("tool_use_id")) or upstream_id(raw)
        block = {
            "type": "tool_use",
            "id": tool_id,
            "name": raw.get("name"),
            "input": raw.get("input"),
        }
        frame = {"type": "assistant", "message": {"id": tool_id, "content": [block]}}
        return self._turn_started_for(raw) + self._cli.feed(frame)

    def _top_level_tool_result(self, raw: Mapping[str, Any]) -> list[ev.Event]:
        tool_id = _str(raw.get("tool_use_id"))
        if not tool_id:
            return []  # cannot be paired with its call; WatchCode's adjacency guess is wrong
        block = {
            "type": "tool_result",
            "tool_use_id": tool_id,
            "content": raw.get("content"),
            "is_error": raw.get("is_error") is True,
        }
        return self._cli.feed({"type": "user", "message": {"content": [block]}})

    # -- turns and status ----------------------------------------------------------------------

    def _queue(self, message_id: str) -> list[ev.Event]:
        if self.active_turn is None:
            return self._start(message_id, None)
        self.queued.append(message_id)
        return []

    def _turn_started_for(self, raw: Mapping[str, Any], model: str | None = None) -> list[ev.Event]:
        """Output with no turn running starts one: for the oldest queued message, or on its
        own (a turn begun before our history starts, or by a message we never saw)."""
        if self.active_turn is not None:
            return []
        if raw.get("type") in ("system", "stream_event") and raw.get("subtype") != "init":
            return []
        turn = self.queued.pop(0) if self.queued else "remote-" + upstream_id(raw)
        return self._start(turn, model)

    def _start(self, turn: str, model: str | None) -> list[ev.Event]:
        self.active_turn = turn
        self._cli.turn_id = turn
        self._cli.delivered = turn
        out: list[ev.Event] = [ev.TurnStarted(turn, model)]
        if self.status is not ev.SessionStatus.RUNNING:
            self.status = ev.SessionStatus.RUNNING
            out.append(ev.StatusChanged(ev.SessionStatus.RUNNING))
        return out

    def _settle(self) -> list[ev.Event]:
        """After a turn: the next queued message's turn, or idle."""
        if self.queued:
            return self._start(self.queued.pop(0), None)
        if self.status is ev.SessionStatus.IDLE:
            return []
        self.status = ev.SessionStatus.IDLE
        return [ev.StatusChanged(ev.SessionStatus.IDLE)]


def status_of(upstream_status: str) -> ev.SessionStatus | None:
    """The session list's ``session_status`` as ours; None for values we do not know."""
    return _STATUSES.get(upstream_status.lower())


_STATUSES = {
    "running": ev.SessionStatus.RUNNING,
    "active": ev.SessionStatus.RUNNING,
    "working": ev.SessionStatus.RUNNING,
    "idle": ev.SessionStatus.IDLE,
    "completed": ev.SessionStatus.IDLE,
    "waiting": ev.SessionStatus.IDLE,
    "requires_action": ev.SessionStatus.REQUIRES_ACTION,
    "failed": ev.SessionStatus.ERRORED,
    "error": ev.SessionStatus.ERRORED,
}
