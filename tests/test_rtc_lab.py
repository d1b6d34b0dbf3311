"""WebRTC through two NATs, in a network lab the test builds (tests/netlab.py).

A "daemon" (the Answerer) in the ``home`` namespace and a "phone" (dial) in the ``phone``
namespace, both Python in this process (each on threads moved into its namespace), exchange
sealed signaling over the real mosquitto in ``inet`` and connect a DataChannel through the two
NATs: with STUN (coturn) through cone NATs, over TURN (coturn, REST credentials) through
symmetric ones. A tampered offer, a replayed one and a revoked device are refused. Needs root
and the Debian packages mosquitto, coturn, iptables, conntrack, tcpdump; skips otherwise.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import trio
from test_rtc_daemon import until
from test_rtc_link import (
    Dialer,
    approved_turn,
    cursor,
    next_event,
    output_until_turn_completed,
    phone_of,
    revoked_while_following,
)

from sidecode_trio.config import DaemonConfig
from sidecode_trio.rtc import service as service_module
from sidecode_trio.rtc.broker import INBOX_SIZE, open_mqtt
from sidecode_trio.rtc.ice import IceServer, turn_server
from sidecode_trio.rtc.peer import PeerConnection, RtcError, open_asyncio_thread
from sidecode_trio.rtc.rendezvous import MAX_PENDING_PER_DEVICE
from sidecode_trio.rtc.settings import RtcSettings
from sidecode_trio.rtc.signaling import (
    Answer,
    Hello,
    IceConfig,
    Message,
    Offer,
    Refused,
    new_cid,
    sign_fingerprints,
    topics,
)
from sidecode_trio.security.identity import unb64

import netlab
from helpers import Phone, load_example, running_daemon
from rtclab import STUN, World, connect, echo_once, peer_certificate, selected_pair, world

netlab.skip_unless_possible()
pc = load_example("pair_client")
EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with netlab.open_lab(tmp_path_factory.mktemp("netlab")) as lab:
        yield lab


async def test_a_phone_reaches_the_daemon_through_two_cone_nats_with_stun(lab: netlab.Lab) -> None:
    lab.nat("nath", "cone")
    lab.nat("natp", "cone")
    with trio.fail_after(30):
        async with world(lab, [STUN]) as w:
            daemon, phone = await connect(w)
            try:
                await echo_once(daemon, phone, b"hello through two NATs")
                local, remote = await selected_pair(w.home, daemon.connection)
                assert "relay" not in (local, remote)
                assert daemon.peer_key == bytes(w.device_key.verify_key)
                # DTLS ran with exactly the certificates whose fingerprints were signed
                phone_cert = await peer_certificate(w.home, daemon.connection)
                daemon_cert = await peer_certificate(w.phone, phone.connection)
                assert phone_cert in phone.connection.local_fingerprints()
                assert daemon_cert in daemon.connection.local_fingerprints()
            finally:
                await phone.connection.aclose()


async def test_symmetric_nats_defeat_stun_alone(lab: netlab.Lab) -> None:
    """The lab's symmetric variant is real: without TURN, ICE fails (after ~13 s of checks), so
    the TURN test below shows a relay that was needed, not merely preferred."""
    lab.nat("nath", "symmetric")
    lab.nat("natp", "symmetric")
    try:
        with trio.fail_after(60):
            async with world(lab, [STUN]) as w:
                with pytest.raises(RtcError, match="failed before its channel opened"):
                    await w.dial()
    finally:
        lab.nat("nath", "cone")
        lab.nat("natp", "cone")


async def test_symmetric_nats_fall_back_to_turn_and_the_relay_sees_only_dtls(
    lab: netlab.Lab,
) -> None:
    lab.nat("nath", "symmetric")
    lab.nat("natp", "symmetric")
    turn = turn_server([netlab.TURN_URL], netlab.TURN_SECRET, "daemon", time.time())
    marker = b"PLAINTEXT-" + secrets.token_hex(8).encode()
    try:
        with trio.fail_after(40), lab.capture("turn") as pcap:
            async with world(lab, [STUN, turn]) as w:  # TURN on the daemon's side only
                daemon, phone = await connect(w)
                try:
                    await echo_once(daemon, phone, marker)
                    local, _remote = await selected_pair(w.home, daemon.connection)
                    assert local == "relay"
                finally:
                    await phone.connection.aclose()
    finally:
        lab.nat("nath", "cone")
        lab.nat("natp", "cone")
    packets = netlab.udp_payloads(pcap)
    lo, hi = netlab.RELAY_PORTS
    relayed = [
        payload
        for src, sport, dst, dport, payload in packets
        if (src == netlab.INET_IP and lo <= sport <= hi)
        or (dst == netlab.INET_IP and lo <= dport <= hi)
    ]
    assert relayed, "nothing went through the relay"
    dtls = [netlab.dtls_records(p) for p in relayed if not netlab.is_stun(p)]
    # what coturn forwarded: ICE checks (STUN) and DTLS records, nothing else
    assert all(types is not None for types in dtls)
    assert any(23 in types for types in dtls if types)  # application data (SCTP inside DTLS)
    assert not any(marker in payload for *_, payload in packets)  # never in the clear


async def ask_ice(w: World) -> list[IceServer]:
    box, daemon = w.phone_box(), bytes(w.daemon_key.verify_key)
    cid = new_cid()
    await w.phone_broker.publish(w.topics.to_daemon, box.seal(daemon, Hello(cid), time.time()))
    _, raw = await w.phone_broker.receive()
    ice = box.open(raw, time.time()).message
    assert isinstance(ice, IceConfig)
    assert ice.cid == cid
    return ice.servers


async def send_offer(w: World, sdp: str, signer: nacl.signing.SigningKey | None = None) -> str:
    """Publish a sealed offer of ``sdp`` whose fingerprints ``signer`` signed; returns its cid."""
    box, daemon = w.phone_box(), bytes(w.daemon_key.verify_key)
    cid = new_cid()
    fps, fp_sig = sign_fingerprints(signer or w.device_key, "device", cid, sdp)
    sealed = box.seal(daemon, Offer(cid, sdp, fps, fp_sig), time.time())
    await w.phone_broker.publish(w.topics.to_daemon, sealed)
    return cid


async def reply(w: World) -> Message:
    _, raw = await w.phone_broker.receive()
    return w.phone_box().open(raw, time.time()).message


async def test_an_offer_with_a_wrong_fingerprint_signature_is_refused(lab: netlab.Lab) -> None:
    with trio.fail_after(30):
        async with world(lab, [STUN]) as w:
            peer, sdp = await PeerConnection.offer(w.phone, await ask_ice(w))
            try:
                stranger = nacl.signing.SigningKey.generate()  # not the paired device key
                cid = await send_offer(w, sdp, signer=stranger)
                refused = await reply(w)
                assert isinstance(refused, Refused)
                assert (refused.cid, refused.code) == (cid, "fingerprint")
                assert (await w.refusals.receive()).code == "fingerprint"
                assert w.answerer.answered == 0
            finally:
                await peer.aclose()


async def test_a_signed_offer_aiortc_cannot_parse_is_refused_and_the_daemon_keeps_answering(
    lab: netlab.Lab,
) -> None:
    junk = "\r\n".join(  # aiortc raises KeyError on it, not ValueError
        [
            "v=0",
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:abcdefghijklmnopqrstuvwx",
            "a=fingerprint:sha-256 AA:BB",
            "a=setup:bogus",
            "",
        ]
    )
    with trio.fail_after(30):
        async with world(lab, [STUN]) as w:
            cid = await send_offer(w, junk)
            refused = await reply(w)
            assert isinstance(refused, Refused)
            assert (refused.cid, refused.code) == (cid, "rtc_failed")
            daemon, phone = await connect(w)
            try:
                await echo_once(daemon, phone, b"still answering")
            finally:
                await phone.connection.aclose()


async def test_a_device_gets_a_few_attempts_at_once_and_then_busy(lab: netlab.Lab) -> None:
    with trio.fail_after(30):
        async with world(lab, [STUN]) as w:
            servers = await ask_ice(w)
            peers = [await PeerConnection.offer(w.phone, servers) for _ in range(5)]
            try:
                for _peer, sdp in peers:  # offers whose answers the phone never applies
                    await send_offer(w, sdp)
                replies = [await reply(w) for _ in peers]
                assert sum(isinstance(r, Answer) for r in replies) == MAX_PENDING_PER_DEVICE
                assert [r.code for r in replies if isinstance(r, Refused)] == ["busy"]
            finally:
                for peer, _sdp in peers:
                    await peer.aclose()


async def test_a_replayed_offer_is_refused(lab: netlab.Lab) -> None:
    """Someone on the broker records the phone's sealed offer and publishes it again."""
    with trio.fail_after(30):
        async with (
            world(lab, [STUN]) as w,
            open_mqtt(netlab.MQTT_URL, lab.enter("inet")) as eavesdropper,
        ):
            await eavesdropper.subscribe(w.topics.to_daemon)
            daemon, phone = await connect(w)
            try:
                _, _hello = await eavesdropper.receive()
                _, sealed_offer = await eavesdropper.receive()
                await eavesdropper.publish(w.topics.to_daemon, sealed_offer)
                assert (await w.refusals.receive()).code == "replayed"
                assert w.answerer.answered == 1
                await echo_once(daemon, phone, b"the first link still works")
            finally:
                await phone.connection.aclose()


