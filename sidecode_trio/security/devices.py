"""Paired devices and the audit log, in ``<state-dir>/devices.sqlite3`` (0600).

A device is its Ed25519 public key, a name, a scope and its history (paired, last seen, revoked),
and the X25519 box key it may have registered at pairing for sealed signaling (the web app).
Devices prove themselves with signatures, never with a stored password. The one exception is a
WatchCode-compatible device (``kind="secret"``): the WatchCode apps can only send a static
secret, so such a device gets a random 256-bit secret, shown once; only its SHA-256 is stored, it
is compared in constant time, and it is accepted on the WatchCode routes only.
The audit log records pairings, revocations, scope changes and failed attempts (without secrets).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import attrs

from ..errors import NotFound, StoreError
from ..host.private import open_store, transaction
from ..printable import check_device_name, device_name_problem, escape, kept_device_name

log = logging.getLogger(__name__)

AUDIT_KEEP: Final = 10_000  # rows kept in the audit log
LAST_SEEN_EVERY: Final = 60.0  # seconds between writes of a device's last-seen time


class Scope(enum.StrEnum):
    """What a device may do. Each scope includes the ones before it."""

    APPROVE = "approve"  #: see sessions, answer permission requests, interrupt (a watch)
    CHAT = "chat"  #: also send messages, start sessions, switch model or narrow the mode
    ADMIN = "admin"  #: also manage devices and widen permission modes

    def allows(self, needed: Scope) -> bool:
        order = list(Scope)
        return order.index(self) >= order.index(needed)


@attrs.frozen
class Device:
    id: str
    name: str
    public_key: str  #: base64url Ed25519 public key
    fingerprint: str
    scope: Scope
    paired_at: float
    last_seen: float | None = None
    revoked_at: float | None = None
    kind: str = "key"  #: "key" (Ed25519, signed tokens) or "secret" (WatchCode-compatible)
    #: base64url X25519 key the device registered at pairing for sealed signaling
    #: (``rtc/signaling.py``); None: its box key is derived from ``public_key``
    box_public_key: str | None = None


SECRET_PREFIX: Final = "sha256:"  # noqa: S105 - a label: a secret device stores its hash


def secret_digest(secret: str) -> str:
    return SECRET_PREFIX + hashlib.sha256(secret.encode()).hexdigest()


@attrs.frozen
class AuditEntry:
    at: float
    kind: str
    device_id: str | None
    detail: str


SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, public_key TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL, scope TEXT NOT NULL, paired_at REAL NOT NULL,
    last_seen REAL, revoked_at REAL
);
CREATE TABLE IF NOT EXISTS rendezvous (
    device_id TEXT PRIMARY KEY, secret BLOB NOT NULL  -- dropped with its device (revoke)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL, device_id TEXT,
    detail TEXT NOT NULL
);
"""
#: columns added since the first store, each with the statement that adds it (older stores load:
#: a device paired before has the column's default)
MIGRATIONS = {
    "kind": "ALTER TABLE devices ADD COLUMN kind TEXT NOT NULL DEFAULT 'key'",
    "box_public_key": "ALTER TABLE devices ADD COLUMN box_public_key TEXT",
}


