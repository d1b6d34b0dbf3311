"""The notifier's settings: checked with the rest of the config, then handed to the notifier."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, Protocol
from urllib.parse import urlsplit

import attrs

from .messages import WebhookFormat
from .policy import ALL_KINDS, Details, Kind, Timing

#: RFC 8292 needs a contact; Apple refuses a subject whose host does not resolve
DEFAULT_SUBJECT: Final = "https://pypi.org/project/sidecode-trio/"
UNRESOLVABLE: Final = (".local", ".localhost", ".invalid", ".test", ".example", ".internal")
HEADER_NAME: Final = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


class NotifyConfig(Protocol):
    """The daemon config's notification fields: what this module reads of ``DaemonConfig``.

    A protocol, so that ``config`` (which checks these settings with the rest) can import this
    module without this module importing ``config`` back."""

    @property
    def notify_webhook(self) -> str | None: ...
    @property
    def notify_format(self) -> WebhookFormat: ...
    @property
    def notify_headers(self) -> Mapping[str, str]: ...
    @property
    def notify_details(self) -> Details: ...
    @property
    def notify_on(self) -> tuple[str, ...]: ...
    @property
    def notify_hold(self) -> float: ...
    @property
    def notify_cooldown(self) -> float: ...
    @property
    def push_subject(self) -> str: ...
    @property
    def push_allow_loopback(self) -> bool: ...


@attrs.frozen
class NotifySettings:
    webhook: str | None = None
    webhook_format: WebhookFormat = "auto"
    webhook_headers: dict[str, str] = attrs.field(factory=dict, repr=False)  #: e.g. a token
    details: Details = "full"
    kinds: frozenset[Kind] = ALL_KINDS
    timing: Timing = Timing()
    subject: str = DEFAULT_SUBJECT  #: the VAPID contact (mailto: or https:)
    allow_loopback: bool = False  #: accept push endpoints on this computer (tests)
    queue: int = 256  #: deliveries waiting, per queue, before the oldest is dropped
    attempts: int = 3  #: tries per delivery
    retry_base: float = 1.0  #: seconds before the first retry (then x3)
    timeout: float = 10.0  #: seconds per HTTP attempt


def settings_for(config: NotifyConfig) -> NotifySettings:
    return NotifySettings(
        webhook=config.notify_webhook,
        webhook_format=config.notify_format,
        webhook_headers=dict(config.notify_headers),
        details=config.notify_details,
        kinds=frozenset(Kind(k) for k in config.notify_on),
        timing=Timing(hold=config.notify_hold, cooldown=config.notify_cooldown),
        subject=config.push_subject,
        allow_loopback=config.push_allow_loopback,
    )


def problems(config: NotifyConfig) -> list[str]:
    """What is wrong with the notification settings, each with the path of the bad value."""
    found = []
    if config.notify_webhook is not None and not _is_http_url(config.notify_webhook):
        found.append("bad value @ $.notify_webhook: an http(s) URL, e.g. https://ntfy.sh/topic")
    for i, kind in enumerate(config.notify_on):
        if kind not in {k.value for k in ALL_KINDS}:
            found.append(
                f"bad value @ $.notify_on[{i}]: {kind!r} is not one of approval, finished, failed"
            )
    for name, value in config.notify_headers.items():
        if not HEADER_NAME.match(name) or not value.isascii() or not value.isprintable():
            found.append(f"bad value @ $.notify_headers.{name}: not a valid HTTP header")
    if not 0 <= config.notify_hold <= 60:
        found.append("bad value @ $.notify_hold: between 0 and 60 seconds")
    if not 0 <= config.notify_cooldown <= 3600:
        found.append("bad value @ $.notify_cooldown: between 0 and 3600 seconds")
    subject_problem = _subject_problem(config.push_subject)
    if subject_problem:
        found.append(f"bad value @ $.push_subject: {subject_problem}")
    return found


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def _subject_problem(subject: str) -> str | None:
    if subject.startswith("mailto:"):
        host = subject.rpartition("@")[2]
    elif subject.startswith("https://") and _is_http_url(subject):
        host = urlsplit(subject).hostname or ""
    else:
        return "a mailto: or https: URI where push services can reach you"
    host = host.lower().rstrip(".")
    if "." not in host or host.endswith(UNRESOLVABLE):
        return f"{host!r} does not resolve on the internet; Apple's push service refuses it"
    return None