async def test_a_revoked_device_is_not_answered(lab: netlab.Lab) -> None:
    with trio.fail_after(30):
        async with world(lab, [STUN]) as w:
            w.revoked.add(bytes(w.device_key.verify_key))
            hello = w.phone_box().seal(
                bytes(w.daemon_key.verify_key), Hello(new_cid()), time.time()
            )
            await w.phone_broker.publish(w.topics.to_daemon, hello)
            assert (await w.refusals.receive()).code == "not_paired"
            assert w.answerer.answered == 0


async def test_the_broker_connection_disables_nagle(lab: netlab.Lab) -> None:
    """With Nagle on, each signaling hop waited ~40 ms for a delayed ACK (rtc/broker.py)."""
    with trio.fail_after(30):
        async with open_mqtt(netlab.MQTT_URL, lab.enter("phone")) as client:
            sock = client._client.socket()
            assert isinstance(sock, socket.socket)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


async def test_a_flood_on_the_rendezvous_is_dropped_past_the_inbox_not_queued(
    lab: netlab.Lab,
) -> None:
    flood = INBOX_SIZE + 50
    with trio.fail_after(30):
        async with (
            open_mqtt(netlab.MQTT_URL, lab.enter("home")) as daemon,
            open_mqtt(netlab.MQTT_URL, lab.enter("inet")) as stranger,
        ):
            await daemon.subscribe("flood/x")
            for i in range(flood):
                await stranger.publish("flood/x", str(i).encode())
            while daemon.dropped < flood - INBOX_SIZE:  # delivery is asynchronous: wait for it
                await trio.sleep(0.01)
            kept = [int((await daemon.receive())[1]) for _ in range(INBOX_SIZE)]
            assert kept == list(range(INBOX_SIZE))  # the oldest are kept, in order
            assert daemon.dropped == flood - INBOX_SIZE


