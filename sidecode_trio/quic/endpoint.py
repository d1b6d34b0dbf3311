"""The QUIC endpoint: one Trio UDP socket, aioquic's sans-IO connections, one nursery each.

::

    endpoint nursery
    ├── receive loop          recvfrom -> connection by id (new ones on a valid INITIAL)
    ├── shutdown watcher      on the trigger: stop accepting, tell each session, wait (bounded)
    └── per QUIC connection: nursery
        ├── driver loop       flush datagrams, wait for a kick or get_timer(), handle_timer
        └── its link          (at most one WebTransport session: link.py)

Everything aioquic does happens synchronously on this thread; the only awaits are socket I/O and
waiting. Every ``now`` is ``trio.current_time()``. Each connection's work is fenced: a failure in
one is logged and closes that connection, never the endpoint. The certificate is the daemon's
current identity-signed one; after a rotation, new connections get the new certificate.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
from typing import Final
from urllib.parse import urlsplit

import attrs
import trio
from aioquic.buffer import Buffer, encode_uint_var  # type: ignore[attr-defined]
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    HandshakeCompleted,
    ProtocolNegotiated,
    QuicEvent,
    StopSendingReceived,
    StreamReset,
)
from aioquic.quic.packet import (
    QuicHeader,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler

from .. import __version__
from ..channel.frames import PATH, CloseCode
from ..channel.link import Link, LinkSettings, link_settings
from ..channel.routes import Requests
from ..config import DaemonConfig
from ..errors import ConfigError
from ..ops import Operations
from ..security.guard import Guard
from ..security.tls import CertificateStore
from . import routing

log = logging.getLogger(__name__)

MIN_INITIAL: Final = 1200  # bytes: a client's first datagram is padded at least to this
CLOSE_CAPSULE: Final = 0x2843  # CLOSE_WEBTRANSPORT_SESSION
MAX_CLOSE_REASON: Final = 1024
HANDSHAKE_TIMEOUT: Final = 10.0  # seconds a new connection has to complete its TLS handshake


@attrs.frozen
class QuicSettings:
    host: str = "127.0.0.1"
    port: int = 0
    max_connections: int = 256
    max_per_address: int = 32  #: connections from one IP address (NAT: a household's devices)
    #: unfinished handshakes beyond which a new connection must first prove its address (a
    #: QUIC Retry round trip), so spoofed INITIALs cannot hold the slots; 0: always
    retry_above: int = 16
    auth_timeout: float = 10.0  #: seconds after its handshake a connection has to authenticate
    idle_timeout: float = 60.0  #: seconds of silence before a connection is dropped
    grace: float = 5.0  #: seconds sessions get to finish at shutdown
    link: LinkSettings = LinkSettings()


def settings_for(config: DaemonConfig) -> QuicSettings:
    """The endpoint's settings from the daemon's: the UDP port is ``quic_port``, or the HTTP
    port's number when unset (so 0 means any free port there too)."""
    port = config.port if config.quic_port is None else config.quic_port
    return QuicSettings(
        host=config.host,
        port=port,
        link=link_settings(config.max_body, config.client_queue, config.sse_keepalive),
    )


def session_urls(http_urls: list[str], port: int) -> list[str]:
    """The WebTransport URLs for the addresses the HTTP URLs name (``localhost`` becomes
    ``127.0.0.1``: Chromium tries only ``::1`` for it over QUIC)."""
    urls = []
    for url in http_urls:
        host = urlsplit(url).hostname or "127.0.0.1"
        host = "127.0.0.1" if host == "localhost" else host
        urls.append(f"https://{f'[{host}]' if ':' in host else host}:{port}{PATH}")
    return list(dict.fromkeys(urls))


