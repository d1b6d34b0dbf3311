"""Tools for the fault and load tests: the daemon as a real process, clients that fold, checks.

* :func:`daemon_process` runs ``python -m sidecode_trio serve`` (port 0, state in ``tmp_path``)
  and finds it the way a client does: through ``daemon.json`` (the one whose ``pid`` is the new
  process: a daemon killed with SIGKILL leaves its old file behind).
* :class:`Follower` is an SSE client that folds what it receives into a
  :class:`~sidecode_trio.eventlog.fold.SessionFold`, checks that every event's cursor is the one
  after the last (no gap, no duplicate), survives the daemon's death and resumes from its last
  ``(epoch, cursor)``; :meth:`Follower.check_fold` compares its state with the daemon's snapshot.
* :func:`check_log_integrity` opens the event store read-only: SQLite's ``integrity_check``, and
  per session cursors contiguous from the low-water mark, each row's envelope naming its own
  session, epoch and cursor.
* :func:`seeded` gives a seeded :class:`random.Random` and prints the seed (shown on failure;
  ``FAULTS_SEED=N`` replays a run); :func:`env_int` reads a count a longer local soak can raise.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import h11
import httpx
import trio

from sidecode_trio.daemon import DaemonHandle
from sidecode_trio.eventlog.fold import SessionFold
from sidecode_trio.wire import converter as wire
from sidecode_trio.wire.events import Event
from sidecode_trio.wire.snapshot import Snapshot

from helpers import Client, SSEEvent, SSEStream, open_sse, pid_alive

START_TIMEOUT = 20.0  # seconds for a daemon process to be ready (a loaded 2-core CI box)
TERMINAL = frozenset({"turn.completed", "turn.failed", "turn.interrupted"})

# Run before the daemon is imported: the daemon's wall clock (``time.time``, which every
# component takes as its injected ``clock`` default) is the real one plus the number of seconds
# in the file named by FAULT_CLOCK_FILE, re-read whenever that file is replaced. Trio's clock
# (timeouts, timers) is monotonic and is not touched, exactly as on a real host.
CLOCK_SHIM = """
import os, sys, time
_real, _path, _state = time.time, os.environ["FAULT_CLOCK_FILE"], [0.0, None]
def _now():
    try:
        st = os.stat(_path)
        key = (st.st_ino, st.st_mtime_ns)
        if key != _state[1]:
            with open(_path) as f:
                _state[0], _state[1] = float(f.read() or 0), key
    except (OSError, ValueError):
        pass
    return _real() + _state[0]
time.time = _now
from sidecode_trio.cli import main
sys.argv[0] = "sidecode-trio"
raise SystemExit(main(sys.argv[1:]))
"""


def env_int(name: str, default: int) -> int:
    """A count from the environment (``FAULTS_KILLS=200`` for a local soak), else ``default``."""
    return int(os.environ.get(name) or default)


def seeded(what: str) -> random.Random:
    """A seeded generator; the seed is printed so a failing run can be replayed exactly."""
    seed = int(os.environ.get("FAULTS_SEED") or secrets.randbits(32))
    print(f"{what}: FAULTS_SEED={seed}")  # pytest shows captured output on failure
    return random.Random(seed)


def free_port(avoid: int) -> int:
    """A TCP port that is free now and is not ``avoid``."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port != avoid:
            return port


@attrs.frozen
class Kit:
    """What a daemon process needs from the test's fixtures."""

    tmp_path: Path
    fake_claude: Path
    work_dir: Path
    claude_env: Mapping[str, str]

    @property
    def state_dir(self) -> Path:
        return self.tmp_path / "state"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "events.sqlite3"


@attrs.frozen
class DaemonProcess:
    proc: trio.Process
    client: Client
    info: dict[str, Any]  #: ``daemon.json`` as this process wrote it

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        self.proc.kill()


def _toml(settings: Mapping[str, object]) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())


async def find_daemon(state_dir: Path, pid: int, proc: trio.Process) -> dict[str, Any]:
    """``daemon.json`` once the daemon ``pid`` has written it (what a client reads)."""
    path = state_dir / "daemon.json"
    with trio.fail_after(START_TIMEOUT):
        while True:
            assert proc.poll() is None, f"the daemon exited during start-up ({proc.returncode})"
            try:
                info: dict[str, Any] = json.loads(path.read_text())
            except (OSError, ValueError):
                info = {}
            if info.get("pid") == pid:
                return info
            await trio.sleep(0.05)