# -- the whole daemon in ``home``, serving the protocol over the link -----------------------


def lab_daemon(
    lab: netlab.Lab,
    make_config: Callable[..., DaemonConfig],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    turn: bool = False,
    rendezvous: str = netlab.MQTT_URL,
) -> DaemonConfig:
    """A daemon whose WebRTC task (its aiortc and MQTT threads) lives in ``home``; its HTTPS
    listener stays on the test's loopback, where the phone pairs."""
    monkeypatch.setattr(
        service_module,
        "RtcService",
        partial(service_module.RtcService, thread_setup=lab.enter("home")),
    )
    secret_file = None
    if turn:
        secret_file = tmp_path / "turn-secret"
        secret_file.write_bytes(netlab.TURN_SECRET)
        secret_file.chmod(0o600)
    rtc = RtcSettings(
        rendezvous=rendezvous,
        stun=(netlab.STUN_URL,),
        turn=(netlab.TURN_URL,) if turn else (),
        turn_secret_file=secret_file,
        ping_interval=1.0,
        ping_misses=30,
    )
    return make_config(https=True, rtc=rtc)


async def test_a_phone_behind_a_nat_drives_a_session_on_a_daemon_behind_another_and_resumes(
    lab: netlab.Lab,
    make_config: Callable[..., DaemonConfig],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    work_dir: Path,
) -> None:
    lab.nat("nath", "cone")
    lab.nat("natp", "cone")
    config = lab_daemon(lab, make_config, monkeypatch, tmp_path)
    async with running_daemon(config) as owner:
        service = owner.handle.rtc
        with trio.fail_after(90):
            async with phone_of(owner, netlab.MQTT_URL, setup=lab.enter("phone")) as phone:
                await until(lambda: service.subscribed() == [phone.device_id])
                async with trio.open_nursery() as nursery:
                    session, carrier = await phone.connect(nursery)
                    local, remote = await selected_pair(phone.aio, carrier.link.connection)
                    assert "relay" not in (local, remote)  # punched through both NATs
                    prompt = "[[bash:echo hi > hi.txt]]"
                    session_id, stream = await approved_turn(session, work_dir, prompt)
                    assert (work_dir / "hi.txt").read_text() == "hi\n"
                    text = {"text": "[[slow:30]]"}
                    await session.request("POST", f"/v1/sessions/{session_id}/messages", text)
                    await next_event(stream, "text.delta")
                    await next_event(stream, "text.delta")
                    last = stream.last_id
                    assert last is not None
                    await carrier.aclose()  # the link drops mid-turn
                    nursery.cancel_scope.cancel()
                await until(lambda: service.links() == 0)
                resumed: list[dict[str, Any]] = []
                async with trio.open_nursery() as nursery:
                    session, carrier = await phone.connect(nursery)
                    stream = await session.subscribe(f"/v1/sessions/{session_id}/events", last)
                    while True:
                        resumed.append(await stream.next())
                        if resumed[-1].get("data", {}).get("event", {}).get("type") == (
                            "turn.completed"
                        ):
                            break
                    await carrier.aclose()
                    nursery.cancel_scope.cancel()
    assert resumed[0]["type"] == "event", "an exact resume replays events, not a snapshot"
    cursors = [cursor(m) for m in resumed]
    assert cursors[0] == cursor({"id": last}) + 1
    assert cursors == list(range(cursors[0], cursors[0] + len(cursors)))  # no gap, no duplicate


