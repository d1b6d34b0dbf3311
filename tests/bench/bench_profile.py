"""Optional: a py-spy profile of the daemon's token path (``run.py --profile``).

A separate paced run at 20 clients with ``py-spy record --native --format raw`` attached to the
daemon (sampling pauses the process, so this run's latencies are not reported). The raw output is
one collapsed stack per line, ``frame;frame;...;leaf COUNT``; the leaf is where the time was spent
("self time"). Frames are ``function (file:line)`` or, for native code, ``symbol (library)``.
"""

from __future__ import annotations

import re
import shutil
import signal
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Final

import trio
from bench_harness import PYTHON, Layout, child
from bench_live import LivePlan, live_run
from bench_targets import Target

FRAME: Final = re.compile(r"^(?P<name>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")
LAYERS: Final = (
    ("sidecode_trio", "sidecode_trio/"),
    ("trio", "trio/"),
    ("hypercorn", "hypercorn/"),
    ("quart / werkzeug", "quart"),
    ("quart / werkzeug", "werkzeug/"),
    ("h11", "h11/"),
    ("attrs / cattrs", "attr"),
    ("json", "json/"),
    ("sqlite3", "sqlite3/"),
)
# The stage of the token path a sample belongs to: the first marker that names a frame of its
# stack wins (so a direct write, made inside the publisher, is counted as one, not as fan-out).
# A marker is a function's qualified name as py-spy prints it (``Class.method``, or a function),
# a class (every method of it: ``TCPServer``), a method whose class is left out
# (``_send_response``), or a native symbol's prefix ending in ``*``. Each one must name a
# function of the code it profiles (tests/test_bench_profile.py checks them against the source).
STAGES: Final = (
    ("gc_collect*", "cyclic GC"),
    ("SQLiteStore.commit", "SQLite group commit"),
    (
        "SessionFeed._offer",
        "direct write to each caught-up client, from the publisher (feed/session.py: an SSE "
        "socket's send(), or a WebTransport/WebRTC link's outbox)",
    ),
    ("EventLog._publish", "fold + fan-out (offer to each subscriber)"),
    ("ClaudeProcess._read_stdout", "CLI stdout: read, frame, translate, append (encode)"),
    ("EventLog.run", "log writer task (other)"),
    ("DirectEvents._fast", "SSE per client: writer task for what was queued (http/direct.py)"),
    ("_pump", "SSE per client: generator and send() (not a plain socket: TLS, watch view)"),
    ("_send_response", "SSE per client: generator, quart, hypercorn, h11, send()"),
    ("_Pump", "WebTransport/WebRTC per subscription: what was queued, to the outbox"),
    ("TCPServer", "hypercorn connection tasks (reads, idle timer)"),
    ("SQLiteStore.checkpoint", "WAL checkpoint (worker thread)"),
    ("unrolled_run", "trio scheduler (run loop, epoll, reschedule)"),
    # trio's run() waits in epoll itself, outside unrolled_run (the main thread's idle wait)
    ("EpollIOManager", "trio scheduler (run loop, epoll, reschedule)"),
)
# py-spy --native counts a thread blocked on a lock (trio's idle worker threads) as active
IDLE: Final = ("PyThread_acquire_lock_timed", "lock_PyThread_acquire_lock")


def py_spy() -> str | None:
    beside = Path(PYTHON).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@asynccontextmanager
async def recording(pid: int, out: Path, layout: Layout, rate: int = 1000) -> AsyncIterator[None]:
    """Sample ``pid`` while the body runs; the raw profile is in ``out`` afterwards."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    argv = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--native"]
    argv += ["--format", "raw", "--output", str(out)]
    with layout.log("py-spy").open("ab") as log:
        async with child(argv, stdout=log, stderr=log, stop_signal=signal.SIGINT):
            await trio.sleep(1.0)  # attached and sampling
            yield
    if not out.exists():
        raise RuntimeError(f"py-spy wrote no profile; see {layout.log('py-spy')}")


def _parse(frame: str) -> tuple[str, str]:
    match = FRAME.match(frame)
    if match is None:
        return frame, ""
    name, file = match["name"], match["file"]
    if name.startswith("0x"):
        name = f"[{file}]"  # an unresolved native address: name it by its library
    return name, file


def _layer(stack: list[str]) -> str:
    """The package of the innermost Python frame: who asked for the time spent."""
    for frame in reversed(stack):
        _, file = _parse(frame)
        if file.endswith(".py"):
            return next((layer for layer, key in LAYERS if key in file), "other Python")
    return "native only"


def names(marker: str, name: str) -> bool:
    """Does the :data:`STAGES` ``marker`` name the frame function ``name``?"""
    if marker.endswith("*"):
        return name.startswith(marker[:-1])
    return name == marker or name.startswith(marker + ".") or name.endswith("." + marker)


def _stage(stack: list[str]) -> str:
    functions = [_parse(frame)[0] for frame in stack]
    for marker, stage in STAGES:
        if any(names(marker, name) for name in functions):
            return stage
    return "other"


def self_time(raw: Path, top: int = 15) -> dict[str, Any]:
    """Top leaf functions and self time per layer, as shares of all samples."""
    leaves: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count, stack = int(count_text), stack_text.split(";")
        if any(marker in stack_text for marker in IDLE):
            idle += count
            continue
        name, file = _parse(stack[-1])
        leaves[f"{name} ({file})" if file else name] += count
        layers[_layer(stack)] += count
        stages[_stage(stack)] += count
        total += count
    return {
        "samples": total,
        "idle": idle,
        "top": [(name, n / total) for name, n in leaves.most_common(top)] if total else [],
        "layers": [(name, n / total) for name, n in layers.most_common()] if total else [],
        "stages": [(name, n / total) for name, n in stages.most_common()] if total else [],
    }


async def profile_token_path(
    target: Target, layout: Layout, plan: LivePlan, raw: Path, clients: int = 20
) -> dict[str, Any]:
    """One paced run at ``clients`` clients under py-spy; the self-time summary."""
    await live_run(
        target,
        layout,
        plan,
        clients=clients,
        directive=plan.paced,
        warmup=plan.warmup,
        timeout=plan.paced_seconds * 3 + 30,
        around=partial(recording, target.pid, raw, layout),
    )
    return self_time(raw)
