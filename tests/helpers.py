"""Test helpers: an HTTP client of the v1 API, an SSE reader, the fake CLI's log, and what several
tests start alike: a static folder on loopback, a mosquitto, a Node harness."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import h11
import httpx
import nacl.signing
import pytest
import trio

from sidecode_trio.config import DaemonConfig
from sidecode_trio.daemon import DaemonHandle, serve
from sidecode_trio.rtc.signaling import SignalingBox
from sidecode_trio.security.identity import unb64


@attrs.define
class Client:
    """An HTTP client of one daemon, with its token and helpers for the v1 API."""

    handle: DaemonHandle
    http: httpx.AsyncClient

    async def create(self, cwd: Path, prompt: str | None = None, **extra: Any) -> dict[str, Any]:
        body = {"cwd": str(cwd), "prompt": prompt, **extra}
        response = await self.http.post("/v1/sessions", json=body)
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    async def send(self, session_id: str, text: str, **extra: Any) -> dict[str, Any]:
        response = await self.http.post(
            f"/v1/sessions/{session_id}/messages", json={"text": text, **extra}
        )
        assert response.status_code == 202, response.text
        return response.json()  # type: ignore[no-any-return]

    async def answer(self, session_id: str, request_id: str, **body: Any) -> httpx.Response:
        return await self.http.post(
            f"/v1/sessions/{session_id}/permissions/{request_id}", json=body
        )

    async def snapshot(self, session_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/sessions/{session_id}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    @asynccontextmanager
    async def events(
        self, session_id: str, last_event_id: str | None = None, *, from_start: bool = True
    ) -> AsyncIterator[SSEStream]:
        """Follow a session; by default replay it from cursor 0 so no event is folded away."""
        if last_event_id is None and from_start:
            last_event_id = f"{(await self.snapshot(session_id))['epoch']}:0"
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        async with open_sse(self, f"/v1/sessions/{session_id}/events", headers) as stream:
            yield stream


@attrs.frozen
class Phone:
    """A device paired with pair_client.py's ``pair()``: its credentials, and its keys."""

    credentials: dict[str, Any]

    @property
    def key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(unb64(self.credentials["device"]["seed"]))

    @property
    def daemon_key(self) -> bytes:
        return unb64(self.credentials["daemon"]["public_key"])

    def box(self) -> SignalingBox:
        daemon = self.daemon_key
        return SignalingBox(self.key, lambda key: key == daemon)


@attrs.frozen
class SSEEvent:
    id: str | None
    event: str
    data: dict[str, Any]

    @property
    def type(self) -> str:
        """The domain event's type (``snapshot`` for a snapshot frame)."""
        return str(self.data["event"]["type"]) if "event" in self.data else self.event

    @property
    def body(self) -> dict[str, Any]:
        return self.data.get("event", self.data)  # type: ignore[no-any-return]


