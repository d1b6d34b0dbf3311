"""ICE configuration: server lists, coturn REST credentials, SDP candidate clean-up (sans-IO).

aiortc uses only the first usable STUN URL and the first usable TURN URL of its list, and falls
back to Google's public STUN server when given none; :func:`rtc_ice_servers` in
:mod:`.peer` therefore always passes an explicit list (``[]`` means host candidates only).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Final

from ..wire.signaling import IceServer as IceServer  # re-exported: ICE settings live here

TURN_TTL: Final = 600.0  # seconds a minted TURN credential stays valid


def turn_credentials(
    secret: bytes, user: str, now: float, ttl: float = TURN_TTL
) -> tuple[str, str]:
    """coturn's REST-API credentials (``use-auth-secret``): the username is the expiry time and
    a label, the password an HMAC-SHA1 of the username keyed by the shared secret. The daemon mints
    one per device and hands it over sealed; it expires by itself, so nothing needs revoking."""
    username = f"{int(now + ttl)}:{user}"
    digest = hmac.new(secret, username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def turn_server(
    urls: list[str], secret: bytes, user: str, now: float, ttl: float = TURN_TTL
) -> IceServer:
    username, password = turn_credentials(secret, user, now, ttl)
    return IceServer(list(urls), username, password)


def strip_mdns(sdp: str) -> tuple[str, list[str]]:
    """``sdp`` without its ``.local`` (mDNS) host candidates, and those candidate lines.

    Browsers hide host addresses behind mDNS names; aiortc resolves each one before it answers
    (1 s timeout each, multicast on the daemon's LAN), which adds a second to every set-up. The
    daemon answers the stripped offer and may add the candidates afterwards. Sign and hash the
    original offer, never the stripped one."""
    lines = sdp.split("\r\n")
    mdns = [line for line in lines if line.startswith("a=candidate:") and ".local " in line]
    keep = [line for line in lines if line not in mdns]
    return "\r\n".join(keep), mdns
