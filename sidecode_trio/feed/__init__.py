"""What a client follows, independent of the transport: a session's events, or the session list.

A feed yields :data:`Item` values (:class:`Snapshot`, :class:`Events`, :class:`KeepAlive`,
:class:`End`, and for the list :class:`Sessions` / :class:`SessionChanged`) and owns the rules
every transport shares: where a resumed client starts (``eventlog.core.plan_read``, through
``Operations.subscribe``), what happens to a client that lags (its queue in the log overflows: the
feed ends with ``End("lagging")``), revocation (the principal's device is revoked: the feed ends),
and the direct fan-out (the publisher writes an event straight to an idle client, see
:class:`Direct`). A transport is an encoder of these items plus its write loop.

This package is the only subscriber of the event log and of the session list
(``tests/test_layers.py``).
"""

from .items import End, Events, Item, KeepAlive, SessionChanged, Sessions, Snapshot
from .paths import EventsPath, parse_events_path
from .session import Direct, SessionFeed, SessionListFeed

__all__ = [
    "Direct",
    "End",
    "Events",
    "EventsPath",
    "Item",
    "KeepAlive",
    "SessionChanged",
    "SessionFeed",
    "SessionListFeed",
    "Sessions",
    "Snapshot",
    "parse_events_path",
]
