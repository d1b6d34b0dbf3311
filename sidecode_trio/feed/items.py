"""The items a feed yields; each transport encodes them (pure functions of an item)."""

from __future__ import annotations

import attrs

from ..eventlog.core import StoredEvent
from ..wire import snapshot as ws


@attrs.frozen
class Snapshot:
    """The session's state: the client's position could not be replayed (``reason`` says why)."""

    snapshot: ws.Snapshot
    reason: str


@attrs.frozen
class Events:
    """Durable events in order. ``history``: the catch-up of a client that gave no position,
    replayed from the session's start (the WatchCode history, see ``SessionFeed.open``);
    ``keepalive``: a keep-alive came with them (where in the batch does not matter)."""

    events: list[StoredEvent]
    history: bool = False
    keepalive: bool = False


@attrs.frozen
class KeepAlive:
    """Nothing happened for a while: say something, so that idle connections stay open."""


@attrs.frozen
class End:
    """The feed ended: ``lagging`` (the client's queue overflowed; it resumes exactly later),
    or ``closed`` (revoked, the session deleted, the daemon stopping)."""

    reason: str


@attrs.frozen
class Sessions:
    """The session list as it is when the list feed opens."""

    sessions: list[ws.SessionInfo]


@attrs.frozen
class SessionChanged:
    """One session of the list changed (or appeared)."""

    session: ws.SessionInfo


KEEPALIVE_ITEM = KeepAlive()

Item = Snapshot | Events | KeepAlive | End | Sessions | SessionChanged
