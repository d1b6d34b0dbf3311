"""Sealed signaling (sans-IO): what the daemon and a device say to each other through a broker.

The broker only carries bytes; it must learn nothing but timing and sizes, and must not be able
to forge, alter or replay anything. Each message is therefore

* **signed** by the sender's Ed25519 key (the daemon's identity key, or the device's key that
  pairing recorded), over the exact body bytes (no canonical re-encoding needed);
* **encrypted to the recipient** with a NaCl ``Box`` between the two parties' X25519 *box keys*.
  A party's box key is the one its device registered at pairing (``box_public_key``: the web app,
  whose non-extractable WebCrypto Ed25519 key cannot be converted), else derived from its Ed25519
  key (``crypto_sign_ed25519_*_to_curve25519``: the daemon always, Python devices). A device that
  registered one must use it: a message boxed with its derived key does not open (``forged``);
* **fresh**: the body carries a timestamp and a random 128-bit nonce. The receiver refuses a body
  more than ``max_skew`` seconds away from its clock, and a (sender, nonce) it has already seen
  within that window, so a captured envelope cannot be played again;
* **addressed**: the body names the recipient's key, so a message cannot be re-sent to someone
  else as if meant for them.

Envelope (UTF-8 JSON, one broker message)::

    {"v": 1, "from": b64url(sender ed25519 pk), "box": b64url(nonce24 || box(sig64 || body))}
    body = {"to": b64url(recipient pk), "ts": unix seconds, "n": b64url(16 random bytes),
            "msg": {"type": "hello" | "ice" | "offer" | "answer" | "refused", ...}}

The receiver checks, in order: size and shape, ``from`` is a paired (unrevoked) key, the box opens,
the signature verifies, ``to`` is itself, the clock skew, the nonce is new. Each failure is a
:class:`SignalingRefused` with its own ``code``; none of them is answered on the broker (an
unauthenticated sender gets nothing back).

**Topics.** Each device has its own pair of topics, derived from a 32-byte *rendezvous secret*
(:func:`rendezvous_secret`) both sides compute when pairing succeeds: an HMAC, keyed by the
one-time pairing secret, of the pairing transcript. So nothing is added to the pairing payload
(the QR code is dense enough already), the secret is bound to the device's key, and a topic name
reveals nothing: 128 bits of HMAC output, unguessable and unlinkable to the daemon's or the
device's key. The daemon stores it with the device (the 0600 device store) and subscribes to
every active device's ``to_daemon`` topic; revoking a device drops its subscription. The payload
only gains the broker's URL (``"rv": "mqtts://host:8883"``), or nothing when the default is used.

**Pinning.** aiortc makes a fresh DTLS certificate for every peer connection and both stacks
refuse a DTLS peer whose certificate does not match an ``a=fingerprint`` of the remote SDP, so
signing those fingerprints pins the link to the keys. The device signs the fingerprints of its
offer (statement role ``device``); the daemon signs those of its answer bound to the cid and to
SHA-256 of the exact offer it answered (role ``daemon``). Each side checks the other's statement
before applying the remote description, i.e. before any byte of a request can flow. The set of
fingerprints must match exactly (aiortc writes sha-256/384/512, Chromium only sha-256), so an
added line is refused too.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import math
import re
import secrets
from collections.abc import Callable
from typing import Any, Final, Literal

import attrs
import nacl.exceptions
import nacl.public
import nacl.signing

from ..errors import ClientError
from ..security.identity import b64, unb64
from ..security.pairing import rendezvous_secret as rendezvous_secret  # computed at pairing
from ..wire.converter import structure, unstructure
from ..wire.signaling import (
    Answer,
    Hello,
    IceConfig,
    Message,
    Offer,
    Refused,
    SignalingMessage,
)

ENVELOPE_VERSION: Final = 1
MAX_SKEW: Final = 120.0  # seconds a message may be away from the receiver's clock
MAX_ENVELOPE: Final = 64 * 1024  # an SDP with many candidates is ~5 KB; anything bigger is junk
REPLAY_PER_SENDER: Final = 1_000  # nonces remembered per sender within the skew window
TOPIC_CONTEXT: Final = b"sidecode-trio topic v1\n"
FP_CONTEXT: Final = "sidecode-dtls-fp/1"


class SignalingRefused(ClientError):
    """A signaling message or a fingerprint statement we refuse. ``code`` says why:
    ``malformed``, ``not_paired``, ``forged``, ``wrong_recipient``, ``stale``, ``replayed``,
    ``replay_window_full``, ``fingerprint``; the answerer adds ``busy`` (too many attempts at
    once from one device)."""

    status = 403
    code = "signaling_refused"


# --- messages: sidecode_trio/wire/signaling.py ---------------------------------------------


def new_cid() -> str:
    """A connection attempt's id: 128 random bits."""
    return secrets.token_hex(16)


@attrs.frozen
class Opened:
    sender: bytes  #: the sender's Ed25519 public key (raw 32 bytes)
    message: Message
    ts: float


# --- sealing and opening --------------------------------------------------------------------


