"""The direct SSE path (``sidecode_trio/http/direct.py``) behaves like the Quart route it bypasses.

``GET /v1/sessions/{id}/events`` over HTTP/1.1 is answered by the direct path; the same request
over HTTP/1.0 is not claimed, so hypercorn and the Quart app answer it: comparing the two over
real sockets checks that errors keep their status, body and headers. Also: the connection goes
back to hypercorn after an error or a finished stream (keep-alive), a client that goes away is
unsubscribed, a request head that arrives in pieces is still served, and TLS works.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from sidecode_trio import daemon as daemon_module
from sidecode_trio.config import DaemonConfig
from sidecode_trio.http import direct

from helpers import Client, SSEStream, running_daemon

pytestmark = pytest.mark.trio

Reply = tuple[int, dict[bytes, bytes], bytes]


class Connection:
    """One raw HTTP/1.x connection to the daemon, driven with h11."""

    def __init__(self, stream: trio.abc.Stream, version: bytes = b"1.1") -> None:
        self.stream, self.version = stream, version
        self.conn = h11.Connection(h11.CLIENT)

    async def send(self, target: str, headers: list[tuple[str, str]], method: str = "GET") -> None:
        if self.version == b"1.0":  # h11 only sends HTTP/1.1
            lines = [f"{method} {target} HTTP/1.0", *(f"{k}: {v}" for k, v in headers)]
            await self.stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
            return
        request = h11.Request(method=method, target=target, headers=headers)
        await self.stream.send_all(self.conn.send(request) + self.conn.send(h11.EndOfMessage()))

    async def reply_1_0(self) -> Reply:
        """An HTTP/1.0 response: the head, then the body by its length (or until ``marker``)."""
        data = b""
        while b"\r\n\r\n" not in data:
            data += await self.stream.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"-1"))
        while len(body) < length or (length < 0 and b"event: snapshot" not in body):
            body += await self.stream.receive_some(65536)
        return int(status_line.split()[1]), headers, body

    async def next(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(bytes(await self.stream.receive_some(65536)))

    async def head(self) -> h11.Response:
        event = await self.next()
        assert isinstance(event, h11.Response), event
        return event

    async def reply(self) -> Reply:
        head, body = await self.head(), b""
        while not isinstance(event := await self.next(), h11.EndOfMessage):
            assert isinstance(event, h11.Data), event
            body += event.data
        return head.status_code, dict(head.headers), body

    async def until_data(self, marker: bytes) -> bytes:
        """Read the body until ``marker`` has been seen."""
        seen = b""
        while marker not in seen:
            event = await self.next()
            assert isinstance(event, h11.Data), event
            seen += event.data
        return seen

    def again(self) -> None:
        self.conn.start_next_cycle()


async def connect(client: Client, version: bytes = b"1.1") -> Connection:
    return Connection(await trio.open_tcp_stream("127.0.0.1", client.handle.port), version)


def headers_for(client: Client, **changes: str | None) -> list[tuple[str, str]]:
    base: dict[str, str | None] = {
        "Host": f"127.0.0.1:{client.handle.port}",
        "Authorization": f"Bearer {client.handle.token}",
        "Accept": "text/event-stream",
    }
    base.update(changes)
    return [(name, value) for name, value in base.items() if value is not None]


async def subscribers(client: Client) -> int:
    status = (await client.http.get("/v1/status")).json()
    return int(status["log"]["subscribers"])


async def test_errors_match_the_quart_route_and_keep_the_connection(
    daemon: Client, work_dir: Path
) -> None:
    session_id = (await daemon.create(work_dir))["session"]["id"]
    path = f"/v1/sessions/{session_id}/events"
    cases: list[tuple[str, dict[str, Any]]] = [
        (path, {"Authorization": None}),
        (path, {"Authorization": "Bearer " + "x" * 43}),
        (path, {"Host": "evil.example"}),
        (path, {"Last-Event-ID": "not an id"}),
        (path + "?since=garbage", {}),
        (path + "?view=bogus", {}),
        (path + "?view=", {}),
        ("/v1/sessions/00000000-0000-4000-8000-000000000000/events", {}),
    ]
    with trio.fail_after(20):
        direct = await connect(daemon)
        for target, changes in cases:
            await direct.send(target, headers_for(daemon, **changes))
            status, headers, body = await direct.reply()
            quart = await connect(daemon, b"1.0")  # not claimed: hypercorn and Quart answer
            await quart.send(target, headers_for(daemon, **changes))
            q_status, q_headers, q_body = await quart.reply_1_0()
            await quart.stream.aclose()
            assert status == q_status and status >= 400, (target, changes, body)
            assert json.loads(body) == json.loads(q_body), (target, changes)
            assert headers[b"content-type"] == q_headers[b"content-type"]
            assert headers.get(b"www-authenticate") == q_headers.get(b"www-authenticate")
            direct.again()  # the same connection carries the next request
        await direct.send("/v1/info", headers_for(daemon))
        assert (await direct.reply())[0] == 200
        await direct.stream.aclose()


async def test_a_finished_stream_hands_the_connection_back(daemon: Client, work_dir: Path) -> None:
    session_id = (await daemon.create(work_dir))["session"]["id"]
    with trio.fail_after(20):
        conn = await connect(daemon)
        await conn.send(f"/v1/sessions/{session_id}/events", headers_for(daemon))
        head = await conn.head()
        assert head.status_code == 200
        assert dict(head.headers)[b"content-type"].startswith(b"text/event-stream")
        assert b"event: snapshot" in await conn.until_data(b"event: snapshot")
        deleted = await daemon.http.delete(f"/v1/sessions/{session_id}")
        assert deleted.status_code == 200, deleted.text
        while not isinstance(await conn.next(), h11.EndOfMessage):
            pass  # the stream ends: the session is gone
        conn.again()
        await conn.send("/v1/info", headers_for(daemon))
        status, _, body = await conn.reply()
        assert status == 200 and json.loads(body)["protocol"] == 1
        await conn.stream.aclose()


async def test_a_client_that_goes_away_is_unsubscribed(daemon: Client, work_dir: Path) -> None:
    session_id = (await daemon.create(work_dir))["session"]["id"]
    with trio.fail_after(20):
        conn = await connect(daemon)
        await conn.send(f"/v1/sessions/{session_id}/events", headers_for(daemon))
        assert (await conn.head()).status_code == 200
        await conn.until_data(b"retry:")
        assert await subscribers(daemon) == 1
        await conn.stream.aclose()
        while await subscribers(daemon):
            await trio.sleep(0.01)  # the daemon notices the closed socket by itself


async def test_a_head_in_pieces_and_http_1_0_are_served(daemon: Client, work_dir: Path) -> None:
    session_id = (await daemon.create(work_dir))["session"]["id"]
    target = f"/v1/sessions/{session_id}/events"
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream("127.0.0.1", daemon.handle.port)
        raw = f"GET {target} HTTP/1.1\r\n".encode()
        raw += b"".join(f"{k}: {v}\r\n".encode() for k, v in headers_for(daemon)) + b"\r\n"
        for start in range(0, len(raw), 7):
            await stream.send_all(raw[start : start + 7])
            await trio.sleep(0)
        conn = Connection(stream)
        assert (await conn.head()).status_code == 200
        assert b"event: snapshot" in await conn.until_data(b"event: snapshot")
        await stream.aclose()
        old = await connect(daemon, b"1.0")
        await old.send(target, headers_for(daemon))
        status, headers, body = await old.reply_1_0()
        assert status == 200 and headers[b"content-type"].startswith(b"text/event-stream")
        assert body.startswith(b"retry: 2000\n\n")
        await old.stream.aclose()


async def test_streams_over_tls(make_config: Callable[..., DaemonConfig], work_dir: Path) -> None:
    async with running_daemon(make_config(https=True)) as secure:
        session_id = (await secure.create(work_dir))["session"]["id"]
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # not about pinning
        with trio.fail_after(20):
            tcp = await trio.open_tcp_stream("127.0.0.1", secure.handle.port)
            conn = Connection(trio.SSLStream(tcp, context, server_hostname="127.0.0.1"))
            await conn.send(f"/v1/sessions/{session_id}/events", headers_for(secure))
            head = await conn.head()
            assert head.status_code == 200
            assert dict(head.headers)[b"content-type"].startswith(b"text/event-stream")
            assert (await conn.until_data(b"event: snapshot")).startswith(b"retry: 2000\n\n")
            await conn.stream.aclose()


async def open_windowed(client: Client, path: str, window: int) -> SSEStream:
    """An event stream whose socket has a small receive buffer (a slow network)."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, window)
    await sock.connect(("127.0.0.1", client.handle.port))
    stream = trio.SocketStream(sock)
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target=path, headers=headers_for(client))
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(bytes(await stream.receive_some(65536)))
    assert isinstance(event, h11.Response) and event.status_code == 200, event
    return SSEStream(stream, conn)


