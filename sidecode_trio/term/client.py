"""The terminal client's side of the v1 HTTP API: the owner's local token, HTTP/1.1 on Trio.

It speaks the protocol every client speaks (``protocol/PROTOCOL.md``); only the credential
differs: on the owner's machine the local bearer token from ``<state-dir>/token`` is accepted
from loopback. A daemon refusal becomes a :class:`~..errors.SidecodeError` carrying the daemon's
own code and message; a connection that fails or breaks, one with the code ``unreachable``.

The client is h11 (the HTTP/1.1 state machine hypercorn serves with) over a Trio stream, one
connection per request, rather than httpx: ``send`` and ``attach`` start in little more than the
time of importing Trio (httpx, with what its import drags in, added ~60 ms; tests/bench/).
Like the owner's other commands it does not verify the daemon's certificate: it is the daemon's
own, at the address its 0600 ``daemon.json`` names (devices pin the identity key instead).
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import attrs
import h11
import trio

from ..errors import SidecodeError
from .prefix import match_session

TIMEOUT: Final = 10.0  #: seconds to connect and get a reply (an event stream's body: no limit)
CHUNK: Final = 65536
#: what a connection that fails or breaks raises (ssl.SSLError is an OSError)
BROKEN: Final = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError)


class Response:
    """A reply whose head has arrived; its body is read as it comes."""

    def __init__(self, url: str, status: int, stream: trio.abc.Stream, conn: h11.Connection):
        self.url, self.status_code = url, status
        self._stream, self._conn = stream, conn

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive; a connection that breaks first raises
        ``SidecodeError`` (``unreachable``)."""
        while True:
            try:
                event = self._conn.next_event()
                if event is h11.NEED_DATA:
                    self._conn.receive_data(bytes(await self._stream.receive_some(CHUNK)))
                    continue
            except BROKEN as exc:
                raise SidecodeError(
                    f"the connection to the daemon broke: {_why(exc)}", code="unreachable"
                ) from None
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_bytes()])


class DaemonAPI:
    def __init__(self, url: str, token: str) -> None:
        self.move(Location(url, token, None))

    async def aclose(self) -> None:
        """Nothing to close: each request has its own connection."""

    def move(self, location: Location) -> None:
        """Talk to the daemon where ``daemon.json`` now says it is (its port may change)."""
        parts = urllib.parse.urlsplit(location.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SidecodeError(f"not a daemon URL: {location.url!r}", code="unreachable")
        self.url, self.token = location.url, location.token
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._prefix = parts.path.rstrip("/")

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        with trio.move_on_after(TIMEOUT) as waited:
            async with self._exchange(method, path, data, {}) as response:
                payload = await response.aread()
            return _reply(response.status_code, payload)
        assert waited.cancelled_caught
        raise unreachable(self.url, "timed out")

    async def resolve(self, prefix: str) -> str:
        """The session whose id is ``prefix``, or the only one that starts with it."""
        sessions = (await self.call("GET", "/v1/sessions?archived=all"))["sessions"]
        return match_session(prefix, [str(s["id"]) for s in sessions])

    @asynccontextmanager
    async def events(self, session_id: str, since: str | None) -> AsyncIterator[Response]:
        """The session's event stream, from ``since`` (an SSE id) or a snapshot."""
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": since} if since else {})}
        path = f"/v1/sessions/{quote(session_id, safe='')}/events"
        async with self._exchange("GET", path, None, headers) as response:
            if response.status_code != 200:
                with trio.move_on_after(TIMEOUT):
                    _reply(response.status_code, await response.aread())
                raise SidecodeError(f"the daemon said {response.status_code}", code="refused")
            yield response  # a quiet session sends keep-alives only: no time limit on reading

    @asynccontextmanager
    async def _exchange(
        self, method: str, path: str, body: bytes | None, extra: dict[str, str]
    ) -> AsyncIterator[Response]:
        """Send one request on a new connection; the response once its head has arrived (within
        ``TIMEOUT``); the connection is closed when the block ends."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        headers = [
            ("Host", f"{host}:{self._port}"),
            ("Authorization", f"Bearer {self.token}"),
            ("Connection", "close"),
            *extra.items(),
        ]
        if body is not None:
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        conn = h11.Connection(h11.CLIENT)
        with trio.move_on_after(TIMEOUT) as waited:
            stream = await self._connect()
        if waited.cancelled_caught:
            raise unreachable(self.url, "timed out")
        async with stream:
            with trio.move_on_after(TIMEOUT) as waited:
                status = await self._send(stream, conn, method, path, headers, body)
            if waited.cancelled_caught:
                raise unreachable(self.url, "timed out")
            yield Response(self.url, status, stream, conn)

    async def _connect(self) -> trio.abc.Stream:
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(self._host, self._port)
        except BROKEN as exc:
            raise unreachable(self.url, _why(exc)) from None
        if not self._tls:
            return stream
        import ssl

        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # see above
        tls = trio.SSLStream(stream, context, server_hostname=self._host, https_compatible=True)
        try:
            await tls.do_handshake()
        except BaseException as exc:  # failed or cancelled (TIMEOUT): close the connection
            await trio.aclose_forcefully(stream)
            if isinstance(exc, BROKEN):
                raise unreachable(self.url, _why(exc)) from None
            raise
        return tls

    async def _send(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
    ) -> int:
        """Write the request; the response's status once its head has arrived."""
        try:
            target = self._prefix + path
            data = conn.send(h11.Request(method=method, target=target, headers=headers)) or b""
            if body:
                data += conn.send(h11.Data(data=body)) or b""
            await stream.send_all(data + (conn.send(h11.EndOfMessage()) or b""))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(CHUNK)))
                elif isinstance(event, h11.Response):
                    return int(event.status_code)
                elif isinstance(event, h11.ConnectionClosed):
                    raise h11.RemoteProtocolError("the daemon closed the connection")
        except BROKEN as exc:
            raise unreachable(self.url, _why(exc)) from None


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


@attrs.frozen
class Location:
    """Where the daemon on a state folder says it is (its 0600 ``daemon.json`` and token)."""

    url: str
    token: str
    pid: int | None


def locate(state_dir: Path) -> Location:
    """Read ``daemon.json`` now: a daemon restarted on another port is found at its new one."""
    try:
        info = json.loads((state_dir / "daemon.json").read_text())
        token = (state_dir / "token").read_text().strip()
        url = str(info["http"])
    except (OSError, ValueError, KeyError, TypeError):
        raise SidecodeError(
            f"no daemon is running on {state_dir} (daemon.json is gone)", code="unreachable"
        ) from None
    parts = urllib.parse.urlsplit(url)
    if parts.hostname in ("0.0.0.0", "::"):  # noqa: S104 - a wildcard bind is reached on loopback
        url = f"{parts.scheme}://127.0.0.1:{parts.port}"
    pid = info.get("pid")
    return Location(url, token, pid if isinstance(pid, int) and pid > 0 else None)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def why_unreachable(location: Location) -> str | None:
    """A better reason than "cannot reach" when ``daemon.json`` names a dead process."""
    if location.pid is not None and not pid_alive(location.pid):
        return f"daemon.json is stale (pid {location.pid} is dead)"
    return None


def unreachable(url: object, why: object) -> SidecodeError:
    return SidecodeError(f"cannot reach the daemon at {url}: {why}", code="unreachable")


def _reply(status: int, payload: bytes) -> Any:
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    if 200 <= status < 300:
        return body
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        raise SidecodeError(str(error.get("message")), code=str(error.get("code")))
    raise SidecodeError(f"the daemon said {status}", code="refused")
