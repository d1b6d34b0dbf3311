"""A paired daemon and phone in the network lab (tests/netlab.py), for the WebRTC tests and the
WebRTC bench: the daemon (an :class:`~sidecode_trio.rtc.rendezvous.Answerer`) in ``home``, the
phone in ``phone``, each with its own aiortc thread and MQTT connection moved into its namespace.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import nacl.signing
import trio
from cryptography.hazmat.primitives import hashes

from sidecode_trio.rtc.broker import MqttRendezvous, open_mqtt
from sidecode_trio.rtc.ice import IceServer
from sidecode_trio.rtc.peer import AsyncioThread, PeerConnection, open_asyncio_thread
from sidecode_trio.rtc.rendezvous import Answerer, Link, dial
from sidecode_trio.rtc.signaling import (
    SignalingBox,
    SignalingRefused,
    Topics,
    rendezvous_secret,
    topics,
)

import netlab

STUN = IceServer([netlab.STUN_URL])


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
    topics: Topics
    revoked: set[bytes]  #: device keys the daemon no longer accepts

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


@asynccontextmanager
async def world(lab: netlab.Lab, daemon_ice: list[IceServer]) -> AsyncIterator[World]:
    daemon_key, device_key = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    device = bytes(device_key.verify_key)
    the_topics = topics(rendezvous_secret(b"s" * 32, b"transcript"))
    revoked: set[bytes] = set()
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
            SignalingBox(daemon_key, lambda key: key == device and key not in revoked),
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
                the_topics,
                revoked,
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


async def peer_certificate(aio: AsyncioThread, peer: PeerConnection) -> str:
    """``sha-256 AB:CD:...`` of the certificate the remote side presented in the DTLS handshake.
    Lab-only (aiortc's private ``_ssl``): a cross-check that DTLS used the signed fingerprint."""

    async def read() -> str:
        ssl = peer.pc.sctp.transport._ssl  # type: ignore[union-attr]
        assert ssl is not None
        certificate = ssl.get_peer_certificate(as_cryptography=True)
        assert certificate is not None
        digest = certificate.fingerprint(hashes.SHA256())
        return "sha-256 " + ":".join(f"{b:02X}" for b in digest)

    return await aio.run(read)
