"""A device's X25519 box key registered at pairing (issue 17: the web app's device key is a
non-extractable WebCrypto key, so no box key can be derived from it).

* the box key is bound into the pairing transcript: altered, the proof no longer verifies;
  a malformed one is ``400 bad_box_key`` before the one-time secret is spent; without one the
  old transcript still pairs (Python clients that derive);
* the device store keeps it per device, and a store made before the column existed loads;
* sealed signaling boxes to a peer's registered key, else to the key derived from its Ed25519
  key; a device that registered one cannot be reached, nor heard, with the derived key.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import attrs
import nacl.public
import nacl.signing
import pytest

from sidecode_trio.config import DaemonConfig
from sidecode_trio.errors import BadRequest
from sidecode_trio.rtc.signaling import Hello, SignalingBox, SignalingRefused
from sidecode_trio.security.devices import DeviceStore, Scope
from sidecode_trio.security.identity import b64, unb64
from sidecode_trio.security.pairing import (
    PairingProof,
    PairingRefused,
    Pairings,
    prove,
    rendezvous_secret,
    transcript,
)

from helpers import running_daemon

NOW = 1_800_000_000.0


def _proof(
    daemon: bytes,
    offer_id: str,
    secret: bytes,
    box: bytes | None,
    signed_box: bytes | None = None,
    key: nacl.signing.SigningKey | None = None,
) -> tuple[PairingProof, bytes]:
    """A proof registering ``box`` whose HMAC and signature cover ``signed_box`` (default:
    ``box``)."""
    key = key or nacl.signing.SigningKey.generate()
    device = bytes(key.verify_key)
    covered = box if signed_box is None else signed_box
    message = transcript(daemon, device, "phone", offer_id, covered)
    proof = PairingProof(
        offer_id,
        b64(device),
        "phone",
        b64(prove(secret, message)),
        b64(key.sign(message).signature),
        b64(box) if box is not None else None,
    )
    return proof, message


# --- the transcript ---------------------------------------------------------------------------


def test_the_box_key_is_bound_into_the_pairing_transcript() -> None:
    daemon = bytes(nacl.signing.SigningKey.generate().verify_key)
    pairings = Pairings(daemon, lambda: NOW)
    box = bytes(nacl.public.PrivateKey.generate().public_key)
    other = bytes(nacl.public.PrivateKey.generate().public_key)

    # the proof covers one box key, the request names another (a broker or proxy swapping it)
    offer = pairings.offer(Scope.CHAT, ttl=300)
    swapped, _ = _proof(daemon, offer.secret_id, offer.secret, other, signed_box=box)
    with pytest.raises(PairingRefused, match="does not verify"):
        pairings.redeem(swapped, "a")
    # the box key dropped from a proof that covered it: refused too
    covered, _ = _proof(daemon, offer.secret_id, offer.secret, box)
    with pytest.raises(PairingRefused, match="does not verify"):
        pairings.redeem(attrs.evolve(covered, box_public_key=None), "a")
    # and a proof without one cannot be given one afterwards (on a fresh offer)
    offer = pairings.offer(Scope.CHAT, ttl=300)
    plain, _ = _proof(daemon, offer.secret_id, offer.secret, None)
    with pytest.raises(PairingRefused, match="does not verify"):
        pairings.redeem(attrs.evolve(plain, box_public_key=b64(box)), "a")

    fresh = pairings.offer(Scope.CHAT, ttl=300)
    good, message = _proof(daemon, fresh.secret_id, fresh.secret, box)
    redeemed = pairings.redeem(good, "b")
    assert redeemed.box_public_key == b64(box)
    assert redeemed.rendezvous == rendezvous_secret(fresh.secret, message)
    # the two transcripts never coincide: another context, and the key is in it
    key = nacl.signing.SigningKey(b"k" * 32)
    with_box = transcript(daemon, bytes(key.verify_key), "phone", "s", box)
    assert with_box != transcript(daemon, bytes(key.verify_key), "phone", "s")
    assert box in with_box


def test_without_a_box_key_the_old_transcript_still_pairs() -> None:
    daemon = bytes(nacl.signing.SigningKey.generate().verify_key)
    pairings = Pairings(daemon, lambda: NOW)
    offer = pairings.offer(Scope.APPROVE, ttl=300)
    proof, message = _proof(daemon, offer.secret_id, offer.secret, None)
    assert message.startswith(b"sidecode-trio pair v1\n")
    redeemed = pairings.redeem(proof, "a")
    assert redeemed.box_public_key is None and redeemed.scope is Scope.APPROVE


@pytest.mark.parametrize("bad", ["", "AAAA", b64(b"x" * 31), b64(b"x" * 33), "not base64!"])
def test_a_malformed_box_key_is_a_clear_400_and_spends_nothing(bad: str) -> None:
    daemon = bytes(nacl.signing.SigningKey.generate().verify_key)
    pairings = Pairings(daemon, lambda: NOW)
    offer = pairings.offer(Scope.CHAT, ttl=300)
    box = bytes(nacl.public.PrivateKey.generate().public_key)
    proof, _ = _proof(daemon, offer.secret_id, offer.secret, box)
    for _ in range(5):  # more than MAX_PROOF_FAILURES and the rate limit: none counted
        with pytest.raises(BadRequest, match="32 bytes") as caught:
            pairings.redeem(attrs.evolve(proof, box_public_key=bad), "a")
        assert caught.value.status == 400 and caught.value.code == "bad_box_key"
    assert pairings.redeem(proof, "a").box_public_key == b64(box)  # the offer still works


async def test_the_daemon_stores_the_box_key_a_device_registers_over_http(
    make_config: Callable[..., DaemonConfig],
) -> None:
    config = make_config()
    box = bytes(nacl.public.PrivateKey.generate().public_key)
    async with running_daemon(config) as owner:
        daemon_pk = (await owner.http.get("/v1/info")).json()["public_key"]

        def body(offer: dict[str, str], box_key: str) -> dict[str, str]:
            proof, _ = _proof(unb64(daemon_pk), offer["sid"], unb64(offer["secret"]), box)
            return {"secret_id": proof.secret_id, "device_public_key": proof.device_public_key,
                    "name": proof.name, "mac": proof.mac, "signature": proof.signature,
                    "box_public_key": box_key}  # fmt: skip

        offer = (await owner.http.post("/v1/pairings", json={"scope": "chat"})).json()["payload"]
        short = await owner.http.post("/v1/pair", json=body(offer, b64(box[:31])))
        assert short.status_code == 400, short.text
        assert short.json()["error"]["code"] == "bad_box_key"
        assert "32 bytes" in short.json()["error"]["message"]
        paired = await owner.http.post("/v1/pair", json=body(offer, b64(box)))
        assert paired.status_code == 201, paired.text  # the 400 did not spend the offer
        device_id = paired.json()["device"]["id"]
    store = DeviceStore(config.state_dir / "devices.sqlite3")
    try:
        device = store.get(device_id)
        assert device.box_public_key == b64(box)
        assert store.box_key(device.public_key) == b64(box)
    finally:
        store.close()


# --- the device store ---------------------------------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE devices (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, public_key TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL, scope TEXT NOT NULL, paired_at REAL NOT NULL,
    last_seen REAL, revoked_at REAL, kind TEXT NOT NULL DEFAULT 'key'
);
CREATE TABLE rendezvous (device_id TEXT PRIMARY KEY, secret BLOB NOT NULL);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL, device_id TEXT,
    detail TEXT NOT NULL
);
INSERT INTO devices VALUES ('dev_old', 'old phone', 'b2xk', 'fp', 'chat', 1.0, NULL, NULL, 'key');
INSERT INTO rendezvous VALUES ('dev_old', x'00');
"""


