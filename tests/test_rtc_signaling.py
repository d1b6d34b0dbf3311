"""Sealed signaling (sidecode_trio/rtc/signaling.py), fed in memory: round trips, tampering, the
wrong recipient, replays, stale and future messages, topics and the DTLS fingerprint statements."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import nacl.public
import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecode_trio.rtc.ice import IceServer, strip_mdns, turn_credentials
from sidecode_trio.rtc.signaling import (
    MAX_SKEW,
    REPLAY_PER_SENDER,
    Answer,
    Hello,
    IceConfig,
    Message,
    Offer,
    Refused,
    SignalingBox,
    SignalingRefused,
    check_fingerprints,
    rendezvous_secret,
    sdp_fingerprints,
    sign_fingerprints,
    topics,
)
from sidecode_trio.security.identity import b64, unb64

DAEMON = nacl.signing.SigningKey(b"d" * 32)
DEVICE = nacl.signing.SigningKey(b"p" * 32)
STRANGER = nacl.signing.SigningKey(b"x" * 32)
NOW = 1_800_000_000.0


def pk(key: nacl.signing.SigningKey) -> bytes:
    return bytes(key.verify_key)


def daemon_box() -> SignalingBox:
    return SignalingBox(DAEMON, lambda key: key == pk(DEVICE))


def device_box() -> SignalingBox:
    return SignalingBox(DEVICE, lambda key: key == pk(DAEMON))


def refusal(box: SignalingBox, data: bytes, now: float = NOW) -> str:
    with pytest.raises(SignalingRefused) as caught:
        box.open(data, now)
    return caught.value.code


text = st.text(max_size=200)
cids = st.text(alphabet="0123456789abcdef", min_size=1, max_size=32)
servers = st.builds(IceServer, st.lists(text, max_size=3), st.none() | text, st.none() | text)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, cids),
    st.builds(IceConfig, cids, st.lists(servers, max_size=3)),
    st.builds(Offer, cids, text, st.lists(text, max_size=3), text),
    st.builds(Answer, cids, text, st.lists(text, max_size=3), text),
    st.builds(Refused, cids, text, text),
)


@given(messages, st.floats(-MAX_SKEW, MAX_SKEW))
def test_a_sealed_message_opens_as_itself_for_its_recipient(message: Message, skew: float) -> None:
    sealed = device_box().seal(pk(DAEMON), message, NOW)
    opened = daemon_box().open(sealed, NOW + skew)
    assert opened.message == message
    assert opened.sender == pk(DEVICE)
    assert opened.ts == NOW


def test_the_broker_sees_neither_the_message_nor_the_signature() -> None:
    sdp = "v=0\r\na=fingerprint:sha-256 AB:CD\r\na=candidate:1 1 udp 1 10.0.0.7 5000 typ host"
    sealed = device_box().seal(pk(DAEMON), Offer("cid1", sdp, [], "sig"), NOW)
    envelope = json.loads(sealed)
    assert set(envelope) == {"v", "from", "box"}
    assert b"10.0.0.7" not in sealed and b"cid1" not in sealed and b"fingerprint" not in sealed


@given(st.data())
def test_any_changed_byte_of_the_box_is_refused(data: st.DataObject) -> None:
    sealed = json.loads(device_box().seal(pk(DAEMON), Hello("c"), NOW))
    box = bytearray(unb64(sealed["box"]))
    index = data.draw(st.integers(0, len(box) - 1))
    box[index] ^= data.draw(st.integers(1, 255))
    sealed["box"] = b64(bytes(box))
    assert refusal(daemon_box(), json.dumps(sealed).encode()) == "forged"


def test_a_message_for_someone_else_does_not_open() -> None:
    other = nacl.signing.SigningKey.generate()
    sealed = device_box().seal(pk(other), Hello("c"), NOW)  # sealed to another daemon
    assert refusal(daemon_box(), sealed) == "forged"


def test_a_signed_body_addressed_to_another_key_is_refused() -> None:
    """The body names its recipient, so a signed message cannot be passed on to someone else."""
    body = json.dumps(
        {"to": b64(pk(STRANGER)), "ts": NOW, "n": "AAAA", "msg": {"type": "hello", "cid": "c"}}
    ).encode()
    signed = DEVICE.sign(body).signature + body
    box = nacl.public.Box(
        DEVICE.to_curve25519_private_key(), DAEMON.verify_key.to_curve25519_public_key()
    )
    envelope = {"v": 1, "from": b64(pk(DEVICE)), "box": b64(bytes(box.encrypt(signed)))}
    assert refusal(daemon_box(), json.dumps(envelope).encode()) == "wrong_recipient"


def test_the_envelope_format_is_the_documented_one() -> None:
    """What a browser (tweetnacl + ed2curve) must produce: nonce24 || box(sig64 || body)."""
    sealed = json.loads(device_box().seal(pk(DAEMON), Hello("c"), NOW))
    raw = unb64(sealed["box"])
    box = nacl.public.Box(
        DAEMON.to_curve25519_private_key(), DEVICE.verify_key.to_curve25519_public_key()
    )
    signed = box.decrypt(raw[24:], raw[:24])
    DEVICE.verify_key.verify(signed[64:], signed[:64])
    body = json.loads(signed[64:])
    assert body["to"] == b64(pk(DAEMON)) and body["ts"] == NOW
    assert len(unb64(body["n"])) == 16
    assert body["msg"] == {"type": "hello", "cid": "c"}


def test_an_unpaired_or_revoked_sender_is_refused_before_anything_else() -> None:
    sealed = SignalingBox(STRANGER, lambda _k: True).seal(pk(DAEMON), Hello("c"), NOW)
    assert refusal(daemon_box(), sealed) == "not_paired"
    revoked = SignalingBox(DAEMON, lambda _key: False)
    assert refusal(revoked, device_box().seal(pk(DAEMON), Hello("c"), NOW)) == "not_paired"


def test_a_stranger_claiming_the_devices_key_cannot_seal_for_it() -> None:
    sealed = json.loads(SignalingBox(STRANGER, lambda _k: True).seal(pk(DAEMON), Hello("c"), NOW))
    sealed["from"] = b64(pk(DEVICE))
    assert refusal(daemon_box(), json.dumps(sealed).encode()) == "forged"


def test_a_replayed_message_is_refused() -> None:
    box = daemon_box()
    sealed = device_box().seal(pk(DAEMON), Hello("c"), NOW)
    box.open(sealed, NOW)
    assert refusal(box, sealed, NOW + 1) == "replayed"
    # once past the window it is refused as stale, so it need not be remembered any longer
    assert refusal(box, sealed, NOW + MAX_SKEW + 1) == "stale"


@pytest.mark.parametrize("skew", [-MAX_SKEW - 1, MAX_SKEW + 1, 86_400.0])
def test_a_message_too_far_from_our_clock_is_refused(skew: float) -> None:
    sealed = device_box().seal(pk(DAEMON), Hello("c"), NOW)
    assert refusal(daemon_box(), sealed, NOW + skew) == "stale"


def test_the_replay_window_is_bounded_per_sender_and_drains_with_time() -> None:
    box, sender = daemon_box(), device_box()
    for _ in range(REPLAY_PER_SENDER):
        box.open(sender.seal(pk(DAEMON), Hello("c"), NOW), NOW)
    assert refusal(box, sender.seal(pk(DAEMON), Hello("c"), NOW), NOW) == "replay_window_full"
    later = NOW + 2 * MAX_SKEW + 1
    box.open(sender.seal(pk(DAEMON), Hello("c"), later), later)  # the old nonces expired


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"v": 2, "from": "", "box": ""}',
        b'{"v": 1, "from": "AAAA", "box": "AAAA"}',
        b'{"v": 1}',
        b'{"v": 1, "from": 5, "box": null}',
        b"{" + b" " * 70_000 + b"}",
    ],
)
def test_junk_is_refused_as_malformed(data: bytes) -> None:
    assert refusal(daemon_box(), data) == "malformed"


def test_a_signed_body_with_an_unknown_message_is_malformed() -> None:
    body = json.dumps(
        {"to": b64(pk(DAEMON)), "ts": NOW, "n": "AAAA", "msg": {"type": "launch", "cid": "c"}}
    ).encode()
    box = nacl.public.Box(
        DEVICE.to_curve25519_private_key(), DAEMON.verify_key.to_curve25519_public_key()
    )
    sealed = box.encrypt(DEVICE.sign(body).signature + body)
    envelope = {"v": 1, "from": b64(pk(DEVICE)), "box": b64(bytes(sealed))}
    assert refusal(daemon_box(), json.dumps(envelope).encode()) == "malformed"


# --- topics ---------------------------------------------------------------------------------


def test_topics_are_derived_from_the_pairing_secret_and_transcript() -> None:
    secret = rendezvous_secret(b"k" * 32, b"transcript")
    assert (
        secret
        == hmac.new(b"k" * 32, b"sidecode-trio rendezvous v1\ntranscript", hashlib.sha256).digest()
    )
    mine = topics(secret)
    assert mine == topics(secret)
    assert mine.to_daemon != mine.to_device
    for topic in (mine.to_daemon, mine.to_device):
        prefix, label = topic.split("/")
        assert prefix == "sidecode" and len(label) == 32 and int(label, 16) >= 0
    assert topics(rendezvous_secret(b"k" * 32, b"another device")) != mine
    assert topics(rendezvous_secret(b"j" * 32, b"transcript")) != mine


# --- fingerprints ---------------------------------------------------------------------------

OFFER_SDP = "v=0\r\na=fingerprint:sha-256 0a:0b:0c\r\n"
ANSWER_SDP = "v=0\r\na=fingerprint:sha-256 AA:BB\r\na=fingerprint:sha-512 cc:dd\r\n"


def test_fingerprints_are_read_from_the_sdp_normalised() -> None:
    assert sdp_fingerprints(ANSWER_SDP) == ["sha-256 AA:BB", "sha-512 CC:DD"]
    assert sdp_fingerprints("v=0\r\n") == []


def test_a_signed_answer_checks_against_the_same_offer_only() -> None:
    fps, sig = sign_fingerprints(DAEMON, "daemon", "cid", ANSWER_SDP, OFFER_SDP)
    check_fingerprints(pk(DAEMON), "daemon", "cid", ANSWER_SDP, fps, sig, OFFER_SDP)
    refused = [
        (pk(STRANGER), "daemon", "cid", ANSWER_SDP, fps, sig, OFFER_SDP),  # another key
        (pk(DAEMON), "device", "cid", ANSWER_SDP, fps, sig, OFFER_SDP),  # another role
        (pk(DAEMON), "daemon", "cid2", ANSWER_SDP, fps, sig, OFFER_SDP),  # another attempt
        (pk(DAEMON), "daemon", "cid", ANSWER_SDP, fps, sig, OFFER_SDP + "x"),  # another offer
        (pk(DAEMON), "daemon", "cid", ANSWER_SDP, fps, "AAAA", OFFER_SDP),  # junk signature
        (pk(DAEMON), "daemon", "cid", ANSWER_SDP, fps, "!!", OFFER_SDP),  # not base64
    ]
    for args in refused:
        with pytest.raises(SignalingRefused) as caught:
            check_fingerprints(*args)  # type: ignore[arg-type]
        assert caught.value.code == "fingerprint"


def test_an_sdp_whose_fingerprints_differ_from_the_signed_ones_is_refused() -> None:
    fps, sig = sign_fingerprints(DEVICE, "device", "cid", OFFER_SDP)
    swapped = OFFER_SDP.replace("0a:0b:0c", "0A:0B:0D")  # the attacker's certificate
    added = OFFER_SDP + "a=fingerprint:sha-384 EE:FF\r\n"  # one more line than was signed
    for sdp in (swapped, added, "v=0\r\n"):
        with pytest.raises(SignalingRefused):
            check_fingerprints(pk(DEVICE), "device", "cid", sdp, fps, sig)


def test_an_sdp_without_a_fingerprint_cannot_be_signed() -> None:
    with pytest.raises(ValueError, match="fingerprint"):
        sign_fingerprints(DEVICE, "device", "cid", "v=0\r\n")


# --- ICE ------------------------------------------------------------------------------------


def test_turn_credentials_follow_coturns_rest_api() -> None:
    username, password = turn_credentials(b"secret", "dev_1", now=1000.0, ttl=600)
    assert username == "1600:dev_1"
    expected = hmac.new(b"secret", b"1600:dev_1", hashlib.sha1).digest()
    assert base64.b64decode(password) == expected


def test_mdns_candidates_are_stripped_from_an_offer() -> None:
    sdp = "\r\n".join(
        [
            "v=0",
            "a=candidate:1 1 udp 2122260223 5f1c.local 54321 typ host",
            "a=candidate:2 1 udp 1686052607 198.51.100.7 54321 typ srflx",
            "",
        ]
    )
    stripped, mdns = strip_mdns(sdp)
    assert mdns == ["a=candidate:1 1 udp 2122260223 5f1c.local 54321 typ host"]
    assert ".local" not in stripped and "198.51.100.7" in stripped