async def read_turn(stream: SSEStream, pause: float) -> tuple[list[int], str]:
    """Cursors (from the opening snapshot's) and the text of one turn, read ``pause`` s apart."""
    cursors, text = [], ""
    while True:
        event = await stream.next()
        assert event.id is not None
        cursors.append(int(event.id.rpartition(":")[2]))
        if event.type == "text.delta":
            text += event.body["text"]
        if event.type == "turn.completed":
            return cursors, text
        await trio.sleep(pause)


async def test_a_slow_reader_gets_every_event_in_order(
    make_config: Callable[..., DaemonConfig], work_dir: Path
) -> None:
    """Events written straight from the publisher and events the writer sends after a full
    socket buffer interleave without a gap, a duplicate or a swap. The client queue is made
    larger than the turn, so how far the slow reader falls behind (the machine's load) cannot
    get it dropped: that policy has its own tests (test_faults_stall)."""
    deltas = 50_000
    # warm_limit=0: the first reader's opening would start the CLI (events) before the second's
    async with running_daemon(make_config(client_queue=2 * deltas, warm_limit=0)) as daemon:
        await _slow_and_quick_readers(daemon, work_dir, deltas)


async def _slow_and_quick_readers(daemon: Client, work_dir: Path, deltas: int) -> None:
    session_id = (await daemon.create(work_dir))["session"]["id"]
    path = f"/v1/sessions/{session_id}/events"
    with trio.fail_after(90):
        quick, slow = (
            await open_windowed(daemon, path, 1 << 20),
            await open_windowed(daemon, path, 4096),
        )
        await daemon.send(session_id, f"[[fast:{deltas}]]")
        results: dict[str, tuple[list[int], str]] = {}

        async def follow(name: str, stream: SSEStream, pause: float) -> None:
            results[name] = await read_turn(stream, pause)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow, "quick", quick, 0)
            nursery.start_soon(follow, "slow", slow, 0.001)
        for cursors, text in results.values():
            assert cursors == list(range(cursors[0], cursors[0] + len(cursors)))
            assert text.count("tok") == deltas
        assert results["quick"][0] == results["slow"][0]
        for stream in (quick, slow):
            await stream._stream.aclose()