@asynccontextmanager
async def daemon_process(
    kit: Kit,
    *,
    port: int = 0,
    settings: Mapping[str, object] | None = None,
    clock_file: Path | None = None,
) -> AsyncIterator[DaemonProcess]:
    """The daemon as a separate process; killed (if still running) and reaped on exit."""
    state = kit.state_dir
    state.mkdir(mode=0o700, exist_ok=True)
    config = {"keystore": "file", "keep_awake": "off", "quic_port": 0, **(settings or {})}
    (state / "config.toml").write_text(_toml(config))
    args = [
        "serve", "--state-dir", str(state), "--port", str(port),
        "--claude", str(kit.fake_claude), "--allow-root", str(kit.work_dir),
        "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, **kit.claude_env}
    if clock_file is not None:
        argv = [sys.executable, "-c", CLOCK_SHIM, *args]
        env["FAULT_CLOCK_FILE"] = str(clock_file)
    else:
        argv = [sys.executable, "-m", "sidecode_trio", *args]
    with (kit.tmp_path / "daemon.log").open("ab") as output:  # its pairing QR, its log
        proc = await trio.lowlevel.open_process(argv, env=env, stdout=output, stderr=output)
    try:
        info = await find_daemon(state, proc.pid, proc)
        token = (state / "token").read_text().strip()
        url = httpx.URL(info["http"])
        handle = DaemonHandle(info["http"], url.port or 0, token, trio.Event())
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=info["http"], headers=headers, timeout=15) as http:
            yield DaemonProcess(proc, Client(handle, http), info)
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await proc.wait()


async def settled_snapshot(client: Client, session_id: str, timeout: float = 15.0) -> Snapshot:
    """The session's snapshot once nothing is left open in it (no turn, queue or permission):
    after a restart, the recovery events are committed right after start-up."""
    with trio.fail_after(timeout):
        while True:
            snap = wire.structure(await client.snapshot(session_id), Snapshot)
            if snap.active_turn is None and not snap.queued and not snap.pending_permissions:
                return snap
            await trio.sleep(0.02)


def kill_leftovers(pids: list[int]) -> None:
    """SIGKILL every ``claude`` a test saw that is somehow still alive (a test's ``finally``)."""
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


# -- a client that folds ------------------------------------------------------------------------


def parse_id(event_id: str) -> tuple[str, int]:
    epoch, _, cursor = event_id.rpartition(":")
    return epoch, int(cursor)


class Gap(AssertionError):
    """A client received an event that is not the one right after its last."""


