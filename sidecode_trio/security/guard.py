"""The security service a transport consults: authenticate, pair, manage devices.

It holds the identity, the certificates, the device store, the open pairing offers, the stream
tickets and the per-device open links; transports (HTTP today, QUIC later) call
:meth:`Guard.authenticate` once per request or connection and pass the :class:`Principal` on.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import time
from collections.abc import Callable
from typing import Any, Final

from ..errors import ClientError, Unauthorized
from ..printable import check_device_name
from .auth import LOCAL, Links, Principal, Tickets, check_token
from .devices import Device, DeviceStore, Scope
from .identity import Identity, fingerprint, unb64
from .pairing import (
    PairingProof,
    Pairings,
    RateLimited,
    RateLimiter,
    payload,
    payload_link,
    web_link,
)
from .tls import CertificateStore

AUTH_FAILURES: Final = 120  # failed authentications per minute, per address and per credential


def _named(authorization: str) -> str | None:
    """Which credential a failed ``Authorization`` named (never trusted, only counted)."""
    scheme, _, credential = authorization.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return "local token"
    if scheme == "sidecode":
        try:
            device = json.loads(unb64(credential.strip().partition(".")[0])).get("dev")
        except (ValueError, AttributeError, RecursionError):
            return None
        return f"device {device}" if isinstance(device, str) else None
    return None


def is_loopback_peer(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return address == "localhost"


class Guard:
    def __init__(
        self,
        identity: Identity,
        certificates: CertificateStore,
        devices: DeviceStore,
        local_token: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.certificates = certificates
        self.devices = devices
        self._local_hash = hashlib.sha256(local_token.encode()).digest()
        self._clock = clock
        self.pairings = Pairings(identity.public_key, clock)
        self.tickets = Tickets(clock)
        self.links = Links()
        #: failed authentications per client address and per credential named (device id),
        #: shared by every transport (HTTP, WebTransport, WatchCode) so none adds its own quota
        self.auth_failures = RateLimiter(limit=AUTH_FAILURES, window=60.0, clock=clock)
        self.urls: list[str] = []  #: where this daemon can be reached (for pairing payloads)

    # -- requests ----------------------------------------------------------------------------

    def authenticate(
        self, authorization: str | None, ticket: str | None, path: str, remote: str | None
    ) -> Principal:
        """The principal a request proves. A credential that verifies is always accepted:
        others' failures (from the same address, or naming the same device) never lock it
        out; failures only make further failures cheap (429, no audit entry)."""
        try:
            return self._authenticate(authorization or "", ticket, path, remote)
        except Unauthorized as exc:
            raise self.refused(remote, _named(authorization or ""), path, exc) from None

    def refused(
        self, remote: str | None, credential: str | None, where: str, exc: Unauthorized
    ) -> ClientError:
        """Count a failed authentication against the address and the credential it named;
        the error to answer with: ``exc`` (audited) or, past the limit, :class:`RateLimited`."""
        client = remote or "?"
        keys = [f"address {client}"] + ([f"credential {credential}"] if credential else [])
        for key in keys:
            try:
                self.auth_failures.check(key)
            except RateLimited as limited:
                return limited  # not counted further, nor audited: bounded memory and audit
        for key in keys:
            self.auth_failures.fail(key)
        self.devices.audit("auth_failed", None, f"from {client} on {where}: {exc.message}")
        return exc

    def _authenticate(
        self, authorization: str, ticket: str | None, path: str, remote: str | None
    ) -> Principal:
        scheme, _, credential = authorization.partition(" ")
        scheme, credential = scheme.lower(), credential.strip()
        if scheme == "bearer":
            supplied = hashlib.sha256(credential.encode()).digest()
            if hmac.compare_digest(supplied, self._local_hash):
                if not is_loopback_peer(remote):
                    raise Unauthorized("the local access token is accepted from this computer only")
                return LOCAL
            raise Unauthorized("wrong access token")
        if scheme == "sidecode":
            device = check_token(
                credential, self.devices, self.certificates.hashes(), self._clock()
            )
            self.devices.touch(device.id, self._clock())
            return Principal(device.id, device.name, device.scope)
        if ticket:
            principal = self.tickets.redeem(ticket, path)
            if principal is not None and self._still_allowed(principal):
                return principal
            raise Unauthorized("this stream ticket is unknown, used, expired or for another path")
        raise Unauthorized("credentials required: Authorization: Sidecode <device token>")

    def authenticate_secret(self, secret: str, path: str, remote: str | None) -> Principal:
        """A WatchCode-compatible device by its static secret (the WatchCode routes only)."""
        device = self.devices.by_secret(secret) if secret else None
        if device is None:
            exc = Unauthorized("unknown or revoked WatchCode secret")
            raise self.refused(remote, None, path, exc)
        self.devices.touch(device.id, self._clock())
        return Principal(device.id, device.name, device.scope)

    def _still_allowed(self, principal: Principal) -> bool:
        if principal.device_id is None:
            return True
        device = self.devices.find(principal.device_id)
        return device is not None and device.revoked_at is None

    # -- pairing and devices -----------------------------------------------------------------

    def offer(self, scope: Scope, ttl: float) -> dict[str, Any]:
        """A new one-time pairing payload (what the QR code carries)."""
        offer = self.pairings.offer(scope, ttl)
        current = self.certificates.current
        cert = current.sha256.hex() if current is not None else ""
        data = payload(offer, self.identity.public_key, self.identity.fingerprint, self.urls, cert)
        links = {"link": payload_link(data), "web_link": web_link(data) if self.urls else None}
        return {"payload": data, **links, "expires_at": offer.expires_at}

    def pair(self, proof: PairingProof, remote: str | None) -> Device:
        check_device_name(proof.name)  # before the offer is spent: the phone may try again
        try:
            scope = self.pairings.redeem(proof, remote or "?")
        except Exception as exc:
            self.devices.audit("pair_failed", None, f"from {remote or '?'}: {exc}")
            raise
        key = proof.device_public_key
        return self.devices.add(proof.name, key, fingerprint(unb64(key)), scope)

    def revoke(self, device_id: str) -> tuple[Device, int]:
        device = self.devices.revoke(device_id)
        return device, self.links.close_device(device_id)
