"""``doctor``'s reachability report: which paths a device would get to this computer.

* **direct**: the addresses the daemon serves (a device on the same network, or through
  ``--public-url``);
* **peer-to-peer**: the rendezvous is reachable (connect and subscribe) and the NAT lets a hole
  be punched. The NAT type comes from STUN binding requests sent *from one socket* to two STUN
  servers: the same mapped address from both means an endpoint-independent ("cone") mapping,
  which hole punching works through; two different ones mean a symmetric NAT, which needs TURN;
  a mapped address equal to our own means no NAT at all;
* **relayed**: TURN is configured, credentials are minted with the shared secret, and the TURN
  server accepts them (an Allocate, released at once).

The STUN and TURN messages (RFC 5389/5766, only what these checks need) are built and parsed
here, sans-IO; :func:`probe_nat` and :func:`probe_turn` are blocking drivers (one UDP socket, a
few retransmits) run on a thread of their own, so the network lab can put it in a namespace.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import attrs
import trio

from ..errors import ConfigError
from .auth import Credentials, redact, split_url
from .ice import turn_credentials
from .settings import RtcSettings, read_secret

MAGIC: Final = 0x2112A442
BINDING_REQUEST: Final = 0x0001
BINDING_SUCCESS: Final = 0x0101
ALLOCATE_REQUEST: Final = 0x0003
ALLOCATE_SUCCESS: Final = 0x0103
ALLOCATE_ERROR: Final = 0x0113
REFRESH_REQUEST: Final = 0x0004
ATTR_MAPPED: Final = 0x0001
ATTR_USERNAME: Final = 0x0006
ATTR_INTEGRITY: Final = 0x0008
ATTR_ERROR: Final = 0x0009
ATTR_LIFETIME: Final = 0x000D
ATTR_REALM: Final = 0x0014
ATTR_NONCE: Final = 0x0015
ATTR_RELAYED: Final = 0x0016
ATTR_TRANSPORT: Final = 0x0019
ATTR_XOR_MAPPED: Final = 0x0020
RETRIES: Final = (0.3, 0.6, 1.2)  # seconds waited after each send of one request

NatType = Literal["none", "cone", "symmetric", "unknown", "udp_blocked"]


# --- STUN messages (sans-IO) -------------------------------------------------------------------


def _attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def message(kind: int, tid: bytes, attributes: bytes = b"") -> bytes:
    return struct.pack("!HHI", kind, len(attributes), MAGIC) + tid + attributes


def with_integrity(kind: int, tid: bytes, attributes: bytes, key: bytes) -> bytes:
    """``attributes`` then MESSAGE-INTEGRITY (HMAC-SHA1 over the message whose length already
    counts it, RFC 5389 §15.4)."""
    header = struct.pack("!HHI", kind, len(attributes) + 24, MAGIC) + tid
    mac = hmac.new(key, header + attributes, hashlib.sha1).digest()
    return header + attributes + _attribute(ATTR_INTEGRITY, mac)


@attrs.frozen
class Parsed:
    kind: int
    tid: bytes
    attributes: dict[int, bytes]


def parse(data: bytes) -> Parsed | None:
    """A STUN message, or None for anything else (wrong cookie, truncated)."""
    if len(data) < 20:
        return None
    kind, length, magic = struct.unpack("!HHI", data[:8])
    if magic != MAGIC or kind & 0xC000 or len(data) < 20 + length:
        return None
    attributes: dict[int, bytes] = {}
    at, end = 20, 20 + length
    while at + 4 <= end:
        attr, size = struct.unpack("!HH", data[at : at + 4])
        attributes.setdefault(attr, data[at + 4 : at + 4 + size])
        at += 4 + size + (-size % 4)
    return Parsed(kind, data[8:20], attributes)


def address(parsed: Parsed, kind: int = ATTR_XOR_MAPPED) -> tuple[str, int] | None:
    """The (XOR-)MAPPED or XOR-RELAYED address of a response (IPv4)."""
    value = parsed.attributes.get(kind)
    xored = kind != ATTR_MAPPED
    if value is None and kind == ATTR_XOR_MAPPED:
        value, xored = parsed.attributes.get(ATTR_MAPPED), False
    if value is None or len(value) < 8 or value[1] != 0x01:
        return None
    port, raw = struct.unpack("!H", value[2:4])[0], int.from_bytes(value[4:8], "big")
    if xored:
        port, raw = port ^ (MAGIC >> 16), raw ^ MAGIC
    return socket.inet_ntoa(raw.to_bytes(4, "big")), port


def classify(local: tuple[str, int], mapped: list[tuple[str, int] | None]) -> NatType:
    """The NAT's mapping behaviour from the addresses two servers saw from one socket."""
    seen = [m for m in mapped if m is not None]
    if not seen:
        return "udp_blocked"
    if seen[0] == local:
        return "none"
    if len(seen) < 2:
        return "unknown"
    return "cone" if all(m == seen[0] for m in seen) else "symmetric"


# --- drivers (blocking, one socket) ------------------------------------------------------------


