"""WebTransport against HTTP/SSE, same daemon, same run, same client process.

Three figures, each measured over both transports of one child daemon
(``python -m sidecode_trio serve``, pinned to the daemon's CPU), from the orchestrator (the
client's CPU); the two transports alternate in short turns, so drifts of the machine's load
land on both:

1. **Round trip of a small operation**: ``GET /v1/sessions`` (one session) as a WebTransport
   request on an open, authenticated session, against the same request on a keep-alive
   HTTP/1.1 connection.
2. **Added latency of streamed events**: the fake CLI stamps each text delta with
   ``time.monotonic_ns()`` right before writing it (``[[stamp:N:RATE]]``); over a WebTransport
   subscription and over an SSE stream (turns of 100 or 400 deltas, alternated), the client
   takes, for every stamp, the time its socket's ``recv`` returned the bytes that carry it
   minus the stamp (**the comparison**: the same point on both transports, the daemon's whole
   path and the wire), and the time the frame is decoded minus the stamp. The clients differ
   after the socket: the SSE one is a light reader (h11, one ``json.loads``); the WebTransport
   one is aioquic in Python (decrypt, parse, build and send the ACK) and the client's two task
   hops (connection reader, session reader, subscriber), which cost it a few hundred µs a frame
   that no daemon change can remove, so the decoded-frame figures are shown but are not the
   comparison. The daemon's CPU time over each transport's turns, per event delivered, is
   shown too (the whole turn: CLI, log and transport, and over WebTransport the ACKs).
3. **One-way throughput of a large payload**: a session's snapshot of several MB, as the
   ``snapshot`` that opens a subscription (over WebTransport: on its own unidirectional stream)
   against ``GET /v1/sessions/{id}`` over HTTP/1.1.

Both clients are Python (aioquic is pure Python, at both ends: the round-trip and payload
figures include the client's own QUIC cost); ratios are WebTransport / HTTP.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import statistics
import time
from collections.abc import Awaitable
from typing import Any

import attrs
import h11
import nacl.signing
import trio
from bench_harness import cpu_seconds
from bench_targets import ChildDaemon

from sidecode_trio.quic.client import DeviceSession, QuicClient
from sidecode_trio.security.identity import b64, unb64
from sidecode_trio.security.pairing import transcript


class KeepAlive:
    """HTTP/1.1 requests on a kept-alive connection (h11), with the local token; a new
    connection only when the server ends one (hypercorn does after 1,000 requests)."""

    def __init__(self, stream: trio.SocketStream, port: int, token: str) -> None:
        self._stream, self._port, self._token = stream, port, token
        self._conn = h11.Connection(h11.CLIENT)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def call(self, method: str, path: str) -> tuple[int, bytes]:
        if self._conn.our_state is not h11.IDLE:
            await self._stream.aclose()
            self._stream = await trio.open_tcp_stream("127.0.0.1", self._port)
            self._conn = h11.Connection(h11.CLIENT)
        headers = [
            ("Host", f"127.0.0.1:{self._port}"),
            ("Authorization", f"Bearer {self._token}"),
        ]
        request = h11.Request(method=method, target=path, headers=headers)
        await self._stream.send_all(
            (self._conn.send(request) or b"") + (self._conn.send(h11.EndOfMessage()) or b"")
        )
        status, body = 0, bytearray()
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                self._conn.receive_data(await self._stream.receive_some(1 << 20))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
                    self._conn.start_next_cycle()
                return status, bytes(body)


async def pair_device(daemon: ChildDaemon, nursery: trio.Nursery, port: int) -> DeviceSession:
    """Pair a device over WebTransport with an offer made with the local token; authenticate."""
    offer = await daemon.call("POST", "/v1/pairings", {"scope": "admin"}, 201)
    assert isinstance(offer, dict)
    payload = offer["payload"]
    key = nacl.signing.SigningKey.generate()
    message = transcript(unb64(payload["pk"]), bytes(key.verify_key), "bench", payload["sid"])
    mac = hmac.new(unb64(payload["secret"]), message, hashlib.sha256).digest()
    body = {
        "secret_id": payload["sid"],
        "device_public_key": b64(bytes(key.verify_key)),
        "name": "bench",
        "mac": b64(mac),
        "signature": b64(key.sign(message).signature),
    }
    client = await QuicClient.connect(nursery, "127.0.0.1", port)
    session = await DeviceSession.open(nursery, client, "bench")
    await session.verify_identity(unb64(payload["pk"]))
    device = (await session.request("POST", "/v1/pair", body))["device"]
    await session.authenticate(device["id"], key)
    return session


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "p50": statistics.median(ordered),
        "p90": ordered[int(0.9 * (len(ordered) - 1))],
        "p99": ordered[int(0.99 * (len(ordered) - 1))],
    }


def stamps(text: str) -> list[int]:
    return [int(part) for part in text.split(";") if part.isdigit()]


async def round_trips(
    session: DeviceSession, http: KeepAlive, count: int
) -> dict[str, dict[str, float]]:
    wt_times, http_times = [], []
    for _ in range(20):  # warm-up
        await session.request("GET", "/v1/sessions")
        await http.call("GET", "/v1/sessions")
    for _ in range(count):
        started = time.perf_counter()
        await session.request("GET", "/v1/sessions")
        wt_times.append((time.perf_counter() - started) * 1e6)
        started = time.perf_counter()
        status, _ = await http.call("GET", "/v1/sessions")
        http_times.append((time.perf_counter() - started) * 1e6)
        assert status == 200
    return {"webtransport": summary(wt_times), "http": summary(http_times)}


class StampedSocket:
    """The client's UDP socket, noting when each datagram left ``recv``: the moment the bytes
    reached the client, before aioquic decrypts, parses and acknowledges them and the frame is
    handed from the connection's reader task to the subscriber's."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.last_ns = 0

    async def recv(self, size: int) -> bytes:
        data: bytes = await self._sock.recv(size)
        self.last_ns = time.monotonic_ns()
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def stamp_arrivals(session: DeviceSession) -> StampedSocket:
    client: Any = session.client  # a bench's look inside: the socket its reader task reads
    stamped = StampedSocket(client._sock)
    client._sock = stamped  # the reader takes it from its next datagram on
    return stamped