def test_a_store_made_before_box_keys_loads_and_its_devices_derive(tmp_path: Path) -> None:
    path = tmp_path / "devices.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.close()
    store = DeviceStore(path)
    try:
        old = store.get("dev_old")
        assert old.box_public_key is None and store.box_key("b2xk") is None
        assert store.rendezvous("dev_old") == b"\x00"
        box = b64(b"b" * 32)
        new = store.add("web", b64(b"w" * 32), "fp2", Scope.CHAT, b"r" * 32, box)
        assert store.box_key(new.public_key) == box
    finally:
        store.close()
    store = DeviceStore(path)  # migrated once; opens again as it is
    try:
        assert store.get(new.id).box_public_key == box
        assert store.get("dev_old").box_public_key is None
    finally:
        store.close()


def test_a_repairing_replaces_the_box_key_and_a_revoked_device_has_none(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path / "devices.sqlite3")
    try:
        key = b64(b"k" * 32)
        first, second = b64(b"1" * 32), b64(b"2" * 32)
        device = store.add("phone", key, "fp", Scope.CHAT, b"r" * 32, first)
        again = store.add("phone", key, "fp", Scope.CHAT, b"s" * 32, second)
        assert again.id == device.id and store.box_key(key) == second
        assert store.get(device.id).box_public_key == second
        derived = store.add("phone", key, "fp", Scope.CHAT, b"t" * 32, None)
        assert derived.box_public_key is None and store.box_key(key) is None
        store.add("phone", key, "fp", Scope.CHAT, b"u" * 32, first)
        store.revoke(device.id)
        assert store.box_key(key) is None
    finally:
        store.close()


