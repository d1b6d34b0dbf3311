"""Web Push message encryption (RFC 8291) with the ``aes128gcm`` content coding (RFC 8188).

A push service carries the message but cannot read it: the payload is encrypted to the browser's
P-256 key (``p256dh``) and authentication secret (``auth``) from its subscription, with a fresh
ephemeral key and salt per message. One record; the whole body is at most
:data:`RECORD_SIZE` bytes, which every push service accepts.
"""

from __future__ import annotations

import os
import struct
from typing import Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..security.identity import unb64

RECORD_SIZE: Final = 4096
HEADER_SIZE: Final = 16 + 4 + 1 + 65  # salt, record size, key id length, key id
TAG_SIZE: Final = 16
#: the largest plaintext one record holds (one byte goes to the padding delimiter)
MAX_PLAINTEXT: Final = RECORD_SIZE - HEADER_SIZE - TAG_SIZE - 1
LAST_RECORD: Final = b"\x02"


class BadSubscriptionKey(ValueError):
    """A subscription's ``p256dh`` or ``auth`` is not what RFC 8291 says it must be."""


def subscription_key(p256dh: str) -> ec.EllipticCurvePublicKey:
    """The browser's public key from its base64url uncompressed point (65 bytes)."""
    problem = BadSubscriptionKey(
        "keys.p256dh must be a base64url uncompressed P-256 point (65 bytes) on the curve"
    )
    try:
        raw = unb64(p256dh)
    except (ValueError, TypeError):
        raise problem from None
    if len(raw) != 65 or raw[0] != 4:
        raise problem
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        raise problem from None


def auth_secret(auth: str) -> bytes:
    try:
        secret = unb64(auth)
    except (ValueError, TypeError):
        secret = b""
    if len(secret) != 16:
        raise BadSubscriptionKey("keys.auth must be 16 bytes, base64url")
    return secret


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _expand(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA-256 (extract with ``salt``, expand with ``info``)."""
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)


def encrypt(
    plaintext: bytes,
    receiver: ec.EllipticCurvePublicKey,
    secret: bytes,
    *,
    salt: bytes | None = None,
    sender: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """The ``aes128gcm`` body for ``plaintext`` (``salt`` and ``sender`` are fixed only by
    tests against the RFC's example; normally both are fresh for every message)."""
    if len(plaintext) > MAX_PLAINTEXT:
        raise ValueError(f"a push payload holds at most {MAX_PLAINTEXT} bytes")
    salt = os.urandom(16) if salt is None else salt
    sender = ec.generate_private_key(ec.SECP256R1()) if sender is None else sender
    sender_point, receiver_point = _point(sender.public_key()), _point(receiver)
    shared = sender.exchange(ec.ECDH(), receiver)
    # RFC 8291 §3.4: the input keying material binds both public keys and the auth secret.
    ikm = _expand(shared, secret, b"WebPush: info\x00" + receiver_point + sender_point, 32)
    # RFC 8188 §2.2: the content-encryption key and the nonce, from the salt.
    cek = _expand(ikm, salt, b"Content-Encoding: aes128gcm\x00", 16)
    nonce = _expand(ikm, salt, b"Content-Encoding: nonce\x00", 12)
    record = AESGCM(cek).encrypt(nonce, plaintext + LAST_RECORD, None)
    header = salt + struct.pack("!IB", RECORD_SIZE, len(sender_point)) + sender_point
    return header + record
