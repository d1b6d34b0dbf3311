"""Where pushes may go: the browsers' push services, and nowhere else.

A push endpoint is chosen by a client (any device with the ``approve`` scope, a watch), and the
daemon then POSTs to it from inside the owner's network. Left open, that is a blind SSRF: a
device could aim it at ``https://127.1``, ``169.254.169.254`` or a LAN printer and read the
``failures`` counter back as an oracle. Two checks close it:

* :func:`endpoint_problem` (at subscribe **and** before each delivery, so a subscription stored
  before this check is dropped, never sent to): an ``https`` URL on port 443 whose host is a
  *name* under one of the push services browsers use (:data:`PUSH_SERVICES`). IP literals in
  any spelling (``2130706433``, ``0x7f.1``, ``[::ffff:127.0.0.1]``) are refused as such.
* :class:`~.transport.GlobalOnlyBackend`, the push client's network backend: it resolves the
  name itself, requires **every** address to be global (not loopback, private, link-local,
  unique-local, multicast, reserved, nor an IPv4-mapped one of those), and connects to the
  checked address (TLS still verifies the certificate for the name: httpcore sends SNI and
  checks the name from the URL, not from the address). A push service whose DNS answer was
  poisoned or split-horizon cannot route a push inwards.

An allow-list was chosen over "any global host" because push endpoints only ever come from the
browsers' push services, and a global-address check alone still lets a device make the daemon
POST to any server on the internet. The webhook is not checked: only the owner sets it (config or
``--notify-webhook``), and a LAN ntfy is a fair choice for it.

``allow_loopback`` (tests only, ``push_allow_loopback``) also accepts ``http(s)`` on a loopback
address, and lets the backend connect to loopback.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Final
from urllib.parse import urlsplit

import trio

from ..host.addresses import is_loopback

#: push service hosts (the name itself or any name under it): Chrome/Edge-on-Android/Opera/
#: Samsung (FCM), Firefox (Mozilla autopush), Safari (Apple web push), Edge on Windows (WNS)
PUSH_SERVICES: Final = (
    "fcm.googleapis.com",
    "android.googleapis.com",
    "push.services.mozilla.com",
    "push.apple.com",
    "notify.windows.com",
)
MAX_ENDPOINT: Final = 2048
#: a host inet_aton would read as an IPv4 address: 127.1, 2130706433, 0x7f.1, 0177.0.0.1
NUMERIC_HOST: Final = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+))*\.?$")

Resolver = Callable[[str, int], Awaitable[Iterable[str]]]


def endpoint_problem(endpoint: str, allow_loopback: bool) -> str | None:
    """Why a push may not go to ``endpoint``, or None."""
    if len(endpoint) > MAX_ENDPOINT:
        return f"endpoint is longer than {MAX_ENDPOINT} characters"
    try:
        parts = urlsplit(endpoint)
        host, port = (parts.hostname or "").rstrip("."), parts.port
    except ValueError:  # an unclosed IPv6 bracket, a port out of range
        return "endpoint is not a URL"
    if parts.scheme not in ("https", "http") or not host or parts.username or parts.password:
        return "endpoint must be an https URL of a push service"
    if allow_loopback and is_loopback(host):
        return None
    if parts.scheme != "https":
        return "endpoint must use https"
    if _is_address(host):
        return "endpoint must name a push service, not an address"
    if port not in (None, 443):
        return "endpoint must use the https port (443)"
    if not any(host == s or host.endswith("." + s) for s in PUSH_SERVICES):
        return "endpoint is not a known push service (" + ", ".join(PUSH_SERVICES) + ")"
    return None


def _is_address(host: str) -> bool:
    if NUMERIC_HOST.match(host):
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def allowed_address(address: str, allow_loopback: bool) -> bool:
    """May a push connect to ``address``? Only a global unicast one (loopback too in tests)."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if allow_loopback and ip.is_loopback:
        return True
    return ip.is_global and not ip.is_multicast


async def resolve(host: str, port: int) -> list[str]:
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]