def server_address(url: str) -> tuple[str, int]:
    """``stun:host:port`` / ``turn:host:port?transport=udp`` → (IPv4 address, port)."""
    rest = url.partition(":")[2].partition("?")[0]
    parts = urlsplit("//" + rest)
    host, port = parts.hostname or "", parts.port or 3478
    infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
    return str(infos[0][4][0]), port


def _transact(sock: socket.socket, server: tuple[str, int], request: bytes) -> Parsed | None:
    tid = request[8:20]
    for wait in RETRIES:
        sock.sendto(request, server)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, _ = sock.recvfrom(2048)
            except (TimeoutError, BlockingIOError):
                break
            except OSError:
                return None  # ICMP unreachable surfaced as ECONNREFUSED
            parsed = parse(data)
            if parsed is not None and parsed.tid == tid:
                return parsed
    return None


def _local_ip(server: tuple[str, int]) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(server)  # no packet: only picks the route and source address
        return str(probe.getsockname()[0])


def probe_nat(servers: list[str]) -> dict[str, Any]:
    """Binding requests to each STUN server from one socket; the NAT type they imply."""
    resolved: list[tuple[str, int]] = []
    errors = []
    for url in servers:
        try:
            resolved.append(server_address(url))
        except (OSError, UnicodeError) as exc:
            errors.append(f"{url}: {exc}")
    if not resolved:
        return {"nat": "unknown", "mapped": [], "detail": "; ".join(errors) or "no STUN server"}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))  # noqa: S104 - one socket, every interface, like ICE
        port = sock.getsockname()[1]
        mapped: list[tuple[str, int] | None] = []
        for server in resolved:
            response = _transact(sock, server, message(BINDING_REQUEST, secrets.token_bytes(12)))
            ok = response is not None and response.kind == BINDING_SUCCESS
            mapped.append(address(response) if ok and response is not None else None)
        local = (_local_ip(resolved[0]), port)
    nat = classify(local, mapped)
    return {
        "nat": nat,
        "mapped": [f"{m[0]}:{m[1]}" if m else None for m in mapped],
        **({"detail": "; ".join(errors)} if errors else {}),
    }


def probe_turn(url: str, secret: bytes, user: str, now: float) -> dict[str, Any]:
    """Allocate a relay with credentials minted from ``secret`` (then release it at once)."""
    try:
        server = server_address(url)
    except (OSError, UnicodeError) as exc:
        return {"accepted": False, "detail": f"{url}: {exc}"}
    username, password = turn_credentials(secret, user, now, ttl=60)
    transport = _attribute(ATTR_TRANSPORT, struct.pack("!I", 17 << 24))  # UDP
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        first = _transact(
            sock, server, message(ALLOCATE_REQUEST, secrets.token_bytes(12), transport)
        )
        if first is None:
            return {"accepted": False, "detail": f"no answer from {url}"}
        realm, nonce = first.attributes.get(ATTR_REALM), first.attributes.get(ATTR_NONCE)
        if first.kind != ALLOCATE_ERROR or realm is None or nonce is None:
            return {"accepted": False, "detail": "the TURN server did not ask for credentials"}
        key = hashlib.md5(  # noqa: S324 - RFC 5389 long-term credential key
            f"{username}:{realm.decode()}:{password}".encode()
        ).digest()
        auth = (
            _attribute(ATTR_USERNAME, username.encode())
            + _attribute(ATTR_REALM, realm)
            + _attribute(ATTR_NONCE, nonce)
        )
        second = _transact(
            sock,
            server,
            with_integrity(ALLOCATE_REQUEST, secrets.token_bytes(12), transport + auth, key),
        )
        if second is None or second.kind != ALLOCATE_SUCCESS:
            error = second.attributes.get(ATTR_ERROR, b"") if second is not None else b""
            reason = f"{error[2] * 100 + error[3]} {error[4:].decode(errors='replace')}".strip()
            return {"accepted": False, "detail": f"credentials refused: {reason or 'no answer'}"}
        relayed = address(second, ATTR_RELAYED)
        release = _attribute(ATTR_LIFETIME, struct.pack("!I", 0)) + auth
        _transact(
            sock, server, with_integrity(REFRESH_REQUEST, secrets.token_bytes(12), release, key)
        )
    return {"accepted": True, "relayed": f"{relayed[0]}:{relayed[1]}" if relayed else None}


# --- the report --------------------------------------------------------------------------------


def live_settings(status: dict[str, Any] | None, configured: RtcSettings) -> RtcSettings:
    """The settings a running daemon reports (``/v1/status`` ``rtc``), else ``configured``."""
    if not isinstance(status, dict) or not status.get("enabled"):
        return configured
    given = status.get("settings") or {}
    try:
        secret_file = given.get("turn_secret_file")
        token_file = given.get("rendezvous_token_file")
        rendezvous = str(status["rendezvous"])  # redacted: credentials in it show as ***
        if configured.rendezvous is not None and redact(configured.rendezvous) == rendezvous:
            rendezvous = configured.rendezvous  # the config file's, credentials and all
        else:
            rendezvous = split_url(rendezvous)[0] if "***@" in rendezvous else rendezvous
        return attrs.evolve(
            configured,
            rendezvous=rendezvous,
            stun=tuple(str(u) for u in given.get("stun", configured.stun)),
            turn=tuple(str(u) for u in given.get("turn", ())),
            turn_secret_file=Path(secret_file) if secret_file else None,
            rendezvous_token_file=Path(token_file) if token_file else None,
            rendezvous_token_keyring=bool(given.get("rendezvous_token_keyring")),
        )
    except (KeyError, TypeError, AttributeError):
        return configured


