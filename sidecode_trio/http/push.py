"""The ``/v1/push/*`` routes: decode, call the :class:`~..notify.service.Notifier`, encode.

The HTTP side of notifications, so it lives with the HTTP transport (notify/ imports no
transport). They sit behind the app's credential check like every v1 route (and so are served over
WebTransport requests too); a subscription belongs to the device that made it.
"""

from __future__ import annotations

import re
from typing import Final

from quart import Response, g, request
from quart_trio import QuartTrio

from ..notify.service import Notifier
from ..wire import requests as rq
from .app import current_principal, json_reply, read_body

#: requests that show a device is looking at a session (it sent, answered or interrupted)
ACTING: Final = re.compile(r"^/v1/sessions/([^/]+)/(?:messages|interrupt|permissions/[^/]+)$")


def add_routes(app: QuartTrio, notifier: Notifier) -> None:
    @app.get("/v1/push/vapid")
    async def push_vapid() -> Response:
        current_principal()  # authenticated like the rest: the key is public, the route is not
        return json_reply(200, rq.VapidKeyReply(notifier.vapid.public_key_b64))

    @app.get("/v1/push/subscriptions")
    async def push_subscriptions() -> Response:
        return json_reply(200, notifier.subscriptions(current_principal()))

    @app.post("/v1/push/subscriptions")
    async def push_subscribe() -> Response:
        body = await read_body(rq.PushSubscriptionRequest)
        return json_reply(201, notifier.subscribe(current_principal(), body))

    @app.delete("/v1/push/subscriptions/<subscription_id>")
    async def push_unsubscribe(subscription_id: str) -> Response:
        return json_reply(200, notifier.unsubscribe(current_principal(), subscription_id))

    @app.post("/v1/push/test")
    async def push_test() -> Response:
        return json_reply(202, notifier.send_test(current_principal()))

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