LEAST_SIGNED_BOX: Final = 24 + 16 + 64  # nonce, MAC and the signature inside the body


def _refuse(code: str, message: str) -> SignalingRefused:
    return SignalingRefused(message, code=code)


def parse_envelope(data: bytes, kind: str, limit: int, least_box: int) -> tuple[bytes, bytes]:
    """The sender's key and the sealed box of a version-1 `kind` envelope ("signaling",
    "pairing") of at most `limit` bytes whose box is at least `least_box` bytes; refused as
    malformed otherwise."""
    if len(data) > limit:
        raise _refuse("malformed", "the envelope is too large")
    try:
        envelope = json.loads(data)
        if not isinstance(envelope, dict) or envelope.get("v") != ENVELOPE_VERSION:
            raise _refuse("malformed", f"not a version-1 {kind} envelope")
        sender, sealed = unb64(envelope["from"]), unb64(envelope["box"])
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        # RecursionError: JSON nested past the recursion limit (anyone on a topic can send it)
        raise _refuse("malformed", f"not a {kind} envelope") from None
    if len(sender) != 32 or len(sealed) < least_box:
        raise _refuse("malformed", "bad key or box length")
    return sender, sealed


def parse_body(raw: bytes) -> dict[str, Any]:
    """An opened envelope's body: a JSON object with to, n, a finite ts and msg; refused as
    malformed otherwise."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested past the recursion limit
        raise _refuse("malformed", "the body is not JSON") from None
    ts = body.get("ts") if isinstance(body, dict) else None
    if not (
        isinstance(body, dict)
        and isinstance(body.get("to"), str)
        and isinstance(body.get("n"), str)
        and isinstance(ts, int | float)
        and not isinstance(ts, bool)
        and math.isfinite(ts)  # NaN passes every skew check, and its nonce is never forgotten
        and isinstance(body.get("msg"), dict)
    ):
        raise _refuse("malformed", "the body lacks to, ts, n or msg")
    return body


class SignalingBox:
    """One party's end of the sealed channel: seals to peers, opens from paired peers.

    ``is_paired(public_key)`` answers whether a sender may talk to us at all (the daemon: an
    active device of the device store; a device: its daemon's key). ``box_key(public_key)`` is
    the X25519 box key that peer registered at pairing (raw 32 bytes), or None to derive it from
    its Ed25519 key; asked for every message, so a re-pairing takes effect at once. ``box_secret``
    is our own registered box key (a device that registered one), else ours is derived too. The
    replay window is the only state; it holds nonces of authenticated messages only, at most
    ``REPLAY_PER_SENDER`` per sender, each for ``2 * max_skew`` seconds at most.
    """

    def __init__(
        self,
        signing_key: nacl.signing.SigningKey,
        is_paired: Callable[[bytes], bool],
        max_skew: float = MAX_SKEW,
        *,
        box_key: Callable[[bytes], bytes | None] = lambda _peer: None,
        box_secret: nacl.public.PrivateKey | None = None,
    ) -> None:
        self._key = signing_key
        self._public = bytes(signing_key.verify_key)
        self._x25519 = box_secret or signing_key.to_curve25519_private_key()
        self._is_paired = is_paired
        self._box_key = box_key
        self._max_skew = max_skew
        self._boxes: dict[bytes, nacl.public.Box] = {}  # peer's X25519 key -> its box
        self._seen: dict[bytes, dict[str, float]] = {}  # sender -> nonce -> forget after

    @property
    def public_key(self) -> bytes:
        return self._public

    def peer_box_key(self, peer: bytes) -> bytes:
        """``peer``'s X25519 box key: the one it registered, else derived from ``peer``."""
        registered = self._box_key(peer)
        if registered is not None:
            return registered
        return bytes(nacl.signing.VerifyKey(peer).to_curve25519_public_key())

    def _box(self, peer: bytes) -> nacl.public.Box:
        peer_x = self.peer_box_key(peer)
        box = self._boxes.get(peer_x)
        if box is None:
            if len(self._boxes) > 1_000:
                self._boxes.clear()
            box = self._boxes[peer_x] = nacl.public.Box(self._x25519, nacl.public.PublicKey(peer_x))
        return box

    def seal(self, recipient: bytes, message: Message, now: float) -> bytes:
        body = json.dumps(
            {
                "to": b64(recipient),
                "ts": now,
                "n": b64(secrets.token_bytes(16)),
                "msg": unstructure(message),
            },
            separators=(",", ":"),
        ).encode()
        signed = self._key.sign(body).signature + body
        sealed = bytes(self._box(recipient).encrypt(signed))  # nonce24 || ciphertext
        envelope = {"v": ENVELOPE_VERSION, "from": b64(self._public), "box": b64(sealed)}
        return json.dumps(envelope, separators=(",", ":")).encode()

    def open(self, data: bytes, now: float) -> Opened:
        """The message in ``data``, or :class:`SignalingRefused` saying why not."""
        sender, sealed = parse_envelope(data, "signaling", MAX_ENVELOPE, LEAST_SIGNED_BOX)
        if not self._is_paired(sender):
            raise _refuse("not_paired", "the sender is not a paired key")
        try:
            signed = self._box(sender).decrypt(sealed)
            nacl.signing.VerifyKey(sender).verify(signed[64:], signed[:64])
        except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, ValueError):
            raise _refuse(
                "forged", "the envelope does not open or its signature is wrong"
            ) from None
        body = parse_body(signed[64:])
        if not hmac.compare_digest(body["to"].encode(), b64(self._public).encode()):
            raise _refuse("wrong_recipient", "the message was meant for another key")
        ts: float = body["ts"]
        if abs(now - ts) > self._max_skew:
            raise _refuse("stale", f"the message is {now - ts:+.0f}s away from our clock")
        self._remember(sender, body["n"], ts, now)
        try:
            message: Message = structure(body["msg"], SignalingMessage)  # type: ignore[assignment]
        except ValueError as exc:
            raise _refuse("malformed", f"bad signaling message: {exc}") from None
        return Opened(sender, message, ts)

    def _remember(self, sender: bytes, nonce: str, ts: float, now: float) -> None:
        seen = self._seen.setdefault(sender, {})
        for old in [n for n, until in seen.items() if until < now]:
            del seen[old]
        if nonce in seen:
            raise _refuse("replayed", "this message was already received")
        if len(seen) >= REPLAY_PER_SENDER:
            raise _refuse("replay_window_full", "too many messages from this sender; slow down")
        # Past ts + max_skew the message is stale anyway, so the nonce can be forgotten then.
        seen[nonce] = max(ts, now) + self._max_skew


