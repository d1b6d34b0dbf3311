"""Which host names and addresses are this machine's own (loopback).

Below both ``config`` (a loopback bind means plain HTTP and the Host guard) and ``notify`` (a push
endpoint on this machine is refused unless allowed), so neither imports the other for it.
"""

from __future__ import annotations

import ipaddress
from typing import Final

LOOPBACK_NAMES: Final = frozenset({"localhost"})


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
