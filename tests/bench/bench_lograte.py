"""Scenario 2: durable event-log appends per second, against raw ``sqlite3`` as the baseline.

* Figure: a fresh :class:`~sidecode_trio.eventlog.log.EventLog` on a fresh
  :class:`~sidecode_trio.eventlog.store.SQLiteStore`, its writer task running (group commit,
  fold, fan-out, the 1 s checkpoint loop), the daemon's default limits (so compaction happens as
  it would). ``append`` small ``TextDelta`` events ``batch`` at a time and ``await flush()`` after
  each batch: the writer commits each batch in one transaction.
* Baseline: the same rows (pre-encoded by the log's own ``encode``) into the same schema and
  pragmas with raw ``sqlite3``: ``BEGIN; executemany; COMMIT`` per batch.

Runs in the orchestrator's process (pinned to the daemon's CPU meanwhile); no clients.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Final

import trio

from sidecode_trio.eventlog.core import encode
from sidecode_trio.eventlog.log import EventLog
from sidecode_trio.eventlog.store import SCHEMA, SQLiteStore
from sidecode_trio.wire.events import TextDelta

SESSION: Final = "00000000-0000-4000-8000-00000000bench"
MESSAGE: Final = "msg_0123456789abcdef01234567"
INSERT: Final = "INSERT INTO events (session_id, cursor, at, type, data) VALUES (?,?,?,?,?)"


def deltas(count: int) -> list[TextDelta]:
    """Small text deltas like a token stream's (a 14-character stamp each)."""
    return [TextDelta(MESSAGE, 0, f"{i:013d};") for i in range(count)]


async def eventlog_rate(db: Path, total: int, batch: int) -> dict[str, float]:
    """Events/s through ``EventLog.append`` + ``flush``, and the commits the writer made."""
    store = SQLiteStore(db)
    try:
        log = EventLog(store)
        log.load()
        log.create(SESSION)
        events = deltas(total)
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            started = time.perf_counter()
            for start in range(0, total, batch):
                for event in events[start : start + batch]:
                    log.append(SESSION, event)
                await log.flush()
            elapsed = time.perf_counter() - started
            nursery.cancel_scope.cancel()
        return {"events_per_s": total / elapsed, "commits": log.commits, "seconds": elapsed}
    finally:
        store.close()


def sqlite_rate(db: Path, total: int, batch: int) -> dict[str, float]:
    """Events/s of raw ``executemany`` of the same rows, one transaction per batch."""
    now = time.time()
    stored = [encode(SESSION, "epoch0000000", i + 1, now, e) for i, e in enumerate(deltas(total))]
    rows = [(s.session_id, s.cursor, s.at, s.type, s.data) for s in stored]
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "wal_autocheckpoint=0"):
            conn.execute(f"PRAGMA {pragma}")
        conn.executescript(SCHEMA)
        started = time.perf_counter()
        for start in range(0, total, batch):
            conn.execute("BEGIN")
            conn.executemany(INSERT, rows[start : start + batch])
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return {"events_per_s": total / elapsed, "commits": -(-total // batch), "seconds": elapsed}


async def log_rates(
    root: Path, sizes: dict[int, int], repeat: int = 1
) -> dict[int, dict[str, dict[str, float]]]:
    """For each ``batch: total``, the log's figure and the raw baseline, each on a fresh file;
    with ``repeat`` > 1, the run with the median rate of each."""
    results = {}
    for batch, total in sizes.items():
        figures, baselines = [], []
        for run in range(repeat):
            figures.append(await eventlog_rate(root / f"log-{batch}-{run}.sqlite3", total, batch))
            baselines.append(sqlite_rate(root / f"raw-{batch}-{run}.sqlite3", total, batch))
        figure, baseline = _median_run(figures), _median_run(baselines)
        results[batch] = {"figure": figure | {"events": total}, "baseline": baseline}
    return results


def _median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    return sorted(runs, key=lambda run: run["events_per_s"])[len(runs) // 2]