@attrs.define
class Latencies:
    """Per stamp, stamp → the bytes at the client (``arrived``) and → the decoded frame."""

    decoded: list[float] = attrs.Factory(list)
    arrived: list[float] = attrs.Factory(list)
    client: list[float] = attrs.Factory(list)  #: the client's own work: arrival → decoded
    daemon_cpu_s: float = 0.0  #: the daemon's CPU time over the turns (all of its work)

    def add(self, text: str, arrived_ns: int, now_ns: int) -> None:
        for stamp in stamps(text):
            self.decoded.append((now_ns - stamp) / 1e3)
            self.arrived.append((arrived_ns - stamp) / 1e3)
            self.client.append((now_ns - arrived_ns) / 1e3)

    def __iadd__(self, other: Latencies) -> Latencies:
        self.decoded += other.decoded
        self.arrived += other.arrived
        self.client += other.client
        self.daemon_cpu_s += other.daemon_cpu_s
        return self

    def cpu_per_event_us(self) -> float:
        return self.daemon_cpu_s / max(len(self.decoded), 1) * 1e6


async def timed(pid: int, turn: Awaitable[Latencies]) -> Latencies:
    """``turn``'s latencies, with the daemon's CPU seconds while it ran."""
    before = cpu_seconds(pid)
    latencies = await turn
    latencies.daemon_cpu_s = cpu_seconds(pid) - before
    return latencies


async def wt_latency(
    daemon: ChildDaemon,
    session: DeviceSession,
    socket: StampedSocket,
    session_id: str,
    deltas: int,
    rate: int,
) -> Latencies:
    stream = await session.subscribe(
        f"/v1/sessions/{session_id}/events", await daemon.position(session_id)
    )
    await daemon.call(
        "POST", f"/v1/sessions/{session_id}/messages", {"text": f"[[stamp:{deltas}:{rate}]]"}, 202
    )
    latencies = Latencies()
    while True:
        message = await stream.next()
        now = time.monotonic_ns()
        event = message.get("data", {}).get("event", {})
        if event.get("type") == "text.delta":
            # deltas come 5 ms apart, each in its own datagram: the last one read carried it
            latencies.add(event["text"], socket.last_ns, now)
        if event.get("type") == "turn.completed":
            session.unsubscribe(stream)
            return latencies