# The HTTP grace, lengthened: "closed before the grace would force it" is then a deadline a
# loaded machine meets (a stop on a busy 2-core box can take longer than the real 5 s grace
# minus one), and still tells a connection the stop closes from one the grace cuts.
LONG_GRACE = 60.0


async def test_a_connection_still_silent_is_closed_at_shutdown(
    make_config: Callable[..., DaemonConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting for a request head does not hold the daemon's shutdown for its grace period."""
    monkeypatch.setattr(daemon_module, "HTTP_GRACE", LONG_GRACE)
    async with running_daemon(make_config()) as client:
        silent = await trio.open_tcp_stream("127.0.0.1", client.handle.port)
        with trio.fail_after(LONG_GRACE):
            assert await subscribers(client) == 0  # the daemon is up and answering
            client.handle.stop.set()
            with trio.fail_after(LONG_GRACE - 10):  # before the grace would force it
                assert await silent.receive_some(1024) == b""
        await silent.aclose()


async def test_an_idle_keep_alive_connection_is_closed_at_shutdown(
    make_config: Callable[..., DaemonConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After one request (answered by hypercorn) the idle connection does not hold the shutdown:
    hypercorn 0.18's own keep-alive timer never fires under Trio, so the direct server ends it."""
    monkeypatch.setattr(daemon_module, "HTTP_GRACE", LONG_GRACE)
    async with running_daemon(make_config()) as client:
        conn = await connect(client)
        with trio.fail_after(LONG_GRACE):
            await conn.send("/v1/status", headers_for(client))
            status, _, body = await conn.reply()
            assert status == 200, body
            client.handle.stop.set()
            with trio.fail_after(LONG_GRACE - 10):  # before the grace would force it
                assert await conn.stream.receive_some(1024) == b""
        await conn.stream.aclose()


async def test_an_idle_keep_alive_connection_ends_by_itself(
    make_config: Callable[..., DaemonConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(direct, "IDLE_READ_TIMEOUT", 0.2)
    async with running_daemon(make_config()) as client:
        conn = await connect(client)
        with trio.fail_after(20):
            await conn.send("/v1/status", headers_for(client))
            assert (await conn.reply())[0] == 200
            assert await conn.stream.receive_some(1024) == b""  # closed by the server
            assert (await client.http.get("/v1/status")).status_code == 200  # others unaffected
        await conn.stream.aclose()