def close_capsule(code: CloseCode, message: str) -> bytes:
    """A CLOSE_WEBTRANSPORT_SESSION capsule: a 32-bit code and a UTF-8 reason."""
    body = int(code).to_bytes(4, "big") + message.encode()[:MAX_CLOSE_REASON]
    return encode_uint_var(CLOSE_CAPSULE) + encode_uint_var(len(body)) + body


def unacknowledged(quic: QuicConnection) -> int:
    """Bytes the connection holds for the peer, sent or not, not yet acknowledged.

    aioquic has no public accessor and no flow-control back-pressure of its own: its senders
    keep whatever they are given. This reads each stream sender's buffer (aioquic 1.x; the
    version range is pinned in pyproject.toml and a test checks the bound it gives)."""
    return sum(len(stream.sender._buffer) for stream in quic._streams.values())


class Endpoint:
    def __init__(
        self,
        requests: Requests,
        ops: Operations,
        guard: Guard,
        certificates: CertificateStore,
        settings: QuicSettings,
    ) -> None:
        self._requests = requests
        self._ops = ops
        self._guard = guard
        self.certificates = certificates
        self.settings = settings
        self._sock: trio.socket.SocketType | None = None
        self._plain: socket.socket | None = None  #: the same socket, for synchronous sends
        self._send_lock = trio.Lock()
        self._cids: dict[bytes, _Connection] = {}
        self._connections: set[_Connection] = set()
        self._configuration: tuple[bytes, QuicConfiguration] | None = None
        self._all_closed = trio.Event()
        self.stopping = False
        self.port = 0
        self.counts = {
            "datagrams": 0,
            "junk": 0,
            "refused": 0,
            "connections": 0,
            "retries": 0,  #: Retry packets sent (address validation under load)
            "unauthenticated": 0,  #: connections closed for not authenticating in time
        }
        self._retry = QuicRetryTokenHandler()
        self.peak_buffered = 0  #: the most unacknowledged bytes any connection ever held

    # -- running -----------------------------------------------------------------------------

    async def run(
        self,
        *,
        shutdown_trigger: trio.Event,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
            try:
                await sock.bind((self.settings.host, self.settings.port))
            except OSError as exc:
                where = f"{self.settings.host} UDP port {self.settings.port}"
                raise ConfigError(f"cannot listen for WebTransport on {where}: {exc}") from None
            self._sock = sock
            self.port = sock.getsockname()[1]
            self._plain = socket.socket(family, socket.SOCK_DGRAM, fileno=os.dup(sock.fileno()))
            self._plain.setblocking(False)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._receive, nursery)
                    task_status.started(self.port)
                    await shutdown_trigger.wait()
                    await self._shut_down()
                    nursery.cancel_scope.cancel()
            finally:
                plain, self._plain = self._plain, None
                plain.close()

    async def _shut_down(self) -> None:
        self.stopping = True
        for connection in list(self._connections):
            connection.going_away()
        with trio.move_on_after(self.settings.grace):
            while self._connections:
                await self._all_closed.wait()
                self._all_closed = trio.Event()

    async def _receive(self, nursery: trio.Nursery) -> None:
        assert self._sock is not None
        while True:
            try:
                data, addr = await self._sock.recvfrom(65536)
            except OSError:
                continue  # e.g. an ICMP error surfaced on the socket: not ours to handle
            self.counts["datagrams"] += 1
            self._datagram(data, addr, nursery)

    def _datagram(self, data: bytes, addr: tuple[str, int], nursery: trio.Nursery) -> None:
        configuration = self._current_configuration()[1]
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=configuration.connection_id_length
            )
        except ValueError:
            self.counts["junk"] += 1
            return
        connection = self._cids.get(header.destination_cid)
        if connection is None:
            connection = self._accept(header, data, addr, nursery)
            if connection is None:
                return
            nursery.start_soon(connection.run)
        connection.datagram_received(data, addr)

    def _accept(
        self, header: QuicHeader, data: bytes, addr: tuple[str, int], nursery: trio.Nursery
    ) -> _Connection | None:
        destination = header.destination_cid
        configuration = self._current_configuration()
        supported = configuration[1].supported_versions
        if header.version is not None and header.version not in supported:
            if len(data) >= MIN_INITIAL:  # only a full-size probe gets an answer (no amplifier)
                reply = encode_quic_version_negotiation(
                    source_cid=destination,
                    destination_cid=header.source_cid,
                    supported_versions=supported,
                )
                nursery.start_soon(self.send, [(reply, addr)])
            return None
        initial = header.packet_type == QuicPacketType.INITIAL
        if not initial or len(data) < MIN_INITIAL:
            self.counts["junk"] += 1
            return None
        if self.stopping or len(self._connections) >= self.settings.max_connections:
            self.counts["refused"] += 1
            return None
        if self._per_address(addr[0]) >= self.settings.max_per_address:
            self.counts["refused"] += 1
            return None
        original, retry_source = destination, None
        if sum(1 for c in self._connections if c.handshaking) >= self.settings.retry_above:
            if not header.token:
                nursery.start_soon(self.send, [(self._retry_packet(header, addr), addr)])
                self.counts["retries"] += 1
                return None
            try:
                original = self._retry.validate_token(
                    address=addr,
                    destination_cid=destination,
                    token=header.token,
                    now=trio.current_time(),
                )
            except ValueError:  # forged, expired or from another address: not an answer
                self.counts["refused"] += 1
                return None
            retry_source = destination
        quic = QuicConnection(
            configuration=configuration[1],
            original_destination_connection_id=original,
            retry_source_connection_id=retry_source,
        )
        connection = _Connection(self, quic, configuration[0], addr)
        self._connections.add(connection)
        self._cids[destination] = connection
        self._cids[quic.host_cid] = connection
        self.counts["connections"] += 1
        return connection

    def _per_address(self, host: str) -> int:
        return sum(1 for c in self._connections if c.addr[0] == host)

    def _retry_packet(self, header: QuicHeader, addr: tuple[str, int]) -> bytes:
        """A Retry (RFC 9000 §8.1.2): the client comes back with this token, which only a
        client receiving at ``addr`` can have; no state is kept meanwhile."""
        source = secrets.token_bytes(8)
        assert header.version is not None  # checked by the caller
        return encode_quic_retry(
            version=header.version,
            source_cid=source,
            destination_cid=header.source_cid,
            original_destination_cid=header.destination_cid,
            retry_token=self._retry.create_token(
                address=addr,
                original_destination_connection_id=header.destination_cid,
                retry_source_connection_id=source,
                now=trio.current_time(),
            ),
        )

    def _current_configuration(self) -> tuple[bytes, QuicConfiguration]:
        current = self.certificates.current
        assert current is not None, "the certificate store is refreshed before serving"
        if self._configuration is None or self._configuration[0] != current.sha256:
            configuration = QuicConfiguration(
                is_client=False,
                alpn_protocols=H3_ALPN,
                max_datagram_frame_size=65536,
                idle_timeout=self.settings.idle_timeout,
            )
            configuration.load_cert_chain(current.cert_path, current.key_path)
            self._configuration = (current.sha256, configuration)
        return self._configuration

    # -- used by connections -----------------------------------------------------------------

    async def send(self, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        assert self._sock is not None
        async with self._send_lock:  # one writer: trio allows one task waiting on a socket
            for data, addr in datagrams:
                try:
                    await self._sock.sendto(data, addr)
                except OSError as exc:
                    log.debug("sendto %s failed: %s", addr, exc)

    def send_now(
        self, datagrams: list[tuple[bytes, tuple[str, int]]]
    ) -> list[tuple[bytes, tuple[str, int]]]:
        """Send without waiting (from a synchronous caller: the live-event path); returns what
        could not go now (the socket's buffer is full, or a task is sending)."""
        if self._plain is None or self._send_lock.locked():
            return datagrams
        for i, (data, addr) in enumerate(datagrams):
            try:
                self._plain.sendto(data, addr)
            except BlockingIOError:
                return datagrams[i:]
            except OSError as exc:
                log.debug("sendto %s failed: %s", addr, exc)
        return []

    def register(self, cid: bytes, connection: _Connection) -> None:
        self._cids[cid] = connection

    def unregister(self, cid: bytes) -> None:
        self._cids.pop(cid, None)

    def forget(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        for cid in [cid for cid, conn in self._cids.items() if conn is connection]:
            del self._cids[cid]
        self.peak_buffered = max(self.peak_buffered, connection.peak_buffered)
        self._all_closed.set()

    def new_link(self, connection: _Connection, cert: bytes) -> Link:
        return Link(
            connection,
            self._requests,
            self._ops,
            self._guard,
            self.settings.link,
            nonce=secrets.token_bytes(32),
            cert_sha256=cert,
            version=__version__,
            remote=connection.addr[0],
        )

    def statistics(self) -> dict[str, object]:
        return {
            "port": self.port,
            "open": len(self._connections),
            **self.counts,
            "peak_buffered": max(
                [self.peak_buffered, *(c.peak_buffered for c in self._connections)]
            ),
            "links": [repr(c.link) for c in self._connections if c.link is not None],
        }


class _Connection:
    """One QUIC connection: the driver loop, and the HTTP/3 + WebTransport routing."""

    def __init__(
        self, endpoint: Endpoint, quic: QuicConnection, cert: bytes, addr: tuple[str, int]
    ) -> None:
        self._endpoint = endpoint
        self.quic = quic
        self.cert = cert
        self.addr = addr
        self._h3: H3Connection | None = None
        self._router = routing.SessionRouter(PATH)
        self.link: Link | None = None
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._sleep: trio.CancelScope | None = None  #: the driver's wait, while it waits
        self._done = False
        self._close_at = math.inf
        self._close_code = CloseCode.NORMAL
        self._close_reason = ""
        self._stopped: set[int] = set()  # streams the peer stopped or reset
        self._unsent: list[tuple[bytes, tuple[str, int]]] = []  #: _transmit could not send
        self._handshake_by = trio.current_time() + HANDSHAKE_TIMEOUT
        self._auth_by = math.inf  #: set when the handshake completes
        self.peak_buffered = 0

    @property
    def handshaking(self) -> bool:
        return self._handshake_by != math.inf

    def _authenticated(self) -> bool:
        return self.link is not None and self.link.protocol.principal is not None

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._drive()
                nursery.cancel_scope.cancel()
        except Exception:
            log.exception("a WebTransport connection from %s failed; closing it", self.addr)
            await self._abort()
        finally:
            self._endpoint.forget(self)

    async def _abort(self) -> None:
        """Best effort after a failure: tell the peer (bounded, even while cancelled)."""
        with trio.CancelScope(shield=True), trio.move_on_after(0.5):
            try:
                self.quic.close(error_code=int(CloseCode.PROTOCOL_ERROR), reason_phrase="internal")
                await self._endpoint.send(self.quic.datagrams_to_send(now=trio.current_time()))
            except Exception as exc:  # already failing; the peer times out instead
                log.debug("could not send the close: %s", exc)

    async def _drive(self) -> None:
        while True:
            self._wake = trio.Event()  # replaced before flushing, so no kick is lost
            datagrams = self.quic.datagrams_to_send(now=trio.current_time())
            if self._unsent:
                datagrams, self._unsent = self._unsent + datagrams, []
            if datagrams:
                await self._endpoint.send(datagrams)
            if self._done:
                return
            timer = self.quic.get_timer()
            deadline = min(timer if timer is not None else math.inf, self._close_at)
            with trio.move_on_at(min(deadline, self._handshake_by, self._auth_by)) as sleep:
                self._sleep = sleep
                await self._wake.wait()
            self._sleep = None
            now = trio.current_time()
            if now >= self._handshake_by:
                return  # never completed a handshake: junk, or a peer that went away; forget it
            if now >= self._auth_by:
                self._auth_by = math.inf
                if not self._authenticated():  # a slot held by nobody we know: give it back
                    self._endpoint.counts["unauthenticated"] += 1
                    self.close_now(CloseCode.UNAUTHORIZED, "no authentication in time")
            if now >= self._close_at:
                self._close_at = math.inf
                self.quic.close(error_code=int(self._close_code), reason_phrase=self._close_reason)
            timer = self.quic.get_timer()
            if timer is not None and now >= timer:
                self.quic.handle_timer(now=now)
                self._process()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """Called by the endpoint's receive loop: a failure here must not reach that loop."""
        try:
            self.quic.receive_datagram(data, addr, now=trio.current_time())
            self._process()
            self._transmit()  # what it calls for (mostly nothing: an ACK), not a task later
        except Exception:
            log.exception("a WebTransport connection from %s failed; closing it", self.addr)
            self._done = True
            try:
                self.quic.close(error_code=int(CloseCode.PROTOCOL_ERROR), reason_phrase="internal")
            except Exception as exc:  # the connection's state is broken: the peer times out
                log.debug("could not close: %s", exc)
            self._wake.set()

    def _process(self) -> None:
        while (event := self.quic.next_event()) is not None:
            self._quic_event(event)
        buffered = unacknowledged(self.quic)
        self.peak_buffered = max(self.peak_buffered, buffered)
        if self.link is not None:
            self.link.kick()  # acknowledgements may have made room

    def _transmit(self) -> None:
        """Put what aioquic has ready on the wire now, from the caller (as aioquic's own asyncio
        protocol does after each datagram). The driver task is woken only if something could not
        go now (a full socket buffer, a task sending), the connection ended, or the driver is not
        waiting; otherwise its wait is only cut short to aioquic's timer if that moved earlier
        (loss detection for a packet just sent, pacing), without a task switch: a live event and
        the client's ACK of it cost no wake-up of the driver."""
        if self._done or self._sleep is None:
            self._wake.set()
            return
        datagrams = self.quic.datagrams_to_send(now=trio.current_time())
        if self._unsent:  # older datagrams wait for the driver: these go after them
            self._unsent += datagrams
        elif datagrams:
            self._unsent = self._endpoint.send_now(datagrams)
        if self._unsent:
            self._wake.set()
            return
        timer = self.quic.get_timer()
        if timer is not None and timer < self._sleep.deadline:
            self._sleep.deadline = timer

    def _quic_event(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self._handshake_by = math.inf
            self._auth_by = trio.current_time() + self._endpoint.settings.auth_timeout
        elif isinstance(event, ProtocolNegotiated):
            if event.alpn_protocol in H3_ALPN:
                self._h3 = H3Connection(self.quic, enable_webtransport=True)
        elif isinstance(event, ConnectionIdIssued):
            self._endpoint.register(event.connection_id, self)
        elif isinstance(event, ConnectionIdRetired):
            self._endpoint.unregister(event.connection_id)
        elif isinstance(event, ConnectionTerminated):
            self._done = True  # the driver loop flushes once more, then the link is cancelled
            return
        elif isinstance(event, StopSendingReceived | StreamReset):
            self._stopped.add(event.stream_id)
            if event.stream_id == self._router.control_stream and self.link is not None:
                self.link.peer_closed()
        if self._h3 is not None:
            for h3_event in self._h3.handle_event(event):
                for action in self._router.handle(h3_event):
                    self._route(action)

    def _route(self, action: routing.RouteAction) -> None:
        assert self._h3 is not None
        if isinstance(action, routing.ControlData):
            if self.link is not None:
                self.link.data_received(action.data, action.ended)
        elif isinstance(action, routing.Accept):
            if self._endpoint.stopping or self._nursery is None:
                self._h3.send_headers(action.session_id, [(b":status", b"503")], end_stream=True)
                return
            self._h3.send_headers(
                action.session_id,
                [(b":status", b"200"), (b"sec-webtransport-http3-draft", b"draft02")],
            )
            self.link = self._endpoint.new_link(self, self.cert)
            self.link.start(self._nursery)
        elif isinstance(action, routing.Reject):
            status = str(action.status).encode()
            self._h3.send_headers(action.stream_id, [(b":status", status)], end_stream=True)
        elif isinstance(action, routing.Datagram):
            if self.link is not None:
                self.link.datagram_received(action.data)
        elif isinstance(action, routing.StopStream):
            self._stop(action.stream_id)
        elif isinstance(action, routing.SessionEnded):
            if self.link is not None:
                self.link.peer_closed()
            else:
                self.close_now(CloseCode.NORMAL, "session ended")

    def _stop(self, stream_id: int) -> None:
        if stream_id in self._stopped:
            return
        self._stopped.add(stream_id)
        try:
            self.quic.stop_stream(stream_id, int(CloseCode.PROTOCOL_ERROR))
            if stream_id & 0x2 == 0:  # bidirectional: our half too
                self.quic.reset_stream(stream_id, int(CloseCode.PROTOCOL_ERROR))
        except (ValueError, AssertionError):
            pass  # already finished or discarded

    def going_away(self) -> None:
        if self.link is not None:
            self.link.stop()
        else:
            self.close_now(CloseCode.GOING_AWAY, "the daemon is stopping")

    # -- Transport (for the link) ------------------------------------------------------------

    def buffered(self) -> int:
        buffered = unacknowledged(self.quic)
        self.peak_buffered = max(self.peak_buffered, buffered)
        return buffered

    def write_control(self, data: bytes) -> None:
        stream_id = self._router.control_stream
        if stream_id is None or stream_id in self._stopped or self._done:
            return
        self.quic.send_stream_data(stream_id, data)
        self._wake.set()

    def open_stream(self) -> int:
        assert self._h3 is not None
        assert self._router.session_id is not None
        stream_id = self._h3.create_webtransport_stream(
            self._router.session_id, is_unidirectional=True
        )
        self._wake.set()
        return stream_id

    def write_stream(self, stream_id: int, data: bytes, end: bool) -> None:
        if stream_id in self._stopped or self._done:
            return
        self.quic.send_stream_data(stream_id, data, end_stream=end)
        self._wake.set()

    def write_live(self, data: bytes) -> None:
        """A live event's frames, on the wire now from the caller (the log's publisher), not a
        task switch later (see :meth:`_transmit`)."""
        stream_id = self._router.control_stream
        if stream_id is None or stream_id in self._stopped or self._done:
            return
        self.quic.send_stream_data(stream_id, data)
        self._transmit()

    def send_datagram(self, data: bytes) -> None:
        if self._h3 is None or self._router.session_id is None or self._done:
            return
        self._h3.send_datagram(self._router.session_id, data)
        self._wake.set()

    def close_session(self, code: CloseCode, message: str) -> None:
        """Close the session politely (capsule + FIN), then the connection a little later."""
        if self._h3 is not None and self._router.session_id is not None and not self._done:
            session = self._router.session_id
            if session not in self._stopped:
                try:
                    self._h3.send_data(session, close_capsule(code, message), end_stream=True)
                except Exception as exc:  # the stream ended already (the client closed first)
                    log.debug("close capsule not sent: %s", exc)
        self._close_code, self._close_reason = code, message
        self._close_at = trio.current_time() + self._endpoint.settings.link.linger
        self._wake.set()

    def close_now(self, code: CloseCode, message: str) -> None:
        if not self._done:
            self.quic.close(error_code=int(code), reason_phrase=message)
        self._wake.set()
