"""A real browser: headless Chromium drives a session over WebTransport.

The page (``tests/browser/wt_page.html``) is served over ``http://127.0.0.1`` (a secure context)
by a small loopback server in this test, which also hands it its configuration (the daemon's
WebTransport URL, the certificate hashes from ``/v1/info``, a paired device's key) and receives
its report. Chromium is the Debian package (``nox -s tests`` installs it in CI); without it the
test skips, except under ``CI=true`` where a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import h11
import trio
from test_quic import paired

from sidecode_trio.config import DaemonConfig

from helpers import chromium_or_skip, running_daemon

PAGE = Path(__file__).parent / "browser" / "wt_page.html"
# The baseline flags: WebTransport needs nothing more (--disable-quic must not be among them).
FLAGS = (
    "--headless",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


class PageServer:
    """GET / (the page), GET /config, POST /progress and POST /result, on 127.0.0.1."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.progress = trio.Event()
        self.done = trio.Event()
        self.result: dict[str, Any] = {}

    async def serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await self._read(stream, conn)
                if request is None:
                    return
                status, payload, kind = self._answer(request, body)
                headers = [("Content-Type", kind), ("Content-Length", str(len(payload)))]
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
                await stream.send_all(conn.send(h11.Data(data=payload)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, trio.BrokenResourceError, h11.LocalProtocolError):
            return
        finally:
            await stream.aclose()

    async def _read(
        self, stream: trio.SocketStream, conn: h11.Connection
    ) -> tuple[h11.Request | None, bytes]:
        request, body = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return None, b""
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return request, body
            else:
                return None, b""

    def _answer(self, request: h11.Request, body: bytes) -> tuple[int, bytes, str]:
        target = request.target.decode()
        if target == "/":
            return 200, PAGE.read_bytes(), "text/html; charset=utf-8"
        if target == "/config":
            return 200, json.dumps(self.config).encode(), "application/json"
        if target == "/progress":
            self.progress.set()
            return 200, b"{}", "application/json"
        if target == "/result":
            self.result = json.loads(body)
            self.done.set()
            return 200, b"{}", "application/json"
        return 404, b"", "text/plain"


def _reap(user_data_dir: Path) -> None:
    """Kill what is left of this test's browser (by PID; only processes using its profile)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(user_data_dir).encode() in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


async def test_chromium_follows_a_session_and_approves_a_tool(
    make_config: Callable[..., DaemonConfig], work_dir: Path, tmp_path: Path
) -> None:
    chromium = chromium_or_skip()
    async with running_daemon(make_config()) as owner:
        device = await paired(owner, "chat", "chromium")
        info = (await owner.http.get("/v1/info")).json()
        big = "y" * 40_000  # its snapshot goes on a stream of its own
        session_id = (await owner.create(work_dir, big))["session"]["id"]
        async with owner.events(session_id) as sse:
            await sse.until_type("turn.completed")
        server = PageServer(
            {
                "url": info["quic"][0],
                "hashes": [c["sha256"] for c in info["certificates"]],
                "session": session_id,
                "device": {
                    "id": device.device_id,
                    "d": _b64(bytes(device.key)),
                    "x": _b64(bytes(device.key.verify_key)),
                },
            }
        )
        profile = tmp_path / "chromium-profile"
        async with trio.open_nursery() as nursery:
            serve = partial(trio.serve_tcp, server.serve, 0, host="127.0.0.1")
            listeners = await nursery.start(serve)
            port = listeners[0].socket.getsockname()[1]
            argv = [chromium, *FLAGS, f"--user-data-dir={profile}"]
            if os.geteuid() == 0:
                argv.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
            argv.append(f"http://127.0.0.1:{port}/")
            browser = await trio.lowlevel.open_process(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                with trio.fail_after(60):
                    await server.progress.wait()
                    await owner.send(session_id, "[[bash:echo browser > b.txt]]")
                    await server.done.wait()
            finally:
                browser.send_signal(signal.SIGTERM)
                with trio.move_on_after(10) as waited:
                    await browser.wait()
                if waited.cancelled_caught:
                    browser.kill()
                    await browser.wait()
                _reap(profile)
                nursery.cancel_scope.cancel()
    result = server.result
    assert result["ok"], result
    assert result["large"] >= 1 and result["snapshot_text_length"] == len(big)
    assert result["answer_status"] == 200
    types = result["types"]
    assert types[0] == "message.queued" and types[-1] == "turn.completed"
    assert "permission.requested" in types and "permission.resolved" in types
    cursors = result["cursors"]
    assert cursors == list(range(cursors[0], cursors[0] + len(cursors)))  # no gap, no duplicate
    assert result["ping_echo"] == "ping-1"
    assert (work_dir / "b.txt").read_text() == "browser\n"


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
