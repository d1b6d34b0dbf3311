"""Pairing over the rendezvous (sans-IO): a device that cannot reach any of the daemon's addresses
sends its ``POST /v1/pair`` body through the broker.

The device is not paired yet, so the sealed signaling of :mod:`.signaling` (boxes between paired
Ed25519 keys) does not apply. Instead:

* **Topics.** While a pairing offer is open and the rendezvous is on, the daemon also subscribes
  to that offer's ``to_daemon`` topic, derived from the one-time secret (:func:`pairing_topics`:
  128 bits of HMAC, with a context of its own, so unguessable without the QR code and unlinkable
  to the device topics computed from the same secret later). It drops the topic when the offer is
  used, withdrawn or expires.
* **Request** (device → daemon)::

      {"v": 1, "from": b64url(device X25519 key), "box": b64url(nonce24 || box(body))}
      body = {"to": b64url(daemon Ed25519 key), "ts", "n": b64url(16 bytes),
              "msg": {"type": "pair", "request": <PairRequest JSON>}}

  ``box`` is NaCl ``crypto_box`` from the device's X25519 key (a fresh one, or the box key it
  registers at pairing) to the daemon's Ed25519 key converted to X25519. The envelope needs no
  signature: the pair request inside proves the one-time secret (HMAC) and the device key
  (signature) by itself, and only the holder of the box key's secret can make or read the box.
* **Reply** (daemon → device), on the offer's ``to_device`` topic::

      {"v": 1, "from": b64url(daemon Ed25519 key), "box": b64url(nonce24 || box(sig64 || body))}
      body = {"to": b64url(device X25519 key), "ts", "n", "re": <the request's n>,
              "msg": {"type": "pair_reply", "status": 201 | 4xx, "body": <the HTTP reply body>}}

  signed by the daemon's identity key over the exact body bytes and boxed to the device's
  X25519 key (the request's ``box_public_key`` when it names one, else the envelope's ``from``),
  so only that device reads it and it knows the daemon of the payload wrote it.

The daemon checks a request, in order: size (``MAX_REQUEST``: the open routes' 16 KiB body and
the envelope's overhead) and shape (``malformed``), the box opens (``forged``), ``to`` is itself
(``wrong_recipient``), the clock (``stale``), it is a pair request for the topic's offer
(``malformed``, ``wrong_recipient``), the nonce is new (``replayed``). None of these is
answered: a reply could only be read by whoever sealed the message, and a replay's sealer
already has its answer. A request that opens is dispatched as ``POST /v1/pair`` (the same
operation, checks, rate limit and audit as over HTTP) and its status and body, errors included,
are sealed back.
"""

from __future__ import annotations

import binascii
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import attrs
import nacl.exceptions
import nacl.public
import nacl.signing

from ..security.identity import b64, unb64
from ..security.pairing import usable_box_key
from ..security.routes import OPEN_BODY_LIMIT
from .signaling import (
    ENVELOPE_VERSION,
    MAX_SKEW,
    SignalingRefused,
    Topics,
    parse_body,
    parse_envelope,
)

if TYPE_CHECKING:
    from .broker import Rendezvous

log = logging.getLogger(__name__)

PAIR_TOPIC_CONTEXT: Final = b"sidecode-trio pair topic v1\n"
#: an envelope carrying the open routes' largest body: base64 of box overhead + body + JSON
MAX_REQUEST: Final = (OPEN_BODY_LIMIT + 1024) * 4 // 3 + 256
LEAST_BOX: Final = 24 + 16  # a sealed box: its nonce and MAC around the body
REPLAY_KEPT: Final = 1_000  # request nonces remembered within the skew window, at most
REMOTE: Final = "rendezvous"  #: the "client address" the rate limiter and the audit log see


def _refuse(code: str, message: str) -> SignalingRefused:
    return SignalingRefused(message, code=code)