def _on_own_thread(fn: Callable[[], dict[str, Any]], setup: Callable[[], None] | None) -> Any:
    """Run ``fn`` on a new thread (``setup`` first: the lab's namespace); never a reused one."""
    result: list[dict[str, Any]] = []

    def main() -> None:
        if setup is not None:
            setup()
        result.append(fn())

    thread = threading.Thread(target=main, name="reach", daemon=True)
    thread.start()
    thread.join()
    if not result:
        raise RuntimeError("the probe thread failed")
    return result[0]


async def _rendezvous(
    url: str, setup: Callable[[], None] | None, credentials: Credentials | None = None
) -> dict[str, Any]:
    from .broker import RendezvousError
    from .pubsub import open_rendezvous

    topic = f"sidecode/doctor-{secrets.token_hex(8)}"
    try:
        with trio.fail_after(15):
            async with open_rendezvous(url, setup, credentials) as broker:
                await broker.subscribe(topic)
                await broker.unsubscribe(topic)
    except RendezvousError as exc:
        return {"reachable": False, "detail": exc.message}
    except trio.TooSlowError:
        return {"reachable": False, "detail": f"no answer from {redact(url)} within 15s"}
    return {"reachable": True}


async def check(
    settings: RtcSettings,
    direct: list[str],
    thread_setup: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """The reachability report (``doctor``): paths, and the facts behind each."""
    remote = [u for u in direct if not any(h in u for h in ("//127.", "//[::1]", "//localhost"))]
    report: dict[str, Any] = {"direct": direct, "rtc": settings.enabled}
    paths = ["direct"] if remote else []
    if not settings.enabled:
        report |= {"paths": paths, "ok": True}
        report["detail"] = "the WebRTC path is off (serve --rendezvous URL turns it on)"
        return report
    assert settings.rendezvous is not None
    if importlib.util.find_spec("paho") is None:
        report |= {"paths": paths, "ok": False}
        report["detail"] = "--rendezvous needs the rtc extra: pip install 'sidecode-trio[rtc]'"
        return report
    stun = list(settings.stun)
    report["stun"] = await trio.to_thread.run_sync(
        _on_own_thread, lambda: probe_nat(stun), thread_setup
    )
    try:
        credentials = settings.credentials()
    except OSError as exc:
        report["rendezvous"] = {
            "reachable": False,
            "detail": f"cannot read the rendezvous token file: {exc.strerror}",
        }
    except ConfigError as exc:  # the keychain has none, or failed
        report["rendezvous"] = {"reachable": False, "detail": exc.message}
    else:
        report["rendezvous"] = await _rendezvous(settings.rendezvous, thread_setup, credentials)
    if settings.rendezvous.startswith("ntfy+"):
        report["rendezvous"]["note"] = (
            "the web app's signaling speaks MQTT only: it cannot use an ntfy server"
        )
    elif not settings.rendezvous.startswith(("ws://", "wss://")):
        report["rendezvous"]["note"] = (
            "browsers reach a broker only over ws:// or wss://: the web app cannot use this URL"
        )
    punchable = report["stun"]["nat"] in ("none", "cone")
    if report["rendezvous"]["reachable"] and punchable:
        paths.append("peer-to-peer")
    turn: dict[str, Any] = {"configured": bool(settings.turn)}
    if settings.turn and settings.turn_secret_file is not None:
        udp = next((u for u in settings.turn if "transport=tcp" not in u), settings.turn[0])
        try:
            secret = read_secret(settings.turn_secret_file)
        except OSError as exc:
            turn |= {"accepted": False, "detail": f"cannot read the secret: {exc.strerror}"}
        else:
            turn |= await trio.to_thread.run_sync(
                _on_own_thread, lambda: probe_turn(udp, secret, "doctor", clock()), thread_setup
            )
        if turn["accepted"] and report["rendezvous"]["reachable"]:
            paths.append("relayed")
    report["turn"] = turn
    report["paths"] = paths
    problems = []
    if not report["rendezvous"]["reachable"]:
        problems.append(f"rendezvous unreachable: {report['rendezvous']['detail']}")
    if report["stun"]["nat"] == "symmetric" and "relayed" not in paths:
        problems.append("a symmetric NAT: devices need TURN (serve --turn)")
    if settings.turn and not turn.get("accepted"):
        problems.append(f"TURN: {turn.get('detail')}")
    if problems:
        report["detail"] = "; ".join(problems)
    report["ok"] = not problems
    return report
