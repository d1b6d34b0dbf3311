"""Pairing over the rendezvous (issue 17), against the whole daemon and a real mosquitto on
loopback: a device that knows only the pairing payload pairs through the broker, without any
request to the daemon's addresses; the daemon listens on an offer's pairing topic only while the
offer is open; a wrong proof gets a sealed refusal, a replayed request and a second use get
nothing (rtc/pairing.py says why). The same from a NAT-ed namespace: test_rtc_lab.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import nacl.public
import trio
from test_rtc_daemon import broker, until

from sidecode_trio.config import DaemonConfig
from sidecode_trio.rtc.broker import MqttRendezvous, open_mqtt
from sidecode_trio.rtc.pairing import open_reply, pairing_topics, seal_request
from sidecode_trio.rtc.settings import RtcSettings
from sidecode_trio.security.devices import Scope
from sidecode_trio.security.identity import b64, unb64

from helpers import Client, load_example, running_daemon

__all__ = ["broker"]  # the fixture, imported
pc = load_example("pair_client")


def rtc_config(make_config: Callable[..., DaemonConfig], broker_url: str) -> DaemonConfig:
    rtc = RtcSettings(rendezvous=broker_url, stun=(), ping_interval=1.0, ping_misses=30)
    return make_config(https=True, rtc=rtc)


async def offer(owner: Client, scope: str = "chat") -> dict[str, Any]:
    service = owner.handle.rtc
    await service.ready.wait()
    payload: dict[str, Any] = (await owner.http.post("/v1/pairings", json={"scope": scope})).json()[
        "payload"
    ]
    await until(lambda: payload["sid"] in service.pairing())
    return payload


async def test_a_device_with_only_the_payload_pairs_through_the_broker(
    make_config: Callable[..., DaemonConfig], broker: str
) -> None:
    async with running_daemon(rtc_config(make_config, broker)) as owner:
        service = owner.handle.rtc
        with trio.fail_after(30):
            payload = await offer(owner)
            assert payload["rv"] == broker
            unreachable = {**payload, "http": ["https://192.0.2.1:9"]}  # TEST-NET: nothing there
            credentials = await pc.pair_over_rendezvous(unreachable, "phone")
        device_id = credentials["device"]["id"]
        assert credentials["scope"] == "chat"
        assert service.paired == 1
        # subscribed before the reply was sent: the device can dial at once
        assert service.subscribed() == [device_id]
        assert service.pairing() == []  # the offer is used: its topic is dropped
        devices = (await owner.http.get("/v1/devices")).json()["devices"]
        assert [d["id"] for d in devices] == [device_id]
        audit = (await owner.http.get("/v1/audit")).json()
        assert any(e["kind"] == "paired" for e in audit["entries"]), audit


async def ask(
    client: MqttRendezvous, payload: dict[str, Any], request: dict[str, Any]
) -> tuple[bytes, str, nacl.public.PrivateKey]:
    """Publish ``request`` sealed on the offer's topic; returns the envelope, nonce and key."""
    box_key = nacl.public.PrivateKey.generate()
    envelope, nonce = seal_request(unb64(payload["pk"]), box_key, request, time.time())
    await client.publish(pairing_topics(unb64(payload["secret"])).to_daemon, envelope)
    return envelope, nonce, box_key


async def answer(
    client: MqttRendezvous, payload: dict[str, Any], nonce: str, box_key: nacl.public.PrivateKey
) -> tuple[int, Any]:
    """The next reply on the offer's reply topic, which must answer ``nonce``."""
    _topic, raw = await client.receive()
    return open_reply(unb64(payload["pk"]), box_key, raw, nonce, time.time())


async def test_a_wrong_proof_is_refused_sealed_a_replay_and_a_second_use_get_nothing(
    make_config: Callable[..., DaemonConfig], broker: str
) -> None:
    async with running_daemon(rtc_config(make_config, broker)) as owner:
        service = owner.handle.rtc
        with trio.fail_after(30):
            payload = await offer(owner)
            async with open_mqtt(broker) as device:
                await device.subscribe(pairing_topics(unb64(payload["secret"])).to_device)
                # whoever sees the topic (the broker) but not the secret: a proof that fails
                wrong = {**payload, "secret": b64(b"w" * 32)}
                body, _, _ = pc.pair_request(wrong, "intruder")
                envelope, nonce, box_key = await ask(device, payload, body)
                status, reply = await answer(device, payload, nonce, box_key)
                assert (status, reply["error"]["code"]) == (403, "pairing_refused")
                assert service.pairing() == [payload["sid"]]  # one failure: the offer lives
                # the same envelope again: dropped unanswered (its sealer has its answer)
                await device.publish(pairing_topics(unb64(payload["secret"])).to_daemon, envelope)
                await until(lambda: service.refusals["replayed"] == 1)
                # the real device: the next reply on the topic is its own (none for the replay)
                body, _, _ = pc.pair_request(payload, "phone")
                _, nonce, box_key = await ask(device, payload, body)
                status, reply = await answer(device, payload, nonce, box_key)
                assert status == 201 and reply["device"]["name"] == "phone"
                assert service.pairing() == []
                # a second use: the daemon no longer listens there, so nothing reaches it
                refused = sum(service.refusals.values())
                second, _, _ = pc.pair_request(payload, "second")
                await ask(device, payload, second)
            # proof that it was dropped: a fresh offer pairs, and nothing else was seen
            again = await offer(owner)
            credentials = await pc.pair_over_rendezvous(again, "third")
            assert sum(service.refusals.values()) == refused
        names = sorted(d["name"] for d in (await owner.http.get("/v1/devices")).json()["devices"])
        assert names == ["phone", "third"]
        assert credentials["device"]["id"] in service.subscribed()
        audit = (await owner.http.get("/v1/audit")).json()["entries"]
        assert any(e["kind"] == "pair_failed" and "rendezvous" in e["detail"] for e in audit)