async def test_through_symmetric_nats_the_link_is_served_over_turn(
    lab: netlab.Lab,
    make_config: Callable[..., DaemonConfig],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    work_dir: Path,
) -> None:
    lab.nat("nath", "symmetric")
    lab.nat("natp", "symmetric")
    config = lab_daemon(lab, make_config, monkeypatch, tmp_path, turn=True)
    try:
        async with running_daemon(config) as owner:
            created = await owner.create(work_dir, "hello")
            session_id = created["session"]["id"]
            with trio.fail_after(90), lab.capture("turn") as pcap:
                async with phone_of(owner, netlab.MQTT_URL, setup=lab.enter("phone")) as phone:
                    await until(lambda: owner.handle.rtc.subscribed() == [phone.device_id])
                    async with trio.open_nursery() as nursery:
                        session, carrier = await phone.connect(nursery)
                        local, remote = await selected_pair(phone.aio, carrier.link.connection)
                        assert "relay" in (local, remote)
                        stream = await session.subscribe(f"/v1/sessions/{session_id}/events")
                        snapshot = await stream.next()
                        assert snapshot["type"] == "snapshot"
                        listed = await session.request("GET", "/v1/sessions")
                        assert [s["id"] for s in listed["sessions"]] == [session_id]
                        await carrier.aclose()
                        nursery.cancel_scope.cancel()
    finally:
        lab.nat("nath", "cone")
        lab.nat("natp", "cone")
    packets = netlab.udp_payloads(pcap)
    assert not any(session_id.encode() in payload for *_, payload in packets)  # never in clear


