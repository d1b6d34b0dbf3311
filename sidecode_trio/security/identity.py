"""The daemon's Ed25519 identity, kept in the OS keychain or, failing that, a 0600 file.

``keystore="auto"`` uses the ``keyring`` backend when one is usable (macOS Keychain, Secret
Service, ...) and falls back to ``<state-dir>/identity.key`` where none is (headless Linux, CI);
the daemon says which, once, in its log and in ``doctor``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import sys
from pathlib import Path
from typing import Any, Final, Literal

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


#: the OS keychains keyring would pick from, per platform, best first: trying these directly
#: spares ``keyring.get_keyring()``, which imports and probes every backend it can find
OS_KEYCHAINS: Final = {
    "darwin": ("keyring.backends.macOS.Keyring",),
    "win32": ("keyring.backends.Windows.WinVaultKeyring",),
    "linux": (
        "keyring.backends.SecretService.Keyring",
        "keyring.backends.libsecret.Keyring",
        "keyring.backends.kwallet.DBusKeyring",
    ),
}


@functools.cache
def keychain() -> Any:
    """The keyring backend to use (the user's configured one, else the platform's first usable
    keychain), or None. Resolved once, and only when the key is not in its file."""
    try:
        import keyring.backends.fail
        import keyring.core

        configured = keyring.core.load_env() or keyring.core.load_config()
    except Exception:
        return None
    if configured is not None:
        chained = getattr(configured, "backends", None)
        usable = not isinstance(configured, keyring.backends.fail.Keyring)
        return configured if usable and (chained is None or chained) else None
    platform = "linux" if sys.platform.startswith("linux") else sys.platform
    for name in OS_KEYCHAINS.get(platform, ()):
        try:
            backend = keyring.core.load_keyring(name)  # RuntimeError: not usable here
        except Exception as exc:
            log.debug("keychain %s: %s", name, exc)
            continue
        if backend.priority > 0:
            return backend
    return None


def keyring_usable() -> bool:
    return keychain() is not None


def _account(state_dir: Path) -> str:
    return "identity:" + hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]


def _from_keyring(state_dir: Path) -> nacl.signing.SigningKey | None:
    keyring = keychain()
    if keyring is None:
        return None
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
