"""Credentials for a rendezvous that does not let anybody in: a self-hosted ntfy server with
``auth-default-access: deny-all``, a mosquitto with ``allow_anonymous false``.

Given in a 0600 file (``serve --rendezvous-token-file F``: an access token such as ntfy's
``tk_...``, or ``user:password``), in the OS keychain (``--rendezvous-token-keyring``), or in
the URL (``ntfy+https://user:pass@host``, ``ntfy+https://:tk_...@host``,
``mqtts://user:pass@host``). Sent as ntfy asks
(``Authorization: Bearer <token>``, or HTTP basic for a user and password) and in MQTT's CONNECT
(user name and password; a bare token is the password with an empty user name, as brokers that
take tokens read it).

They travel in one place only: the pairing payload's ``"rv"`` (:func:`device_url`), because a
device must reach the same server and the payload is already a secret meant for it alone.
Everywhere else a URL is logged or shown (the log, ``/v1/status``, ``doctor``, error messages,
the web app's Content-Security-Policy) it is :func:`redact`-ed or :func:`split_url`-stripped.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from pathlib import Path
from typing import Final, overload

import attrs

#: the OS keychain's account of the rendezvous's credentials (``serve --rendezvous-token-keyring``;
#: the service is the identity key's, ``sidecode-trio``)
KEYRING_ACCOUNT: Final = "rendezvous"
#: up to the last "@": a password with a "/", "?" or "#" not percent-encoded ends the authority
#: early (urlsplit then sees no credentials), and must not be shown either; a URL with an "@"
#: only in its path is shown with too much hidden, which is the safe way to be wrong
_USERINFO: Final = re.compile(r"^([A-Za-z][-+.A-Za-z0-9]*://).*@")


@attrs.frozen
class Credentials:
    """A user and password; a bare access token is ``user=""``."""

    user: str
    password: str = attrs.field(repr=False)

    def authorization(self) -> str:
        """The ``Authorization`` header ntfy takes: a bearer token, or HTTP basic."""
        if not self.user:
            return f"Bearer {self.password}"
        pair = f"{self.user}:{self.password}".encode()
        return f"Basic {base64.b64encode(pair).decode()}"


def parse_credentials(text: str) -> Credentials:
    """A credentials file's text: ``user:password``, or a bare token."""
    user, colon, password = text.strip().partition(":")
    return Credentials(user, password) if colon else Credentials("", user)


def read_credentials(path: Path) -> Credentials:
    """The credentials in ``path`` (checked by ``settings.secret_file_problem`` at load)."""
    return parse_credentials(path.read_text(errors="replace"))


def split_url(url: str) -> tuple[str, Credentials | None]:
    """``url`` without its user information, and the credentials that were there."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    bare = urllib.parse.urlunsplit(parts._replace(netloc=host))
    unquote = urllib.parse.unquote
    return bare, Credentials(unquote(user), unquote(password))


def device_url(url: str, credentials: Credentials | None) -> str:
    """``url`` with ``credentials`` in it (the form :func:`split_url` reads back), for the
    pairing payload: a device reaches the server as the daemon does."""
    bare, in_url = split_url(url)
    given = credentials or in_url
    if given is None:
        return bare
    parts = urllib.parse.urlsplit(bare)
    quote = urllib.parse.quote
    userinfo = f"{quote(given.user, safe='')}:{quote(given.password, safe='')}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))


@overload
def redact(url: str) -> str: ...
@overload
def redact(url: None) -> None: ...
def redact(url: str | None) -> str | None:
    """``url`` as it may be logged or shown: its user information (credentials) as ``***``."""
    return None if url is None else _USERINFO.sub(r"\1***@", url)


__all__ = [
    "KEYRING_ACCOUNT",
    "Credentials",
    "device_url",
    "parse_credentials",
    "read_credentials",
    "redact",
    "split_url",
]
