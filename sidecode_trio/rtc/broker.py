"""The rendezvous: a pub/sub service that carries sealed signaling, and its MQTT driver.

**Why MQTT (mosquitto) rather than ntfy.** Both are "a server that is not ours". MQTT is an
open standard with many independent brokers (mosquitto is a Debian package any user can run; many
public and hosted brokers exist), so no single vendor's outage locks users out; it has
subscriptions over one long-lived connection with QoS 1 acknowledgements, and browsers reach it
over WebSocket (npm ``mqtt``). ntfy is one project's server (ntfy.sh or self-hosted), not packaged
in Debian, and its subscriptions are HTTP long-polls or WebSockets per topic. The lab measured
mosquitto at 0.1-0.5 ms publish-to-deliver once connected. The :class:`Rendezvous` protocol
below is all the signaling flows use: :mod:`.ntfy` is the ntfy driver beside
:class:`MqttRendezvous` (``POST /<topic>`` to publish, one ``GET /<topic>,<topic>/json`` stream to
subscribe, through httpx which the daemon already has), chosen by the URL's scheme
(:func:`.pubsub.open_rendezvous`). MQTT stays the one we suggest: a broker per standard rather than
one project's server, one connection whatever the number of topics (an ntfy subscription change
re-opens the stream), no 4,096-byte message limit (the ntfy driver sends a large offer in parts),
and the browser's signaling module (``rtc-signal.js``) speaks MQTT only.

**Why paho-mqtt on a thread rather than our own Trio client.** No maintained Trio-native MQTT
client exists: ``anyio-mqtt`` pins ``anyio<4`` and ``paho<2``; ``mqttproto`` is not on the index;
``aiomqtt``/``amqtt`` are asyncio (running them on aiortc's loop would couple signaling to the
media thread); ``mqtt5`` is a young pre-1.0 sans-IO codec (MQTT 5 only) with which we would own
reconnects, keep-alive and session state. paho-mqtt is the reference client (Eclipse), speaks
MQTT 3.1.1 and 5, TCP, TLS and WebSocket, and reconnects by itself; its ``publish`` and
``subscribe`` are thread-safe. It runs on one thread we own; its callbacks only schedule work in
Trio (``TrioToken.run_sync_soon``), never block on it.

**Nagle.** Signaling is small request/reply packets, the worst case for Nagle's algorithm
against delayed ACKs: in the lab every broker hop took ~44 ms instead of ~0.3 ms unless both ends
of each TCP connection disable it. Our client does (:func:`_no_delay`); a self-hosted mosquitto
needs ``set_tcp_nodelay true`` (mosquitto >= 2.0) in its configuration. A broker without it costs
up to ~40 ms per hop, ~170 ms per set-up (two round trips).
"""

from __future__ import annotations

import logging
import socket
import threading
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, Literal, Protocol

import trio

from ..errors import ConfigError, SidecodeError
from .auth import Credentials, redact, split_url

log = logging.getLogger(__name__)

INBOX_SIZE: Final = 256  # messages waiting for the Trio side; more are dropped (and counted)
KEEPALIVE: Final = 30  # seconds between MQTT pings on an idle connection
DEFAULT_PORTS: Final = {"mqtt": 1883, "mqtts": 8883, "ws": 80, "wss": 443}


class RendezvousError(SidecodeError):
    """The broker could not be reached, or refused us."""

    status = 503
    code = "rendezvous_unavailable"


class Rendezvous(Protocol):
    """What signaling needs from a pub/sub service. Payloads are opaque (sealed) bytes."""

    async def subscribe(self, topic: str) -> None: ...

    async def unsubscribe(self, topic: str) -> None: ...

    async def publish(self, topic: str, payload: bytes) -> None: ...

    async def receive(self) -> tuple[str, bytes]:
        """The next message on any subscribed topic."""
        ...