class SSEStream:
    """A minimal EventSource over h11 on a trio TCP stream (what a watch client does)."""

    def __init__(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        self._stream = stream
        self._conn = conn
        self._buffer = b""
        self.last_id: str | None = None
        self.seen: list[SSEEvent] = []

    async def _more(self) -> bool:
        while True:
            event = self._conn.next_event()
            if isinstance(event, h11.Data):
                self._buffer += bytes(event.data)
                return True
            if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return False
            if event is h11.NEED_DATA:
                self._conn.receive_data(await self._stream.receive_some(65536))

    async def raw_frame(self) -> str:
        """The next frame's text (comments included), without the blank line."""
        while b"\n\n" not in self._buffer:
            if not await self._more():
                raise EOFError("the event stream ended")
        frame, _, self._buffer = self._buffer.partition(b"\n\n")
        return frame.decode()

    async def next(self) -> SSEEvent:
        while True:
            fields: dict[str, str] = {}
            for line in (await self.raw_frame()).split("\n"):
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
            if "data" not in fields:
                continue
            data = json.loads(fields["data"])
            event = SSEEvent(fields.get("id"), fields.get("event", "message"), data)
            if event.id:
                self.last_id = event.id
            self.seen.append(event)
            return event

    async def until(self, predicate: Callable[[SSEEvent], bool], timeout: float = 10.0) -> SSEEvent:
        with trio.fail_after(timeout):
            while True:
                event = await self.next()
                if predicate(event):
                    return event

    async def until_type(self, *types: str, timeout: float = 10.0) -> SSEEvent:
        return await self.until(lambda e: e.type in types, timeout)


@asynccontextmanager
async def open_sse(
    client: Client,
    path: str,
    headers: dict[str, str] | None = None,
    receive_buffer: int | None = None,
) -> AsyncIterator[SSEStream]:
    """``receive_buffer``: a small fixed TCP receive buffer (a slow phone's window), set before
    connecting; loopback would otherwise autotune it to megabytes."""
    url = httpx.URL(client.handle.url)
    if receive_buffer is None:
        stream = await trio.open_tcp_stream(url.host, url.port or 80)
    else:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await sock.connect((url.host, url.port or 80))
        stream = trio.SocketStream(sock)
    try:
        conn = h11.Connection(h11.CLIENT)
        request_headers = [
            ("Host", f"{url.host}:{url.port}"),
            ("Authorization", f"Bearer {client.handle.token}"),
            ("Accept", "text/event-stream"),
            *(headers or {}).items(),
        ]
        await stream.send_all(
            conn.send(h11.Request(method="GET", target=path, headers=request_headers))
        )
        await stream.send_all(conn.send(h11.EndOfMessage()))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            assert isinstance(event, h11.Response), event
            break
        content_type = dict(event.headers).get(b"content-type", b"")
        assert event.status_code == 200 and content_type.startswith(b"text/event-stream"), event
        yield SSEStream(stream, conn)
    finally:
        await stream.aclose()


@asynccontextmanager
async def running_daemon(config: DaemonConfig) -> AsyncIterator[Client]:
    async with trio.open_nursery() as nursery:
        handle: DaemonHandle = await nursery.start(serve, config)
        headers = {"Authorization": f"Bearer {handle.token}"}
        # verify=False: tests of pinning use the example client; this one is the local owner
        async with httpx.AsyncClient(
            base_url=handle.url, headers=headers, timeout=10, verify=False
        ) as http:
            try:
                yield Client(handle, http)
            finally:
                handle.stop.set()


def read_cli_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cli_argvs(path: Path) -> list[list[str]]:
    return [entry["argv"] for entry in read_cli_log(path) if "argv" in entry]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as module ``name`` (examples are scripts, not a package;
    their folder goes on ``sys.path`` as running one puts it, for their shared ``_common``)."""
    folder = Path(__file__).parent.parent / "examples"
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    path = folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def chromium_or_skip() -> str:
    """The system Chromium the browser tests drive: skipped where it is missing, except in CI
    (the nox ``tests`` session installs Debian's ``chromium`` there)."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if os.environ.get("CI") == "true":
        pytest.fail("Chromium is missing in CI: the nox 'tests' session installs it (apt-get)")
    pytest.skip("Chromium is not installed (apt-get install chromium) on this machine")


def chromium_args(*extra: str) -> list[str]:
    """Flags for a headless Chromium in a container (no sandbox as root: it refuses to run)."""
    args = ["--disable-gpu", "--disable-dev-shm-usage", *extra]
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    return args


NODE = shutil.which("node")


def run_node_harness(folder: Path, harness: str) -> Any:
    """``harness``, an ES module, run by Node in ``folder`` beside the copies and fakes the test
    put there; what it printed, as JSON (the test skips where ``NODE`` is None)."""
    assert NODE is not None
    (folder / "harness.mjs").write_text(harness)
    (folder / "package.json").write_text('{"type": "module"}')
    run = subprocess.run(
        [NODE, "harness.mjs"], cwd=folder, capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    """A folder's files, typed as browsers insist for modules and manifests, and no access log."""

    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".webmanifest": "application/manifest+json",
    }

    def log_message(self, *args: Any) -> None:
        pass


@attrs.frozen
class StaticSite:
    url: str  #: http://127.0.0.1:<port>, without a trailing slash
    stop: Callable[[], None]  #: stops serving (the host goes away); again on leaving is harmless


def _here(listen: Callable[[], http.server.ThreadingHTTPServer]) -> http.server.ThreadingHTTPServer:
    return listen()


@contextmanager
def serve_folder(
    root: Path,
    listen_in: Callable[
        [Callable[[], http.server.ThreadingHTTPServer]], http.server.ThreadingHTTPServer
    ] = _here,
) -> Iterator[StaticSite]:
    """``root`` served on a loopback port of its own (another origin than any daemon's), until
    the block ends. ``listen_in`` calls the function that makes the listening socket, in another
    network namespace for one (a socket stays in the namespace it was made in)."""
    handler = functools.partial(_QuietFiles, directory=str(root))
    server = listen_in(lambda: http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    try:
        yield StaticSite(f"http://127.0.0.1:{server.server_address[1]}", stop)
    finally:
        stop()


@contextmanager
def mosquitto_on_loopback(folder: Path, conf: str = "allow_anonymous true\n") -> Iterator[str]:
    """A mosquitto on a free loopback port, its configuration (in ``folder``) ``conf`` and what
    every test's broker has; its ``mqtt://`` URL once it listens; terminated on leaving."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    path = folder / "mosquitto.conf"
    path.write_text(
        f"per_listener_settings false\npersistence false\nset_tcp_nodelay true\n{conf}"
        f"listener {port} 127.0.0.1\n"
    )
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20  # a deadline (a loaded machine), not a count of tries
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mosquitto did not start")
            time.sleep(0.05)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