# --- per-peer box keys in sealed signaling -----------------------------------------------------

DAEMON = nacl.signing.SigningKey(b"d" * 32)
WEB = nacl.signing.SigningKey(b"w" * 32)  #: registers a box key (the web app)
PY = nacl.signing.SigningKey(b"p" * 32)  #: derives its box key (a Python device)
WEB_BOX = nacl.public.PrivateKey(b"b" * 32)


def pk(key: nacl.signing.SigningKey) -> bytes:
    return bytes(key.verify_key)


def _daemon(registered: dict[bytes, bytes]) -> SignalingBox:
    return SignalingBox(
        DAEMON, lambda key: key in (pk(WEB), pk(PY)), box_key=lambda key: registered.get(key)
    )


def _code(box: SignalingBox, data: bytes) -> str:
    with pytest.raises(SignalingRefused) as caught:
        box.open(data, NOW)
    return caught.value.code


def test_each_peer_is_boxed_with_its_registered_key_else_its_derived_one() -> None:
    daemon = _daemon({pk(WEB): bytes(WEB_BOX.public_key)})
    web = SignalingBox(WEB, lambda key: key == pk(DAEMON), box_secret=WEB_BOX)
    py = SignalingBox(PY, lambda key: key == pk(DAEMON))
    assert daemon.peer_box_key(pk(WEB)) == bytes(WEB_BOX.public_key)
    assert daemon.peer_box_key(pk(PY)) == bytes(PY.verify_key.to_curve25519_public_key())
    # the device boxes to the daemon's derived key: the daemon's own stays derived
    assert web.peer_box_key(pk(DAEMON)) == bytes(DAEMON.verify_key.to_curve25519_public_key())

    for device, key in ((web, WEB), (py, PY)):
        opened = daemon.open(device.seal(pk(DAEMON), Hello("c1"), NOW), NOW)
        assert opened.sender == pk(key) and opened.message == Hello("c1")
        reply = daemon.seal(pk(key), Hello("c2"), NOW)
        assert device.open(reply, NOW).message == Hello("c2")


