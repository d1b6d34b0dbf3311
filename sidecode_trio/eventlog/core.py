"""The epoch + cursor rules, without I/O.

Each session's log numbers its events ``cursor = 1, 2, 3, ...`` within an ``epoch`` (a random id).
A client that remembers the ``(epoch, cursor)`` of the last event it applied gets, on reconnect,
exactly the events after it when that is possible, and a snapshot otherwise. This module decides
which (:func:`plan_read`) and encodes an event once into the bytes every transport sends.
"""

from __future__ import annotations

import json
import json.encoder
import secrets
from collections.abc import Callable
from math import isfinite
from typing import Final

import attrs

from ..errors import BadRequest
from ..wire.converter import converter, json_bytes
from ..wire.events import Event, TextDelta

EPOCH_BYTES: Final = 9  # 12 url-safe characters


def new_epoch() -> str:
    """A random epoch id. Never starting with "-": ids get pasted into command lines, where
    ``--since -x:0`` reads as an option (a test of the example client failed 1 run in 64)."""
    while (epoch := secrets.token_urlsafe(EPOCH_BYTES)).startswith("-"):
        pass
    return epoch


@attrs.frozen
class Position:
    """Where a client is: the last event it applied."""

    epoch: str
    cursor: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.cursor}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """Parse ``"<epoch>:<cursor>"`` (the SSE ``id`` / ``Last-Event-ID`` form)."""
        epoch, sep, cursor = text.strip().rpartition(":")
        # isascii: str.isdigit() also accepts digits int() refuses, such as "²"
        if not sep or not epoch or not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 18:
            raise BadRequest(f"bad event id {text[:80]!r}: expected '<epoch>:<cursor>'")
        return cls(epoch, int(cursor))


@attrs.frozen(slots=True)
class StoredEvent:
    """One event as logged: its position, time, type tag and its JSON envelope, encoded once.

    ``data`` is ``{"session_id", "epoch", "cursor", "at", "event": {"type": ..., ...}}``.
    """

    session_id: str
    epoch: str
    cursor: int
    at: float
    type: str
    data: bytes


def encode(session_id: str, epoch: str, cursor: int, at: float, event: Event) -> StoredEvent:
    if type(event) is TextDelta:  # most events by far: formatted directly, same bytes
        data = _text_delta_envelope(session_id, epoch, cursor, at, event)
        if data is not None:
            return StoredEvent(session_id, epoch, cursor, at, TextDelta.TYPE, data)
    envelope = {
        "session_id": session_id,
        "epoch": epoch,
        "cursor": cursor,
        "at": at,
        "event": converter.unstructure(event, unstructure_as=Event),
    }
    data = json_bytes(envelope)
    return StoredEvent(session_id, epoch, cursor, at, event.TYPE, data)


#: ``JSON_ENCODER.encode`` of a str (``ensure_ascii=False``), without the method's Python frame
_quote: Final[Callable[[str], str]] = json.encoder.encode_basestring
#: (session id, epoch, message id) -> the envelope's text before the cursor, and before the index
_HEADS: Final[dict[tuple[str, str, str], tuple[str, str]]] = {}
_MAX_HEADS: Final = 256


def _text_delta_envelope(
    session_id: str, epoch: str, cursor: int, at: float, event: TextDelta
) -> bytes | None:
    """What ``json_bytes`` makes of a text delta's envelope, without the converter and the
    general encoder (tests/test_eventlog.py holds the two equal); None where it would differ.
    The parts that stay the same from delta to delta (ids) are quoted once."""
    message_id, text, index = event.message_id, event.text, event.index
    if not (type(cursor) is type(index) is int and type(at) is float and isfinite(at)):
        return None  # (json writes a finite float as its repr, and NaN as NaN)
    if not (type(session_id) is type(epoch) is type(message_id) is type(text) is str):
        return None
    key = (session_id, epoch, message_id)
    parts = _HEADS.get(key)
    if parts is None:
        if len(_HEADS) >= _MAX_HEADS:
            _HEADS.clear()
        parts = _HEADS[key] = (
            f'{{"session_id":{_quote(session_id)},"epoch":{_quote(epoch)},"cursor":',
            f',"event":{{"type":"text.delta","message_id":{_quote(message_id)},"index":',
        )
    head, middle = parts
    try:
        return f'{head}{cursor},"at":{at!r}{middle}{index},"text":{_quote(text)}}}}}'.encode()
    except UnicodeEncodeError:  # a lone surrogate: json_bytes writes ASCII escapes instead
        return None


def decode_event(stored: StoredEvent) -> Event:
    envelope = json.loads(stored.data)
    result: Event = converter.structure(envelope["event"], Event)
    return result


@attrs.frozen
class Exact:
    """Replay the events with ``cursor > after``; nothing is missing."""

    after: int


@attrs.frozen
class NeedSnapshot:
    """Replay cannot be exact; send the folded state. ``reason`` is for logs and clients."""

    reason: str


def plan_read(
    epoch: str, low_water: int, last: int, since: Position | None
) -> Exact | NeedSnapshot:
    """Decide how a client at ``since`` catches up with a log holding ``[low_water, last]``.

    ``low_water`` is the oldest cursor still retained (``last + 1`` when none are); ``last`` the
    newest durable cursor (0 when the log is empty).
    """
    if since is None:
        return NeedSnapshot("new_client")
    if since.epoch != epoch:
        return NeedSnapshot("epoch_changed")
    if since.cursor > last:
        return NeedSnapshot("cursor_ahead")
    if since.cursor < low_water - 1:
        return NeedSnapshot("compacted")
    return Exact(since.cursor)
