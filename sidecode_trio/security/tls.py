"""The daemon's TLS certificates: self-signed ECDSA P-256, short-lived, vouched for by the identity.

Browsers accept a self-signed certificate for WebTransport only through ``serverCertificateHashes``,
which requires ECDSA P-256 and a validity of at most 14 days; the same certificate serves HTTPS.
So certificates are short-lived: a ``next`` certificate is made a week before the ``current`` one
expires (clients learn its hash ahead of time from ``GET /v1/info``) and replaces it a day before.
Each certificate's SHA-256 hash is signed with the Ed25519 identity key: a client that knows the
daemon's key (from the QR code) can check the certificate it sees without any CA.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..host.private import write_atomic
from .identity import Identity, b64

LIFETIME: Final = dt.timedelta(days=13)
BACKDATE: Final = dt.timedelta(hours=1)  # tolerate clients whose clock is a little behind
MAKE_NEXT_BEFORE: Final = dt.timedelta(days=7)
PROMOTE_BEFORE: Final = dt.timedelta(days=1)
SIGNATURE_CONTEXT: Final = b"sidecode-trio cert v1\n"


def signed_message(cert_sha256: bytes) -> bytes:
    """What the identity key signs for a certificate (domain-separated)."""
    return SIGNATURE_CONTEXT + cert_sha256


@attrs.frozen
class Certificate:
    der: bytes = attrs.field(repr=False)
    cert_path: Path
    key_path: Path
    not_before: dt.datetime
    not_after: dt.datetime
    sha256: bytes = attrs.field(repr=False)  #: of ``der``, computed once at load


@attrs.frozen
class CertificateInfo:
    """One certificate as ``/v1/info`` describes it."""

    sha256: str  #: hex
    signature: str  #: base64url Ed25519 signature of SIGNATURE_CONTEXT + the raw hash
    not_before: float
    not_after: float


def _names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    seen: set[str] = {"localhost"}
    for host in [*hosts, "127.0.0.1", "::1", socket.gethostname()]:
        if not host or host in seen or host in ("0.0.0.0", "::"):  # noqa: S104 - skipped, not bound
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_certificate(
    directory: Path, name: str, hosts: Sequence[str], now: dt.datetime
) -> Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sidecode-trio")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + LIFETIME)
        .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(mode=0o700, exist_ok=True)
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    write_atomic(key_path, key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))  # fmt: skip
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return _load(cert_path, key_path)


def _load(cert_path: Path, key_path: Path) -> Certificate:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    return Certificate(
        der=der,
        cert_path=cert_path,
        key_path=key_path,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sha256=hashlib.sha256(der).digest(),
    )


class CertificateStore:
    """``current`` and, near its expiry, ``next``: kept in ``<state-dir>/tls/`` (0700/0600)."""

    def __init__(self, directory: Path, identity: Identity, hosts: Sequence[str]) -> None:
        self._dir = directory
        self._identity = identity
        self._hosts = list(hosts)
        self.current: Certificate | None = None
        self.next: Certificate | None = None
        self.context: ssl.SSLContext | None = None
        self._info: list[CertificateInfo] | None = None
        self._hashes: set[str] = set()

    def _try_load(self, name: str) -> Certificate | None:
        cert, key = self._dir / f"{name}.pem", self._dir / f"{name}.key"
        if not (cert.exists() and key.exists()):
            return None
        try:
            return _load(cert, key)
        except (ValueError, OSError):
            return None

    def refresh(self, now: dt.datetime | None = None) -> bool:
        """Load, make, rotate as needed. Returns True when ``current`` changed."""
        now = now or dt.datetime.now(dt.UTC)
        before = self.current.sha256 if self.current else None
        self.current = self.current or self._try_load("current")
        self.next = self.next or self._try_load("next")
        if self.current is None or self.current.not_after - now < PROMOTE_BEFORE:
            if self.next is not None and self.next.not_after - now > PROMOTE_BEFORE:
                for suffix in ("pem", "key"):
                    os.replace(self._dir / f"next.{suffix}", self._dir / f"current.{suffix}")
                self.current, self.next = (
                    _load(self._dir / "current.pem", self._dir / "current.key"),
                    None,
                )
            else:
                self.current, self.next = (
                    make_certificate(self._dir, "current", self._hosts, now),
                    None,
                )
        if self.next is None and self.current.not_after - now < MAKE_NEXT_BEFORE:
            self.next = make_certificate(self._dir, "next", self._hosts, now)
        self._info = None  # current or next may have changed
        changed = before is not None and before != self.current.sha256
        if changed and self.context is not None:
            self.context.load_cert_chain(self.current.cert_path, self.current.key_path)
        return changed

    def info(self) -> list[CertificateInfo]:
        """The current and next certificates, signed (recomputed only when they change)."""
        if self._info is None:
            self._info = [
                CertificateInfo(
                    sha256=cert.sha256.hex(),
                    signature=b64(self._identity.sign(signed_message(cert.sha256))),
                    not_before=cert.not_before.timestamp(),
                    not_after=cert.not_after.timestamp(),
                )
                for cert in (self.current, self.next)
                if cert is not None
            ]
            self._hashes = {entry.sha256 for entry in self._info}
        return self._info

    def hashes(self) -> set[str]:
        """Hex hashes of the certificates a device token may be bound to (every request)."""
        self.info()
        return self._hashes
