"""The daemon's WebRTC task: one broker connection, one aiortc thread, the answerer, the links.

Started by the daemon only when ``serve --rendezvous URL`` is given and the ``rtc`` extra is
installed (:func:`check_available` says why not, clearly). Importing this module imports neither
aiortc nor paho: :mod:`.peer` and :mod:`.broker` import them when the task starts.

::

    rtc task (RtcService.supervise: run, retried; at the daemon's stop, every link is told
    │         ``going_away`` and gets STOP_GRACE seconds to end before the task is cancelled)
    ├── aiortc's asyncio thread, the MQTT thread      (closed when the task ends)
    ├── subscriptions                                 (each active device's to_daemon topic;
    │                                                  added on pairing, dropped on revoke;
    │                                                  each open pairing offer's topic, dropped
    │                                                  when it is used or expires: pairing.py)
    └── Answerer.serve nursery                        (one task per attempt; an open link is
        └── per-link cancel scope                      served there, see link.py, and cancelled
                                                       when its device is revoked)
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Final

import nacl.signing
import trio

from ..channel.routes import Requests
from ..errors import ConfigError
from ..security.devices import DeviceStore
from ..security.identity import b64, unb64
from ..security.pairing import Pairings
from .auth import redact
from .broker import Rendezvous as _Broker  # paho and aiortc are imported when used, not here
from .broker import RendezvousError
from .ice import IceServer, turn_server
from .link import Closed, DataChannelTransport, Session, dtls_sha256, serve
from .pairing import REMOTE, PairingDesk, pairing_topics
from .rendezvous import Link as _Link
from .settings import RtcSettings, read_secret
from .signaling import SignalingBox, SignalingRefused, Topics, topics

log = logging.getLogger(__name__)

EXTRA_MODULES: Final = ("aiortc", "paho")
RETRY_MAX: Final = 60.0  # seconds between attempts to reach an unreachable broker, at most
STOP_GRACE: Final = 5.0  # seconds links get at shutdown to send their last frames (as WebTransport)

#: Builds the session driver (``channel/link.py``) for one link: its transport, the daemon's
#: DTLS certificate hash (what ``auth`` signs), the pinned device key and a
#: name for the audit log. The daemon binds it to its operations, front door and guard
#: (``daemon.rtc_sessions``).
MakeLink = Callable[[DataChannelTransport, bytes, bytes, str], Session]


def check_available() -> None:
    """Refuse to start the WebRTC path without the ``rtc`` extra, saying how to get it."""
    missing = [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"--rendezvous needs the rtc extra ({', '.join(missing)} missing): "
            "pip install 'sidecode-trio[rtc]', or drop --rendezvous"
        )


class RtcService:
    """Answers offers from paired devices through the broker and serves their links."""

    def __init__(
        self,
        settings: RtcSettings,
        key: nacl.signing.SigningKey,
        devices: DeviceStore,
        make_link: MakeLink | None = None,
        clock: Callable[[], float] = time.time,
        thread_setup: Callable[[], None] | None = None,
        pairings: Pairings | None = None,
    ) -> None:
        assert settings.rendezvous is not None
        self._settings, self._key, self._devices = settings, key, devices
        self._make_link = make_link  #: set by the daemon once its front door exists
        self._pairings = pairings  #: the open offers, each listened for on its pairing topic
        self._pair: Requests | None = None  #: where a pair request is dispatched
        self._pair_topics: dict[str, tuple[str, Topics, float]] = {}  # -> (sid, topics, expiry)
        self._clock, self._thread_setup = clock, thread_setup
        self._turn_secret = (
            read_secret(settings.turn_secret_file) if settings.turn_secret_file else None
        )
        self._credentials = settings.credentials()  #: the rendezvous's (token file or URL)
        self._subscribed: dict[str, tuple[bytes, Topics]] = {}  # device id -> (key, topics)
        self._links: dict[str, set[trio.CancelScope]] = {}  # device id -> its open links
        self._sessions: set[Session] = set()  # the session driver of every open link
        self._link_ended = trio.Event()  # set (and renewed) whenever a link ends
        self.stopping = False  #: the daemon is stopping: links are told so, none is served
        # What the broker has yet to be told, coalesced (a set, a flag: bounded by the devices,
        # however many events come while the broker is down): the devices whose subscription
        # may have changed, and whether the pairing offers did. ``_changed`` wakes run().
        self._dirty_devices: set[str] = set()
        self._dirty_pairings = False
        self._changed = trio.Event()
        self.closed: list[Closed] = []  #: why each link ended (statistics, tests)
        self.refused = 0
        #: refusals by code (tests, statistics): signaling's, and "http <status>" for pair
        #: requests answered with an error
        self.refusals: Counter[str] = Counter()
        self.paired = 0  #: devices paired through the rendezvous
        self.unsent_pair_replies = 0  #: pair replies the broker refused
        # One of each for the service's life, not per connection to the broker: their replay
        # windows must outlive a reconnection (a broker can drop us, then replay what it saw).
        self._box = SignalingBox(key, self._is_paired, box_key=self._box_key)
        self._desk = PairingDesk(key)
        self.ready = trio.Event()  #: set once subscribed and answering (the first time)
        self.error: str | None = None  #: why the last attempt to reach the broker failed
        devices.on_rendezvous(self._device_changed)
        devices.on_revoke(self._revoked)
        if pairings is not None:
            pairings.on_change(self._pairings_changed)

    def serve_with(self, make_link: MakeLink, pair: Requests | None = None) -> None:
        """How links are served and pair requests answered (the daemon's front door: both exist
        after this task is made). Without ``pair`` no pairing topic is listened to."""
        self._make_link = make_link
        self._pair = pair

    # --- ICE ---------------------------------------------------------------------------------

    def ice_servers(self, user: str, now: float) -> list[IceServer]:
        """STUN, and TURN with credentials minted for ``user`` (valid ``turn_ttl`` seconds)."""
        servers = [IceServer([url]) for url in self._settings.stun]
        if self._settings.turn and self._turn_secret is not None:
            servers.append(
                turn_server(
                    list(self._settings.turn), self._turn_secret, user, now, self._settings.turn_ttl
                )
            )
        return servers

    def _device_ice(self, device_key: bytes, now: float) -> list[IceServer]:
        device = self._devices.by_key(b64(device_key))
        return self.ice_servers(device.id if device else "device", now)

    # --- devices -----------------------------------------------------------------------------

    def _is_paired(self, public_key: bytes) -> bool:
        device = self._devices.by_key(b64(public_key))
        return (
            device is not None
            and device.revoked_at is None
            and self._devices.rendezvous(device.id) is not None
        )

    def _box_key(self, public_key: bytes) -> bytes | None:
        """The X25519 box key the device registered at pairing (None: derive it)."""
        registered = self._devices.box_key(b64(public_key))
        return unb64(registered) if registered is not None else None

    def _topics_for(self, public_key: bytes) -> Topics | None:
        device = self._devices.by_key(b64(public_key))
        if device is None or device.revoked_at is not None:
            return None
        secret = self._devices.rendezvous(device.id)
        return topics(secret) if secret is not None else None

    def _device_changed(self, device_id: str) -> None:
        self._dirty_devices.add(device_id)
        self._changed.set()

    def _pairings_changed(self) -> None:
        self._dirty_pairings = True
        self._changed.set()

    def _revoked(self, device_id: str) -> None:
        for scope in self._links.pop(device_id, set()):
            scope.cancel()
        self._device_changed(device_id)

    async def _sync(self, broker: _Broker, device_id: str) -> None:
        """Make the subscription of ``device_id`` match the store (subscribed iff active)."""
        device = self._devices.find(device_id)
        secret = self._devices.rendezvous(device_id)
        old = self._subscribed.pop(device_id, None)
        wanted = (
            (unb64(device.public_key), topics(secret))
            if device is not None and device.revoked_at is None and secret is not None
            else None
        )
        if old is not None and (wanted is None or old[1] != wanted[1]):
            await broker.unsubscribe(old[1].to_daemon)
            log.info("rtc: unsubscribed device %s", device_id)
        if wanted is not None:
            if old is None or old[1] != wanted[1]:
                await broker.subscribe(wanted[1].to_daemon)
                log.info("rtc: subscribed device %s", device_id)
            self._subscribed[device_id] = wanted

    def pending_changes(self) -> int:
        """Changes not yet applied to the broker: one per device, one for the offers (tests)."""
        return len(self._dirty_devices) + self._dirty_pairings

    def subscribed(self) -> list[str]:
        """The devices whose topic is subscribed (doctor, tests)."""
        return sorted(self._subscribed)

    # --- pairing over the rendezvous (pairing.py) ----------------------------------------------

    def pairing(self) -> list[str]:
        """The secret ids of the offers whose pairing topic is subscribed (tests)."""
        return sorted(sid for sid, _topics, _expiry in self._pair_topics.values())

    async def _sync_pairing(self, broker: _Broker) -> None:
        """Listen on exactly the open offers' pairing topics (made while the rendezvous was on)."""
        wanted: dict[str, tuple[str, Topics, float]] = {}
        if self._pairings is not None and self._pair is not None:
            for offer in self._pairings.open_offers():
                if offer.rendezvous is not None:
                    the_topics = pairing_topics(offer.secret)
                    wanted[the_topics.to_daemon] = (offer.secret_id, the_topics, offer.expires_at)
        for topic in [t for t in self._pair_topics if t not in wanted]:
            del self._pair_topics[topic]
            await broker.unsubscribe(topic)
            log.info("rtc: stopped listening for a pairing")
        for topic, entry in wanted.items():
            if topic not in self._pair_topics:
                self._pair_topics[topic] = entry
                await broker.subscribe(topic)
                log.info("rtc: listening for pairing %s", entry[0])

    def _pairing_deadline(self) -> float:
        """Trio's time at which the first listened-for offer expires (inf: none)."""
        if not self._pair_topics:
            return math.inf
        first = min(expiry for _sid, _topics, expiry in self._pair_topics.values())
        return trio.current_time() + max(0.0, first - self._clock()) + 0.05

    async def _pairing_message(
        self, broker: _Broker, desk: PairingDesk, topic: str, raw: bytes
    ) -> bool:
        """Answer a pair request on an offer's topic; False: not a pairing topic. A request
        that does not open is dropped unanswered (``pairing.py`` says why)."""
        entry = self._pair_topics.get(topic)
        if entry is None or self._pair is None:
            return False
        secret_id, the_topics, _expiry = entry
        try:
            opened = desk.open(raw, self._clock(), secret_id)
        except SignalingRefused as exc:
            log.info("rtc: pair request refused (%s): %s", exc.code, exc.message)
            self._count_refusal(exc)
            return True
        status, body = await self._pair(None, "POST", "/v1/pair", opened.request, REMOTE)
        reply = json.loads(body)
        failed: RendezvousError | None = None
        try:
            if status == 201:  # subscribed before the reply: the device may dial at once
                self.paired += 1
                await self._sync(broker, reply["device"]["id"])
            else:
                self.refusals[f"http {status}"] += 1
            # a used or withdrawn offer's topic goes before the reply, so a device that has its
            # answer finds the daemon's state settled
            await self._sync_pairing(broker)
        except RendezvousError as exc:  # the reply still goes (a 201 unsent leaves the device
            failed = exc  # paired on our side only, its secret spent); then we reconnect
        try:
            await broker.publish(
                the_topics.to_device, desk.seal_reply(opened, status, reply, self._clock())
            )
        except RendezvousError as exc:  # a rate limit (ntfy.sh's 429), a dropped connection:
            # this device's answer is lost (its deadline passes; after a 201 it needs a new
            # offer), as a refused signaling reply is; raised, it restarted the task, which cut
            # every open link and lost what was published meanwhile
            self.unsent_pair_replies += 1
            log.info("rtc: a pair reply was not published: %s", exc.message)
        if failed is not None:
            raise failed  # run() again: subscribed anew on a new connection
        return True

    def links(self) -> int:
        return sum(len(scopes) for scopes in self._links.values())

    # --- the task ----------------------------------------------------------------------------

    async def supervise(self, stop: trio.Event | None = None, grace: float = STOP_GRACE) -> None:
        """:meth:`run` until ``stop`` is set (or until cancelled); a broker that cannot be reached
        (or drops us for good) is retried with a growing delay, logged once per failure, never
        fatal to the daemon. At ``stop``, every open link is ended as WebTransport sessions are:
        its subscriptions end when the sessions' do (clients see how their turns ended), then
        ``going_away`` (its devices dial again at once); after ``grace`` seconds the rest is
        cut."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._retrying)
            if stop is None:
                await trio.sleep_forever()
            else:
                await stop.wait()
            self.going_away()
            with trio.move_on_after(grace):
                while self._sessions:
                    await self._link_ended.wait()
                    self._link_ended = trio.Event()
            nursery.cancel_scope.cancel()

    def going_away(self) -> None:
        """The daemon is stopping: tell every open link (``going_away`` once its subscriptions
        have ended), and serve no new one."""
        self.stopping = True
        for session in list(self._sessions):
            session.stop()

    async def _retrying(self) -> None:
        from .broker import RendezvousError
        from .peer import RtcError

        delay = 1.0
        while True:
            try:
                await self.run()
            except (RendezvousError, RtcError) as exc:
                self.error = exc.message
                log.warning("rtc: %s (retrying in %.0fs)", exc.message, delay)
            except BaseExceptionGroup as group:  # from a task of run()'s nurseries
                failed, others = group.split((RendezvousError, RtcError))
                if others is not None or failed is None:
                    raise
                first: BaseException = failed
                while isinstance(first, BaseExceptionGroup):
                    first = first.exceptions[0]
                self.error = getattr(first, "message", str(first))
                log.warning("rtc: %s (retrying in %.0fs)", self.error, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def status(self) -> dict[str, object]:
        """For ``/v1/statistics`` and ``doctor``."""
        return {
            "enabled": True,
            "rendezvous": redact(self._settings.rendezvous),
            "connected": self.ready.is_set() and self.error is None,
            "devices": len(self._subscribed),
            "links": self.links(),
            "refused": self.refused,
            "turn": bool(self._settings.turn),
            "pairing": len(self._pair_topics),
            "error": self.error,
            # what doctor needs to probe the same paths (a file's path, never the secret)
            "settings": {
                "stun": list(self._settings.stun),
                "turn": list(self._settings.turn),
                "turn_secret_file": str(self._settings.turn_secret_file or "") or None,
                "rendezvous_token_file": str(self._settings.rendezvous_token_file or "") or None,
                "rendezvous_token_keyring": self._settings.rendezvous_token_keyring,
            },
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from .peer import open_asyncio_thread
        from .pubsub import open_rendezvous
        from .rendezvous import Answerer

        url = self._settings.rendezvous
        assert url is not None
        if self._make_link is None:  # a programming error, said before any link opens
            raise ConfigError("the WebRTC task cannot serve links: serve_with() was not called")
        self._subscribed.clear()  # a new connection: nothing is subscribed on it yet
        self._pair_topics.clear()
        # synced below from the store, all of them: what changes from now on is noted anew
        self._dirty_devices.clear()
        self._dirty_pairings = False
        async with (
            open_asyncio_thread(self._thread_setup) as aio,
            open_rendezvous(url, self._thread_setup, self._credentials) as broker,
        ):
            for device, _secret in self._devices.with_rendezvous():
                await self._sync(broker, device.id)
            await self._sync_pairing(broker)
            desk = self._desk

            async def pairing(topic: str, raw: bytes) -> bool:
                return await self._pairing_message(broker, desk, topic, raw)

            answerer = Answerer(
                aio,
                broker,
                self._box,
                self._key,
                self._topics_for,
                lambda now: self.ice_servers("daemon", now),
                self._device_ice,
                self._clock,
                on_refused=self._count_refusal,
                other=pairing,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(answerer.serve, self._serve)
                log.info(
                    "rtc: answering offers through %s for %d device(s)",
                    redact(url),
                    len(self._subscribed),
                )
                self.error = None
                self.ready.set()
                task_status.started()
                while True:
                    with trio.move_on_at(self._pairing_deadline()) as waiting:
                        await self._changed.wait()
                    # taken at once (no checkpoint): a change made while these are synced sets
                    # the new event and is synced on the next round
                    self._changed = trio.Event()
                    dirty, self._dirty_devices = self._dirty_devices, set()
                    offers, self._dirty_pairings = self._dirty_pairings, False
                    for device_id in sorted(dirty):
                        await self._sync(broker, device_id)
                    if offers or waiting.cancelled_caught:  # offers changed, or one expired
                        await self._sync_pairing(broker)

    def _count_refusal(self, exc: SignalingRefused) -> None:
        self.refused += 1
        self.refusals[exc.code] += 1

    async def _serve(self, link: _Link) -> None:
        device = self._devices.by_key(b64(link.peer_key))
        # A link that comes once stopping began is refused here. No checkpoint lies between
        # this check and ``make`` below (serve() calls it before its first await): every
        # session is either refused or in ``_sessions`` when going_away() looks. Keep it so.
        if device is None or device.revoked_at is not None or self.stopping:
            return
        cert = dtls_sha256(link.connection.local_fingerprints())
        remote = f"webrtc device {device.id}"
        make_link = self._make_link
        assert make_link is not None  # run() refuses to start without it

        made: list[Session] = []

        def make(transport: DataChannelTransport) -> Session:
            session = make_link(transport, cert, link.peer_key, remote)
            made.append(session)
            self._sessions.add(session)
            return session

        with trio.CancelScope() as scope:
            self._links.setdefault(device.id, set()).add(scope)
            try:
                log.info("rtc: link %s open for device %s", link.cid, device.id)
                closed = await serve(
                    link.channel, make, self._settings.ping_interval, self._settings.ping_misses
                )
                self.closed.append(closed)
                log.info("rtc: link %s closed (%s): %s", link.cid, closed.code, closed.message)
            finally:
                self._sessions.difference_update(made)
                self._link_ended.set()
                scopes = self._links.get(device.id)
                if scopes is not None:
                    scopes.discard(scope)
                    if not scopes:
                        del self._links[device.id]
        if scope.cancelled_caught:
            self.closed.append(Closed("revoked", "the device was revoked"))
