"""The Trio driver of ``sidecode-trio send --wait``: queue one message and follow the stream from
just before it until its turn ends (reading the events' JSON as ``attach`` does: no converter,
no wire classes). A plain ``send`` is two HTTP calls: the command line makes them without Trio
(``cli._send``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import aclosing
from typing import Any, Final, TextIO
from urllib.parse import quote

from .client import DaemonAPI
from .render import Malformed, string

TURN_ENDS: Final = frozenset({"turn.completed", "turn.failed", "turn.interrupted"})


async def send(
    url: str, token: str, session: str, text: str, out: TextIO, err: TextIO, *, wait: bool
) -> int:
    """Queue ``text``; with ``wait``, print the turn's result. 0: accepted (or completed)."""
    api = DaemonAPI(url, token)
    try:
        session_id = await api.resolve(session)
        path = f"/v1/sessions/{quote(session_id, safe='')}"
        body = {"text": text, "client_id": str(uuid.uuid4())}  # a retry cannot send it twice
        if not wait:
            reply = await api.call("POST", f"{path}/messages", body)
            out.write(f"{reply['message_id']}\n")
            return 0
        snap = await api.call("GET", path)
        since = f"{snap['epoch']}:{snap['cursor']}"  # everything after it is replayed
        reply = await api.call("POST", f"{path}/messages", body)
        return await _wait_for_turn(api, session_id, since, reply["message_id"], out, err)
    finally:
        await api.aclose()


async def _wait_for_turn(
    api: DaemonAPI, session_id: str, since: str, turn_id: str, out: TextIO, err: TextIO
) -> int:
    def note(text: str) -> None:
        err.write(f"sidecode-trio: {text}\n")
        err.flush()

    from .attach import decode, follow  # the stream's reconnecting reader

    frames = follow(api, session_id, since, note)
    async with aclosing(frames):
        async for frame in frames:
            event = decode(frame) if frame.event != "snapshot" else None
            if event is None:
                continue
            try:
                done = _turn_event(event, turn_id, out, note)
            except Malformed:  # an event this client cannot read: skipped, as attach does
                continue
            if done is not None:
                return done
    return 1  # not reached: follow() reconnects until the turn ends


def _turn_event(
    event: dict[str, Any], turn_id: str, out: TextIO, note: Callable[[str], None]
) -> int | None:
    """What ``send --wait`` does with one event (the JSON object the daemon wrote): the exit
    status once the turn has ended (0: completed) or the session is gone, else None."""
    kind = string(event, "type")
    if kind == "permission.requested":
        what = string(event, "summary", "") or string(event, "tool_name")
        note(f"waiting for a permission answer: {what}")
    elif kind in TURN_ENDS and string(event, "turn_id") == turn_id:
        if kind == "turn.completed":
            result = string(event, "result", "")
            out.write(result + ("\n" if not result.endswith("\n") else ""))
            return 0
        if kind == "turn.failed":
            reason, message = string(event, "reason"), string(event, "message", "")
            note(f"the turn failed ({reason}): {message}")
        else:
            note("the turn was interrupted")
        return 1
    elif kind == "session.deleted":
        note("the session was deleted")
        return 1
    return None