# --- topics ---------------------------------------------------------------------------------


@attrs.frozen
class Topics:
    to_daemon: str  #: the daemon subscribes here; the device publishes
    to_device: str  #: the device subscribes here; the daemon publishes


def topics(secret: bytes, prefix: str = "sidecode") -> Topics:
    """A device's two broker topics: 128 bits of HMAC each, nothing a stranger could guess."""

    def label(direction: bytes) -> str:
        return hmac.new(secret, TOPIC_CONTEXT + direction, "sha256").hexdigest()[:32]

    return Topics(f"{prefix}/{label(b'to-daemon')}", f"{prefix}/{label(b'to-device')}")


# --- DTLS fingerprint statements (pinning) --------------------------------------------------

Role = Literal["daemon", "device"]
_FP_LINE = re.compile(r"^a=fingerprint:(\S+) ([0-9A-Fa-f:]+)\s*$", re.M)


def sdp_fingerprints(sdp: str) -> list[str]:
    """The set of ``a=fingerprint`` values in ``sdp``, normalised (``sha-256 AB:CD:...``)."""
    return sorted({f"{alg.lower()} {value.upper()}" for alg, value in _FP_LINE.findall(sdp)})


def fingerprint_statement(role: Role, cid: str, fps: list[str], offer_sdp: str | None) -> bytes:
    """What a fingerprint signature covers: who signs, the attempt, the fingerprints, and for the
    daemon the exact offer answered (so a signed answer cannot be replayed to another offer)."""
    statement: dict[str, Any] = {"ctx": FP_CONTEXT, "role": role, "cid": cid, "fps": fps}
    if offer_sdp is not None:
        statement["offer"] = hashlib.sha256(offer_sdp.encode()).hexdigest()
    return json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()


def sign_fingerprints(
    key: nacl.signing.SigningKey, role: Role, cid: str, sdp: str, offer_sdp: str | None = None
) -> tuple[list[str], str]:
    """The fingerprints of our own ``sdp`` and our signature over their statement."""
    fps = sdp_fingerprints(sdp)
    if not fps:
        raise ValueError("the SDP has no a=fingerprint line")
    signature = key.sign(fingerprint_statement(role, cid, fps, offer_sdp)).signature
    return fps, b64(signature)


def check_fingerprints(
    public_key: bytes,
    role: Role,
    cid: str,
    sdp: str,
    fps: list[str],
    fp_sig: str,
    offer_sdp: str | None = None,
) -> None:
    """Refuse (``fingerprint``) unless ``public_key`` signed exactly the fingerprints of ``sdp``.
    Call it before applying ``sdp`` as the remote description."""
    if sdp_fingerprints(sdp) != fps or not fps:
        raise _refuse("fingerprint", "the SDP's DTLS fingerprints differ from the signed ones")
    try:
        signature = unb64(fp_sig)
        nacl.signing.VerifyKey(public_key).verify(
            fingerprint_statement(role, cid, fps, offer_sdp), signature
        )
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError, binascii.Error):
        raise _refuse("fingerprint", f"the {role}'s DTLS fingerprint signature is wrong") from None


__all__ = [
    "Answer",
    "Hello",
    "IceConfig",
    "Message",
    "Offer",
    "Opened",
    "Refused",
    "SignalingBox",
    "SignalingRefused",
    "Topics",
    "check_fingerprints",
    "new_cid",
    "rendezvous_secret",
    "sdp_fingerprints",
    "sign_fingerprints",
    "topics",
]
