"""The daemon's Ed25519 identity, kept in the OS keychain or, failing that, a 0600 file.

``keystore="auto"`` uses the ``keyring`` backend when one is usable (macOS Keychain, Secret
Service, ...) and falls back to ``<state-dir>/identity.key`` where none is (headless Linux, CI);
the daemon says which, once, in its log and in ``doctor``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path
from typing import Final, Literal

import attrs
import nacl.exceptions
import nacl.signing

from ..errors import ConfigError
from ..host.private import create_private, read_private

log = logging.getLogger(__name__)

KEYRING_SERVICE: Final = "sidecode-trio"
KEY_FILE: Final = "identity.key"
Keystore = Literal["auto", "keyring", "file"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fingerprint(public_key: bytes) -> str:
    """A short, readable fingerprint: 16 base32 characters of SHA-256, in groups of four."""
    digest = base64.b32encode(hashlib.sha256(public_key).digest()).decode()[:16]
    return "-".join(digest[i : i + 4] for i in range(0, 16, 4))


@attrs.frozen
class Identity:
    signing_key: nacl.signing.SigningKey = attrs.field(repr=False)
    stored_in: str  #: "keyring" or the key file's path

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def public_key_b64(self) -> str:
        return b64(self.public_key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        return False
    return True


def keyring_usable() -> bool:
    try:
        import keyring
        import keyring.backends.fail

        backend = keyring.get_keyring()
    except Exception:
        return False
    chained = getattr(backend, "backends", None)
    if isinstance(backend, keyring.backends.fail.Keyring):
        return False
    return chained is None or bool(chained)


def _account(state_dir: Path) -> str:
    return "identity:" + hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]


def _from_keyring(state_dir: Path) -> nacl.signing.SigningKey | None:
    import keyring

    try:
        stored = keyring.get_password(KEYRING_SERVICE, _account(state_dir))
        if stored is None:
            key = nacl.signing.SigningKey.generate()
            keyring.set_password(KEYRING_SERVICE, _account(state_dir), b64(bytes(key)))
            return key
        return nacl.signing.SigningKey(unb64(stored))
    except Exception as exc:
        log.warning("the OS keychain failed (%s); using the key file instead", exc)
        return None


def _from_file(path: Path) -> nacl.signing.SigningKey:
    stored = read_private(path)
    if stored is not None:
        seed = unb64(stored)
        if len(seed) != 32:
            raise ConfigError(
                f"{path} does not hold an Ed25519 key; move it away to make a new one"
            )
        return nacl.signing.SigningKey(seed)
    key = nacl.signing.SigningKey.generate()
    create_private(path, b64(bytes(key)))
    return key


def load_identity(state_dir: Path, keystore: Keystore = "auto") -> Identity:
    """The daemon's identity key, created on first use."""
    path = state_dir / KEY_FILE
    if keystore != "file" and not path.exists():
        if keyring_usable():
            key = _from_keyring(state_dir)
            if key is not None:
                return Identity(key, "keyring")
        elif keystore == "keyring":
            raise ConfigError("keystore = 'keyring' but no usable keyring backend was found")
        log.warning("no usable OS keychain: the identity key is kept in %s (mode 0600)", path)
    return Identity(_from_file(path), str(path))
