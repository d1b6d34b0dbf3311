"""The device side of the WebTransport protocol, on Trio and aioquic (example client, tests, bench).

:class:`QuicClient` is one QUIC connection carrying one WebTransport session: it checks the server's
certificate before anything is sent, opens the control stream, and hands out control messages in
order, with ``large`` placeholders already replaced by the payload from their own stream.
:class:`DeviceSession` speaks the protocol over it: hello, identity check, pairing,
authentication, requests and subscriptions.

Background tasks (the UDP reader and the connection driver) run in a nursery the caller passes
in, so their lifetime is visible; they end when the connection does. Errors a caller can act on
(:class:`PinError`, :class:`SessionClosed`, :class:`RequestFailed`) are raised from the awaited
calls, never from the background tasks.
"""

from __future__ import annotations

import hashlib
import json
import math
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import trio
from aioquic.buffer import Buffer, BufferReadError  # type: ignore[attr-defined]
from aioquic.h3.connection import H3_ALPN, FrameType, H3Connection, H3Stream
from aioquic.h3.events import (
    DatagramReceived,
    DataReceived,
    H3Event,
    HeadersReceived,
    WebTransportStreamDataReceived,
)
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted
from cryptography.hazmat.primitives.serialization import Encoding

from ..channel import frames as fr
from ..channel.client import DeviceSession as _DeviceSession
from ..channel.client import PinError as PinError
from ..channel.client import RequestFailed as RequestFailed
from ..channel.client import SessionClosed as SessionClosed
from ..channel.client import Subscription as Subscription
from ..channel.client import verify_certificate as verify_certificate
from .endpoint import CLOSE_CAPSULE

CONNECT_TIMEOUT: Final = 10.0


def peer_certificate_sha256(quic: QuicConnection) -> bytes:
    """SHA-256 of the DER certificate the server presented.

    aioquic has no pinning hook and no public accessor for the peer's certificate; its TLS
    context keeps it here (aioquic 1.x, pinned in pyproject.toml)."""
    certificate = quic.tls._peer_certificate
    if certificate is None:
        raise PinError("the server presented no certificate")
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()


