"""What the clients stream from: the real daemon in a child process, or the raw relay baseline.

Both are driven the same way by the scenarios (:class:`Target`): open the clients' streams, start
turns of the fake CLI, wait until the server has let go of the finished clients.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Protocol
from urllib.parse import urlsplit

import trio
from bench_harness import BENCH, PYTHON, Layout, LineReader, child, expect, http_call, pin
from bench_harness import wait_for_file as _wait_for_file

SETTLE_TIMEOUT = 10.0  # seconds for the server to drop the subscribers of closed sockets


class Target(Protocol):
    name: str
    port: int
    pid: int
    token: str

    def events_path(self) -> str: ...

    async def last_event_id(self) -> str: ...

    async def start_turns(self, text: str, turns: int) -> None: ...

    async def settle(self) -> None: ...


class ChildDaemon:
    """``python -m sidecode_trio serve`` in a child process, and a few calls of its v1 API."""

    def __init__(self, process: trio.Process, port: int, token: str, startup_s: float) -> None:
        self.process, self.port, self.token = process, port, token
        self.pid = process.pid
        self.startup_s = startup_s  #: from spawning the process to its ready file (±2 ms)

    async def call(self, method: str, path: str, body: object = None, status: int = 200) -> object:
        return expect(*await http_call(self.port, self.token, method, path, body), status)

    async def create_session(self, cwd: str) -> str:
        reply = await self.call("POST", "/v1/sessions", {"cwd": cwd}, 201)
        assert isinstance(reply, dict)
        return str(reply["session"]["id"])

    async def position(self, session_id: str) -> str:
        """``<epoch>:<cursor>`` of the newest durable event: a client there misses nothing."""
        snap = await self.call("GET", f"/v1/sessions/{session_id}")
        assert isinstance(snap, dict)
        return f"{snap['epoch']}:{snap['cursor']}"

    async def subscribers(self) -> int:
        status = await self.call("GET", "/v1/status")
        assert isinstance(status, dict)
        return int(status["log"]["subscribers"])


class DaemonSession:
    """One session of a child daemon, as a :class:`Target`."""

    name = "sidecode-trio"

    def __init__(self, daemon: ChildDaemon, session_id: str) -> None:
        self.daemon, self.session_id = daemon, session_id
        self.port, self.pid, self.token = daemon.port, daemon.pid, daemon.token

    def events_path(self) -> str:
        return f"/v1/sessions/{self.session_id}/events"

    async def last_event_id(self) -> str:
        return await self.daemon.position(self.session_id)

    async def start_turns(self, text: str, turns: int) -> None:
        for _ in range(turns):
            path = f"/v1/sessions/{self.session_id}/messages"
            await self.daemon.call("POST", path, {"text": text}, 202)

    async def settle(self) -> None:
        with trio.move_on_after(SETTLE_TIMEOUT):
            while await self.daemon.subscribers():
                await trio.sleep(0.05)
        await trio.sleep(0.2)


@asynccontextmanager
async def child_daemon(
    layout: Layout, name: str, cpu: int, extra: Sequence[str] = (), code: str = ""
) -> AsyncIterator[ChildDaemon]:
    """The real daemon (state in ``layout.state(name)``), pinned to ``cpu``; stopped by SIGTERM.
    ``extra``: more ``serve`` flags; ``code``: a directory holding another ``sidecode_trio``
    package to run instead (put first on ``PYTHONPATH``)."""
    state, ready = layout.state(name), layout.root / f"ready-{name}.json"
    ready.unlink(missing_ok=True)
    argv = [PYTHON, "-m", "sidecode_trio", "serve", "--state-dir", str(state), "--port", "0"]
    argv += ["--claude", str(layout.wrapper), "--allow-root", str(layout.work)]
    argv += ["--ready-file", str(ready), "--log-level", "warning", *extra]
    started = time.monotonic()
    with layout.log(f"daemon-{name}").open("ab") as log:
        async with child(
            argv,
            env=layout.cli_env() | ({"PYTHONPATH": code} if code else {}),
            stdout=log,
            stderr=log,
            cwd=layout.root,
        ) as proc:
            pin(proc.pid, cpu)
            try:
                info = json.loads(await _wait_for_file(ready, proc, 60.0, poll=0.002))
                startup = time.monotonic() - started
            except (RuntimeError, trio.TooSlowError) as exc:
                tail = layout.log(f"daemon-{name}").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"the daemon did not start ({exc}): {tail}") from exc
            port = urlsplit(info["http"]).port or 0
            yield ChildDaemon(proc, port, (state / "token").read_text().strip(), startup)


class ChildRelay:
    """The raw Trio relay (``bench_relay.py``) in a child process, as a :class:`Target`."""

    name = "raw relay"
    token = ""
    lines: LineReader  #: its stdout (replies to commands)

    def __init__(self, process: trio.Process, port: int, startup_s: float) -> None:
        self.process, self.port, self.pid = process, port, process.pid
        self.startup_s = startup_s  #: from spawning the process to its port on stdout

    def events_path(self) -> str:
        return "/events"

    async def last_event_id(self) -> str:
        return ""

    async def command(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")

    async def start_turns(self, text: str, turns: int) -> None:
        for _ in range(turns):
            await self.command(f"go {text}")

    async def settle(self) -> None:
        await trio.sleep(0.3)


@asynccontextmanager
async def child_relay(
    layout: Layout, cpu: int, replay_frames: int, mode: str = "relay"
) -> AsyncIterator[ChildRelay]:
    """The raw relay, or with ``mode="a0"`` the floor (``bench_relay.FloorRelay``)."""
    argv = [PYTHON, str(BENCH / "bench_relay.py"), "--cli", str(layout.wrapper)]
    argv += ["--cwd", str(layout.work), "--replay-frames", str(replay_frames), "--cpu", str(cpu)]
    argv += ["--mode", mode]
    started = time.monotonic()
    with layout.log("relay").open("ab") as log:
        async with child(
            argv,
            env=layout.cli_env(),
            stdin=subprocess.PIPE,
            stderr=log,
            stop_signal=signal.SIGTERM,
            cwd=layout.root,
        ) as process:
            with trio.fail_after(30):
                lines = LineReader(process.stdout)
                port = int(json.loads(await lines.line())["port"])
            relay = ChildRelay(process, port, time.monotonic() - started)
            relay.lines = lines
            if mode == "a0":
                relay.name = "A0 floor"
            try:
                yield relay
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await relay.command("quit")
                    await process.wait()
