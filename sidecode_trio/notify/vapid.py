"""The daemon's VAPID key (RFC 8292): it signs every push request, so push services know that
the sender is the one the browser subscribed with (``applicationServerKey``).

A P-256 key, created on first use and kept like the identity key: in the OS keychain when one is
usable (``keystore``), otherwise ``<state-dir>/vapid.key`` (mode 0600). Changing it invalidates
every subscription (browsers must subscribe again).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import attrs
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ..errors import ConfigError
from ..host.private import create_private, read_private
from ..security.identity import KEYRING_SERVICE, Keystore, b64, keychain, keyring_usable, unb64

log = logging.getLogger(__name__)

KEY_FILE: Final = "vapid.key"
JWT_LIFETIME: Final = 12 * 3600.0  # push services refuse more than 24 h


@attrs.frozen
class VapidKey:
    private_key: ec.EllipticCurvePrivateKey = attrs.field(repr=False)
    stored_in: str

    @property
    def public_key_b64(self) -> str:
        """The ``applicationServerKey`` a browser subscribes with (base64url, 65 bytes)."""
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b64(raw)

    def jwt(self, audience: str, subject: str, now: float) -> str:
        """An ES256 JWT for one push service origin (RFC 8292 §2)."""
        header = b64(json.dumps({"typ": "JWT", "alg": "ES256"}, separators=(",", ":")).encode())
        claims = {"aud": audience, "exp": int(now + JWT_LIFETIME), "sub": subject}
        body = b64(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{header}.{body}".encode()
        der = self.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)  # JWS wants the raw r || s, not DER
        return f"{header}.{body}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def authorization(self, endpoint: str, subject: str, now: float) -> str:
        """The ``Authorization`` header for a push to ``endpoint``."""
        parts = urlsplit(endpoint)
        token = self.jwt(f"{parts.scheme}://{parts.netloc}", subject, now)
        return f"vapid t={token}, k={self.public_key_b64}"


def _from_scalar(raw: bytes) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())


def _scalar(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_numbers().private_value.to_bytes(32, "big")


def _account(state_dir: Path) -> str:
    return "vapid:" + hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]


def _from_keyring(state_dir: Path) -> ec.EllipticCurvePrivateKey | None:
    keyring = keychain()  # the one backend the identity key uses, not every one installed
    if keyring is None:
        return None
    try:
        stored = keyring.get_password(KEYRING_SERVICE, _account(state_dir))
        if stored is None:
            key = ec.generate_private_key(ec.SECP256R1())
            keyring.set_password(KEYRING_SERVICE, _account(state_dir), b64(_scalar(key)))
            return key
        return _from_scalar(unb64(stored))
    except Exception as exc:
        log.warning("the OS keychain failed (%s); keeping the VAPID key in a file", exc)
        return None


def _from_file(path: Path) -> ec.EllipticCurvePrivateKey:
    stored = read_private(path)
    if stored is not None:
        try:
            return _from_scalar(unb64(stored))
        except ValueError:
            raise ConfigError(
                f"{path} does not hold a P-256 key; move it away to make a new one "
                "(installed web apps then subscribe again)"
            ) from None
    key = ec.generate_private_key(ec.SECP256R1())
    create_private(path, b64(_scalar(key)))
    return key


def load_vapid(state_dir: Path, keystore: Keystore = "auto") -> VapidKey:
    """The VAPID key, created on first use, where the identity key's rules say."""
    path = state_dir / KEY_FILE
    if keystore != "file" and not path.exists() and keyring_usable():
        key = _from_keyring(state_dir)
        if key is not None:
            return VapidKey(key, "keyring")
    return VapidKey(_from_file(path), str(path))