def test_a_device_that_registered_a_box_key_is_refused_with_its_derived_key() -> None:
    daemon = _daemon({pk(WEB): bytes(WEB_BOX.public_key)})
    # the same device key, boxing with the X25519 key derived from it (what it did before, or
    # what someone holding an old derivation would do): the daemon does not open it
    deriving = SignalingBox(WEB, lambda key: key == pk(DAEMON))
    assert _code(daemon, deriving.seal(pk(DAEMON), Hello("c1"), NOW)) == "forged"
    # and the daemon's replies open only with the registered secret
    reply = daemon.seal(pk(WEB), Hello("c2"), NOW)
    assert _code(deriving, reply) == "forged"
    web = SignalingBox(WEB, lambda key: key == pk(DAEMON), box_secret=WEB_BOX)
    assert web.open(reply, NOW).message == Hello("c2")
    # another box secret, even signed by the right device key, does not open either
    impostor = SignalingBox(
        WEB, lambda key: key == pk(DAEMON), box_secret=nacl.public.PrivateKey.generate()
    )
    assert _code(daemon, impostor.seal(pk(DAEMON), Hello("c3"), NOW)) == "forged"


def test_a_registration_made_later_takes_effect_at_once() -> None:
    registered: dict[bytes, bytes] = {}
    daemon = _daemon(registered)
    deriving = SignalingBox(WEB, lambda key: key == pk(DAEMON))
    assert daemon.open(deriving.seal(pk(DAEMON), Hello("c1"), NOW), NOW).message == Hello("c1")
    registered[pk(WEB)] = bytes(WEB_BOX.public_key)  # re-paired with a box key
    assert _code(daemon, deriving.seal(pk(DAEMON), Hello("c2"), NOW)) == "forged"
    web = SignalingBox(WEB, lambda key: key == pk(DAEMON), box_secret=WEB_BOX)
    assert daemon.open(web.seal(pk(DAEMON), Hello("c3"), NOW), NOW).message == Hello("c3")


#: X25519 points of small order: every secret key makes the all-zero shared secret with them,
#: which libsodium refuses (PyNaCl raises), so no box can be made to or from them
LOW_ORDER = [
    bytes(32),
    b"\x01" + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
]


@pytest.mark.parametrize("low", LOW_ORDER)
def test_a_box_key_no_box_can_be_made_with_is_a_400_not_a_registered_key(low: bytes) -> None:
    """A device registering such a key could never be answered; signaling to it would fail
    inside the daemon. It is refused as malformed, before the secret is spent."""
    daemon = bytes(nacl.signing.SigningKey.generate().verify_key)
    pairings = Pairings(daemon, lambda: NOW)
    offer = pairings.offer(Scope.CHAT, ttl=300)
    proof, _ = _proof(daemon, offer.secret_id, offer.secret, low)  # a valid proof over it
    with pytest.raises(BadRequest) as caught:
        pairings.redeem(proof, "a")
    assert caught.value.code == "bad_box_key"


@pytest.mark.parametrize("low", LOW_ORDER)
def test_a_pair_request_through_the_broker_naming_such_a_key_is_answered_to_its_sender(
    low: bytes,
) -> None:
    """The desk boxes its reply to the request's ``box_public_key``: one no box can be made
    with is ignored (the reply goes to the envelope's key), rather than raising out of the
    WebRTC task (and the daemon) when the reply is sealed."""
    from sidecode_trio.rtc.pairing import PairingDesk, open_reply, seal_request

    daemon = nacl.signing.SigningKey.generate()
    desk = PairingDesk(daemon)
    sender = nacl.public.PrivateKey.generate()
    request = {"secret_id": "s1", "box_public_key": b64(low)}
    envelope, nonce = seal_request(bytes(daemon.verify_key), sender, request, NOW)
    opened = desk.open(envelope, NOW, "s1")
    reply = desk.seal_reply(opened, 400, {"error": {"code": "bad_box_key"}}, NOW)
    assert open_reply(bytes(daemon.verify_key), sender, reply, nonce, NOW)[0] == 400
