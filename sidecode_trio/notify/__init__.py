"""Notifications: Web Push to installed web apps, and a webhook (ntfy-style or JSON).

::

    policy.py         pure: events + time in, notifications out (kinds, debounce, texts, redaction)
    ece.py            pure: RFC 8291 payload encryption (aes128gcm)
    vapid.py          the daemon's VAPID key (RFC 8292) and its signed JWTs
    messages.py       pure: a notification as a push payload, a JSON webhook or an ntfy post
    settings.py       the notifier's settings, checked with the rest of the config
    subscriptions.py  push subscriptions per device, in <state-dir>/push.sqlite3
    service.py        the Trio driver: reads the event log, decides, delivers on bounded queues
    routes.py         /v1/push/* routes
"""
