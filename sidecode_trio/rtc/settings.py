"""The WebRTC path's settings: the ``[rtc]`` table of the config file and ``serve``'s flags.

**A default broker, used only when asked.** ``--rendezvous`` alone (or ``rendezvous = "default"``)
turns the path on through :data:`DEFAULT_RENDEZVOUS`, a public MQTT broker that needs no account and
speaks MQTT over secure WebSocket (so the web app can use it too); ``--rendezvous URL`` names
another. Without the flag the path stays off, on purpose: a daemon that connected to a third party
at every start, unasked, would tell that operator the computer's address and when it is on (the
sealed payloads hide everything else); public brokers promise no availability; and the path needs
the ``rtc`` extra (aiortc, 133 MB with PyAV) that a plain install does not have. The pairing payload
carries the broker (``"rv"``), so devices need no configuration, and switching brokers costs a
re-pairing, nothing else (README "Use it from anywhere").

STUN, by contrast, has public defaults: a binding request tells the server only the address it
already sees, and without one no device behind a NAT could be reached without TURN.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import SplitResult, urlsplit

import attrs

from ..errors import ConfigError
from .auth import (
    KEYRING_ACCOUNT,
    Credentials,
    parse_credentials,
    read_credentials,
    redact,
    split_url,
)

if TYPE_CHECKING:
    import argparse  # only the CLI passes a parser; the daemon imports these settings too

#: the broker ``--rendezvous`` without a URL names: EMQX's public broker (no account, MQTT over
#: WebSocket with TLS on 8084, which browsers can reach; one of the three big public test brokers)
DEFAULT_RENDEZVOUS: Final = "wss://broker.emqx.io:8084/mqtt"

#: public STUN servers used when ``--stun`` is not given (two operators: either may go away)
DEFAULT_STUN: Final = ("stun:stun.l.google.com:19302", "stun:stun.cloudflare.com:3478")
RENDEZVOUS_SCHEMES: Final = ("mqtt", "mqtts", "ws", "wss", "ntfy+http", "ntfy+https")


def _rendezvous_url_problem(parts: SplitResult) -> str | None:
    """What the broker drivers (``broker._parse_url``, ``ntfy.parse_url``) would refuse."""
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
    except ValueError:  # not its words: a password cut by a "/" shows there as the "port"
        return "a bad port (a number from 0 to 65535 after the host)"
    if parts.scheme.startswith("ntfy+") and (parts.query or parts.fragment):
        return "an ntfy URL takes no query or fragment"
    return None


def _named(url: str | None) -> str | None:
    """``"default"`` is :data:`DEFAULT_RENDEZVOUS`; anything else is itself."""
    return DEFAULT_RENDEZVOUS if url == "default" else url


@attrs.frozen
class RtcSettings:
    #: the signaling broker (``mqtt[s]://`` or ``ws[s]://host[:port][/path]``, or an ntfy server:
    #: ``ntfy+https://host[/path]``); None: path off
    #: credentials may be in it (``user:pass@``): shown only through :func:`.auth.redact`
    rendezvous: str | None = attrs.field(
        default=None, converter=_named, repr=lambda url: repr(redact(url))
    )
    stun: tuple[str, ...] = DEFAULT_STUN  #: ``stun:host[:port]`` URLs; () = host candidates only
    #: ``turn:``/``turns:`` URLs of one coturn (``use-auth-secret``); () = no relay
    turn: tuple[str, ...] = ()
    turn_secret_file: Path | None = None  #: coturn's ``static-auth-secret``, in a 0600 file
    #: the rendezvous's access token or ``user:password`` (:mod:`.auth`), in a 0600 file
    rendezvous_token_file: Path | None = None
    #: the same, from the OS keychain (service ``sidecode-trio``, account ``rendezvous``)
    rendezvous_token_keyring: bool = False
    turn_ttl: float = 600.0  #: seconds a minted TURN credential stays valid
    ping_interval: float = 5.0  #: seconds between application pings on an idle link
    ping_misses: int = 3  #: unanswered pings before a link is closed as dead

    @property
    def enabled(self) -> bool:
        return self.rendezvous is not None

    def credentials(self) -> Credentials | None:
        """The rendezvous's credentials: the token file's or the keychain's, else the URL's,
        else None. OSError: the file cannot be read; ConfigError: the keychain has none."""
        if self.rendezvous_token_file is not None:
            return read_credentials(self.rendezvous_token_file)
        if self.rendezvous_token_keyring:
            return parse_credentials(_from_keychain())
        return split_url(self.rendezvous)[1] if self.rendezvous is not None else None

    def problems(self) -> list[str]:
        found = []
        if self.rendezvous is not None:
            parts, shown = urlsplit(self.rendezvous), redact(self.rendezvous)
            if parts.scheme not in RENDEZVOUS_SCHEMES or not parts.hostname:
                found.append(
                    "bad value @ $.rtc.rendezvous: an mqtt://, mqtts://, ws://, wss:// URL of "
                    f"a broker or an ntfy+https:// one of an ntfy server, got {shown!r}"
                )
            else:  # what the drivers refuse, said now rather than by the WebRTC task later
                why = _rendezvous_url_problem(parts)
                if why:
                    found.append(f"bad value @ $.rtc.rendezvous: {why}, got {shown!r}")
        found.extend(self._token_problems())
        for i, url in enumerate(self.stun):
            if not url.startswith(("stun:", "stuns:")) or len(url.partition(":")[2]) < 1:
                found.append(f"bad value @ $.rtc.stun[{i}]: a stun:host[:port] URL, got {url!r}")
        for i, url in enumerate(self.turn):
            if not url.startswith(("turn:", "turns:")) or len(url.partition(":")[2]) < 1:
                found.append(f"bad value @ $.rtc.turn[{i}]: a turn:host[:port] URL, got {url!r}")
        if self.turn and self.turn_secret_file is None:
            found.append(
                "bad value @ $.rtc.turn: needs turn_secret_file (--turn-secret-file), the "
                "coturn static-auth-secret the daemon mints credentials with"
            )
        if self.turn_secret_file is not None:
            if not self.turn:
                found.append("bad value @ $.rtc.turn_secret_file: given without a TURN URL")
            problem = secret_file_problem(self.turn_secret_file)
            if problem:
                found.append(f"bad value @ $.rtc.turn_secret_file: {problem}")
        if not 60 <= self.turn_ttl <= 86_400:
            found.append("bad value @ $.rtc.turn_ttl: between 60 and 86400 seconds")
        if self.ping_interval <= 0:
            found.append("bad value @ $.rtc.ping_interval: must be > 0 seconds")
        if self.ping_misses < 1:
            found.append("bad value @ $.rtc.ping_misses: must be at least 1")
        return found

    def _token_problems(self) -> list[str]:
        path = self.rendezvous_token_file
        if self.rendezvous_token_keyring:
            return self._keychain_problems()
        if path is None:
            return []
        where = "bad value @ $.rtc.rendezvous_token_file"
        if self.rendezvous is None:
            return [f"{where}: given without a rendezvous (--rendezvous URL)"]
        problem = secret_file_problem(path)
        if problem:
            return [f"{where}: {problem}"]
        text = path.read_text(errors="replace").strip()
        if not (text.isascii() and text.isprintable()):
            return [f"{where}: {path} must hold one line of printable ASCII"]
        if split_url(self.rendezvous)[1] is not None:
            return [f"{where}: the rendezvous URL has credentials too: give them in one place"]
        return []

    def _keychain_problems(self) -> list[str]:
        where = "bad value @ $.rtc.rendezvous_token_keyring"
        if self.rendezvous is None:
            return [f"{where}: given without a rendezvous (--rendezvous URL)"]
        if self.rendezvous_token_file is not None or split_url(self.rendezvous)[1] is not None:
            return [f"{where}: credentials are given elsewhere too: give them in one place"]
        try:
            text = _from_keychain()
        except ConfigError as exc:
            return [f"{where}: {exc.message}"]
        if not (text.isascii() and text.isprintable()):
            return [f"{where}: the keychain's entry must be one line of printable ASCII"]
        return []


def _from_keychain() -> str:
    """The rendezvous's credentials in the OS keychain (:data:`.auth.KEYRING_ACCOUNT`)."""
    from ..security import identity  # keyring: imported only when asked for

    backend = identity.keychain()
    if backend is None:
        raise ConfigError("no usable OS keychain here: use --rendezvous-token-file")
    try:
        text = backend.get_password(identity.KEYRING_SERVICE, KEYRING_ACCOUNT)
    except Exception as exc:  # keyring's backends raise their own kinds
        raise ConfigError(f"the OS keychain failed: {exc}") from None
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(
            f"no entry in the OS keychain: keyring set {identity.KEYRING_SERVICE} "
            f"{KEYRING_ACCOUNT}, then paste the token (or user:password)"
        )
    return text.strip()