class QuicClient:
    """One QUIC connection with one WebTransport session and its control stream."""

    def __init__(self, quic: QuicConnection, sock: trio.socket.SocketType) -> None:
        self.quic = quic
        self._sock = sock
        self._h3 = H3Connection(quic, enable_webtransport=True)
        self._wake = trio.Event()
        self._send_lock = trio.Lock()
        self._changed = trio.Event()
        self._handshake = trio.Event()
        self._status: int | None = None
        self.session_id: int | None = None
        self.control_stream: int | None = None
        self._decoder = fr.FrameDecoder(1 << 30)
        self._frames: deque[dict[str, Any]] = deque()
        self._streams: dict[int, bytearray] = {}  # server-opened streams being received
        self._blobs: dict[int, dict[str, Any]] = {}  # large payloads by ref
        self.large_received = 0  #: payloads that came on their own stream
        self._capsules = bytearray()
        self._datagrams: deque[bytes] = deque()
        self.closed: tuple[int, str] | None = None
        self.cert_sha256 = b""
        self._reading = trio.CancelScope()

    @classmethod
    async def connect(
        cls,
        nursery: trio.Nursery,
        host: str,
        port: int,
        check_certificate: Callable[[bytes], None] = lambda _: None,
        *,
        path: str = fr.PATH,
        origin: str = "",
        timeout: float = CONNECT_TIMEOUT,
    ) -> QuicClient:
        """Connect and open the session. ``check_certificate(sha256)`` runs after the TLS
        handshake and before anything is sent; it raises to refuse the server."""
        configuration = QuicConfiguration(
            is_client=True, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536
        )
        configuration.verify_mode = ssl.CERT_NONE  # no CA: the certificate is pinned below
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        await sock.connect((host, port))
        client = cls(QuicConnection(configuration=configuration), sock)
        client.quic.connect((host, port), now=trio.current_time())
        nursery.start_soon(client._receive_loop)
        nursery.start_soon(client._drive)
        try:
            with trio.fail_after(timeout):
                await client._start(host, port, path, origin, check_certificate)
        except BaseException:
            await client.aclose(0, "connect failed")
            raise
        return client

    async def _start(
        self, host: str, port: int, path: str, origin: str, check: Callable[[bytes], None]
    ) -> None:
        await self._handshake.wait()
        if self.closed is not None:
            raise SessionClosed(*self.closed)
        self.cert_sha256 = peer_certificate_sha256(self.quic)
        check(self.cert_sha256)  # before anything is sent
        await self._open_session(host, port, path, origin)

    async def _open_session(self, host: str, port: int, path: str, origin: str) -> None:
        # Registered before CONNECT goes out: the server may send its first stream data in the
        # same packet as its 200.
        self.session_id = self.quic.get_next_available_stream_id()
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        headers = [
            (b":method", b"CONNECT"),
            (b":protocol", b"webtransport"),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
        ]
        if origin:
            headers.append((b"origin", origin.encode()))
        self._h3.send_headers(self.session_id, headers)
        self._kick()
        while self._status is None and self.closed is None:
            await self._wait()
        if self._status != 200:
            raise SessionClosed(self.closed[0] if self.closed else 0, f"status {self._status}")
        stream_id = self._h3.create_webtransport_stream(self.session_id, is_unidirectional=False)
        # aioquic does not register a bidirectional WebTransport stream it opens itself, and
        # would parse the server's answer on it as HTTP/3 frames: register it as the server does.
        stream = H3Stream(stream_id)
        stream.frame_type = FrameType.WEBTRANSPORT_STREAM
        stream.session_id = self.session_id
        self._h3._stream[stream_id] = stream
        self.control_stream = stream_id

    # -- background tasks --------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        with self._reading:
            while self.closed is None:
                try:
                    data = await self._sock.recv(65536)
                except OSError:
                    continue
                self.quic.receive_datagram(data, self._sock.getpeername(), now=trio.current_time())
                self._process()

    async def _drive(self) -> None:
        try:
            while True:
                self._wake = trio.Event()
                await self._flush()
                if self.closed is not None and self.quic.get_timer() is None:
                    return
                timer = self.quic.get_timer()
                with trio.move_on_at(timer if timer is not None else math.inf):
                    await self._wake.wait()
                timer = self.quic.get_timer()
                if timer is not None and trio.current_time() >= timer:
                    self.quic.handle_timer(now=trio.current_time())
                    self._process()
        finally:
            self._reading.cancel()
            self._sock.close()

    async def _flush(self) -> None:
        async with self._send_lock:
            for data, _ in self.quic.datagrams_to_send(now=trio.current_time()):
                try:
                    await self._sock.send(data)
                except OSError:
                    pass  # the server is gone: the idle timer ends this connection

    def _process(self) -> None:
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self._handshake.set()
            elif isinstance(event, ConnectionTerminated):
                if self.closed is None:
                    self.closed = (event.error_code, event.reason_phrase)
                self._handshake.set()
            for h3_event in self._h3.handle_event(event):
                self._h3_event(h3_event)
        self._changed.set()
        self._kick()

    def _h3_event(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived) and event.stream_id == self.session_id:
            status = dict(event.headers).get(b":status", b"0")
            self._status = int(status)
        elif isinstance(event, WebTransportStreamDataReceived):
            if event.stream_id == self.control_stream:
                for payload in self._decoder.feed(event.data):
                    self._frames.append(json.loads(payload))
            else:
                buffer = self._streams.setdefault(event.stream_id, bytearray())
                buffer += event.data
                if event.stream_ended:
                    del self._streams[event.stream_id]
                    (ref,) = fr.REF.unpack_from(buffer)
                    self._blobs[ref] = json.loads(bytes(buffer[fr.REF.size :]))
                    self.large_received += 1
        elif isinstance(event, DataReceived) and event.stream_id == self.session_id:
            self._capsules += event.data
            if event.stream_ended and self.closed is None:
                self.closed = _parse_close(bytes(self._capsules)) or (0, "session ended")
        elif isinstance(event, DatagramReceived):
            self._datagrams.append(event.data)

    def _kick(self) -> None:
        self._wake.set()

    async def _wait(self) -> None:
        self._changed = trio.Event()
        await self._changed.wait()

    # -- the session -------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        """Queue one control message (it leaves with the next flush, at once)."""
        self.send_raw(fr.frame(json.dumps(message, separators=(",", ":")).encode()))

    def send_raw(self, data: bytes, end: bool = False) -> None:
        if self.closed is not None:
            raise SessionClosed(*self.closed)
        assert self.control_stream is not None
        self.quic.send_stream_data(self.control_stream, data, end_stream=end)
        self._kick()

    async def receive(self) -> dict[str, Any]:
        """The next control message, in order (a ``large`` one as its payload)."""
        while True:
            if self._frames:
                head = self._frames[0]
                if head.get("type") != "large":
                    return self._frames.popleft()
                if head["ref"] in self._blobs:
                    self._frames.popleft()
                    return self._blobs.pop(head["ref"])
            elif self.closed is not None:
                raise SessionClosed(*self.closed)
            await self._wait()

    def send_datagram(self, data: bytes) -> None:
        assert self.session_id is not None
        self._h3.send_datagram(self.session_id, data)
        self._kick()

    async def receive_datagram(self) -> bytes:
        while not self._datagrams:
            if self.closed is not None:
                raise SessionClosed(*self.closed)
            await self._wait()
        return self._datagrams.popleft()

    def stop_reading(self) -> None:
        """Stop reading the network at all (no acknowledgements): a stalled device, for tests."""
        self._reading.cancel()

    async def aclose(self, code: int = 0, reason: str = "") -> None:
        """Close the connection and send the close at once (bounded, even when cancelled)."""
        self.close(code, reason)
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await self._flush()

    def close(self, code: int = 0, reason: str = "") -> None:
        """Close the QUIC connection (abruptly for the server: no session close first); the
        close leaves with the driver's next flush, if it still runs (else see :meth:`aclose`)."""
        if self.closed is None:
            self.closed = (code, reason or "closed by the client")
            self.quic.close(error_code=code, reason_phrase=reason)
            self._changed.set()
        self._kick()


