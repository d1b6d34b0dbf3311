"""Pairing gives both sides the same rendezvous secret (issue 17): the daemon keeps it per device
in its 0600 store, forgets it on revoke; the payload names the broker ("rv") only when one is on.
No aiortc or broker needed: this is the pairing side of the WebRTC path."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.public
import nacl.signing
import pytest
import trio

from sidecode_trio.config import DaemonConfig
from sidecode_trio.errors import StoreError
from sidecode_trio.rtc.pairing import (
    MAX_REQUEST,
    PairingDesk,
    open_reply,
    pairing_topics,
    seal_request,
)
from sidecode_trio.rtc.signaling import SignalingBox, SignalingRefused, topics
from sidecode_trio.security.devices import DeviceStore, Scope
from sidecode_trio.security.identity import b64, unb64
from sidecode_trio.security.pairing import (
    PairingProof,
    Pairings,
    payload,
    prove,
    rendezvous_secret,
    transcript,
)

from helpers import load_example, running_daemon

pc = load_example("pair_client")


async def test_the_example_client_and_the_daemon_compute_the_same_rendezvous_secret(
    make_config: Callable[..., DaemonConfig],
) -> None:
    config = make_config(https=True)
    async with running_daemon(config) as owner:
        offer = (await owner.http.post("/v1/pairings", json={"scope": "chat"})).json()
        assert "rv" not in offer["payload"]  # no rendezvous configured: nothing added
        credentials = await trio.to_thread.run_sync(pc.pair, offer["payload"], "phone")
        device_id = credentials["device"]["id"]
        assert credentials["rendezvous"]["url"] is None
        mine = unb64(credentials["rendezvous"]["secret"])
        path = config.state_dir / "devices.sqlite3"
        store = DeviceStore(path)
        try:
            assert store.rendezvous(device_id) == mine
            assert [(d.id, s) for d, s in store.with_rendezvous()] == [(device_id, mine)]
        finally:
            store.close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        # not in any reply: the device listing carries no secret
        listing = (await owner.http.get("/v1/devices")).text
        assert credentials["rendezvous"]["secret"] not in listing

        response = await owner.http.delete(f"/v1/devices/{device_id}")
        assert response.status_code in (200, 204), response.text
        store = DeviceStore(path)
        try:
            assert store.rendezvous(device_id) is None
            assert store.with_rendezvous() == []
            (count,) = store._db.execute("SELECT COUNT(*) FROM rendezvous").fetchone()
            assert count == 0  # forgotten on disk too, not only hidden
        finally:
            store.close()


def _proof(daemon: bytes, secret_id: str, secret: bytes) -> tuple[PairingProof, bytes]:
    key = nacl.signing.SigningKey.generate()
    device = bytes(key.verify_key)
    message = transcript(daemon, device, "dev", secret_id)
    proof = PairingProof(
        secret_id, b64(device), "dev", b64(prove(secret, message)), b64(key.sign(message).signature)
    )
    return proof, message


def test_redeem_returns_the_secret_the_device_computes_and_rv_rides_only_when_on() -> None:
    daemon = nacl.signing.SigningKey.generate()
    daemon_pk = bytes(daemon.verify_key)
    pairings = Pairings(daemon_pk, lambda: 1000.0)
    plain = pairings.offer(Scope.CHAT, ttl=300)
    assert "rv" not in payload(plain, daemon_pk, "fp", [], "")
    pairings.rendezvous_url = "wss://broker.example:8884/mqtt"
    offer = pairings.offer(Scope.CHAT, ttl=300)
    assert payload(offer, daemon_pk, "fp", [], "")["rv"] == "wss://broker.example:8884/mqtt"
    proof, message = _proof(daemon_pk, offer.secret_id, offer.secret)
    redeemed = pairings.redeem(proof, "a")
    assert redeemed.scope is Scope.CHAT
    assert redeemed.rendezvous == rendezvous_secret(offer.secret, message)
    assert str(redeemed.rendezvous) not in repr(redeemed)  # never in a log line
    # two devices never share topics
    other = pairings.offer(Scope.CHAT, ttl=300)
    second, _ = _proof(daemon_pk, other.secret_id, other.secret)
    assert topics(pairings.redeem(second, "b").rendezvous) != topics(redeemed.rendezvous)


def test_the_secret_survives_a_restart_and_a_repairing_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "devices.sqlite3"
    store = DeviceStore(path)
    device = store.add("phone", b64(b"k" * 32), "fp", Scope.CHAT, b"1" * 32)
    again = store.add("phone", b64(b"k" * 32), "fp", Scope.CHAT, b"2" * 32)
    assert again.id == device.id and store.rendezvous(device.id) == b"2" * 32
    store.close()
    store = DeviceStore(path)
    assert store.rendezvous(device.id) == b"2" * 32
    store.revoke(device.id)
    anew = store.add("phone", b64(b"k" * 32), "fp", Scope.CHAT, b"3" * 32)
    assert store.rendezvous(anew.id) == b"3" * 32 and store.rendezvous(device.id) is None
    store.close()


def test_a_pairing_again_that_the_store_cannot_write_changes_nothing(tmp_path: Path) -> None:
    """Name, scope, box key and rendezvous secret are replaced together or not at all: a write
    failing half-way (here the secret's) leaves the old pairing whole, in memory and on disk."""
    path = tmp_path / "devices.sqlite3"
    store = DeviceStore(path)
    key = b64(b"k" * 32)
    device = store.add("watch", key, "fp", Scope.APPROVE, b"1" * 32)
    store._db.execute(  # the secret's write fails, after the record's
        "CREATE TEMP TRIGGER full BEFORE INSERT ON rendezvous "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    with pytest.raises(StoreError):
        store.add("phone", key, "fp", Scope.ADMIN, b"2" * 32, b64(b"b" * 32))
    for seen in (store, DeviceStore(path)):
        kept = seen.get(device.id)
        assert (kept.name, kept.scope, kept.box_public_key) == ("watch", Scope.APPROVE, None)
        assert seen.rendezvous(device.id) == b"1" * 32
        seen.close()


# -- pairing over the rendezvous: the sealed request and reply (rtc/pairing.py) ---------------


def _sealed(
    daemon: nacl.signing.SigningKey, request: dict[str, Any], now: float = 1000.0
) -> tuple[bytes, str, nacl.public.PrivateKey]:
    box_key = nacl.public.PrivateKey.generate()
    envelope, nonce = seal_request(bytes(daemon.verify_key), box_key, request, now)
    return envelope, nonce, box_key


def test_a_sealed_pair_request_opens_once_and_its_reply_is_for_that_device_only() -> None:
    daemon = nacl.signing.SigningKey.generate()
    daemon_pk = bytes(daemon.verify_key)
    desk = PairingDesk(daemon)
    request = {
        "secret_id": "s1",
        "device_public_key": "k",
        "name": "n",
        "mac": "m",
        "signature": "x",
    }
    envelope, nonce, box_key = _sealed(daemon, request)
    assert b'"s1"' not in envelope  # the broker sees none of the request
    opened = desk.open(envelope, 1000.0, "s1")
    assert opened.request == request and opened.reply_key == bytes(box_key.public_key)
    with pytest.raises(SignalingRefused) as replayed:
        desk.open(envelope, 1001.0, "s1")
    assert replayed.value.code == "replayed"

    reply = desk.seal_reply(opened, 201, {"device": {"id": "d"}}, 1000.5)
    assert open_reply(daemon_pk, box_key, reply, nonce, 1001.0) == (201, {"device": {"id": "d"}})
    for key, re, code in [
        (nacl.public.PrivateKey.generate(), nonce, "forged"),  # another device cannot read it
        (box_key, "another-request", "wrong_recipient"),  # nor take it for another request
    ]:
        with pytest.raises(SignalingRefused) as refused:
            open_reply(daemon_pk, key, reply, re, 1001.0)
        assert refused.value.code == code
    impostor = nacl.signing.SigningKey.generate()  # a reply must come from the payload's daemon
    forged = PairingDesk(impostor).seal_reply(opened, 201, {}, 1000.5)
    with pytest.raises(SignalingRefused) as refused:
        open_reply(daemon_pk, box_key, forged, nonce, 1001.0)
    assert refused.value.code == "not_paired"


def test_a_pair_request_is_refused_unanswered_when_it_is_bad_in_any_way() -> None:
    daemon = nacl.signing.SigningKey.generate()
    desk = PairingDesk(daemon)
    request = {"secret_id": "s1", "name": "n"}
    cases: list[tuple[bytes, float, str]] = []
    good, _, _ = _sealed(daemon, request)
    tampered = bytearray(good)
    tampered[-5] = ord("A") if tampered[-5] != ord("A") else ord("B")
    cases.append((bytes(tampered), 1000.0, "forged"))
    other, _, _ = _sealed(nacl.signing.SigningKey.generate(), request)  # sealed to another daemon
    cases.append((other, 1000.0, "forged"))
    cases.append((_sealed(daemon, request, now=700.0)[0], 1000.0, "stale"))
    cases.append((_sealed(daemon, {**request, "secret_id": "s2"})[0], 1000.0, "wrong_recipient"))
    cases.append((_sealed(daemon, {**request, "name": "x" * 20_000})[0], 1000.0, "malformed"))
    cases.append((b"x" * (MAX_REQUEST + 1), 1000.0, "malformed"))
    cases.append((b'{"v": 1, "from": "AAAA", "box": "AAAA"}', 1000.0, "malformed"))
    for data, now, code in cases:
        with pytest.raises(SignalingRefused) as refused:
            desk.open(data, now, "s1")
        assert refused.value.code == code, data[:60]
    assert desk.open(good, 1000.0, "s1").request == request  # none of them was remembered


def test_the_reply_goes_to_the_box_key_the_request_registers() -> None:
    """A device that registers a box key at pairing (``box_public_key``) gets the reply sealed
    to it, not to the envelope's key."""
    daemon = nacl.signing.SigningKey.generate()
    registered = nacl.public.PrivateKey.generate()
    request = {"secret_id": "s1", "box_public_key": b64(bytes(registered.public_key))}
    envelope, nonce, sender = _sealed(daemon, request)
    desk = PairingDesk(daemon)
    opened = desk.open(envelope, 1000.0, "s1")
    assert opened.reply_key == bytes(registered.public_key)
    reply = desk.seal_reply(opened, 403, {"error": {"code": "pairing_refused"}}, 1000.0)
    pk = bytes(daemon.verify_key)
    assert open_reply(pk, registered, reply, nonce, 1000.0)[0] == 403
    with pytest.raises(SignalingRefused):
        open_reply(pk, sender, reply, nonce, 1000.0)


def test_pairing_topics_are_unguessable_and_not_the_device_topics() -> None:
    secret = b"s" * 32
    mine = pairing_topics(secret)
    assert mine.to_daemon != mine.to_device
    assert {mine.to_daemon, mine.to_device}.isdisjoint(
        {topics(secret).to_daemon, topics(secret).to_device}
    )
    assert pairing_topics(b"t" * 32).to_daemon != mine.to_daemon
    assert len(mine.to_daemon.rpartition("/")[2]) == 32  # 128 bits of HMAC, hex


def _sealed_raw(daemon: nacl.signing.SigningKey, raw: bytes) -> bytes:
    """An envelope whose box holds ``raw`` as its body: anyone can seal to the daemon's key."""
    box_key = nacl.public.PrivateKey.generate()
    daemon_x = daemon.verify_key.to_curve25519_public_key()
    sealed = bytes(nacl.public.Box(box_key, daemon_x).encrypt(raw))
    return json.dumps({"v": 1, "from": b64(bytes(box_key.public_key)), "box": b64(sealed)}).encode()


def test_deeply_nested_or_non_finite_input_is_refused_not_raised() -> None:
    """Anyone who sees a pairing topic (a public broker's ``#`` subscriber, the broker) can
    publish there: JSON nested past the recursion limit, outside or inside the box, is
    ``malformed`` (a RecursionError would end the WebRTC task and the daemon with it), and a
    body timed NaN or infinity is refused, never taken as fresh (and kept forever)."""
    daemon = nacl.signing.SigningKey.generate()
    desk = PairingDesk(daemon)
    deep = b"[" * 5000
    request = {"secret_id": "s1"}
    cases = [deep, b'{"v": 1, "from": ' + deep, _sealed_raw(daemon, deep)]
    for ts in ("NaN", "Infinity", "-Infinity"):
        body = '{"to": "%s", "ts": %s, "n": "x", "msg": {"type": "pair", "request": %s}}'
        raw = body % (b64(bytes(daemon.verify_key)), ts, json.dumps(request))
        cases.append(_sealed_raw(daemon, raw.encode()))
    for data in cases:
        with pytest.raises(SignalingRefused) as refused:
            desk.open(data, 1000.0, "s1")
        assert refused.value.code in ("malformed", "stale"), data[:60]
    box_key = nacl.public.PrivateKey.generate()
    with pytest.raises(SignalingRefused):  # the device's side too
        open_reply(bytes(daemon.verify_key), box_key, deep, "n", 1000.0)
    signaling = SignalingBox(daemon, lambda _key: True)
    with pytest.raises(SignalingRefused) as refused:
        signaling.open(deep, 1000.0)
    assert refused.value.code == "malformed"