def secret_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot hold a shared secret (missing, readable by others, empty), or None."""
    try:
        info = path.stat()
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a file"
    if info.st_mode & 0o077:
        return f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}): chmod 600 it"
    if info.st_uid != os.geteuid():
        return f"{path} belongs to another user"
    if info.st_size == 0 or not path.read_bytes().strip():
        return f"{path} is empty"
    return None


def read_secret(path: Path) -> bytes:
    """The secret in ``path`` (checked by :func:`secret_file_problem` at load), stripped."""
    return path.read_bytes().strip()


def add_flags(serve: argparse.ArgumentParser) -> None:
    """``serve``'s flags for the WebRTC path (they override the ``[rtc]`` table)."""
    rtc = serve.add_argument_group("from anywhere (WebRTC; README 'Use it from anywhere')")
    rtc.add_argument(
        "--rendezvous",
        metavar="URL",
        nargs="?",
        const="default",
        help="turn the WebRTC path on (off by default; needs the rtc extra) through this MQTT "
        "broker (wss://host:port/path, mqtts://...) or ntfy server (ntfy+https://ntfy.sh); "
        "user:password@ in the URL is sent to it, as --rendezvous-token-file is; "
        f"without a URL, the public {DEFAULT_RENDEZVOUS}",
    )
    rtc.add_argument(
        "--rendezvous-token-file",
        metavar="FILE",
        help="the rendezvous's access token (ntfy's tk_...) or user:password, for a server "
        "that lets nobody in without one; in a file only you can read (0600). Devices get it "
        "in the pairing payload",
    )
    rtc.add_argument(
        "--rendezvous-token-keyring",
        action="store_true",
        default=None,
        help="the same, from the OS keychain: service sidecode-trio, account rendezvous "
        "(keyring set sidecode-trio rendezvous)",
    )
    rtc.add_argument(
        "--stun",
        metavar="URL",
        action="append",
        help="a STUN server, stun:host:port (repeatable; default: public Google and Cloudflare)",
    )
    rtc.add_argument(
        "--turn", metavar="URL", action="append", help="a coturn URL, turn:host:3478 (repeatable)"
    )
    rtc.add_argument(
        "--turn-secret-file",
        metavar="FILE",
        help="coturn's static-auth-secret (use-auth-secret), in a file only you can read (0600)",
    )


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "rendezvous": args.rendezvous,
        "stun": args.stun,
        "turn": args.turn,
        "turn_secret_file": _absolute(args.turn_secret_file),
        "rendezvous_token_file": _absolute(args.rendezvous_token_file),
        "rendezvous_token_keyring": args.rendezvous_token_keyring,
    }


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None
