"""Open the pub/sub driver a rendezvous URL names: MQTT (:mod:`.broker`) or ntfy (:mod:`.ntfy`).
Its own module so that neither driver imports the other (ntfy reuses the MQTT driver's limits)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from .auth import Credentials
from .broker import Rendezvous, open_mqtt


@asynccontextmanager
async def open_rendezvous(
    url: str,
    thread_setup: Callable[[], None] | None = None,
    credentials: Credentials | None = None,
) -> AsyncIterator[Rendezvous]:
    """The rendezvous ``url`` names, by its scheme: ``ntfy+http(s)://`` is ntfy (:mod:`.ntfy`),
    ``mqtt[s]://`` and ``ws[s]://`` MQTT. ``thread_setup`` (the network lab) applies to MQTT's
    thread; the ntfy driver has none (it runs on the caller's Trio thread). ``credentials``
    (else those in ``url``'s ``user:password@``, :mod:`.auth`) are presented to the server."""
    if url.startswith("ntfy+"):
        from .ntfy import open_ntfy  # httpx, only for an ntfy URL

        async with open_ntfy(url, credentials) as ntfy:
            yield ntfy
    else:
        async with open_mqtt(url, thread_setup, credentials) as mqtt:
            yield mqtt