def _parse_url(url: str) -> tuple[str, str, int, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ConfigError(
            f"bad rendezvous URL {redact(url)!r}: "
            "use mqtt://, mqtts://, ws://, wss:// or ntfy+https://"
        )
    port = parts.port or DEFAULT_PORTS[parts.scheme]
    return parts.scheme, parts.hostname, port, parts.path or "/mqtt"


def _no_delay(_client: Any, _userdata: Any, sock: Any) -> None:
    """Disable Nagle on the broker connection (paho does not). Signaling is request/reply in
    small packets: with Nagle, a PUBLISH written right after a PUBACK waits for the broker's
    delayed ACK, which added ~40 ms to every broker round trip in the lab."""
    raw = getattr(sock, "_socket", sock)  # paho's WebSocket wrapper keeps the socket inside
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        log.debug("rtc: cannot set TCP_NODELAY on the broker connection")


class MqttRendezvous:
    """One MQTT connection (paho on its own thread) seen from Trio. Make it with :func:`open_mqtt`.

    Subscriptions are remembered and renewed after a reconnect. Inbound messages wait in a bounded
    inbox (``INBOX_SIZE``); a flood past it is dropped and counted, never queued without end.
    """

    def __init__(
        self,
        url: str,
        thread_setup: Callable[[], None] | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        import paho.mqtt.client as paho  # the broker is only needed with the WebRTC path on
        from paho.mqtt.enums import CallbackAPIVersion

        self._paho = paho
        scheme, self._host, self._port, path = _parse_url(url)
        transport: Literal["tcp", "websockets"] = "websockets" if scheme in ("ws", "wss") else "tcp"
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, transport=transport, protocol=paho.MQTTv311
        )
        credentials = credentials or split_url(url)[1]
        if credentials is not None:  # CONNECT's user name and password (a bare token: password)
            self._client.username_pw_set(credentials.user, credentials.password or None)
        if transport == "websockets":
            self._client.ws_set_options(path=path)
        if scheme in ("mqtts", "wss"):
            self._client.tls_set()
        self._client.reconnect_delay_set(1, 30)
        self._thread_setup = thread_setup
        self._token = trio.lowlevel.current_trio_token()
        self._inbox_tx, self._inbox_rx = trio.open_memory_channel[tuple[str, bytes]](INBOX_SIZE)
        self._waiting: dict[int, trio.Event] = {}
        self._topics: set[str] = set()
        self._connected = trio.Event()
        self._failed: str | None = None
        self.dropped = 0
        c = self._client
        c.on_connect = self._on_connect
        c.on_socket_open = _no_delay
        c.on_message = lambda _c, _u, msg: self._soon(self._deliver, msg.topic, bytes(msg.payload))
        c.on_publish = lambda _c, _u, mid, _rc, _p: self._soon(self._acked, mid)
        c.on_subscribe = lambda _c, _u, mid, _rc, _p: self._soon(self._acked, mid)
        c.on_unsubscribe = lambda _c, _u, mid, _rc, _p: self._soon(self._acked, mid)
        self._thread = threading.Thread(target=self._main, name="mqtt", daemon=True)

    # --- the paho thread ---------------------------------------------------------------------

    def _main(self) -> None:
        try:
            if self._thread_setup is not None:
                self._thread_setup()
            self._client.connect(self._host, self._port, keepalive=KEEPALIVE)
        except Exception as exc:
            self._soon(self._fail, f"cannot reach the rendezvous {self._host}:{self._port}: {exc}")
            return
        self._client.loop_forever(retry_first_connection=True)

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._soon(self._fail, f"the rendezvous refused us: {reason}")
            return
        for topic in list(self._topics):  # a reconnect: renew what we had
            self._client.subscribe(topic, qos=1)
        self._soon(self._connected.set)

    def _soon(self, fn: Callable[..., object], *args: object) -> None:
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass

    # --- the Trio side -----------------------------------------------------------------------

    def _fail(self, why: str) -> None:
        self._failed = why
        self._connected.set()
        for event in self._waiting.values():
            event.set()

    def _deliver(self, topic: str, payload: bytes) -> None:
        try:
            self._inbox_tx.send_nowait((topic, payload))
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _acked(self, mid: int) -> None:
        event = self._waiting.pop(mid, None)
        if event is not None:
            event.set()

    async def _wait_ack(self, mid: int, what: str) -> None:
        event = self._waiting[mid] = trio.Event()
        try:
            await event.wait()
        finally:  # cancelled: forget it, or a later packet id's ack would find a stale event
            self._waiting.pop(mid, None)
        if self._failed is not None:
            raise RendezvousError(f"{what}: {self._failed}")

    async def _start(self) -> None:
        self._thread.start()
        await self._connected.wait()
        if self._failed is not None:
            raise RendezvousError(self._failed)

    async def _stop(self) -> None:
        self._client.disconnect()
        await trio.to_thread.run_sync(self._thread.join)
        self._inbox_tx.close()

    async def subscribe(self, topic: str) -> None:
        self._topics.add(topic)
        result, mid = self._client.subscribe(topic, qos=1)
        if result != self._paho.MQTT_ERR_SUCCESS or mid is None:
            raise RendezvousError(f"cannot subscribe: {self._paho.error_string(result)}")
        await self._wait_ack(mid, "subscribe")

    async def unsubscribe(self, topic: str) -> None:
        self._topics.discard(topic)
        result, mid = self._client.unsubscribe(topic)
        if result == self._paho.MQTT_ERR_SUCCESS and mid is not None:
            await self._wait_ack(mid, "unsubscribe")

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish with QoS 1 and return when the broker has acknowledged it."""
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != self._paho.MQTT_ERR_SUCCESS:
            raise RendezvousError(f"cannot publish: {self._paho.error_string(info.rc)}")
        await self._wait_ack(info.mid, "publish")

    async def receive(self) -> tuple[str, bytes]:
        return await self._inbox_rx.receive()


@asynccontextmanager
async def open_mqtt(
    url: str,
    thread_setup: Callable[[], None] | None = None,
    credentials: Credentials | None = None,
) -> AsyncIterator[MqttRendezvous]:
    """A connected :class:`MqttRendezvous`; disconnected and its thread joined on exit.

    ``thread_setup`` runs first on the client's thread (the network lab uses it to put the
    connection in a network namespace); ``credentials`` (or those in ``url``) go in CONNECT."""
    client = MqttRendezvous(url, thread_setup, credentials)
    try:
        with trio.fail_after(30):
            await client._start()
        yield client
    finally:
        with trio.CancelScope(shield=True):
            await client._stop()
