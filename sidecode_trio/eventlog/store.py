"""SQLite storage for the event log (synchronous; called from the Trio thread).

Measured on this class of machine (``reference/sse-fanout.md``): a group commit of a few hundred
rows takes tens of microseconds, while a hop to a worker thread costs ~100 µs and an automatic WAL
checkpoint stalls for 5-8 ms. So commits run inline on the Trio thread, automatic checkpoints are
off, and :meth:`SQLiteStore.checkpoint` (a PASSIVE checkpoint on its own connection) is run from a
worker thread once a second by the log's driver. ``synchronous=NORMAL`` in WAL mode survives a
process crash (a ``kill -9``), not necessarily a power loss.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

from ..errors import StoreError
from ..host.private import secure_file
from .core import StoredEvent

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    low_water INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    session_id TEXT NOT NULL,
    cursor INTEGER NOT NULL,
    at REAL NOT NULL,
    type TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (session_id, cursor)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    session_id TEXT PRIMARY KEY,
    cursor INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outputs (
    session_id TEXT NOT NULL,
    key TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (session_id, key)
) WITHOUT ROWID;
"""

INSERT_EVENT = "INSERT INTO events (session_id, cursor, at, type, data) VALUES (?,?,?,?,?)"


@attrs.frozen
class SessionRow:
    id: str
    epoch: str
    low_water: int
    created_at: float
    last: int
    snapshot_cursor: int
    snapshot: bytes | None


class SQLiteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._checkpointer: sqlite3.Connection | None = None  #: see checkpoint()
        try:
            secure_file(path)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(SCHEMA)
            self._cursor = self._db.cursor()
            for suffix in ("-wal", "-shm"):
                side = path.with_name(path.name + suffix)
                if side.exists():
                    os.chmod(side, 0o600)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the event store {path}: {exc}") from exc

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # a failed final checkpoint loses nothing: the WAL is replayed on next open
        self._db.close()

    # -- writing -----------------------------------------------------------------------------

    def commit(
        self,
        new_sessions: Sequence[SessionRow],
        events: Sequence[StoredEvent],
        outputs: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        """Write new sessions, a batch of events and full tool outputs in one transaction."""
        if len(events) == 1 and not new_sessions and not outputs:
            # The token path's usual commit: one statement is its own transaction (autocommit;
            # SQLite rolls a failed one back), on the store's one cursor: no BEGIN or COMMIT
            # statement to run from Python, no cursor to make (about a third of a commit).
            e = events[0]
            try:
                self._cursor.execute(INSERT_EVENT, (e.session_id, e.cursor, e.at, e.type, e.data))
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write events: {exc}") from exc
            return
        try:
            self._db.execute("BEGIN")
            try:
                if new_sessions:  # rare: no empty statement on the token path's commits
                    self._db.executemany(
                        "INSERT INTO sessions (id, epoch, low_water, created_at) VALUES (?,?,?,?)",
                        [(s.id, s.epoch, s.low_water, s.created_at) for s in new_sessions],
                    )
                self._db.executemany(
                    INSERT_EVENT, [(e.session_id, e.cursor, e.at, e.type, e.data) for e in events]
                )
                if outputs:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO outputs (session_id, key, data) VALUES (?, ?, ?)",
                        outputs,
                    )
            except BaseException:
                # SQLite has already rolled back after SQLITE_FULL or an I/O error: a second
                # ROLLBACK would fail and hide why ("disk is full") behind "no transaction".
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write events: {exc}") from exc

    def compact(
        self, session_id: str, snapshot_cursor: int, snapshot: bytes, low_water: int
    ) -> None:
        """Store the folded state at ``snapshot_cursor`` and drop events below ``low_water``."""
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute(
                    "INSERT OR REPLACE INTO snapshots (session_id, cursor, data) VALUES (?, ?, ?)",
                    (session_id, snapshot_cursor, snapshot),
                )
                self._db.execute(
                    "DELETE FROM events WHERE session_id = ? AND cursor < ?",
                    (session_id, low_water),
                )
                self._db.execute(
                    "UPDATE sessions SET low_water = ? WHERE id = ?", (low_water, session_id)
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot compact session {session_id}: {exc}") from exc

    def remove(self, session_id: str) -> None:
        """Delete everything stored for one session."""
        try:
            with self._db:
                self._db.execute("BEGIN")
                for table, column in (
                    ("events", "session_id"),
                    ("snapshots", "session_id"),
                    ("outputs", "session_id"),
                    ("sessions", "id"),
                ):
                    self._db.execute(f"DELETE FROM {table} WHERE {column} = ?", (session_id,))  # noqa: S608
        except sqlite3.Error as exc:
            raise StoreError(f"cannot remove session {session_id}: {exc}") from exc

    def checkpoint(self) -> None:
        """A PASSIVE WAL checkpoint on the store's own checkpoint connection, opened on first use
        and kept (run it in a worker thread, one at a time; :meth:`close` closes it)."""
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False
                )
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass  # best effort: the next one catches up, and the WAL keeps everything meanwhile

    # -- reading -----------------------------------------------------------------------------

    def sessions(self) -> list[SessionRow]:
        try:
            rows = self._db.execute(
                """SELECT s.id, s.epoch, s.low_water, s.created_at,
                          COALESCE((SELECT MAX(cursor) FROM events e WHERE e.session_id = s.id), 0),
                          COALESCE(p.cursor, 0), p.data
                   FROM sessions s LEFT JOIN snapshots p ON p.session_id = s.id
                   ORDER BY s.created_at"""
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read sessions: {exc}") from exc
        return [SessionRow(*row) for row in rows]

    def output(self, session_id: str, key: str) -> str | None:
        try:
            row = self._db.execute(
                "SELECT data FROM outputs WHERE session_id = ? AND key = ?", (session_id, key)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the output {key} of {session_id}: {exc}") from exc
        return None if row is None else str(row[0])

    def events(self, session_id: str, epoch: str, after: int) -> Iterable[StoredEvent]:
        try:
            rows = self._db.execute(
                "SELECT cursor, at, type, data FROM events "
                "WHERE session_id = ? AND cursor > ? ORDER BY cursor",
                (session_id, after),
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read events of {session_id}: {exc}") from exc
        return [StoredEvent(session_id, epoch, c, at, t, d) for c, at, t, d in rows]