async def test_a_phone_knowing_only_the_payload_pairs_through_the_broker_and_drives_a_session(
    lab: netlab.Lab,
    make_config: Callable[..., DaemonConfig],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    work_dir: Path,
) -> None:
    """The issue's "done": no request from the phone ever reaches the daemon's addresses (the
    phone's namespace has no route to them); pairing and the session both go through the broker
    and the punched DataChannel."""
    lab.nat("nath", "cone")
    lab.nat("natp", "cone")
    config = lab_daemon(lab, make_config, monkeypatch, tmp_path)
    async with running_daemon(config) as owner:
        service = owner.handle.rtc
        with trio.fail_after(90):
            await service.ready.wait()
            offer = (await owner.http.post("/v1/pairings", json={"scope": "chat"})).json()
            payload = offer["payload"]  # all the phone knows: what the QR code shows
            await until(lambda: service.pairing() == [payload["sid"]])
            started = time.monotonic()
            credentials = await pc.pair_over_rendezvous(payload, "phone", lab.enter("phone"))
            paired_in = time.monotonic() - started
            phone = Phone(credentials)
            setup = lab.enter("phone")
            secret = unb64(credentials["rendezvous"]["secret"])
            async with (
                open_asyncio_thread(setup) as aio,
                open_mqtt(netlab.MQTT_URL, setup) as phone_broker,
            ):
                await phone_broker.subscribe(topics(secret).to_device)
                async with trio.open_nursery() as nursery:
                    started = time.monotonic()
                    session, carrier = await Dialer(phone, aio, phone_broker).connect(nursery)
                    linked_in = time.monotonic() - started
                    local, remote = await selected_pair(aio, carrier.link.connection)
                    assert "relay" not in (local, remote)
                    await approved_turn(session, work_dir, "[[bash:echo far > far.txt]]")
                    await carrier.aclose()
                    nursery.cancel_scope.cancel()
    assert (work_dir / "far.txt").read_text() == "far\n"
    assert credentials["scope"] == "chat"
    print(
        f"paired through the broker in {paired_in * 1000:.0f} ms; link in {linked_in * 1000:.0f} ms"
    )


async def test_a_phone_behind_a_nat_revoked_mid_link_is_cut_and_not_answered_again(
    lab: netlab.Lab,
    make_config: Callable[..., DaemonConfig],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    work_dir: Path,
) -> None:
    """Revocation while the phone's link is open, through two NATs: the link is closed at once,
    the device's topic dropped, and its next dial goes unanswered (nothing of it reaches the
    daemon), while another paired phone in the same network still gets its link."""
    lab.nat("nath", "cone")
    lab.nat("natp", "cone")
    config = lab_daemon(lab, make_config, monkeypatch, tmp_path)
    async with running_daemon(config) as owner:
        service = owner.handle.rtc
        created = await owner.create(work_dir, "hello")
        session_id = created["session"]["id"]
        with trio.fail_after(90):
            async with (
                phone_of(owner, netlab.MQTT_URL, setup=lab.enter("phone")) as phone,
                phone_of(owner, netlab.MQTT_URL, setup=lab.enter("phone")) as other,
            ):
                both = sorted([phone.device_id, other.device_id])
                await until(lambda: service.subscribed() == both)
                async with trio.open_nursery() as nursery:
                    session, carrier = await phone.connect(nursery)
                    local, remote = await selected_pair(phone.aio, carrier.link.connection)
                    assert "relay" not in (local, remote)  # a punched link, through both NATs
                    await revoked_while_following(
                        owner, phone.device_id, session, carrier, session_id
                    )
                    await carrier.aclose()
                    nursery.cancel_scope.cancel()
                await until(lambda: service.subscribed() == [other.device_id])
                # the revoked phone dials again: its hello reaches the broker, not the daemon
                refused = service.refused
                the_topics = topics(unb64(phone.phone.credentials["rendezvous"]["secret"]))
                hello = phone.phone.box().seal(
                    phone.phone.daemon_key, Hello(new_cid()), time.time()
                )
                await phone.broker.publish(the_topics.to_daemon, hello)
                # a later dial by the other phone is answered: the daemon has read past where
                # the revoked phone's hello would have been (one broker connection, in order)
                async with trio.open_nursery() as nursery:
                    session, carrier = await other.connect(nursery)
                    assert (await session.request("GET", "/v1/sessions"))["sessions"]
                    await carrier.aclose()
                    nursery.cancel_scope.cancel()
                assert service.refused == refused  # not even refused: it never arrived
                assert phone.broker._inbox_rx.statistics().current_buffer_used == 0  # no reply


