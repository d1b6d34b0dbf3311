"""The protocol over a WebRTC DataChannel against WebTransport and SSE: same daemon, same run.

Usage: ``python tests/bench/bench_rtc_link.py [--quick] [--links 10]`` (needs mosquitto; loopback
only, no network lab: the figures are the stacks' costs, not WAN timings). No assertions: it
prints a JSON report and exits 0.

One child daemon (``serve --rendezvous mqtt://127.0.0.1:PORT``, pinned to one CPU, with its
WebTransport endpoint on) and a mosquitto on loopback. The client process (the other CPU) pairs
a device once, then:

1. **Added latency of streamed events**: the fake CLI stamps each text delta with
   ``time.monotonic_ns()`` before writing it (``[[stamp:N:RATE]]``); the client takes receive
   time minus stamp for every stamp, over a DataChannel subscription, a WebTransport one and an
   SSE stream (turns of 100 or 400 deltas, alternated 4 or 10 times).
2. **Round trip of a small operation** (``GET /v1/sessions``) over the DataChannel and over
   WebTransport.
3. **Memory per WebRTC link**: the daemon's VmRSS (``/proc/PID/status``) before and after
   ``--links`` authenticated links, each with one subscription, divided by the number of links
   (the client's side is not counted: it is another process).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nacl.signing
import trio

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_harness import Layout, can_pin, pin  # noqa: E402
from bench_targets import ChildDaemon, child_daemon  # noqa: E402
from bench_wt import Latencies, sse_latency, stamp_arrivals, summary, wt_latency  # noqa: E402

from sidecode_trio.channel.client import DeviceSession  # noqa: E402
from sidecode_trio.quic.client import DeviceSession as WtSession  # noqa: E402
from sidecode_trio.quic.client import QuicClient  # noqa: E402
from sidecode_trio.rtc.broker import MqttRendezvous, open_mqtt  # noqa: E402
from sidecode_trio.rtc.client import LinkCarrier, open_session  # noqa: E402
from sidecode_trio.rtc.peer import AsyncioThread, open_asyncio_thread  # noqa: E402
from sidecode_trio.rtc.rendezvous import dial  # noqa: E402
from sidecode_trio.rtc.signaling import SignalingBox, Topics, topics  # noqa: E402
from sidecode_trio.security.identity import b64, unb64  # noqa: E402
from sidecode_trio.security.pairing import rendezvous_secret, transcript  # noqa: E402

from helpers import mosquitto_on_loopback  # noqa: E402


@contextmanager
def mosquitto() -> Iterator[str]:
    if shutil.which("mosquitto") is None:
        raise SystemExit("needs mosquitto (apt-get install mosquitto)")
    with tempfile.TemporaryDirectory() as tmp, mosquitto_on_loopback(Path(tmp)) as url:
        yield url


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Phone:
    """A device paired over WebTransport, which then dials the daemon over WebRTC."""

    def __init__(self, key: nacl.signing.SigningKey, device_id: str, daemon_key: bytes) -> None:
        self.key, self.device_id, self.daemon_key = key, device_id, daemon_key
        self.topics: Topics | None = None

    def box(self) -> SignalingBox:
        return SignalingBox(self.key, lambda key: key == self.daemon_key)


async def pair(
    daemon: ChildDaemon, nursery: trio.Nursery, quic_port: int
) -> tuple[Phone, WtSession]:
    offer = await daemon.call("POST", "/v1/pairings", {"scope": "admin"}, 201)
    assert isinstance(offer, dict)
    payload = offer["payload"]
    key = nacl.signing.SigningKey.generate()
    message = transcript(unb64(payload["pk"]), bytes(key.verify_key), "bench", payload["sid"])
    secret = unb64(payload["secret"])
    body = {
        "secret_id": payload["sid"],
        "device_public_key": b64(bytes(key.verify_key)),
        "name": "bench",
        "mac": b64(hmac.new(secret, message, hashlib.sha256).digest()),
        "signature": b64(key.sign(message).signature),
    }
    client = await QuicClient.connect(nursery, "127.0.0.1", quic_port)
    wt = await WtSession.open(nursery, client, "bench")
    await wt.verify_identity(unb64(payload["pk"]))
    device = (await wt.request("POST", "/v1/pair", body))["device"]
    await wt.authenticate(device["id"], key)
    phone = Phone(key, device["id"], unb64(payload["pk"]))
    phone.topics = topics(rendezvous_secret(secret, message))
    return phone, wt


async def connect(
    nursery: trio.Nursery, aio: AsyncioThread, broker: MqttRendezvous, phone: Phone
) -> tuple[DeviceSession, LinkCarrier]:
    assert phone.topics is not None
    with trio.fail_after(30):
        link = await dial(aio, broker, phone.box(), phone.key, phone.daemon_key, phone.topics)
        session, carrier = await open_session(nursery, link, "bench")
        await session.authenticate(phone.device_id, phone.key)
    return session, carrier


async def rtc_latency(
    daemon: ChildDaemon, session: DeviceSession, session_id: str, deltas: int, rate: int
) -> Latencies:
    """As ``bench_wt.wt_latency``, over the DataChannel session."""
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
            # no socket to stamp (aiortc's thread reads it): arrival is taken as decoding
            latencies.add(event["text"], now, now)
        if event.get("type") == "turn.completed":
            session.unsubscribe(stream)
            return latencies


async def round_trips(rtc: DeviceSession, wt: WtSession, count: int) -> dict[str, Any]:
    rtc_times, wt_times = [], []
    for _ in range(20):
        await rtc.request("GET", "/v1/sessions")
        await wt.request("GET", "/v1/sessions")
    for _ in range(count):
        started = time.perf_counter()
        await rtc.request("GET", "/v1/sessions")
        rtc_times.append((time.perf_counter() - started) * 1e6)
        started = time.perf_counter()
        await wt.request("GET", "/v1/sessions")
        wt_times.append((time.perf_counter() - started) * 1e6)
    return {"datachannel": summary(rtc_times), "webtransport": summary(wt_times)}


@asynccontextmanager
async def daemon_with_rtc(layout: Layout, broker: str, cpu: int) -> AsyncIterator[ChildDaemon]:
    config = layout.root / "rtc.toml"
    config.write_text(f'[rtc]\nrendezvous = "{broker}"\nstun = []\n')
    extra = ["--config", str(config)]
    async with child_daemon(layout, "rtc", cpu, extra) as daemon:
        yield daemon


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cpus = (0, 1) if can_pin() else (-1, -1)
    pin(0, cpus[1])
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="sidecode-bench-rtc-") as tmp, mosquitto() as broker:
        layout = Layout(Path(tmp), cpus[1]).create()
        async with daemon_with_rtc(layout, broker, cpus[0]) as daemon:
            ready = json.loads((layout.root / "ready-rtc.json").read_text())
            quic_port = urlsplit(ready["quic"]).port or 0
            async with (
                trio.open_nursery() as nursery,
                open_asyncio_thread() as aio,
                open_mqtt(broker) as phone_broker,
            ):
                phone, wt = await pair(daemon, nursery, quic_port)
                assert phone.topics is not None
                await phone_broker.subscribe(phone.topics.to_device)
                await trio.sleep(0.5)  # the daemon subscribes to the new device's topic
                rtc, carrier = await connect(nursery, aio, phone_broker, phone)
                live = await daemon.create_session(str(layout.work))
                (deltas, turns), rate = ((100, 4) if args.quick else (400, 10)), 200
                socket = stamp_arrivals(wt)
                by_path = {"datachannel": Latencies(), "webtransport": Latencies()}
                by_path["sse"] = Latencies()
                for _ in range(turns):  # alternate the transports in short turns
                    by_path["datachannel"] += await rtc_latency(daemon, rtc, live, deltas, rate)
                    by_path["webtransport"] += await wt_latency(
                        daemon, wt, socket, live, deltas, rate
                    )
                    by_path["sse"] += await sse_latency(daemon, live, deltas, rate)
                # at the subscriber (decoded: comparable on all three paths), and for WebTransport
                # and SSE also when the bytes reached the client's socket
                results["event_latency_us"] = {k: summary(v.decoded) for k, v in by_path.items()}
                results["event_arrival_us"] = {
                    k: summary(v.arrived) for k, v in by_path.items() if k != "datachannel"
                }
                results["round_trip_us"] = await round_trips(rtc, wt, 200 if args.quick else 1000)
                await carrier.aclose()

                before = rss_kib(daemon.pid)
                carriers = []
                for _ in range(args.links):
                    session, each = await connect(nursery, aio, phone_broker, phone)
                    stream = await session.subscribe(f"/v1/sessions/{live}/events")
                    await stream.next()  # the snapshot: the subscription is live
                    carriers.append(each)
                await trio.sleep(1.0)  # let the daemon settle
                after = rss_kib(daemon.pid)
                results["memory_per_link_kib"] = {
                    "links": args.links,
                    "rss_before_kib": before,
                    "rss_after_kib": after,
                    "per_link_kib": round((after - before) / max(args.links, 1), 1),
                }
                for each in carriers:
                    await each.aclose()
                await wt.client.aclose()
                nursery.cancel_scope.cancel()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--links", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps(trio.run(run, args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
