"""Pairing: one-time, expiring secrets shown as a QR code, and the proof a device sends back.

The pairing payload (QR code, link or JSON) carries the daemon's public key, where to reach it,
its certificate hash, a ``secret_id`` and a 32-byte ``secret``. The device answers with its own
Ed25519 public key and a name, an HMAC-SHA256 of the pairing transcript keyed by the secret (so
the secret itself never crosses the network) and its signature of the same transcript (so it
holds the key it names). It may also register an X25519 *box key* for sealed signaling
(``rtc/signaling.py``), bound into that transcript: the web app does, since its non-extractable
WebCrypto Ed25519 key cannot be converted to X25519 as a Python device's can. A secret works
once, expires (5 minutes by default), and dies after a few wrong proofs; failures are
rate-limited per client address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from typing import Any, Final

import attrs
import nacl.bindings
import nacl.exceptions

from ..errors import BadRequest, ClientError
from .devices import Scope
from .identity import b64, unb64, verify

PAIR_CONTEXT: Final = b"sidecode-trio pair v1\n"
#: the transcript's context when the device also registers an X25519 box key (its own context,
#: so no transcript with a box key can be read as one without, nor the other way round)
PAIR_BOX_CONTEXT: Final = b"sidecode-trio pair box v1\n"
RENDEZVOUS_CONTEXT: Final = b"sidecode-trio rendezvous v1\n"
MAX_PROOF_FAILURES: Final = 3  # wrong proofs before a secret is withdrawn
PAYLOAD_VERSION: Final = 1


class PairingRefused(ClientError):
    status = 403
    code = "pairing_refused"


class RateLimited(ClientError):
    status = 429
    code = "rate_limited"


def transcript(
    daemon_key: bytes,
    device_key: bytes,
    name: str,
    secret_id: str,
    box_key: bytes | None = None,
) -> bytes:
    """What both the HMAC and the device's signature cover. A device that registers an X25519
    box key (``box_key``, raw 32 bytes: the web app, whose Ed25519 key cannot be converted) binds
    it here, after the two fixed-length keys, under its own context; without one the transcript
    is the original one, so clients that derive their box key keep working unchanged."""
    if box_key is None:
        keys = [PAIR_CONTEXT, daemon_key, device_key]
    else:
        keys = [PAIR_BOX_CONTEXT, daemon_key, device_key, box_key]
    return b"".join([*keys, name.encode(), b"\n", secret_id.encode()])


def box_public_key(text: str | None) -> bytes | None:
    """The raw X25519 box key a pairing request registers (``box_public_key``), or None; a value
    that is not 32 bytes of base64url is ``400 bad_box_key`` (before the one-time secret is
    spent, so the device may try again)."""
    if text is None:
        return None
    try:
        raw = unb64(text)
    except (ValueError, base64.binascii.Error):  # type: ignore[attr-defined]
        raw = b""
    if len(raw) != 32:
        raise BadRequest(
            "box_public_key must be a base64url X25519 public key of 32 bytes",
            code="bad_box_key",
        )
    if not usable_box_key(raw):
        raise BadRequest(
            "box_public_key is a point of small order: no box can be made with it",
            code="bad_box_key",
        )
    return raw


def usable_box_key(raw: bytes) -> bool:
    """Whether a box can be made with the 32-byte X25519 public key ``raw``: a point of small
    order gives every secret key the all-zero shared secret, which libsodium refuses (PyNaCl
    raises from ``Box``, wherever a box to or from it is made)."""
    try:
        nacl.bindings.crypto_scalarmult(_ANY_SCALAR, raw)
    except nacl.exceptions.CryptoError:
        return False
    return True


_ANY_SCALAR: Final = hashlib.sha256(b"sidecode-trio small order probe").digest()


def prove(secret: bytes, message: bytes) -> bytes:
    return hmac.new(secret, message, hashlib.sha256).digest()


def rendezvous_secret(pairing_secret: bytes, pairing_transcript: bytes) -> bytes:
    """The per-device rendezvous secret (``rtc/signaling.py``: the device's broker topics),
    computed by both sides when pairing succeeds: an HMAC of the transcript keyed by the one-time
    secret, so it is bound to this device and only the QR code's holders can compute it."""
    return hmac.new(pairing_secret, RENDEZVOUS_CONTEXT + pairing_transcript, "sha256").digest()


@attrs.define
class Offer:
    secret_id: str
    secret: bytes = attrs.field(repr=False)
    scope: Scope
    expires_at: float
    failures: int = 0
    quic: list[str] = attrs.field(factory=list)  #: WebTransport URLs when the offer was made
    #: the signaling broker's URL (``"rv"``), when one is on; credentials may be in it
    rendezvous: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class Redeemed:
    """A pairing that succeeded: the scope granted, the device's rendezvous secret and the box
    key it registered (base64url, None when it derives its box key from its Ed25519 key)."""

    scope: Scope
    rendezvous: bytes = attrs.field(repr=False)
    box_public_key: str | None = None


@attrs.frozen
class PairingProof:
    secret_id: str
    device_public_key: str
    name: str
    mac: str
    signature: str
    box_public_key: str | None = None  #: base64url X25519 key, bound into the transcript


class RateLimiter:
    """At most ``limit`` failures per ``window`` seconds per key."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self._limit, self._window, self._clock = limit, window, clock
        self._failures: dict[str, list[float]] = {}

    def check(self, key: str) -> None:
        now = self._clock()
        recent = [t for t in self._failures.get(key, []) if now - t < self._window]
        self._failures[key] = recent
        if len(recent) >= self._limit:
            retry = int(self._window - (now - recent[0])) + 1
            raise RateLimited(f"too many failed attempts; try again in {retry}s")

    def fail(self, key: str) -> None:
        self._failures.setdefault(key, []).append(self._clock())
        if len(self._failures) > 10_000:  # bounded memory under a flood of addresses
            self._failures.pop(next(iter(self._failures)))


class Pairings:
    """The open pairing offers (in memory only: a secret is never written anywhere)."""

    def __init__(self, daemon_key: bytes, clock: Callable[[], float]) -> None:
        self._daemon_key = daemon_key
        self._clock = clock
        self._offers: dict[str, Offer] = {}
        self.limiter = RateLimiter(limit=5, window=60.0, clock=clock)
        self.quic_urls: list[str] = []  #: where devices reach the daemon over WebTransport
        self.rendezvous_url: str | None = None  #: the signaling broker (``serve --rendezvous``)
        self.web_origin: str | None = None  #: where the web app is hosted (``--web-origin``)
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` when an offer is made, used or withdrawn (the WebRTC task listens
        on each open offer's pairing topic: ``rtc/pairing.py``)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def open_offers(self) -> list[Offer]:
        """The offers that can still be used (expired ones are dropped first)."""
        self._expire()
        return list(self._offers.values())

    def offer(self, scope: Scope, ttl: float) -> Offer:
        self._expire()
        offer = Offer(secrets.token_hex(8), secrets.token_bytes(32), scope, self._clock() + ttl)
        offer.quic = list(self.quic_urls)
        offer.rendezvous = self.rendezvous_url
        self._offers[offer.secret_id] = offer
        self._changed()
        return offer

    def _expire(self) -> None:
        now = self._clock()
        for secret_id in [k for k, o in self._offers.items() if o.expires_at <= now]:
            del self._offers[secret_id]

    def redeem(self, proof: PairingProof, client: str) -> Redeemed:
        """Check ``proof``; on success the offer is used up and the granted scope returned with
        the device's rendezvous secret."""
        self.limiter.check(client)
        try:
            return self._redeem(proof)
        except PairingRefused:
            self.limiter.fail(client)
            raise
        finally:
            self._changed()  # the offer may be used up or withdrawn

    def _redeem(self, proof: PairingProof) -> Redeemed:
        box_key = box_public_key(proof.box_public_key)  # 400 before anything is spent
        offer = self._offers.get(proof.secret_id)
        if offer is None or offer.expires_at <= self._clock():
            self._offers.pop(proof.secret_id, None)
            raise PairingRefused("this pairing code is unknown, used or expired; run 'pair' again")
        try:
            device_key, mac, signature = (
                unb64(proof.device_public_key),
                unb64(proof.mac),
                unb64(proof.signature),
            )
        except (ValueError, base64.binascii.Error):  # type: ignore[attr-defined]
            raise PairingRefused("malformed pairing proof") from None
        if len(device_key) != 32 or not 1 <= len(proof.name) <= 100:
            raise PairingRefused(
                "a device needs a 32-byte Ed25519 key and a name of 1-100 characters"
            )
        message = transcript(self._daemon_key, device_key, proof.name, proof.secret_id, box_key)
        if not (
            hmac.compare_digest(prove(offer.secret, message), mac)
            and verify(device_key, message, signature)
        ):
            offer.failures += 1
            if offer.failures >= MAX_PROOF_FAILURES:
                del self._offers[proof.secret_id]
            raise PairingRefused("the pairing proof does not verify")
        del self._offers[proof.secret_id]  # one use only
        return Redeemed(
            offer.scope,
            rendezvous_secret(offer.secret, message),
            b64(box_key) if box_key is not None else None,
        )


def payload(
    offer: Offer, daemon_key: bytes, fingerprint: str, http: list[str], cert_sha256: str
) -> dict[str, Any]:
    """The pairing payload. ``"rv"`` (the broker's URL) appears only when a rendezvous is on:
    the path is off unless asked for (README "Use it from anywhere" says why)."""
    rv = {"rv": offer.rendezvous} if offer.rendezvous else {}
    return {
        "v": PAYLOAD_VERSION,
        "pk": b64(daemon_key),
        "fp": fingerprint,
        "http": http,
        "quic": offer.quic,
        "cert": cert_sha256,
        "sid": offer.secret_id,
        "secret": b64(offer.secret),
        "scope": offer.scope.value,
        "exp": int(offer.expires_at),
        **rv,
    }


def payload_link(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return "sidecode-trio://pair#" + b64(raw)


def web_link(data: dict[str, Any], origin: str | None = None) -> str:
    """The web app's pairing link: the payload rides in the URL fragment, which browsers never
    send to a server. It opens the app at ``origin`` (``serve --web-origin``: an exported
    bundle on a static HTTPS host) or else at the first address another device can reach
    (loopback last)."""
    raw = json.dumps(data, separators=(",", ":")).encode()
    if origin:
        return f"{origin.rstrip('/')}/#pair={b64(raw)}"
    urls: list[str] = list(data["http"])
    remote = [u for u in urls if not any(h in u for h in ("//127.", "//[::1]", "//localhost"))]
    base = (remote or urls)[0].rstrip("/")
    return f"{base}/app/#pair={b64(raw)}"