def _parse_close(capsules: bytes) -> tuple[int, str] | None:
    buf = Buffer(data=capsules)
    try:
        while not buf.eof():
            kind, length = buf.pull_uint_var(), buf.pull_uint_var()
            body = buf.pull_bytes(length)
            if kind == CLOSE_CAPSULE and len(body) >= 4:
                return int.from_bytes(body[:4], "big"), body[4:].decode(errors="replace")
    except BufferReadError:
        return None
    return None


# -- the protocol over it ---------------------------------------------------------------------


class DeviceSession(_DeviceSession):
    """The control protocol over a WebTransport session (``channel/client.py``), with the
    certificate check and datagram pings WebTransport adds."""

    client: QuicClient

    @classmethod
    async def open(
        cls, nursery: trio.Nursery, client: QuicClient, client_name: str = "python"
    ) -> DeviceSession:
        """Say hello and start the reader; returns once ``welcome`` arrived."""
        session = cls(client)
        await session.start(nursery, client_name)
        return session

    async def verify_identity(self, daemon_key: bytes) -> dict[str, Any]:
        """Check the connection's certificate against ``/v1/info`` and the pinned key."""
        info: dict[str, Any] = await self.request("GET", "/v1/info")
        verify_certificate(self.client.cert_sha256, info, daemon_key)
        if self.welcome.get("cert") != self.client.cert_sha256.hex():
            raise PinError("the daemon names another certificate than the one it presented")
        return info

    async def ping(self, resend_after: float = 0.25) -> float:
        """One datagram round trip, in seconds. Datagrams are unreliable (nothing retransmits
        them): one that is lost is sent again after ``resend_after`` seconds, and the round
        trip counts from the copy that came back."""
        while True:
            started = trio.current_time()
            token = started.hex().encode()
            self.client.send_datagram(token)
            with trio.move_on_after(resend_after):
                while await self.client.receive_datagram() != token:
                    pass
                return trio.current_time() - started