async def test_the_example_programs_in_the_phone_namespace_pair_and_drive_a_session(
    lab: netlab.Lab,
    make_config: Callable[..., DaemonConfig],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    work_dir: Path,
) -> None:
    """The issue's phone, as a user runs it: ``examples/pair_client.py`` and
    ``examples/rtc_client.py``, processes in the phone's namespace behind its NAT (no route to
    the daemon's addresses), given only the pairing payload: they pair through the broker, start
    a session, follow it approving its tool, and the tool runs on the computer behind the other
    NAT."""
    lab.nat("nath", "cone")
    lab.nat("natp", "cone")
    config = lab_daemon(lab, make_config, monkeypatch, tmp_path)
    store = tmp_path / "phone.json"

    async def phone(*argv: str) -> trio.Process:
        return await trio.lowlevel.open_process(
            ["ip", "netns", "exec", lab.ns["phone"], sys.executable, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    async def finish(proc: trio.Process) -> str:
        assert proc.stdout is not None
        output = b""
        while chunk := await proc.stdout.receive_some(4096):
            output += chunk
        assert await proc.wait() == 0, output.decode(errors="replace")
        return output.decode()

    async with running_daemon(config) as owner:
        service = owner.handle.rtc
        with trio.fail_after(120):
            await service.ready.wait()
            offer = (await owner.http.post("/v1/pairings", json={"scope": "chat"})).json()
            payload = json.dumps(offer["payload"])  # what the QR code shows, nothing more
            await until(lambda: service.pairing() == [offer["payload"]["sid"]])
            pairing = await phone(
                str(EXAMPLES / "pair_client.py"),
                "--store",
                str(store),
                "pair",
                payload,
                "--name",
                "lab phone",
                "--via",
                "auto",
            )
            assert "paired" in await finish(pairing)
            await until(lambda: len(service.subscribed()) == 1)
            devices = (await owner.http.get("/v1/devices")).json()["devices"]
            [paired_as] = [d["id"] for d in devices if d["name"] == "lab phone"]
            example = [str(EXAMPLES / "rtc_client.py"), "--store", str(store)]
            created = await finish(
                await phone(*example, "new", str(work_dir), "[[bash:echo lab > lab.txt]]")
            )
            session_id = created.strip().splitlines()[-1]
            epoch = (await owner.http.get(f"/v1/sessions/{session_id}")).json()["epoch"]
            follow = await phone(
                *example, "follow", session_id, "--approve", "allow", f"--since={epoch}:0"
            )
            output = await output_until_turn_completed(follow)
    assert b"[permission.requested]" in output
    assert (work_dir / "lab.txt").read_text() == "lab\n"  # approved from behind the phone's NAT
    assert json.loads(store.read_text())["device"]["id"] == paired_as