class DeviceStore:
    def __init__(self, path: Path) -> None:
        self._db = open_store(path, SCHEMA, "device store")
        try:
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(devices)")}
            for column, statement in MIGRATIONS.items():
                if column not in columns:
                    self._db.execute(statement)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the device store {path}: {exc}") from exc
        self._devices = {d.id: d for d in self._load()}
        # each active device's rendezvous secret (its broker topics, rtc/signaling.py); kept out
        # of Device so that no listing or reply can carry it
        self._rendezvous: dict[str, bytes] = dict(
            self._db.execute(
                "SELECT r.device_id, r.secret FROM rendezvous r"
                " JOIN devices d ON d.id = r.device_id WHERE d.revoked_at IS NULL"
            ).fetchall()
        )
        self._seen_written: dict[str, float] = {}
        self._revoke_listeners: list[Callable[[str], None]] = []
        self._rendezvous_listeners: list[Callable[[str], None]] = []

    def on_revoke(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(device_id)`` when a device is revoked (e.g. to drop what it owns)."""
        self._revoke_listeners.append(listener)

    def on_rendezvous(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(device_id)`` when a device gets a (new) rendezvous secret."""
        self._rendezvous_listeners.append(listener)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction; a full or read-only disk is a 503 ``store_unavailable``."""
        try:
            with transaction(self._db):
                yield
        except sqlite3.Error as exc:
            raise StoreError(f"cannot update the device store: {exc}") from exc

    def _load(self) -> list[Device]:
        """The stored devices. A name stored before names were checked (or one the check
        refuses now) is replaced here, in memory, by :func:`kept_device_name`: every device
        the daemon hands out comes from here or from :meth:`add`/:meth:`add_secret` (which
        check), so no listing, principal (``permission.resolved.by``), audit line or log
        shows it as it was. The row is left as it is: a store opened read-only, or on a full
        disk, still loads, and it is done again at each start (and logged)."""
        rows = self._db.execute(
            "SELECT id, name, public_key, fingerprint, scope, paired_at, last_seen, revoked_at, "
            "kind, box_public_key FROM devices ORDER BY paired_at"
        ).fetchall()
        devices = []
        for r in rows:
            name = kept_device_name(r[1], r[0])
            if name != r[1]:
                log.warning(
                    "device %s: its stored name is not a valid name now (%s); shown as %r",
                    r[0],
                    device_name_problem(r[1]),
                    name,
                )
            devices.append(
                Device(r[0], name, r[2], r[3], Scope(r[4]), r[5], r[6], r[7], r[8], r[9])
            )
        return devices

    def all(self) -> list[Device]:
        return list(self._devices.values())

    def active(self) -> list[Device]:
        return [d for d in self._devices.values() if d.revoked_at is None]

    def get(self, device_id: str) -> Device:
        try:
            return self._devices[device_id]
        except KeyError:
            raise NotFound(f"unknown device {device_id!r}", code="unknown_device") from None

    def find(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    def by_key(self, public_key: str) -> Device | None:
        return next((d for d in self._devices.values() if d.public_key == public_key), None)

    def add(
        self,
        name: str,
        public_key: str,
        fingerprint: str,
        scope: Scope,
        rendezvous: bytes | None = None,
        box_public_key: str | None = None,
    ) -> Device:
        """A device paired with ``public_key``. ``rendezvous`` (its rendezvous secret) marks a
        pairing: when the key is already paired, that pairing's secret, box key (None: derive
        it), scope and name replace the old ones, on the same record (the user just approved
        that offer's scope; the phone sent that name)."""
        check_device_name(name)
        existing = self.by_key(public_key)
        if existing is not None and existing.revoked_at is None:
            if rendezvous is not None:  # a new pairing: the device computed a new secret
                existing = self._paired_again(existing, name, scope, rendezvous, box_public_key)
                self._rendezvous_changed(existing.id)
            return existing  # the same key pairing again: keep one record
        device = Device(
            f"dev_{secrets.token_hex(6)}",
            name,
            public_key,
            fingerprint,
            scope,
            time.time(),
            box_public_key=box_public_key,
        )
        with self._transaction():
            if existing is not None:  # a revoked key pairs anew: a new record, the old one goes
                self._db.execute("DELETE FROM devices WHERE id = ?", (existing.id,))
                self._devices.pop(existing.id, None)
            self._db.execute(
                "INSERT INTO devices (id, name, public_key, fingerprint, scope, paired_at, "
                "box_public_key) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    device.id,
                    name,
                    public_key,
                    fingerprint,
                    scope.value,
                    device.paired_at,
                    box_public_key,
                ),
            )
            if existing is not None:
                self._db.execute("DELETE FROM rendezvous WHERE device_id = ?", (existing.id,))
            if rendezvous is not None:
                self._db.execute(
                    "INSERT INTO rendezvous (device_id, secret) VALUES (?, ?)",
                    (device.id, rendezvous),
                )
        self._devices[device.id] = device
        if rendezvous is not None:
            self._rendezvous[device.id] = rendezvous
            self._rendezvous_changed(device.id)
        self.audit("paired", device.id, f"{name!r} scope={scope.value} key={fingerprint}")
        return device

    def add_secret(self, name: str, scope: Scope) -> tuple[Device, str]:
        """A WatchCode-compatible device: returns it and its secret (shown once, stored hashed)."""
        check_device_name(name)
        secret = "wc_" + secrets.token_urlsafe(32)
        digest = secret_digest(secret)
        device = Device(
            f"dev_{secrets.token_hex(6)}",
            name,
            digest,
            digest[len(SECRET_PREFIX) : len(SECRET_PREFIX) + 16],
            scope,
            time.time(),
            kind="secret",
        )
        with self._transaction():
            self._db.execute(
                "INSERT INTO devices (id, name, public_key, fingerprint, scope, paired_at, kind) "
                "VALUES (?, ?, ?, ?, ?, ?, 'secret')",
                (device.id, name, digest, device.fingerprint, scope.value, device.paired_at),
            )
        self._devices[device.id] = device
        self.audit("paired", device.id, f"{name!r} scope={scope.value} kind=watchcode-secret")
        return device, secret

    def by_secret(self, secret: str) -> Device | None:
        """The unrevoked secret device holding ``secret`` (every candidate compared in constant
        time, so the answer's timing does not depend on how much of a stored hash matched)."""
        digest = secret_digest(secret).encode()
        found = None
        for device in self._devices.values():
            candidate = device.kind == "secret" and device.revoked_at is None
            if hmac.compare_digest(device.public_key.encode(), digest) and candidate:
                found = device
        return found

    def _paired_again(
        self, device: Device, name: str, scope: Scope, secret: bytes, box_public_key: str | None
    ) -> Device:
        """The new pairing on the same record, in one transaction (a failing disk changes
        nothing): its name, scope, box key and rendezvous secret; audited as a pairing that
        says what it replaced."""
        was = device
        with self._transaction():
            self._db.execute(
                "UPDATE devices SET name = ?, scope = ?, box_public_key = ? WHERE id = ?",
                (name, scope.value, box_public_key, device.id),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO rendezvous (device_id, secret) VALUES (?, ?)",
                (device.id, secret),
            )
        device = attrs.evolve(device, name=name, scope=scope, box_public_key=box_public_key)
        self._devices[device.id] = device
        self._rendezvous[device.id] = secret
        if was.box_public_key != box_public_key:
            self.audit("box_key_changed", device.id, "registered" if box_public_key else "derived")
        replaced = (
            f"; was {was.name!r} scope={was.scope.value}"
            if (was.name, was.scope) != (name, scope)
            else ""
        )
        self.audit(
            "paired",
            device.id,
            f"{name!r} scope={scope.value} key={device.fingerprint} (again{replaced})",
        )
        return device

    def box_key(self, public_key: str) -> str | None:
        """The box key (base64url X25519) the active device with Ed25519 ``public_key``
        registered at pairing; None when it has none (derive it) or is unknown or revoked."""
        device = self.by_key(public_key)
        if device is None or device.revoked_at is not None:
            return None
        return device.box_public_key

    def _rendezvous_changed(self, device_id: str) -> None:
        for listener in self._rendezvous_listeners:
            listener(device_id)

    def rendezvous(self, device_id: str) -> bytes | None:
        """The active device's rendezvous secret (its broker topics), None if it has none."""
        return self._rendezvous.get(device_id)

    def with_rendezvous(self) -> list[tuple[Device, bytes]]:
        """Every active device that can use the rendezvous, with its secret."""
        return [(d, self._rendezvous[d.id]) for d in self.active() if d.id in self._rendezvous]

    def revoke(self, device_id: str) -> Device:
        device = self.get(device_id)
        if device.revoked_at is not None:
            return device
        device = attrs.evolve(device, revoked_at=time.time())
        with self._transaction():
            self._db.execute(
                "UPDATE devices SET revoked_at = ? WHERE id = ?", (device.revoked_at, device_id)
            )
            self._db.execute("DELETE FROM rendezvous WHERE device_id = ?", (device_id,))
        self._devices[device_id] = device
        self._rendezvous.pop(device_id, None)  # its topics are forgotten with it
        self.audit("revoked", device_id, repr(device.name))
        for listener in self._revoke_listeners:
            listener(device_id)
        return device

    def set_scope(self, device_id: str, scope: Scope) -> Device:
        device = attrs.evolve(self.get(device_id), scope=scope)
        with self._transaction():
            self._db.execute("UPDATE devices SET scope = ? WHERE id = ?", (scope.value, device_id))
        self._devices[device_id] = device
        self.audit("scope_changed", device_id, scope.value)
        return device

    def touch(self, device_id: str, now: float) -> None:
        """Record that a device was seen (written at most once a minute per device)."""
        device = self._devices.get(device_id)
        if device is None:
            return
        self._devices[device_id] = attrs.evolve(device, last_seen=now)
        if now - self._seen_written.get(device_id, 0.0) >= LAST_SEEN_EVERY:
            self._seen_written[device_id] = now
            try:
                self._db.execute("UPDATE devices SET last_seen = ? WHERE id = ?", (now, device_id))
            except sqlite3.Error as exc:
                log.warning("cannot record last-seen time: %s", exc)

    def audit(self, kind: str, device_id: str | None, detail: str) -> None:
        detail = escape(detail)  # e.g. a request path: it is shown in a terminal, one per line
        log.info("audit: %s %s %s", kind, device_id or "-", detail)
        try:
            self._db.execute(
                "INSERT INTO audit (at, kind, device_id, detail) VALUES (?, ?, ?, ?)",
                (time.time(), kind, device_id, detail[:500]),
            )
            self._db.execute(
                "DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?", (AUDIT_KEEP,)
            )
        except sqlite3.Error as exc:
            log.warning("cannot write the audit log: %s", exc)

    def audit_log(self, limit: int = 200) -> list[AuditEntry]:
        rows = self._db.execute(
            "SELECT at, kind, device_id, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [AuditEntry(*row) for row in rows]
