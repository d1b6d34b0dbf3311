"""The security service a transport consults: authenticate, pair, manage devices.

It holds the identity, the certificates, the device store, the open pairing offers, the stream
tickets and the per-device open links. Every transport authenticates here, through one path:

* a request (HTTP, the direct event stream, WatchCode ``/api``): :func:`check_host`, then
  :meth:`Guard.admit` with the request's :class:`Credentials`;
* a link that proves a device key once (WebTransport: a signature over the connection's nonce
  and certificate; a WebRTC link bound to its signed fingerprint): :meth:`Guard.admit_signed`,
  then :meth:`Guard.current` before each request (scope changes and revocation apply at once).

Failures are counted by the one limiter (per address and per credential named) and audited in
:meth:`Guard.refused`, whichever transport they came from.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import time
from collections.abc import Callable
from typing import Any, Final

import attrs

from ..errors import ClientError, Forbidden, Unauthorized
from ..printable import check_device_name
from .auth import LOCAL, Links, Principal, Tickets, check_token
from .devices import Device, DeviceStore, Scope
from .identity import Identity, fingerprint, unb64, verify
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


@attrs.frozen
class Credentials:
    """What a request offers, as its transport read it (header names as HTTP has them)."""

    path: str
    remote: str | None
    authorization: str | None = None  #: the ``Authorization`` header
    ticket: str | None = None  #: ``?ticket=`` (a GET's only)
    secret: str | None = None  #: a WatchCode device's static secret (the ``/api`` routes only)


def check_host(host: str, allowed: set[str] | None) -> None:
    """The DNS-rebinding guard: ``host`` (lower case) must be one of this daemon's addresses."""
    if allowed is not None and host not in allowed:
        raise Forbidden(f"Host {host!r} is not this daemon's address", code="bad_host")


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
        *,
        open_routes: frozenset[tuple[str, str]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``open_routes``: the ``(method, path)`` served without credentials, from the
        operation table (``ops.front.open_routes()``: the guard is below the table, so it is
        handed the set rather than reading it)."""
        self.identity = identity
        self.open_routes = open_routes
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

    def is_open(self, method: str, path: str) -> bool:
        """Whether a request is served without credentials (the path exactly, no query)."""
        return (method.upper(), path) in self.open_routes

    def admit(self, offered: Credentials) -> Principal:
        """The principal a request's credentials prove (every request transport's one check):
        a WatchCode secret, else the ``Authorization`` header or a stream ticket."""
        if offered.secret:
            return self.authenticate_secret(offered.secret, offered.path, offered.remote)
        return self.authenticate(
            offered.authorization, offered.ticket, offered.path, offered.remote
        )

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

    # -- links -------------------------------------------------------------------------------

    def admit_signed(
        self,
        device_id: str,
        signature: str,
        message: bytes,
        remote: str | None,
        where: str,
        pinned: bytes | None = None,
    ) -> Principal:
        """A link that proves a paired device's key once: ``signature`` (base64url) over
        ``message``, which binds it to this link (its nonce and certificate). ``pinned``: the
        device key the transport already authenticated (a WebRTC link's signed DTLS
        fingerprint); the device must own it. Failures count and are audited like a
        request's."""
        try:
            device = self._verify_signed(device_id, signature, message, pinned)
        except Unauthorized as exc:
            raise self.refused(remote, f"device {device_id}", where, exc) from None
        self.devices.touch(device.id, self._clock())
        return Principal(device.id, device.name, device.scope)

    def _verify_signed(
        self, device_id: str, signature: str, message: bytes, pinned: bytes | None = None
    ) -> Device:
        device = self.devices.find(device_id)
        if device is None or device.revoked_at is not None or device.kind != "key":
            raise Unauthorized("unknown or revoked device")  # a WatchCode secret has no key
        try:
            raw, public_key = unb64(signature), unb64(device.public_key)
        except ValueError:
            raise Unauthorized("malformed signature") from None
        if not verify(public_key, message, raw):
            raise Unauthorized("the signature does not verify (nonce, certificate, device id)")
        if pinned is not None and not hmac.compare_digest(public_key, pinned):
            raise Unauthorized("this link was opened by another device's key")
        return device

    def current(self, principal: Principal) -> Principal | None:
        """The principal as the device store has it now (scope changes apply at once); None if
        its device was revoked or removed meanwhile."""
        if principal.device_id is None:
            return principal
        device = self.devices.find(principal.device_id)
        if device is None or device.revoked_at is not None:
            return None
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
        origin = self.pairings.web_origin
        web = web_link(data, origin) if self.urls or origin else None
        links = {"link": payload_link(data), "web_link": web}
        return {"payload": data, **links, "expires_at": offer.expires_at}

    def pair(self, proof: PairingProof, remote: str | None) -> Device:
        check_device_name(proof.name)  # before the offer is spent: the phone may try again
        try:
            redeemed = self.pairings.redeem(proof, remote or "?")
        except Exception as exc:
            self.devices.audit("pair_failed", None, f"from {remote or '?'}: {exc}")
            raise
        key = proof.device_public_key
        return self.devices.add(
            proof.name,
            key,
            fingerprint(unb64(key)),
            redeemed.scope,
            redeemed.rendezvous,
            redeemed.box_public_key,
        )

    def revoke(self, device_id: str) -> tuple[Device, int]:
        device = self.devices.revoke(device_id)
        return device, self.links.close_device(device_id)
