"""The Trio driver of ``sidecode-trio send --wait``: queue one message and follow the stream from
just before it until its turn ends (the wire classes are loaded only for that). A plain ``send``
is two HTTP calls: the command line makes them without Trio (``cli._send``).
"""

from __future__ import annotations

import uuid
from contextlib import aclosing
from typing import TextIO
from urllib.parse import quote

from .client import DaemonAPI


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

    from ..wire import events as ev  # the wire classes: only to follow the turn
    from .attach import TURN_ENDS, decode, follow

    frames = follow(api, session_id, since, note)
    async with aclosing(frames):
        async for frame in frames:
            event = decode(frame)
            if isinstance(event, ev.PermissionRequested):
                note(f"waiting for a permission answer: {event.summary or event.tool_name}")
            elif isinstance(event, TURN_ENDS) and event.turn_id == turn_id:
                if isinstance(event, ev.TurnCompleted):
                    out.write(event.result + ("\n" if not event.result.endswith("\n") else ""))
                    return 0
                if isinstance(event, ev.TurnFailed):
                    note(f"the turn failed ({event.reason}): {event.message}")
                else:
                    note("the turn was interrupted")
                return 1
            elif isinstance(event, ev.SessionDeleted):
                note("the session was deleted")
                return 1
    return 1  # not reached: follow() reconnects until the turn ends
