"""Time from opening to the first event, by path: direct WebTransport, STUN-punched, TURN.

Usage: ``sudo python tests/bench/bench_rtc_open.py [--runs 7] [--json FILE]`` (root: it builds
the namespaces of tests/netlab.py; without root, or without mosquitto/coturn/aiortc, it prints
why and reports ``{"skipped": WHY}``). ``run.py`` runs it as part 10. No assertions: it
reports and exits 0.

The daemon is the real one (``python -m sidecode_trio serve`` in a child process) in the lab's
``home`` namespace behind its NAT, bound to every address there (``10.0.1.2``), with
``--rendezvous`` on the lab's mosquitto and STUN and TURN (coturn, REST credentials) configured:
what a user who set up TURN runs. It holds one session whose turn already produced events.

Each run is a device that has its pairing record and nothing else: no connection, no thread
(the imports are done once, before the runs: a process's import cost is ``bench_rtc.py``'s). The
clock starts, then the device connects by one path, authenticates, subscribes to the session's
events from one event before the newest (as an app resuming from its stored cursor) and stops
the clock when that event arrives:

* **direct**: WebTransport (``quic/client.py``) to ``10.0.1.2`` from the daemon's own LAN
  (no NAT between them): QUIC handshake, the session, the identity check of the certificate
  (``/v1/info``), ``auth``, ``subscribe``;
* **STUN**: the phone in its namespace behind a cone NAT, both NATs cone: its asyncio thread,
  an MQTT connection, the sealed ``hello``/``ice``/``offer``/``answer``, ICE through both NATs
  (server-reflexive pair), DTLS, SCTP, then the framed protocol's hello, ``auth``, ``subscribe``;
* **TURN**: the same with both NATs symmetric: ICE ends on the relayed pair.

Each WebRTC run records the nominated candidate pair (aioice's, read through private attributes
as the lab tests do), so the table shows that a path was the one named. Switching NAT modes
drops the daemon's broker connection (the mapping changes), so the daemon is restarted on the
same state for each NAT mode. No latency is emulated on the veths (``tc netem`` is missing from
this kernel): these are the stacks' and the round trips' costs, not WAN timings.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import trio

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_harness import Layout  # noqa: E402
from bench_targets import ChildDaemon, child_daemon  # noqa: E402

import netlab  # noqa: E402

HOME_IP: Final = "10.0.1.2"  # the daemon's address on its LAN (tests/netlab.py)
PATHS: Final = ("direct", "stun", "turn")
RUN_TIMEOUT: Final = 60.0  # seconds for one opening, at most (a failed ICE takes ~15 s)


def summary(values: list[float]) -> dict[str, float]:
    """Median and spread (min, max) in ms, and the number of runs."""
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered), 1),
        "min_ms": round(ordered[0], 1),
        "max_ms": round(ordered[-1], 1),
        "runs": len(ordered),
    }


def table(results: dict[str, Any]) -> str:
    """The markdown table: median [min-max] per path and its ratio to the direct path."""
    if "skipped" in results:
        return f"Not measured: {results['skipped']}.\n"
    paths = results["paths"]
    direct = paths.get("direct", {}).get("median_ms", math.nan)
    names = {
        "direct": "direct: WebTransport to the daemon's address, same LAN",
        "stun": "STUN-punched: WebRTC through two cone NATs",
        "turn": "TURN: WebRTC through two symmetric NATs, relayed",
    }
    lines = [
        "| path | opening → first event, median [min-max] | runs | ratio to direct | pair |",
        "|---|---|---|---|---|",
    ]
    for path in PATHS:
        if path not in paths:
            continue
        s = paths[path]
        ratio = s["median_ms"] / direct if direct else math.nan
        pairs = ", ".join(sorted(set(s.get("pairs", [])))) or "-"
        lines.append(
            f"| {names[path]} | {s['median_ms']:,.0f} ms [{s['min_ms']:,.0f}-{s['max_ms']:,.0f}] "
            f"| {s['runs']} | {ratio:.1f} | {pairs} |"
        )
    return "\n".join(lines) + "\n"


def render(results: dict[str, Any] | None) -> str:
    """The markdown section for RESULTS.md (``run.py``)."""
    if not results:
        return ""
    head = (
        "\n## 10. Time from opening to the first event, by path\n\n"
        "A device with its pairing record and nothing connected (imports done) opens a link, "
        "authenticates, resumes a subscription one event back and receives that event "
        "(`bench_rtc_open.py`). The daemon runs in the network lab's `home` namespace behind a "
        "NAT (tests/netlab.py), with STUN and TURN configured; no latency is emulated on the "
        "lab's links, so these are the stacks' and the round trips' costs, not WAN timings. "
        "Pair: the nominated ICE candidate pair, the device's side first.\n\n"
    )
    if "skipped" in results:
        return head + table(results)
    return head + f"{results['runs']} runs per path after a warm-up.\n\n" + table(results)


# --- one opening per path ----------------------------------------------------------------------


async def open_direct(
    daemon: ChildDaemon, quic_port: int, device: Any, path: str, since: str
) -> tuple[float, str]:
    from sidecode_trio.quic.client import DeviceSession, QuicClient

    async with trio.open_nursery() as nursery:
        started = time.perf_counter()
        client = await QuicClient.connect(nursery, HOME_IP, quic_port)
        session = await DeviceSession.open(nursery, client, "bench")
        await session.verify_identity(device.daemon_key)
        await session.authenticate(device.device_id, device.key)
        stream = await session.subscribe(path, since)
        first = await stream.next()
        elapsed = time.perf_counter() - started
        assert first["type"] == "event", first
        await client.aclose()
        nursery.cancel_scope.cancel()
    return 1000 * elapsed, "quic"


async def open_webrtc(lab: netlab.Lab, device: Any, path: str, since: str) -> tuple[float, str]:
    from sidecode_trio.rtc.broker import open_mqtt
    from sidecode_trio.rtc.client import open_session
    from sidecode_trio.rtc.peer import open_asyncio_thread
    from sidecode_trio.rtc.rendezvous import dial

    from rtclab import selected_pair

    setup = lab.enter("phone")
    async with trio.open_nursery() as nursery:
        started = time.perf_counter()
        async with (
            open_asyncio_thread(setup) as aio,
            open_mqtt(netlab.MQTT_URL, setup) as broker,
        ):
            assert device.topics is not None
            await broker.subscribe(device.topics.to_device)
            link = await dial(
                aio, broker, device.box(), device.key, device.daemon_key, device.topics
            )
            session, carrier = await open_session(nursery, link, "bench")
            await session.authenticate(device.device_id, device.key)
            stream = await session.subscribe(path, since)
            first = await stream.next()
            elapsed = time.perf_counter() - started
            assert first["type"] == "event", first
            local, remote = await selected_pair(aio, link.connection)
            await carrier.aclose()
            nursery.cancel_scope.cancel()
    return 1000 * elapsed, f"{local}/{remote}"


# --- the daemon in ``home`` ------------------------------------------------------------------


@asynccontextmanager
async def lab_daemon(layout: Layout) -> AsyncIterator[tuple[ChildDaemon, int]]:
    """The daemon (state ``layout.state("open")``, kept across restarts) and its UDP port."""
    secret = layout.root / "turn-secret"
    if not secret.exists():
        secret.write_bytes(netlab.TURN_SECRET)
        secret.chmod(0o600)
    config = layout.root / "rtc-open.toml"
    config.write_text(
        f'[rtc]\nrendezvous = "{netlab.MQTT_URL}"\nstun = ["{netlab.STUN_URL}"]\n'
        f'turn = ["{netlab.TURN_URL}"]\nturn_secret_file = "{secret}"\n'
    )
    extra = ["--config", str(config), "--host", "0.0.0.0", "--no-https"]  # home's addresses
    async with child_daemon(layout, "open", -1, extra) as daemon:
        ready = json.loads((layout.root / "ready-open.json").read_text())
        yield daemon, urlsplit(ready["quic"]).port or 0


async def rtc_ready(daemon: ChildDaemon, devices: int) -> None:
    """Until the daemon's broker connection is up and subscribed for ``devices`` devices."""
    with trio.fail_after(60):
        while True:
            status = await daemon.call("GET", "/v1/status")
            assert isinstance(status, dict)
            rtc = status.get("rtc", {})
            if rtc.get("connected") and rtc.get("devices", 0) >= devices:
                return
            await trio.sleep(0.05)