def pairing_topics(secret: bytes, prefix: str = "sidecode") -> Topics:
    """An open offer's two broker topics, from its one-time secret."""

    def label(direction: bytes) -> str:
        return hmac.new(secret, PAIR_TOPIC_CONTEXT + direction, "sha256").hexdigest()[:32]

    return Topics(f"{prefix}/{label(b'to-daemon')}", f"{prefix}/{label(b'to-device')}")


def _body(to: bytes, now: float, msg: dict[str, Any], **extra: str) -> bytes:
    body = {"to": b64(to), "ts": now, "n": b64(secrets.token_bytes(16)), **extra, "msg": msg}
    return json.dumps(body, separators=(",", ":")).encode()


def _envelope(sender: bytes, sealed: bytes) -> bytes:
    envelope = {"v": ENVELOPE_VERSION, "from": b64(sender), "box": b64(sealed)}
    return json.dumps(envelope, separators=(",", ":")).encode()


def _x25519(key: str | None) -> bytes | None:
    """A 32-byte X25519 public key from base64url that a box can be made with, or None."""
    if not isinstance(key, str):
        return None
    try:
        raw = unb64(key)
    except (ValueError, binascii.Error):
        return None
    return raw if len(raw) == 32 and usable_box_key(raw) else None


# --- the daemon's side ----------------------------------------------------------------------


@attrs.frozen
class PairOpened:
    """A pair request that opened: what to dispatch and where the reply goes."""

    request: dict[str, Any]  #: the ``POST /v1/pair`` body
    reply_key: bytes  #: the device's X25519 key the reply is boxed to
    nonce: str  #: the request's ``n`` (the reply's ``re``)


class PairingDesk:
    """Opens pair requests sealed to the daemon's key and seals the replies."""

    def __init__(self, signing_key: nacl.signing.SigningKey, max_skew: float = MAX_SKEW) -> None:
        self._key = signing_key
        self._public = bytes(signing_key.verify_key)
        self._x25519 = signing_key.to_curve25519_private_key()
        self._max_skew = max_skew
        self._seen: dict[str, float] = {}  # nonce -> forget after

    def open(self, data: bytes, now: float, secret_id: str) -> PairOpened:
        """The request in ``data``, which must be for the offer ``secret_id`` (the topic's)."""
        sender, sealed = parse_envelope(data, "pairing", MAX_REQUEST, LEAST_BOX)
        try:
            box = nacl.public.Box(self._x25519, nacl.public.PublicKey(sender))
            raw = box.decrypt(sealed)
        except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, ValueError):
            raise _refuse("forged", "the pair request does not open") from None
        body = parse_body(raw)
        if not hmac.compare_digest(body["to"].encode(), b64(self._public).encode()):
            raise _refuse("wrong_recipient", "the pair request was meant for another key")
        ts: float = body["ts"]
        if abs(now - ts) > self._max_skew:
            raise _refuse("stale", f"the pair request is {now - ts:+.0f}s away from our clock")
        msg = body["msg"]
        request = msg.get("request")
        if msg.get("type") != "pair" or not isinstance(request, dict):
            raise _refuse("malformed", "not a pair request")
        if request.get("secret_id") != secret_id:
            raise _refuse("wrong_recipient", "the pair request names another offer")
        if len(json.dumps(request)) > OPEN_BODY_LIMIT:
            raise _refuse("malformed", "the pair request is over the open routes' body limit")
        self._remember(body["n"], ts, now)
        reply_key = _x25519(request.get("box_public_key")) or sender
        return PairOpened(request, reply_key, body["n"])

    def _remember(self, nonce: str, ts: float, now: float) -> None:
        for old in [n for n, until in self._seen.items() if until < now]:
            del self._seen[old]
        if nonce in self._seen:
            raise _refuse("replayed", "this pair request was already received")
        if len(self._seen) >= REPLAY_KEPT:
            raise _refuse("replay_window_full", "too many pair requests; slow down")
        self._seen[nonce] = max(ts, now) + self._max_skew

    def seal_reply(self, opened: PairOpened, status: int, body: Any, now: float) -> bytes:
        msg = {"type": "pair_reply", "status": status, "body": body}
        plain = _body(opened.reply_key, now, msg, re=opened.nonce)
        signed = self._key.sign(plain).signature + plain
        box = nacl.public.Box(self._x25519, nacl.public.PublicKey(opened.reply_key))
        return _envelope(self._public, bytes(box.encrypt(signed)))


