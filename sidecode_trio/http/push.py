"""The ``/v1/push/*`` routes (rows of the operation table, ``ops/front.py``) and the hook that
notes a device acting on a session.

The HTTP side of notifications, so it lives with the HTTP transport (notify/ imports no
transport). They sit behind the app's credential check like every v1 route (and so are served over
WebTransport requests too); a subscription belongs to the device that made it.
"""

from __future__ import annotations

import re
from typing import Final

from quart import g, request
from quart_trio import QuartTrio

from ..notify.service import Notifier
from ..ops import front
from .app import register

#: requests that show a device is looking at a session (it sent, answered or interrupted)
ACTING: Final = re.compile(r"^/v1/sessions/([^/]+)/(?:messages|interrupt|permissions/[^/]+)$")


def add_routes(app: QuartTrio, notifier: Notifier) -> None:
    register(app, front.push_routes(notifier))

    @app.before_request
    async def note_activity() -> None:
        # Before the operation runs (after the credential check, registered earlier): the
        # events it causes must find the device already marked. HTTP requests only:
        # WebTransport requests skip the app's hooks; the service worker covers that case for
        # its own device (it stays quiet while the session is in front).
        acting = ACTING.match(request.path) if request.method == "POST" else None
        principal = getattr(g, "principal", None)
        if acting and principal is not None:
            notifier.acted(principal, acting[1])
