"""The WebRTC path's signaling messages (sealed by ``rtc/signaling.py``, carried by a broker).

Device and daemon exchange them inside sealed envelopes: the classes are here, at the bottom,
so that the one converter (``wire/converter.make_converter``) configures their tagged union
with all the others.
"""

from __future__ import annotations

from typing import ClassVar, Final

import attrs

from . import share_repr


@attrs.frozen(repr=False)
class IceServer:
    """One ``RTCIceServer``: STUN URLs, or TURN URLs with a username and a password."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None


@attrs.frozen(repr=False)
class Hello:
    """Device → daemon: "I am about to offer; which ICE servers may I use?" """

    TYPE: ClassVar[str] = "hello"
    cid: str


@attrs.frozen(repr=False)
class IceConfig:
    """Daemon → device: the ICE servers for this attempt (TURN credentials minted for it)."""

    TYPE: ClassVar[str] = "ice"
    cid: str
    servers: list[IceServer]


@attrs.frozen(repr=False)
class Offer:
    """Device → daemon: a complete (non-trickle) SDP offer and the device's signed fingerprints."""

    TYPE: ClassVar[str] = "offer"
    cid: str
    sdp: str
    fps: list[str]
    fp_sig: str


@attrs.frozen(repr=False)
class Answer:
    """Daemon → device: the SDP answer and the daemon's signed fingerprints."""

    TYPE: ClassVar[str] = "answer"
    cid: str
    sdp: str
    fps: list[str]
    fp_sig: str


@attrs.frozen(repr=False)
class Refused:
    """Daemon → a paired device: why its offer was not answered (``code`` of the refusal)."""

    TYPE: ClassVar[str] = "refused"
    cid: str
    code: str
    message: str


Message = Hello | IceConfig | Offer | Answer | Refused


class SignalingMessage:
    """The union's root for the converter (``Message`` is a plain ``Union``)."""


SIGNALING_CLASSES: Final = {c.TYPE: c for c in (Hello, IceConfig, Offer, Answer, Refused)}


share_repr(globals())  # one __repr__ for all, not one compiled per class (see __init__)
