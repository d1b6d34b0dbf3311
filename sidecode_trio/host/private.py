"""Files only the owner may read: written atomically, created 0600, and SQLite stores opened so.

Every secret or private record the daemon keeps on disk (the access token, TLS keys, the ready
file, the Claude login it writes back, the device and push stores) goes through here, so the
mode and the atomic replace are decided once.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import StoreError

log = logging.getLogger(__name__)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` in one step, readable by the owner only: a reader sees the
    old file or the new one, never a part, and a crash leaves no half-written file behind."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a leftover temp file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_private(path: Path) -> str | None:
    """The text of the owner-only file ``path`` (stripped), or None when there is none. A file
    others could read is restricted to 0600 first, with a warning."""
    try:
        if path.stat().st_mode & 0o077:
            log.warning("%s was readable by others; restricting it to 0600", path)
            os.chmod(path, 0o600)
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def create_private(path: Path, text: str) -> None:
    """Create ``path`` (0600) holding ``text``; fails if it exists (another process won)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")


def secure_file(path: Path) -> None:
    """Create ``path`` 0600 if missing, and make it 0600 if it exists."""
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    os.chmod(path, 0o600)


def open_store(path: Path, schema: str, what: str) -> sqlite3.Connection:
    """A small private SQLite store (WAL, autocommit) with ``schema`` applied; ``what`` names it
    in the :class:`StoreError` raised when it cannot be opened."""
    try:
        secure_file(path)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(schema)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open the {what} {path}: {exc}") from exc
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One transaction on an :func:`open_store` connection. It autocommits, so ``with db:``
    alone would commit each statement on its own and a write failing half-way would keep its
    first half: BEGIN makes the block one."""
    with db:
        db.execute("BEGIN")
        yield