async def sse_latency(daemon: ChildDaemon, session_id: str, deltas: int, rate: int) -> Latencies:
    since = await daemon.position(session_id)
    stream = await trio.open_tcp_stream("127.0.0.1", daemon.port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        headers = [
            ("Host", f"127.0.0.1:{daemon.port}"),
            ("Authorization", f"Bearer {daemon.token}"),
            ("Last-Event-ID", since),
        ]
        path = f"/v1/sessions/{session_id}/events"
        request = h11.Request(method="GET", target=path, headers=headers)
        await stream.send_all((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
        await daemon.call(
            "POST",
            f"/v1/sessions/{session_id}/messages",
            {"text": f"[[stamp:{deltas}:{rate}]]"},
            202,
        )
        latencies = Latencies()
        buffer, arrived = b"", 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(1 << 16))
                arrived = time.monotonic_ns()
                continue
            if not isinstance(event, h11.Data):
                continue
            now = time.monotonic_ns()
            buffer += bytes(event.data)
            frames = buffer.split(b"\n\n")
            buffer = frames.pop()
            for frame in frames:
                for line in frame.split(b"\n"):
                    if not line.startswith(b"data: "):
                        continue
                    body = json.loads(line[6:])["event"]
                    if body["type"] == "text.delta":
                        latencies.add(body["text"], arrived, now)
                    if body["type"] == "turn.completed":
                        return latencies


async def throughput(
    daemon: ChildDaemon, session: DeviceSession, http: KeepAlive, session_id: str, repeat: int
) -> dict[str, Any]:
    wt_rates, http_rates, size = [], [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        stream = await session.subscribe(f"/v1/sessions/{session_id}/events")
        snapshot = await stream.next()
        elapsed = time.perf_counter() - started
        session.unsubscribe(stream)
        size = len(json.dumps(snapshot, separators=(",", ":")))
        wt_rates.append(size / elapsed / 1e6)
        started = time.perf_counter()
        status, body = await http.call("GET", f"/v1/sessions/{session_id}")
        http_rates.append(len(body) / (time.perf_counter() - started) / 1e6)
        assert status == 200
    return {
        "bytes": size,
        "webtransport_mb_s": statistics.median(wt_rates),
        "http_mb_s": statistics.median(http_rates),
        "large_streams": session.client.large_received,
    }


async def compare(daemon: ChildDaemon, quic_port: int, work: str, quick: bool) -> dict[str, Any]:
    """All three figures; ``daemon`` must serve WebTransport on ``quic_port``."""
    results: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        session = await pair_device(daemon, nursery, quic_port)
        socket = stamp_arrivals(session)
        http = KeepAlive(
            await trio.open_tcp_stream("127.0.0.1", daemon.port), daemon.port, daemon.token
        )
        try:
            live = await daemon.create_session(work)
            results["round_trip_us"] = await round_trips(session, http, 300 if quick else 1000)
            # the transports alternate in short turns (400 / 4,000 deltas each in all), so the
            # load of a shared machine, which drifts within seconds, lands on both alike
            (deltas, turns), rate = ((100, 4) if quick else (400, 10)), 200
            wt, sse = Latencies(), Latencies()
            for _ in range(turns):
                wt += await timed(
                    daemon.pid, wt_latency(daemon, session, socket, live, deltas, rate)
                )
                sse += await timed(daemon.pid, sse_latency(daemon, live, deltas, rate))
            results["event_latency_us"] = {
                "webtransport": summary(wt.decoded),
                "sse": summary(sse.decoded),
                "webtransport_arrived": summary(wt.arrived),
                "sse_arrived": summary(sse.arrived),
                "webtransport_client": summary(wt.client),
                "sse_client": summary(sse.client),
                "webtransport_daemon_cpu_us": wt.cpu_per_event_us(),
                "sse_daemon_cpu_us": sse.cpu_per_event_us(),
            }
            bulky = await daemon.create_session(work)
            for _ in range(4 if quick else 12):
                text = "z" * 190_000  # echoed by the fake CLI: ~380 kB of transcript per turn
                await daemon.call("POST", f"/v1/sessions/{bulky}/messages", {"text": text}, 202)
            await _wait_idle(daemon, bulky)
            results["large_payload"] = await throughput(daemon, session, http, bulky, 3)
        finally:
            await http.aclose()
        await session.client.aclose()
        nursery.cancel_scope.cancel()
    return results


async def _wait_idle(daemon: ChildDaemon, session_id: str) -> None:
    with trio.fail_after(120):
        while True:
            snap = await daemon.call("GET", f"/v1/sessions/{session_id}")
            assert isinstance(snap, dict)
            if not snap["queued"] and snap["active_turn"] is None:
                return
            await trio.sleep(0.2)


def render(results: dict[str, Any] | None) -> str:
    """The markdown section for RESULTS.md."""
    if not results:
        return ""
    rt, ev, big = results["round_trip_us"], results["event_latency_us"], results["large_payload"]
    at, cost = "to the client's socket", "the client's own work, stamp at socket → decoded frame"
    rows = [
        ("small operation round trip, p50 (µs)", rt["webtransport"]["p50"], rt["http"]["p50"]),
        ("small operation round trip, p90 (µs)", rt["webtransport"]["p90"], rt["http"]["p90"]),
        (
            f"**streamed event latency {at}, p50 (µs)**",
            ev["webtransport_arrived"]["p50"],
            ev["sse_arrived"]["p50"],
        ),
        (
            f"streamed event latency {at}, p99 (µs)",
            ev["webtransport_arrived"]["p99"],
            ev["sse_arrived"]["p99"],
        ),
        (
            "streamed event latency to the decoded frame, p50 (µs)",
            ev["webtransport"]["p50"],
            ev["sse"]["p50"],
        ),
        (
            "streamed event latency to the decoded frame, p99 (µs)",
            ev["webtransport"]["p99"],
            ev["sse"]["p99"],
        ),
        (f"{cost}, p50 (µs)", ev["webtransport_client"]["p50"], ev["sse_client"]["p50"]),
        (
            "daemon CPU per event delivered, whole turns (CLI, log, transport, ACKs) (µs)",
            ev.get("webtransport_daemon_cpu_us", math.nan),
            ev.get("sse_daemon_cpu_us", math.nan),
        ),
        (
            f"one-way large payload ({big['bytes'] / 1e6:.1f} MB snapshot), MB/s",
            big["webtransport_mb_s"],
            big["http_mb_s"],
        ),
    ]
    lines = [
        "## 5. WebTransport against HTTP/SSE (same daemon, same run)\n",
        "Round trip: `GET /v1/sessions` on an open session vs a keep-alive HTTP/1.1 connection. "
        "Event latency: `[[stamp]]` deltas at 200/s, from the fake CLI writing the line to the "
        "client. **The two transports are compared at the same point, the client's socket** "
        "(the moment `recv` returns the datagram or segment that carries the event): the "
        "clients differ after it, the SSE one being a light socket reader and the WebTransport "
        "one Python and aioquic (decrypt, parse, acknowledge, two task hops), whose own cost is "
        "its own row. The decoded-frame rows include it. Large payload: a subscription's "
        "opening snapshot (its own unidirectional stream) vs `GET /v1/sessions/{id}`; both "
        "clients' costs included.\n",
        "| measure | WebTransport | HTTP/SSE | ratio (WT/HTTP) |",
        "|---|---|---|---|",
    ]
    for name, wt, http in rows:
        lines.append(f"| {name} | {wt:,.1f} | {http:,.1f} | {wt / http:.2f} |")
    samples = f"{rt['webtransport']['n']} round trips, {ev['webtransport']['n']} / "
    samples += f"{ev['sse']['n']} event deliveries (WT / SSE)"
    lines.append(f"\nSamples: {samples}.\n")
    return "\n".join(lines) + "\n"
