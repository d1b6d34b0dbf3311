"""The two signaling flows over a :class:`~.broker.Rendezvous`: the daemon answering offers and a
device dialling the daemon. Both end with a pinned, open DataChannel (a :class:`Link`).

Flow (one connection attempt, ``cid`` random per attempt; every message sealed, see
:mod:`.signaling`)::

    device                                    daemon
      hello{cid}                        ->      (mints TURN credentials for this device)
                                        <-    ice{cid, servers}
      (gathers, signs its fingerprints)
      offer{cid, sdp, fps, fp_sig}      ->      checks the device's fingerprint signature,
                                                answers, signs its own (bound to the offer)
                                        <-    answer{cid, sdp, fps, fp_sig}   or refused{cid, code}
      checks the daemon's signature, applies the answer; ICE + DTLS (pinned by the fingerprints)

The daemon never answers a message that does not open (unpaired, forged, stale, replayed): the
sender is unauthenticated, so it gets nothing back. A paired device whose offer is refused gets
``refused`` with the reason.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import nacl.signing
import trio

from .broker import Rendezvous, RendezvousError
from .ice import IceServer
from .peer import AsyncioThread, PeerConnection, RtcError, TrioDataChannel
from .signaling import (
    Answer,
    Hello,
    IceConfig,
    Message,
    Offer,
    Opened,
    Refused,
    SignalingBox,
    SignalingRefused,
    Topics,
    check_fingerprints,
    new_cid,
    sign_fingerprints,
)

log = logging.getLogger(__name__)

OPEN_TIMEOUT: Final = 30.0  # seconds from answer to open DataChannel before giving up
CIDS_KEPT: Final = 10_000  # connection ids remembered (a reused cid is refused)
MAX_PENDING_PER_DEVICE: Final = 4  # attempts answered but not yet open, per device
_DATACHANNEL = re.compile(r"^m=application \d+ \S*DTLS/SCTP", re.M)


@attrs.frozen
class Link:
    """An open, pinned DataChannel to ``peer_key``."""

    peer_key: bytes
    cid: str
    connection: PeerConnection
    channel: TrioDataChannel


class Answerer:
    """The daemon's side: reads the broker, answers offers, hands each open link to ``on_link``.

    ``topics_for(device_key)`` names where to reply (``None``: not a device we talk to);
    ``device_ice(device_key, now)`` is the ICE list handed to that device (with TURN credentials
    minted for it); ``ice`` is the daemon's own (a list, or a function of the time so that its
    TURN credentials are minted afresh for each attempt). ``on_refused`` is told of every refusal
    (the audit log, the tests)."""

    def __init__(
        self,
        aio: AsyncioThread,
        broker: Rendezvous,
        box: SignalingBox,
        key: nacl.signing.SigningKey,
        topics_for: Callable[[bytes], Topics | None],
        ice: list[IceServer] | Callable[[float], list[IceServer]],
        device_ice: Callable[[bytes, float], list[IceServer]],
        clock: Callable[[], float] = time.time,
        on_refused: Callable[[SignalingRefused], None] | None = None,
        other: Callable[[str, bytes], Awaitable[bool]] | None = None,
    ) -> None:
        self._aio, self._broker, self._box, self._key = aio, broker, box, key
        self._ice = ice if callable(ice) else (lambda _now: ice)
        self._topics_for, self._device_ice = topics_for, device_ice
        self._clock = clock
        self._on_refused = on_refused or (lambda _exc: None)
        self._other = other  #: sees each message first; True: it was not signaling (pairing)
        self._cids: dict[str, None] = {}
        self._pending: dict[bytes, int] = {}  # device -> attempts answered, not yet open
        self.answered = 0
        self.unsent = 0  #: replies the broker refused
        self.failed = 0  #: messages and attempts whose handling failed unforeseen (logged)

    async def serve(
        self,
        on_link: Callable[[Link], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer until cancelled; each attempt and its link live in this task's nursery."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    topic, raw = await self._broker.receive()
                except trio.EndOfChannel:  # the broker connection was closed: nothing more
                    nursery.cancel_scope.cancel()
                    return
                try:
                    await self._handle(topic, raw, nursery, on_link)
                except Exception:  # one message, not the daemon: see _contained
                    self._contained("a signaling message")

    def _contained(self, what: str) -> None:
        """The boundary for what the broker delivers: a message or an attempt whose handling
        fails in a way nobody foresaw (a bug, a library's unexpected error) is logged and
        counted, and the answerer goes on with the next; it must not end the WebRTC task (every
        open link) or the daemon. Cancellation is not an ``Exception`` and passes through."""
        self.failed += 1
        log.exception("rtc: %s failed; answering the next", what)

    async def _handle(
        self,
        topic: str,
        raw: bytes,
        nursery: trio.Nursery,
        on_link: Callable[[Link], Awaitable[None]],
    ) -> None:
        if self._other is not None and await self._other(topic, raw):
            return
        try:
            opened = self._box.open(raw, self._clock())
        except SignalingRefused as exc:
            log.info("rtc: signaling refused (%s): %s", exc.code, exc.message)
            self._on_refused(exc)
            return
        reply_to = self._topics_for(opened.sender)
        if reply_to is None:
            return
        if isinstance(opened.message, Hello):
            servers = self._device_ice(opened.sender, self._clock())
            await self._reply(opened, reply_to, IceConfig(opened.message.cid, servers))
        elif isinstance(opened.message, Offer):
            nursery.start_soon(self._answer, opened, opened.message, reply_to, on_link)

    async def _reply(self, opened: Opened, topics: Topics, message: Message) -> None:
        """Publish a reply; one the broker refuses (a rate limit, a dropped connection) costs
        this attempt only: the device's deadline passes and it dials again."""
        sealed = self._box.seal(opened.sender, message, self._clock())
        try:
            await self._broker.publish(topics.to_device, sealed)
        except RendezvousError as exc:
            self.unsent += 1
            log.info("rtc: a %s reply was not published: %s", type(message).__name__, exc.message)

    def _check_offer(self, sender: bytes, offer: Offer) -> None:
        """Refuse a reused connection id, an offer without a DataChannel, fingerprints the device
        did not sign, or one attempt too many from this device."""
        if offer.cid in self._cids:
            raise SignalingRefused("this connection id was already used", code="replayed")
        self._cids[offer.cid] = None
        if len(self._cids) > CIDS_KEPT:
            del self._cids[next(iter(self._cids))]
        if not _DATACHANNEL.search(offer.sdp):
            raise SignalingRefused("the offer has no DataChannel", code="malformed")
        check_fingerprints(sender, "device", offer.cid, offer.sdp, offer.fps, offer.fp_sig)
        if self._pending.get(sender, 0) >= MAX_PENDING_PER_DEVICE:
            raise SignalingRefused("too many connection attempts at once", code="busy")

    async def _answer(
        self,
        opened: Opened,
        offer: Offer,
        topics: Topics,
        on_link: Callable[[Link], Awaitable[None]],
    ) -> None:
        try:
            self._check_offer(opened.sender, offer)
        except SignalingRefused as exc:
            self._on_refused(exc)
            await self._reply(opened, topics, Refused(offer.cid, exc.code, exc.message))
            return
        device = opened.sender
        self._pending[device] = self._pending.get(device, 0) + 1
        pending = True

        def settled() -> None:  # the attempt opened or failed: it no longer counts
            nonlocal pending
            if pending:
                pending = False
                self._pending[device] -= 1
                if not self._pending[device]:
                    del self._pending[device]

        try:
            await self._answer_pending(opened, offer, topics, on_link, settled)
        except Exception:  # this attempt (or its link), not the others
            self._contained(f"attempt {offer.cid}")
        finally:
            settled()

    async def _answer_pending(
        self,
        opened: Opened,
        offer: Offer,
        topics: Topics,
        on_link: Callable[[Link], Awaitable[None]],
        settled: Callable[[], None],
    ) -> None:
        try:
            servers = self._ice(self._clock())
            peer, answer_sdp = await PeerConnection.answer(self._aio, servers, offer.sdp)
        except RtcError as exc:
            await self._reply(opened, topics, Refused(offer.cid, exc.code, exc.message))
            return
        try:
            fps, fp_sig = sign_fingerprints(self._key, "daemon", offer.cid, answer_sdp, offer.sdp)
            await self._reply(opened, topics, Answer(offer.cid, answer_sdp, fps, fp_sig))
            self.answered += 1
            channel = None
            with trio.move_on_after(OPEN_TIMEOUT):  # the deadline is for opening only
                channel = await peer.channel()
            settled()
            if channel is None:
                log.info("rtc: link %s did not open within %ss", offer.cid, OPEN_TIMEOUT)
                return
            await on_link(Link(opened.sender, offer.cid, peer, channel))
        except RtcError as exc:
            log.info("rtc: link %s failed: %s", offer.cid, exc.message)
        finally:
            await peer.aclose()


async def _next_for(
    broker: Rendezvous, box: SignalingBox, cid: str, clock: Callable[[], float]
) -> Message:
    """The next message for attempt ``cid`` from our peer; anything else is skipped."""
    while True:
        _topic, raw = await broker.receive()
        try:
            opened = box.open(raw, clock())
        except SignalingRefused as exc:
            log.info("rtc: ignored a signaling message (%s)", exc.code)
            continue
        if getattr(opened.message, "cid", None) == cid:
            return opened.message


def _checked_answer(reply: Message, daemon_key: bytes, offer: Offer) -> Answer:
    """The daemon's answer to ``offer``, once its fingerprint signature is checked."""
    if isinstance(reply, Refused):
        raise SignalingRefused(f"the daemon refused: {reply.message}", code=reply.code)
    if not isinstance(reply, Answer):
        raise RtcError(f"the daemon answered the offer with {type(reply).__name__}")
    check_fingerprints(
        daemon_key, "daemon", offer.cid, reply.sdp, reply.fps, reply.fp_sig, offer.sdp
    )
    return reply


async def dial(
    aio: AsyncioThread,
    broker: Rendezvous,
    box: SignalingBox,
    key: nacl.signing.SigningKey,
    daemon_key: bytes,
    topics: Topics,
    clock: Callable[[], float] = time.time,
) -> Link:
    """The device's side: one attempt to reach the daemon; the caller is subscribed to
    ``topics.to_device`` and owns the link (close ``link.connection``). Put a deadline around it.
    Refusals raise :class:`SignalingRefused`, a failed connection :class:`RtcError`."""
    cid = new_cid()
    await broker.publish(topics.to_daemon, box.seal(daemon_key, Hello(cid), clock()))
    reply = await _next_for(broker, box, cid, clock)
    if not isinstance(reply, IceConfig):
        raise RtcError(f"the daemon answered hello with {type(reply).__name__}")
    peer, offer_sdp = await PeerConnection.offer(aio, reply.servers)
    try:
        fps, fp_sig = sign_fingerprints(key, "device", cid, offer_sdp)
        offer = Offer(cid, offer_sdp, fps, fp_sig)
        await broker.publish(topics.to_daemon, box.seal(daemon_key, offer, clock()))
        answer = _checked_answer(await _next_for(broker, box, cid, clock), daemon_key, offer)
        await peer.accept_answer(answer.sdp)
        channel = await peer.channel()
    except BaseException:
        await peer.aclose()
        raise
    return Link(daemon_key, cid, peer, channel)
