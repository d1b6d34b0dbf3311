"""Pairing gives both sides the same rendezvous secret (issue 17): the daemon keeps it per device
in its 0600 store, forgets it on revoke; the payload names the broker ("rv") only when one is on.
No aiortc or broker needed: this is the pairing side of the WebRTC path."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import nacl.signing
import trio

from sidecode_trio.config import DaemonConfig
from sidecode_trio.rtc.signaling import topics
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