async def status(daemon: ChildDaemon, session_id: str) -> str:
    snapshot = await daemon.call("GET", f"/v1/sessions/{session_id}")
    assert isinstance(snapshot, dict)
    return str(snapshot["session"]["status"])


async def runs_of(
    name: str, runs: int, body: Callable[[], Awaitable[tuple[float, str]]]
) -> dict[str, Any]:
    await body()  # a warm-up opening, not counted (first certificates, caches)
    times, pairs = [], []
    for i in range(runs):
        with trio.fail_after(RUN_TIMEOUT):
            ms, pair = await body()
        times.append(ms)
        pairs.append(pair)
        print(f"[bench] {name} run {i + 1}: {ms:.0f} ms ({pair})", file=sys.stderr, flush=True)
    return summary(times) | {"pairs": pairs, "all_ms": [round(t, 1) for t in times]}


async def measure(lab: netlab.Lab, layout: Layout, runs: int) -> dict[str, Any]:
    from bench_rtc_link import pair

    results: dict[str, Any] = {"runs": runs, "paths": {}}
    paths = results["paths"]
    lab.nat("nath", "cone")
    lab.nat("natp", "cone")
    async with lab_daemon(layout) as (daemon, quic_port):
        session_id = await daemon.create_session(str(layout.work))
        await daemon.call(
            "POST", f"/v1/sessions/{session_id}/messages", {"text": "[[fast:50]]"}, 202
        )
        async with trio.open_nursery() as nursery:
            device, wt = await pair(daemon, nursery, quic_port)
            await wt.client.aclose()
            nursery.cancel_scope.cancel()
        with trio.fail_after(60):  # the turn ends: its events are all durable
            while await status(daemon, session_id) != "idle":
                await trio.sleep(0.05)
        epoch, _, cursor = (await daemon.position(session_id)).partition(":")
        since = f"{epoch}:{int(cursor) - 1}"  # the newest event is the first one delivered
        events = f"/v1/sessions/{session_id}/events"
        paths["direct"] = await runs_of(
            "direct", runs, lambda: open_direct(daemon, quic_port, device, events, since)
        )
        await rtc_ready(daemon, 1)
        paths["stun"] = await runs_of("stun", runs, lambda: open_webrtc(lab, device, events, since))
    lab.nat("nath", "symmetric")
    lab.nat("natp", "symmetric")
    try:
        async with lab_daemon(layout) as (daemon, quic_port):
            await rtc_ready(daemon, 1)
            paths["turn"] = await runs_of(
                "turn", runs, lambda: open_webrtc(lab, device, events, since)
            )
    finally:
        lab.nat("nath", "cone")
        lab.nat("natp", "cone")
    return results


def run(runs: int) -> dict[str, Any]:
    why = netlab.missing()
    if why is not None:
        return {"skipped": why}
    with tempfile.TemporaryDirectory(prefix="sidecode-bench-open-") as tmp:
        root = Path(tmp)
        layout = Layout(root, -1).create()
        with netlab.open_lab(root) as lab, lab.inside("home"):
            # this thread (Trio's, and the daemon it spawns) lives on the daemon's LAN; the
            # phone's threads move themselves into ``phone``
            return trio.run(measure, lab, layout, runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="openings per path (after a warm-up)")
    parser.add_argument("--json", type=Path, help="also write the results (JSON) here")
    args = parser.parse_args()
    results = run(args.runs)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
