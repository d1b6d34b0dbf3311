"""Scenario 9: a message to an opened session whose CLI had stopped for idleness.

Two daemons in turn, the same in all but ``warm_limit`` (3, the default, and 0: no warming), both
``--idle-timeout 3``. For each repeat: a session whose CLI has stopped; the client opens its event
stream (the app opening the session), with warming waits until its CLI was spawned (``cli.state:
running``), then 1 s more (the user reading the screen; the CLI finishing its own start-up); then
it POSTs a message and times, from just before the POST, ``message.delivered`` (written to the
CLI's stdin) and ``turn.started`` (the CLI's first frame of the turn) on that stream. Without
warming the CLI starts for the message. The fake CLI answers at once: no API latency is included.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any, Final

import trio
from bench_harness import Layout, http_call
from bench_targets import ChildDaemon, child_daemon

REPEATS: Final = {"quick": 3, "full": 7}
WAIT: Final = 60.0
READING: Final = 1.0  # seconds between opening the session and sending (the user reading it)


class Events:
    """A minimal SSE reader of one session's stream (raw HTTP/1.1 on 127.0.0.1)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def open(cls, port: int, token: str, path: str) -> Events:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}"
        await stream.send_all((head + "\r\nAccept: text/event-stream\r\n\r\n").encode())
        return cls(stream)

    async def until(self, marker: bytes) -> float:
        """Read until ``marker`` has arrived; the time it was received."""
        while marker not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("the stream ended")
            self.buffer += data
        self.buffer = self.buffer.split(marker, 1)[1]
        return time.monotonic()


async def _cli_state(daemon: ChildDaemon, session_id: str) -> str:
    snap = await daemon.call("GET", f"/v1/sessions/{session_id}")
    assert isinstance(snap, dict)
    return str(snap["session"]["cli"])


async def _wait_stopped(daemon: ChildDaemon, session_id: str) -> None:
    with trio.fail_after(WAIT):
        while await _cli_state(daemon, session_id) != "stopped":
            await trio.sleep(0.1)


async def one_daemon(
    layout: Layout, cpu: int, warm_limit: int, repeats: int
) -> list[tuple[float, float]]:
    """Milliseconds from the POST to ``message.delivered`` (written to the CLI's stdin) and to
    ``turn.started`` (the CLI's first frame of the turn), per repeat."""
    name = f"warm{warm_limit}"
    config = layout.root / f"{name}.toml"
    config.write_text(f'keystore = "file"\nwarm_limit = {warm_limit}\n')
    extra = ["--idle-timeout", "3", "--config", str(config)]
    times = []
    async with child_daemon(layout, name, cpu, extra) as daemon:
        session_id = await daemon.create_session(str(layout.work))
        path = f"/v1/sessions/{session_id}"
        for _ in range(repeats):
            await _wait_stopped(daemon, session_id)
            events = await Events.open(daemon.port, daemon.token, path + "/events")
            async with events.stream:
                with trio.fail_after(WAIT):
                    if warm_limit:
                        await events.until(b'"state":"running"')
                    await trio.sleep(READING)
                    started = time.monotonic()
                    status, reply = await http_call(
                        daemon.port, daemon.token, "POST", path + "/messages", {"text": "hi"}
                    )
                    if status != 202:
                        raise RuntimeError(f"HTTP {status}: {json.dumps(reply)[:200]}")
                    delivered = await events.until(b"event: message.delivered")
                    turn = await events.until(b"event: turn.started")
                    times.append(((delivered - started) * 1e3, (turn - started) * 1e3))
                    await events.until(b"event: turn.completed")
    return times


async def warm_message(layout: Layout, cpu: int, quick: bool) -> dict[str, Any]:
    repeats = REPEATS["quick" if quick else "full"]
    result: dict[str, Any] = {}
    for key, limit in (("warm", 3), ("cold", 0)):
        pairs = await one_daemon(layout, cpu, limit, repeats)
        delivered, times = [pair[0] for pair in pairs], [pair[1] for pair in pairs]
        result[key] = {
            "ms": times,
            "median_ms": statistics.median(times),
            "min_ms": min(times),
            "max_ms": max(times),
            "delivered_ms": delivered,
            "delivered_median_ms": statistics.median(delivered),
        }
    return result
