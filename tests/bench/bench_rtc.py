"""WebRTC through the network lab (issue 17): set-up time by path, memory per link, import cost.

Usage: ``sudo python tests/bench/bench_rtc.py [--runs 10] [--links 20]`` (root: it builds the
namespaces of tests/netlab.py). Not part of ``run.py``; this measures the foundation on its own
(the protocol served over a link, against WebTransport and SSE: ``bench_rtc_link.py``). No
assertions: it reports and exits 0.

1. **Set-up time**, phone side, from sending the sealed ``hello`` to the DataChannel open, split
   into: hello -> ice (one broker round trip), gathering the offer, offer -> answer (the daemon's
   check, its own gathering, signing, one broker round trip), answer -> open (ICE checks, DTLS,
   SCTP). Two paths: STUN through two cone NATs, and TURN (on the daemon's side only) through two
   symmetric NATs. No latency is emulated (``tc netem`` is missing from this kernel), so these
   are the costs of the stacks and the round trips, not WAN timings. Then ``PINGS`` sequential
   4-byte round trips over each link (phone -> daemon -> phone, through the Trio bridge).
2. **Memory per link**: VmRSS of this process (which holds both the daemon side and the phone
   side) before and after opening ``--links`` links at once, divided by the number of links; each
   link is two RTCPeerConnections (one per side), its DataChannels, ICE sockets and DTLS state.
3. **Import cost**: VmRSS and time of a fresh interpreter importing the daemon, then aiortc.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent))

from sidecode_trio.rtc.ice import turn_server  # noqa: E402
from sidecode_trio.rtc.peer import PeerConnection  # noqa: E402
from sidecode_trio.rtc.rendezvous import Link, _checked_answer, _next_for  # noqa: E402
from sidecode_trio.rtc.signaling import (  # noqa: E402
    Hello,
    IceConfig,
    Offer,
    new_cid,
    sign_fingerprints,
)

import netlab  # noqa: E402
from rtclab import STUN, World, echo_once, selected_pair, world  # noqa: E402

PINGS = 50  # sequential round trips per link: phone -> daemon -> phone, 4-byte messages


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def timed_dial(w: World) -> tuple[dict[str, float], Link]:
    """:func:`~sidecode_trio.rtc.rendezvous.dial`, step by step, with a clock between steps."""
    box, daemon = w.phone_box(), bytes(w.daemon_key.verify_key)
    marks = {"start": time.perf_counter()}
    cid = new_cid()
    await w.phone_broker.publish(w.topics.to_daemon, box.seal(daemon, Hello(cid), time.time()))
    ice = await _next_for(w.phone_broker, box, cid, time.time)
    assert isinstance(ice, IceConfig)
    marks["ice"] = time.perf_counter()
    peer, sdp = await PeerConnection.offer(w.phone, ice.servers)
    marks["gathered"] = time.perf_counter()
    fps, sig = sign_fingerprints(w.device_key, "device", cid, sdp)
    offer = Offer(cid, sdp, fps, sig)
    await w.phone_broker.publish(w.topics.to_daemon, box.seal(daemon, offer, time.time()))
    answer = _checked_answer(await _next_for(w.phone_broker, box, cid, time.time), daemon, offer)
    marks["answered"] = time.perf_counter()
    await peer.accept_answer(answer.sdp)
    channel = await peer.channel()
    marks["open"] = time.perf_counter()
    steps = ("start", "ice", "gathered", "answered", "open")
    ms = {f"{a}->{b}": 1000 * (marks[b] - marks[a]) for a, b in itertools.pairwise(steps)}
    ms["total"] = 1000 * (marks["open"] - marks["start"])
    return ms, Link(daemon, cid, peer, channel)


def summary(values: list[float]) -> str:
    values = sorted(values)
    return f"median {statistics.median(values):7.1f}  min {values[0]:7.1f}  max {values[-1]:7.1f}"


async def setup_times(lab: netlab.Lab, path: str, runs: int) -> None:
    symmetric = path == "turn"
    lab.nat("nath", "symmetric" if symmetric else "cone")
    lab.nat("natp", "symmetric" if symmetric else "cone")
    ice = [STUN]
    if symmetric:
        ice.append(turn_server([netlab.TURN_URL], netlab.TURN_SECRET, "daemon", time.time()))
    results: dict[str, list[float]] = {}
    pairs: set[tuple[str, str]] = set()
    async with world(lab, ice) as w:
        for _ in range(runs):
            with trio.fail_after(60):
                ms, phone = await timed_dial(w)
                daemon = await w.links.receive()
                await echo_once(daemon, phone, b"ping")
                pairs.add(await selected_pair(w.home, daemon.connection))
                for _ in range(PINGS):
                    sent = time.perf_counter()
                    await echo_once(daemon, phone, b"ping")
                    results.setdefault("ping RTT", []).append(1000 * (time.perf_counter() - sent))
                await phone.connection.aclose()
            for step, value in ms.items():
                results.setdefault(step, []).append(value)
    name = "STUN, cone/cone" if not symmetric else "TURN (daemon only), symmetric/symmetric"
    print(f"\n{name}: {runs} runs; daemon's (local, remote) candidate pairs: {sorted(pairs)}")
    for step, values in results.items():
        print(f"  {step:18s} ms  {summary(values)}")


async def memory_per_link(lab: netlab.Lab, links: int) -> None:
    lab.nat("nath", "cone")
    lab.nat("natp", "cone")
    async with world(lab, [STUN]) as w:
        _, warm = await timed_dial(w)  # imports, first certificates, caches
        await w.links.receive()
        await warm.connection.aclose()
        gc.collect()
        await trio.sleep(0.5)
        before = rss_mib()
        phones = []
        with trio.fail_after(120):
            for _ in range(links):
                _, phone = await timed_dial(w)
                await w.links.receive()
                phones.append(phone)
        gc.collect()
        after = rss_mib()
        per_link = (after - before) / links
        print(
            f"\nmemory: {links} open links: VmRSS {before:.1f} -> {after:.1f} MiB; "
            f"{per_link * 1024:.0f} KiB per link (both sides), "
            f"~{per_link * 512:.0f} KiB per RTCPeerConnection"
        )
        for phone in phones:
            await phone.connection.aclose()


def import_cost() -> None:
    code = (
        "import time, pathlib\n"
        "def rss():\n"
        "    for l in pathlib.Path('/proc/self/status').read_text().splitlines():\n"
        "        if l.startswith('VmRSS:'): return int(l.split()[1]) / 1024\n"
        "t = time.perf_counter(); import sidecode_trio.daemon, sidecode_trio.rtc.rendezvous\n"
        "a, ta = rss(), time.perf_counter() - t\n"
        "t = time.perf_counter(); import aiortc, paho.mqtt.client\n"
        "b, tb = rss(), time.perf_counter() - t\n"
        "print(f'daemon + rtc package: {a:.1f} MiB ({ta*1000:.0f} ms); '\n"
        "      f'+ aiortc and paho: {b:.1f} MiB (+{b - a:.1f} MiB, {tb*1000:.0f} ms)')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=TESTS.parent, capture_output=True, text=True, check=True
    )
    print("\nimport cost:", out.stdout.strip())


async def main(runs: int, links: int) -> None:
    why = netlab.missing()
    if why is not None:
        sys.exit(why)
    import_cost()
    with tempfile.TemporaryDirectory() as tmp, netlab.open_lab(Path(tmp)) as lab:
        await setup_times(lab, "stun", runs)
        await setup_times(lab, "turn", runs)
        await memory_per_link(lab, links)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--links", type=int, default=20)
    args = parser.parse_args()
    trio.run(main, args.runs, args.links)