class Follower:
    """One SSE client of one session that folds what it gets, across reconnects."""

    def __init__(self, name: str, session_id: str) -> None:
        self.name = name
        self.session_id = session_id
        self.fold: SessionFold | None = None
        self.epoch: str | None = None
        self.cursor = 0
        self.snapshots = 0  #: snapshot frames received (a resume in the same epoch sends none)
        self.seen: dict[str, dict[str, Any]] = {}  #: every event applied, by its SSE id
        self.types: list[tuple[int, str, dict[str, Any]]] = []  #: (cursor, type, event body)
        self._ends: dict[str, list[str]] = {}  #: turn id -> its terminal events' types
        self.reconnects = 0  #: streams the daemon ended that this client reopened
        self._stack: AsyncExitStack | None = None
        self._stream: SSEStream | None = None
        self._client: Client | None = None

    @property
    def position(self) -> str | None:
        return None if self.epoch is None else f"{self.epoch}:{self.cursor}"

    # -- applying --------------------------------------------------------------------------

    def apply(self, frame: SSEEvent) -> None:
        if frame.event == "snapshot":
            snap = wire.structure(frame.data["snapshot"], Snapshot)
            self.fold = SessionFold.from_snapshot(snap)
            self.epoch, self.cursor = snap.epoch, snap.cursor
            self.snapshots += 1
            return
        assert frame.id is not None, f"{self.name}: an event without an id: {frame}"
        epoch, cursor = parse_id(frame.id)
        if epoch != self.epoch or cursor != self.cursor + 1:
            raise Gap(f"{self.name}: at {self.position}, received {frame.id} ({frame.type})")
        if self.fold is None:  # following from cursor 0: the empty session
            self.fold = SessionFold(self.session_id)
        event = wire.structure(frame.data["event"], Event)
        self.fold.apply(event, frame.data["at"])
        self.cursor = cursor
        self.seen[frame.id] = frame.data
        body = frame.data["event"]
        self.types.append((cursor, frame.type, body))
        if frame.type in TERMINAL:
            self._ends.setdefault(body["turn_id"], []).append(frame.type)

    def apply_wt(self, message: Mapping[str, Any]) -> None:
        """Apply a WebTransport subscription frame (``event``/``snapshot``; others are ignored):
        the same envelope as SSE, so the same checks."""
        if message.get("type") == "snapshot":
            self.apply(SSEEvent(message["id"], "snapshot", {"snapshot": message["snapshot"]}))
        elif message.get("type") == "event":
            data = message["data"]
            self.apply(SSEEvent(message["id"], data["event"]["type"], data))

    # -- the connection --------------------------------------------------------------------

    async def connect(
        self,
        client: Client,
        *,
        from_start: bool = False,
        epoch: str = "",
        receive_buffer: int | None = None,
    ) -> None:
        """Open the stream: from our last position, from cursor 0 of ``epoch``, or fresh (a
        snapshot first). ``receive_buffer``: a small TCP window (see ``helpers.open_sse``)."""
        await self.close()
        if self.position is None and from_start:
            self.epoch = epoch or (await client.snapshot(self.session_id))["epoch"]
        headers = {} if self.position is None else {"Last-Event-ID": self.position}
        stack = AsyncExitStack()
        path = f"/v1/sessions/{self.session_id}/events"
        self._stream = await stack.enter_async_context(
            open_sse(client, path, headers, receive_buffer)
        )
        self._stack, self._client = stack, client

    async def close(self) -> None:
        stack, self._stack, self._stream = self._stack, None, None
        if stack is not None:
            with trio.CancelScope(shield=True):
                await stack.aclose()

    async def read_until(self, done: Callable[[Follower], bool], timeout: float = 15.0) -> None:
        """Apply frames until ``done(self)`` holds (checked before reading, and after each).

        A stream the daemon ends (this client lagged and was dropped) is reopened from the last
        position, as an ``EventSource`` does; :attr:`reconnects` counts those."""
        assert self._stream is not None, f"{self.name} is not connected"
        with trio.fail_after(timeout):
            while not done(self):
                try:
                    frame = await self._stream.next()
                except EOFError:
                    assert self._client is not None
                    self.reconnects += 1
                    await self.connect(self._client)
                    continue
                self.apply(frame)

    async def until_ended(self, turn_id: str, timeout: float = 15.0) -> list[str]:
        """Read until ``turn_id`` has ended; returns its terminal events' types."""
        await self.read_until(lambda f: bool(f.ends_of(turn_id)), timeout)
        return self.ends_of(turn_id)

    async def drain(self, timeout: float = 10.0) -> None:
        """Apply what the dead daemon had sent until the stream ends; then close it."""
        assert self._stream is not None, f"{self.name} is not connected"
        with trio.fail_after(timeout):
            try:
                while True:
                    self.apply(await self._stream.next())
            except (EOFError, trio.BrokenResourceError, h11.RemoteProtocolError):
                pass
        await self.close()

    async def check_fold(self, client: Client, timeout: float = 15.0) -> Snapshot:
        """Read up to the daemon's current cursor; the folded state must equal its snapshot."""
        await self.read_until(lambda f: f.epoch is not None, timeout)  # a snapshot frame first
        snap = wire.structure(await client.snapshot(self.session_id), Snapshot)
        assert snap.epoch == self.epoch, f"{self.name}: epoch {self.epoch} != {snap.epoch}"
        await self.read_until(lambda f: f.cursor >= snap.cursor, timeout)
        assert self.fold is not None
        assert self.cursor == snap.cursor
        mine = self.fold.snapshot(snap.epoch, snap.cursor)
        assert wire.unstructure(mine) == wire.unstructure(snap), f"{self.name}: fold differs"
        return snap

    def ends_of(self, turn_id: str) -> list[str]:
        """The terminal events this client saw for ``turn_id``."""
        return list(self._ends.get(turn_id, ()))


# -- the store, from outside ------------------------------------------------------------------


def check_log_integrity(db_path: Path) -> dict[str, tuple[str, int]]:
    """Check the event store on disk; returns ``{session id: (epoch, last cursor)}``."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)  # no checkpoint, no change
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        found: dict[str, tuple[str, int]] = {}
        sessions = db.execute("SELECT id, epoch, low_water FROM sessions").fetchall()
        for session_id, epoch, low_water in sessions:
            rows = db.execute(
                "SELECT cursor, type, data FROM events WHERE session_id = ? ORDER BY cursor",
                (session_id,),
            ).fetchall()
            cursors = [row[0] for row in rows]
            expected = list(range(low_water, low_water + len(cursors)))
            assert cursors == expected, f"{session_id}: cursors not contiguous from {low_water}"
            for cursor, kind, data in rows:
                envelope = json.loads(data)
                assert (envelope["session_id"], envelope["epoch"]) == (session_id, epoch)
                assert envelope["cursor"] == cursor and envelope["event"]["type"] == kind
            found[session_id] = (epoch, cursors[-1] if cursors else low_water - 1)
        return found
    finally:
        db.close()


def memory(pid: int) -> dict[str, int]:
    """A process's resident memory now (``VmRSS``) and at its peak (``VmHWM``), in bytes."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields
