"""WebRTC through two NATs, in a network lab the test builds (tests/netlab.py).

A "daemon" (the Answerer) in the ``home`` namespace and a "phone" (dial) in the ``phone``
namespace, both Python in this process (each on threads moved into its namespace), exchange
sealed signaling over the real mosquitto in ``inet`` and connect a DataChannel through the two
NATs: with STUN (coturn) through cone NATs, over TURN (coturn, REST credentials) through
symmetric ones. A tampered offer and a replayed one are refused. Needs root and the Debian
packages mosquitto, coturn, iptables, conntrack, tcpdump; skips otherwise.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import nacl.signing
import netlab
import pytest
import trio

pytest.importorskip("aiortc")
pytest.importorskip("paho.mqtt")
if netlab.missing() is not None:
    pytest.skip(netlab.missing() or "", allow_module_level=True)

from sidecode_trio.rtc.broker import MqttRendezvous, open_mqtt
from sidecode_trio.rtc.ice import IceServer, turn_server
from sidecode_trio.rtc.peer import AsyncioThread, PeerConnection, open_asyncio_thread
from sidecode_trio.rtc.rendezvous import Answerer, Link, dial
from sidecode_trio.rtc.signaling import (
    Hello,
    IceConfig,
    Offer,
    Refused,
    SignalingBox,
    SignalingRefused,
    new_cid,
    rendezvous_secret,
    sign_fingerprints,
    topics,
)

STUN = IceServer([netlab.STUN_URL])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with netlab.open_lab(tmp_path_factory.mktemp("netlab")) as lab:
        yield lab


@attrs.define
class World:
    """A paired daemon and phone, each with its asyncio thread and broker connection."""

    daemon_key: nacl.signing.SigningKey
    device_key: nacl.signing.SigningKey
    home: AsyncioThread
    phone: AsyncioThread
    daemon_broker: MqttRendezvous
    phone_broker: MqttRendezvous
    answerer: Answerer
    links: trio.MemoryReceiveChannel[Link]
    refusals: trio.MemoryReceiveChannel[SignalingRefused]

    def phone_box(self) -> SignalingBox:
        daemon = bytes(self.daemon_key.verify_key)
        return SignalingBox(self.device_key, lambda key: key == daemon)

    async def dial(self) -> Link:
        return await dial(
            self.phone,
            self.phone_broker,
            self.phone_box(),
            self.device_key,
            bytes(self.daemon_key.verify_key),
            self.topics,
        )

    @property
    def topics(self) -> Any:
        return topics(rendezvous_secret(b"s" * 32, b"transcript"))


@asynccontextmanager
async def world(lab: netlab.Lab, daemon_ice: list[IceServer]) -> AsyncIterator[World]:
    daemon_key, device_key = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    device = bytes(device_key.verify_key)
    the_topics = topics(rendezvous_secret(b"s" * 32, b"transcript"))
    links_tx, links_rx = trio.open_memory_channel[Link](10)
    refused_tx, refused_rx = trio.open_memory_channel[SignalingRefused](10)
    done = trio.Event()

    async def on_link(link: Link) -> None:
        await links_tx.send(link)
        await done.wait()  # the link lives as long as the test

    async with (
        open_asyncio_thread(lab.enter("home")) as home,
        open_asyncio_thread(lab.enter("phone")) as phone,
        open_mqtt(netlab.MQTT_URL, lab.enter("home")) as daemon_broker,
        open_mqtt(netlab.MQTT_URL, lab.enter("phone")) as phone_broker,
    ):
        await daemon_broker.subscribe(the_topics.to_daemon)
        await phone_broker.subscribe(the_topics.to_device)
        answerer = Answerer(
            home,
            daemon_broker,
            SignalingBox(daemon_key, lambda key: key == device),
            daemon_key,
            lambda key: the_topics if key == device else None,
            daemon_ice,
            lambda _key, _now: [STUN],
            on_refused=refused_tx.send_nowait,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(answerer.serve, on_link)
            yield World(
                daemon_key,
                device_key,
                home,
                phone,
                daemon_broker,
                phone_broker,
                answerer,
                links_rx,
                refused_rx,
            )
            done.set()
            nursery.cancel_scope.cancel()


async def selected_pair(aio: AsyncioThread, peer: PeerConnection) -> tuple[str, str]:
    """(local, remote) candidate types of the nominated pair. Lab-only: aiortc has no public API
    for it, so this reads aioice's connection through private attributes."""

    async def read() -> tuple[str, str]:
        ice = peer.pc.sctp.transport.transport._connection  # type: ignore[union-attr]
        pair = ice._nominated[1]
        return pair.local_candidate.type, pair.remote_candidate.type

    return await aio.run(read)


async def echo_once(daemon: Link, phone: Link, message: bytes) -> None:
    await phone.channel.send(message)
    assert await daemon.channel.receive() == message
    await daemon.channel.send(message[::-1])
    assert await phone.channel.receive() == message[::-1]


async def connect(w: World) -> tuple[Link, Link]:
    phone = await w.dial()
    daemon = await w.links.receive()
    return daemon, phone


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
            finally:
                await phone.connection.aclose()


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


async def test_an_offer_with_a_wrong_fingerprint_signature_is_refused(lab: netlab.Lab) -> None:
    with trio.fail_after(30):
        async with world(lab, [STUN]) as w:
            box, daemon = w.phone_box(), bytes(w.daemon_key.verify_key)
            cid = new_cid()
            await w.phone_broker.publish(
                w.topics.to_daemon, box.seal(daemon, Hello(cid), time.time())
            )
            _, raw = await w.phone_broker.receive()
            ice = box.open(raw, time.time()).message
            assert isinstance(ice, IceConfig)
            peer, sdp = await PeerConnection.offer(w.phone, ice.servers)
            try:
                stranger = nacl.signing.SigningKey.generate()  # not the paired device key
                fps, fp_sig = sign_fingerprints(stranger, "device", cid, sdp)
                offer = Offer(cid, sdp, fps, fp_sig)
                await w.phone_broker.publish(
                    w.topics.to_daemon, box.seal(daemon, offer, time.time())
                )
                _, raw = await w.phone_broker.receive()
                reply = box.open(raw, time.time()).message
                assert isinstance(reply, Refused)
                assert reply.code == "fingerprint"
                assert (await w.refusals.receive()).code == "fingerprint"
                assert w.answerer.answered == 0
            finally:
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
