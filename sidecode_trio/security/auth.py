"""Who is asking: the local token, a device's signed token, or a one-time stream ticket.

* ``Authorization: Bearer <local token>``: the owner's own CLI, accepted from loopback only.
* ``Authorization: Sidecode <payload>.<signature>``: a paired device. The payload (base64url JSON)
  names the device, is valid for at most 10 minutes, and is bound to one of the daemon's
  certificate hashes; the signature is the device key's, over a fixed context and the payload.
  No long-lived secret ever crosses the wire.
* ``?ticket=<t>``: for ``EventSource``, which cannot set headers: a device asks for a ticket
  (``POST /v1/tickets``) valid once, for one path, for 60 seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
from collections.abc import Callable
from typing import Final

import attrs

from ..errors import Forbidden, Unauthorized
from .devices import Device, DeviceStore, Scope
from .identity import unb64, verify

AUTH_CONTEXT: Final = b"sidecode-trio auth v1\n"
MAX_TOKEN_LIFETIME: Final = 600.0
CLOCK_SKEW: Final = 60.0
TICKET_LIFETIME: Final = 60.0

# Permission modes from narrowest to widest; moving right needs the admin scope.
MODE_RANK: Final = {
    "plan": 0,
    "dontAsk": 1,
    "default": 2,
    "acceptEdits": 3,
    "auto": 4,
    "bypassPermissions": 5,
}


@attrs.frozen
class Principal:
    device_id: str | None  #: None: the local owner (local token)
    name: str
    scope: Scope

    def require(self, needed: Scope) -> None:
        if not self.scope.allows(needed):
            raise Forbidden(
                f"this needs the '{needed.value}' scope; {self.name!r} has '{self.scope.value}'",
                code="scope_required",
            )

    def require_mode_change(self, current: str, wanted: str) -> None:
        """Widening a permission mode needs ``admin``; anything else ``chat``. A mode up to
        ``default`` (where ``chat`` may start a session) is never a widening, so a device that
        entered ``plan`` can come back from it."""
        widening = MODE_RANK.get(wanted, 99) > max(MODE_RANK.get(current, 2), MODE_RANK["default"])
        self.require(Scope.ADMIN if widening else Scope.CHAT)


LOCAL = Principal(None, "local owner", Scope.ADMIN)


def check_token(token: str, devices: DeviceStore, cert_hashes: set[str], now: float) -> Device:
    """The device a token proves, or :class:`Unauthorized` saying why not."""
    payload, _, signature = token.partition(".")
    try:
        body = json.loads(unb64(payload))
        sig = unb64(signature)
        device_id, iat, exp, cert = (
            body["dev"],
            _timestamp(body["iat"]),
            _timestamp(body["exp"]),
            body["cert"],
        )
    except (ValueError, KeyError, TypeError, RecursionError):  # or nested too deep
        raise Unauthorized("malformed device token") from None
    if not 0 < exp - iat <= MAX_TOKEN_LIFETIME:
        raise Unauthorized(
            f"a device token must live more than 0 and at most {MAX_TOKEN_LIFETIME:.0f} seconds"
        )
    device = devices.find(str(device_id))
    if device is None or device.revoked_at is not None or device.kind != "key":
        raise Unauthorized("unknown or revoked device")
    if not verify(unb64(device.public_key), AUTH_CONTEXT + payload.encode(), sig):
        raise Unauthorized("the device token's signature does not verify")
    if iat > now + CLOCK_SKEW or exp <= now:
        raise Unauthorized("the device token is expired or not yet valid (check the clock)")
    if cert not in cert_hashes:
        raise Unauthorized("the device token is bound to another certificate")
    return device


def _timestamp(value: object) -> float:
    """A token's ``iat``/``exp``: a JSON number (not a boolean, not a string) that is finite
    (Python's JSON reader takes ``NaN`` and ``Infinity``, which compare false with anything)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        raise ValueError("out of range") from None
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number


class Tickets:
    """One-time, single-path, short-lived stream tickets; only their hashes are kept."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._tickets: dict[bytes, tuple[Principal, str, float]] = {}

    def issue(self, principal: Principal, path: str) -> tuple[str, float]:
        now = self._clock()
        self._tickets = {k: v for k, v in self._tickets.items() if v[2] > now}
        ticket = secrets.token_urlsafe(24)
        expires = now + TICKET_LIFETIME
        self._tickets[hashlib.sha256(ticket.encode()).digest()] = (principal, path, expires)
        return ticket, expires

    def redeem(self, ticket: str, path: str) -> Principal | None:
        key = hashlib.sha256(ticket.encode()).digest()
        entry = self._tickets.pop(key, None)
        if entry is None:
            return None
        principal, wanted, expires = entry
        if expires <= self._clock() or not hmac.compare_digest(wanted, path):
            return None
        return principal


class Links:
    """Open streams per device, so that revoking a device closes them at once."""

    def __init__(self) -> None:
        self._closers: dict[str, dict[int, Callable[[], None]]] = {}
        self._next = 0

    def register(self, principal: Principal, close: Callable[[], None]) -> Callable[[], None]:
        """Remember ``close`` for the principal's device; returns the function to forget it."""
        if principal.device_id is None:
            return lambda: None
        self._next += 1
        key, closers = self._next, self._closers.setdefault(principal.device_id, {})
        closers[key] = close
        return lambda: closers.pop(key, None) and None

    def close_device(self, device_id: str) -> int:
        closers = self._closers.pop(device_id, {})
        for close in closers.values():
            close()
        return len(closers)

    def count(self) -> int:
        return sum(len(c) for c in self._closers.values())