async def test_an_offer_topic_is_dropped_when_the_offer_expires(
    make_config: Callable[..., DaemonConfig], broker: str
) -> None:
    async with running_daemon(rtc_config(make_config, broker)) as owner:
        service = owner.handle.rtc
        with trio.fail_after(30):
            await service.ready.wait()
            # the API's minimum is 10 s; 0.5 s could pass before a loaded machine's sync loop
            # ran, and the topic was then never listened to: 3 s is a deadline it meets
            short = service._pairings.offer(Scope.CHAT, ttl=3.0)
            await until(lambda: service.pairing() == [short.secret_id])
            await until(lambda: service.pairing() == [])  # expired: no longer listened to
            info = (await owner.http.get("/v1/info")).json()
            late = {"pk": info["public_key"], "secret": b64(short.secret)}
            async with open_mqtt(broker) as device:
                body, _, _ = pc.pair_request({**late, "sid": short.secret_id}, "late")
                await ask(device, late, body)
            # it reached nobody: a fresh offer pairs, and the daemon saw nothing else
            credentials = await pc.pair_over_rendezvous(await offer(owner), "on time")
        assert sum(service.refusals.values()) == 0 and service.paired == 1
        assert credentials["device"]["id"] in service.subscribed()


async def test_an_offer_used_over_https_stops_being_listened_for(
    make_config: Callable[..., DaemonConfig], broker: str
) -> None:
    async with running_daemon(rtc_config(make_config, broker)) as owner:
        service = owner.handle.rtc
        with trio.fail_after(30):
            payload = await offer(owner)
            await trio.to_thread.run_sync(pc.pair, payload, "phone")
            await until(lambda: service.pairing() == [])


async def test_failures_through_the_broker_are_rate_limited_as_one_client_address(
    make_config: Callable[..., DaemonConfig], broker: str
) -> None:
    """Three wrong proofs withdraw an offer (its topic goes); five failures a minute through the
    broker, whatever the offer, give a sealed 429; HTTP clients keep their own buckets."""
    async with running_daemon(rtc_config(make_config, broker)) as owner:
        service = owner.handle.rtc
        statuses: list[int] = []
        with trio.fail_after(30):
            first, second = await offer(owner), await offer(owner)
            async with open_mqtt(broker) as device:
                for payload, tries in ((first, 3), (second, 3)):
                    await device.subscribe(pairing_topics(unb64(payload["secret"])).to_device)
                    for _ in range(tries):
                        wrong, _, _ = pc.pair_request({**payload, "secret": b64(b"w" * 32)}, "x")
                        _, nonce, box_key = await ask(device, payload, wrong)
                        status, reply = await answer(device, payload, nonce, box_key)
                        statuses.append(status)
                    if payload is first:
                        await until(lambda: service.pairing() == [second["sid"]])  # withdrawn
            assert reply["error"]["code"] == "rate_limited"
            credentials = await trio.to_thread.run_sync(pc.pair, second, "over https")
        assert statuses == [403] * 5 + [429]
        assert credentials["scope"] == "chat"


async def test_junk_on_a_pairing_topic_is_refused_and_the_daemon_keeps_answering(
    make_config: Callable[..., DaemonConfig], broker: str
) -> None:
    """Whoever sees the topic names (the broker, a public broker's ``#`` subscriber) can publish
    on an offer's topic: JSON nested past the recursion limit is dropped as malformed, and the
    WebRTC task (and the daemon) carry on: the device then pairs through the same offer."""
    async with running_daemon(rtc_config(make_config, broker)) as owner:
        service = owner.handle.rtc
        with trio.fail_after(30):
            payload = await offer(owner)
            async with open_mqtt(broker) as stranger:
                topic = pairing_topics(unb64(payload["secret"])).to_daemon
                await stranger.publish(topic, b"[" * 5000)
                await until(lambda: service.refusals["malformed"] == 1)
            credentials = await pc.pair_over_rendezvous(payload, "phone")
        assert credentials["device"]["id"] in service.subscribed()
        assert service.error is None
