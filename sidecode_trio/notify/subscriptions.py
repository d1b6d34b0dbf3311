"""Push subscriptions, each tied to the paired device that made it, in ``push.sqlite3`` (0600).

A subscription is the browser's push endpoint and its two keys. Its id is derived from the
endpoint, so a browser that subscribes again updates its row instead of adding one. Revoking a
device drops its subscriptions; so does a push service answering 404 or 410 (the browser
unsubscribed or the subscription expired). The local owner's subscriptions belong to device ``""``.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from pathlib import Path
from typing import Final

import attrs

from ..errors import StoreError
from ..host.private import open_store, transaction

log = logging.getLogger(__name__)

COLUMNS: Final = "id, device_id, endpoint, p256dh, auth, created_at, last_delivered, failures"
PER_DEVICE: Final = 8  # subscriptions kept per device (browsers, profiles); the oldest go first

SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY, device_id TEXT NOT NULL, endpoint TEXT NOT NULL UNIQUE,
    p256dh TEXT NOT NULL, auth TEXT NOT NULL, created_at REAL NOT NULL,
    last_delivered REAL, failures INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS subscriptions_device ON subscriptions (device_id);
"""


@attrs.frozen
class Subscription:
    id: str
    device_id: str  #: "" for the local owner
    endpoint: str
    p256dh: str
    auth: str = attrs.field(repr=False)
    created_at: float
    last_delivered: float | None = None
    failures: int = 0


def subscription_id(endpoint: str) -> str:
    return "push_" + hashlib.sha256(endpoint.encode()).hexdigest()[:20]


class SubscriptionStore:
    def __init__(self, path: Path) -> None:
        self._db = open_store(path, SCHEMA, "push subscription store")

    def close(self) -> None:
        self._db.close()

    def _rows(self, where: str = "", args: tuple[object, ...] = ()) -> list[Subscription]:
        try:
            query = f"SELECT {COLUMNS} FROM subscriptions {where} ORDER BY created_at"  # noqa: S608
            rows = self._db.execute(query, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read push subscriptions: {exc}") from exc
        return [Subscription(*row) for row in rows]

    def all(self) -> list[Subscription]:
        return self._rows()

    def of_device(self, device_id: str) -> list[Subscription]:
        return self._rows("WHERE device_id = ?", (device_id,))

    def get(self, subscription_id: str) -> Subscription | None:
        found = self._rows("WHERE id = ?", (subscription_id,))
        return found[0] if found else None

    def put(
        self, device_id: str, endpoint: str, p256dh: str, auth: str, now: float
    ) -> Subscription:
        """Add or replace the subscription for ``endpoint`` (it now belongs to ``device_id``)."""
        sub = Subscription(subscription_id(endpoint), device_id, endpoint, p256dh, auth, now)
        try:
            with transaction(self._db):  # the add and the prune: one
                self._db.execute(
                    "INSERT OR REPLACE INTO subscriptions "
                    "(id, device_id, endpoint, p256dh, auth, created_at) VALUES (?,?,?,?,?,?)",
                    (sub.id, device_id, endpoint, p256dh, auth, now),
                )
                self._db.execute(
                    "DELETE FROM subscriptions WHERE device_id = ? AND id NOT IN (SELECT id FROM "
                    "subscriptions WHERE device_id = ? ORDER BY created_at DESC LIMIT ?)",
                    (device_id, device_id, PER_DEVICE),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store the push subscription: {exc}") from exc
        return sub

    def remove(self, subscription_id: str) -> bool:
        return self._delete("WHERE id = ?", (subscription_id,)) > 0

    def remove_device(self, device_id: str) -> int:
        return self._delete("WHERE device_id = ?", (device_id,))

    def keep_devices(self, device_ids: set[str]) -> int:
        """Drop the subscriptions of every device not in ``device_ids`` (revoked while the
        daemon was down, or forgotten); the local owner's are kept."""
        stale = {s.device_id for s in self.all()} - device_ids - {""}
        return sum(self.remove_device(device_id) for device_id in stale)

    def delivered(self, subscription_id: str, now: float) -> None:
        self._update(
            "UPDATE subscriptions SET last_delivered = ?, failures = 0 WHERE id = ?",
            (now, subscription_id),
        )

    def failed(self, subscription_id: str) -> None:
        self._update(
            "UPDATE subscriptions SET failures = failures + 1 WHERE id = ?", (subscription_id,)
        )

    def _update(self, statement: str, args: tuple[object, ...]) -> None:
        try:
            self._db.execute(statement, args)
        except sqlite3.Error as exc:
            log.warning("cannot record a push delivery: %s", exc)  # bookkeeping only

    def _delete(self, where: str, args: tuple[object, ...]) -> int:
        try:
            with self._db:
                return self._db.execute(f"DELETE FROM subscriptions {where}", args).rowcount  # noqa: S608
        except sqlite3.Error as exc:
            raise StoreError(f"cannot remove push subscriptions: {exc}") from exc