# --- the device's side ----------------------------------------------------------------------


def seal_request(
    daemon_key: bytes, box_key: nacl.public.PrivateKey, request: dict[str, Any], now: float
) -> tuple[bytes, str]:
    """The envelope carrying ``request`` (a ``POST /v1/pair`` body) and its nonce."""
    plain = _body(daemon_key, now, {"type": "pair", "request": request})
    daemon_x = nacl.signing.VerifyKey(daemon_key).to_curve25519_public_key()
    sealed = bytes(nacl.public.Box(box_key, daemon_x).encrypt(plain))
    nonce: str = json.loads(plain)["n"]
    return _envelope(bytes(box_key.public_key), sealed), nonce


def open_reply(
    daemon_key: bytes,
    box_key: nacl.public.PrivateKey,
    data: bytes,
    nonce: str,
    now: float,
    max_skew: float = MAX_SKEW,
) -> tuple[int, Any]:
    """``(status, body)`` of the daemon's reply to the request of ``nonce``; a message that is
    not that reply, from that daemon, raises :class:`SignalingRefused`."""
    # a PairReply is a few KB
    sender, sealed = parse_envelope(data, "pairing", 4 * MAX_REQUEST, LEAST_BOX)
    if not hmac.compare_digest(sender, daemon_key):
        raise _refuse("not_paired", "the reply is not from the payload's daemon")
    try:
        daemon_x = nacl.signing.VerifyKey(daemon_key).to_curve25519_public_key()
        signed = nacl.public.Box(box_key, daemon_x).decrypt(sealed)
        nacl.signing.VerifyKey(daemon_key).verify(signed[64:], signed[:64])
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, ValueError):
        raise _refuse("forged", "the reply does not open or its signature is wrong") from None
    body = parse_body(signed[64:])
    if body["to"] != b64(bytes(box_key.public_key)) or body.get("re") != nonce:
        raise _refuse("wrong_recipient", "the reply answers another request")
    if abs(now - body["ts"]) > max_skew:
        raise _refuse("stale", "the reply is too far from our clock")
    msg = body["msg"]
    status = msg.get("status")
    if msg.get("type") != "pair_reply" or not isinstance(status, int):
        raise _refuse("malformed", "not a pair reply")
    return status, msg.get("body")


async def request_pairing(
    broker: Rendezvous,
    payload: dict[str, Any],
    request: dict[str, Any],
    box_key: nacl.public.PrivateKey,
    clock: Callable[[], float] = time.time,
) -> tuple[int, Any]:
    """The device's side: send ``request`` (a ``POST /v1/pair`` body for ``payload``'s offer)
    through ``broker`` and return the daemon's ``(status, body)``. Replies are sealed to
    ``box_key`` (or to the request's ``box_public_key``, whose secret must then be
    ``box_key``). Put a deadline around it: a request the daemon drops is never answered."""
    daemon_key, the_topics = unb64(payload["pk"]), pairing_topics(unb64(payload["secret"]))
    await broker.subscribe(the_topics.to_device)
    envelope, nonce = seal_request(daemon_key, box_key, request, clock())
    await broker.publish(the_topics.to_daemon, envelope)
    while True:
        _topic, raw = await broker.receive()
        try:
            return open_reply(daemon_key, box_key, raw, nonce, clock())
        except SignalingRefused as exc:  # another device's reply, or not the daemon's
            log.info("rtc: ignored a message on the pairing topic (%s)", exc.code)


__all__ = [
    "MAX_REQUEST",
    "REMOTE",
    "PairOpened",
    "PairingDesk",
    "open_reply",
    "pairing_topics",
    "request_pairing",
    "seal_request",
]
