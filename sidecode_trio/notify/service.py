"""The notifier's Trio driver: follow the log, let the :class:`~.policy.Decider` decide, deliver.

::

    Notifier.run                      (owned by the daemon's housekeeping nursery)
    ├── decide loop                   wake on a commit or the next due time; read new events
    ├── push drain                    bounded queue → at most CONCURRENCY deliveries at once
    └── webhook drain                 its own bounded queue, so a dead webhook delays no push

Nothing here runs on the token path: after a commit holding events of the WATCHED types, the log
hands those events to :meth:`Notifier.watched`, which only queues them and wakes the decide loop
(a commit of text deltas alone wakes nothing). Queues drop their oldest entry when full
(counted in ``statistics()``). Deliveries are retried a bounded number of times; a push service
answering 404 or 410 removes the subscription.

Each drain makes its HTTP client when its first delivery is queued (in a worker thread: loading
httpx and the CA store takes tens of milliseconds), not at start-up: a daemon that never notifies
never loads httpx (tests/test_startup.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Final, Generic, TypeVar
from urllib.parse import urlsplit

import trio

from ..errors import BadRequest, NotFound
from ..eventlog.core import StoredEvent, decode_event
from ..eventlog.log import EventLog
from ..security.auth import Principal
from ..security.devices import DeviceStore, Scope
from ..wire import requests as rq
from . import ece
from .destinations import Resolver, endpoint_problem, resolve
from .messages import Outgoing, push_headers, push_payload, webhook_request
from .policy import Decider, Kind, Notification, SessionLabel, trial_notification
from .settings import NotifySettings
from .subscriptions import Subscription, SubscriptionStore
from .vapid import JWT_LIFETIME, VapidKey

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

T = TypeVar("T")

WATCHED: Final = frozenset(
    {
        "permission.requested",
        "permission.resolved",
        "turn.completed",
        "turn.failed",
        "session.status",
        "session.deleted",
    }
)  # the only events decoded: the rest are skipped by their type tag
CONCURRENCY: Final = 8  # push deliveries in flight at once
MAX_RETRY_DELAY: Final = 30.0
COUNTERS: Final = (
    "notifications",
    "pushed",
    "push_failed",
    "push_expired",
    "push_refused",
    "webhooks",
    "webhook_failed",
)


class DropOldest(Generic[T]):
    """A bounded queue that never blocks its producer: when full, the oldest entry goes."""

    def __init__(self, size: int) -> None:
        self._items: deque[T] = deque()
        self._size = size
        self._ready = trio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        if len(self._items) >= self._size:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._ready.set()

    async def get(self) -> T:
        while not self._items:
            self._ready = trio.Event()
            await self._ready.wait()
        return self._items.popleft()


def retry_delay(attempt: int, status: int | None, retry_after: str | None, base: float) -> float:
    """Seconds before try ``attempt + 1`` of a delivery that got ``status`` (None: no answer),
    or ``-1`` when it is not worth retrying (a 4xx other than 429)."""
    if status is not None and status < 500 and status != 429:
        return -1.0
    if retry_after is not None and retry_after.strip().isdigit():
        return min(float(retry_after), MAX_RETRY_DELAY)
    return min(base * 3.0**attempt, MAX_RETRY_DELAY)


def check_endpoint(endpoint: str, allow_loopback: bool) -> None:
    """A push endpoint is an https URL of a known push service (see :mod:`.destinations`)."""
    problem = endpoint_problem(endpoint, allow_loopback)
    if problem:
        raise BadRequest(problem, code="bad_push_endpoint")


class Notifier:
    def __init__(
        self,
        settings: NotifySettings,
        event_log: EventLog,
        store: SubscriptionStore,
        vapid: VapidKey,
        devices: DeviceStore,
        base_url: Callable[[], str | None] = lambda: None,
        clock: Callable[[], float] = time.time,
        resolver: Resolver = resolve,
    ) -> None:
        self.settings = settings
        self._resolver = resolver
        self._log = event_log
        self._store = store
        self.vapid = vapid
        self._devices = devices
        self._base_url = base_url
        self._clock = clock
        self._decider = Decider(settings.timing, settings.kinds, settings.details)
        self._news: list[StoredEvent] = []  #: committed WATCHED events not yet observed
        #: push service origin -> (when to sign again, the Authorization header)
        self._signed: dict[str, tuple[float, str]] = {}
        self._wake = trio.Event()
        self._pushes: DropOldest[tuple[Notification, Subscription]] = DropOldest(settings.queue)
        self._webhooks: DropOldest[Notification] = DropOldest(settings.queue)
        self._counts = dict.fromkeys(COUNTERS, 0)
        removed = store.keep_devices({d.id for d in devices.active()})
        if removed:
            log.info("dropped %d push subscription(s) of revoked devices", removed)

    # -- hooks (called synchronously by the log, the guard and the operations) -----------------

    def watched(self, events: list[StoredEvent]) -> None:
        """The log committed these WATCHED events (an ``EventLog.watch`` listener)."""
        self._news.extend(events)
        self._wake.set()

    def acted(self, who: Principal, session_id: str) -> None:
        """A device did something to a session (it is looking at it)."""
        if who.device_id is not None:
            self._decider.acted(who.device_id, session_id, self._clock())

    def device_revoked(self, device_id: str) -> None:
        removed = self._store.remove_device(device_id)
        if removed:
            log.info("dropped %d push subscription(s) of revoked device %s", removed, device_id)

    def statistics(self) -> dict[str, object]:
        return {
            **self._counts,
            "suppressed": self._decider.suppressed,
            "dropped": self._pushes.dropped + self._webhooks.dropped,
            "queued": len(self._pushes) + len(self._webhooks),
            "subscriptions": len(self._store.all()),
            "webhook": bool(self.settings.webhook),
        }

    # -- the push API (transport-independent; the routes decode and encode) --------------------

    def subscribe(self, who: Principal, request: rq.PushSubscriptionRequest) -> rq.PushSubscription:
        who.require(Scope.APPROVE)
        check_endpoint(request.endpoint, self.settings.allow_loopback)
        try:
            ece.subscription_key(request.keys.p256dh)
            ece.auth_secret(request.keys.auth)
        except ece.BadSubscriptionKey as exc:
            raise BadRequest(str(exc), code="bad_push_keys") from None
        sub = self._store.put(
            who.device_id or "",
            request.endpoint,
            request.keys.p256dh,
            request.keys.auth,
            self._clock(),
        )
        log.info("push subscription %s added for %s (%s)", sub.id, who.name, _host(sub.endpoint))
        return _view(sub)

    def subscriptions(self, who: Principal) -> rq.PushSubscriptionList:
        who.require(Scope.APPROVE)
        mine = self._store.all() if who.device_id is None else self._store.of_device(who.device_id)
        return rq.PushSubscriptionList(self.vapid.public_key_b64, [_view(s) for s in mine])

    def unsubscribe(self, who: Principal, subscription_id: str) -> rq.PushSubscriptionRemoved:
        who.require(Scope.APPROVE)
        sub = self._store.get(subscription_id)
        if sub is None or (who.device_id is not None and sub.device_id != who.device_id):
            raise NotFound(
                f"no push subscription {subscription_id!r} of this device",
                code="unknown_subscription",
            )
        self._store.remove(subscription_id)
        return rq.PushSubscriptionRemoved(subscription_id)

    def send_test(self, who: Principal) -> rq.PushTestReply:
        """Push a test notification to the asking device's subscriptions."""
        who.require(Scope.APPROVE)
        note = trial_notification(who.device_id, self._clock())
        targets = self._targets(note)
        for sub in targets:
            self._pushes.put((note, sub))
        return rq.PushTestReply(len(targets))

    # -- the driver ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drain_pushes)
            nursery.start_soon(self._drain_webhooks)
            task_status.started()
            await self._decide_loop()

    async def _client(self, guarded: bool) -> httpx.AsyncClient | None:
        """An HTTP client, made in a worker thread (importing httpx and loading the CA store
        would hold up the event loop); None if it cannot be made (logged; the next delivery
        tries again). Pushes go only to global addresses of push services (``guarded``); the
        owner's webhook anywhere."""

        def make() -> httpx.AsyncClient:
            import httpx

            from .transport import push_transport

            timeout = httpx.Timeout(self.settings.timeout)
            if guarded:
                transport = push_transport(self.settings.allow_loopback, self._resolver)
                return httpx.AsyncClient(timeout=timeout, transport=transport)
            return httpx.AsyncClient(timeout=timeout)

        try:
            return await trio.to_thread.run_sync(make)
        except Exception:  # e.g. an unreadable CA store: no delivery, but the daemon goes on
            log.exception("cannot make the HTTP client for notifications")
            return None

    async def _decide_loop(self) -> None:
        while True:
            due = self._decider.next_due()
            wait = math.inf if due is None else max(0.0, due - self._clock())
            with trio.move_on_after(wait):
                await self._wake.wait()
            self._wake = trio.Event()
            self._read_new_events()
            for note in self._decider.due(self._clock()):
                self._dispatch(note)

    def _read_new_events(self) -> None:
        news, self._news = self._news, []
        labels: dict[str, SessionLabel] = {}
        for stored in news:
            session_id = stored.session_id
            if not self._log.has(session_id):  # removed with its log
                self._decider.forget(session_id)
                continue
            label = labels.get(session_id)
            if label is None:
                info = self._log.info(session_id)
                label = labels[session_id] = SessionLabel(info.title, info.cwd)
            self._decider.observe(session_id, decode_event(stored), label, self._clock())

    def _dispatch(self, note: Notification) -> None:
        self._counts["notifications"] += 1
        if self.settings.webhook and note.kind is not Kind.RESOLVED:  # a feed needs no retraction
            self._webhooks.put(note)
        for sub in self._targets(note):
            self._pushes.put((note, sub))

    def _targets(self, note: Notification) -> list[Subscription]:
        active = {d.id for d in self._devices.active()} | {""}
        return [
            sub
            for sub in self._store.all()
            if sub.device_id in active
            and sub.device_id not in note.quiet_devices
            and (note.only_device is None or sub.device_id == note.only_device)
        ]

    async def _drain_pushes(self) -> None:
        note, sub = await self._pushes.get()
        while (http := await self._client(guarded=True)) is None:
            self._counts["push_failed"] += 1
            note, sub = await self._pushes.get()
        limit = trio.Semaphore(CONCURRENCY)
        async with http, trio.open_nursery() as deliveries:
            while True:
                await limit.acquire()
                work = partial(self._push, http, note, sub)
                deliveries.start_soon(self._release_after, limit, work)
                note, sub = await self._pushes.get()

    async def _drain_webhooks(self) -> None:
        note = await self._webhooks.get()
        while (http := await self._client(guarded=False)) is None:
            self._counts["webhook_failed"] += 1
            note = await self._webhooks.get()
        async with http:
            while True:
                await _contained(partial(self._webhook, http, note))
                note = await self._webhooks.get()

    @staticmethod
    async def _release_after(limit: trio.Semaphore, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await _contained(work)
        finally:
            limit.release()

    async def _push(self, http: httpx.AsyncClient, note: Notification, sub: Subscription) -> None:
        if self._store.get(sub.id) is None:
            return  # removed while it waited (revoked, unsubscribed, expired)
        problem = endpoint_problem(sub.endpoint, self.settings.allow_loopback)
        if problem is not None:  # stored before endpoints were checked: never sent to
            self._store.remove(sub.id)
            self._counts["push_refused"] += 1
            log.warning("push subscription %s removed unsent: %s", sub.id, problem)
            return
        body = ece.encrypt(
            push_payload(note), ece.subscription_key(sub.p256dh), ece.auth_secret(sub.auth)
        )
        authorization = self._authorization(sub.endpoint)
        request = Outgoing(sub.endpoint, push_headers(note, authorization), body)
        status = await self._post(http, request)
        if status in (404, 410):
            self._store.remove(sub.id)
            self._counts["push_expired"] += 1
            log.info("push subscription %s is gone (%d); removed", sub.id, status)
        elif status is not None and 200 <= status < 300:
            self._store.delivered(sub.id, self._clock())
            self._counts["pushed"] += 1
        else:
            self._store.failed(sub.id)
            self._counts["push_failed"] += 1
            log.warning("push to %s failed (%s)", _host(sub.endpoint), status or "no answer")

    def _authorization(self, endpoint: str) -> str:
        """The VAPID header for a push service, signed again when half its lifetime is gone
        (one signature per push service, not per push)."""
        parts = urlsplit(endpoint)
        origin, now = f"{parts.scheme}://{parts.netloc}", self._clock()
        renew_at, header = self._signed.get(origin, (0.0, ""))
        if renew_at <= now:
            header = self.vapid.authorization(endpoint, self.settings.subject, now)
            self._signed[origin] = (now + JWT_LIFETIME / 2, header)
        return header

    async def _webhook(self, http: httpx.AsyncClient, note: Notification) -> None:
        url = self.settings.webhook
        assert url is not None
        request = webhook_request(
            note, url, self.settings.webhook_format, self._base_url(), self.settings.webhook_headers
        )
        status = await self._post(http, request)
        if status is not None and 200 <= status < 300:
            self._counts["webhooks"] += 1
        else:
            self._counts["webhook_failed"] += 1
            log.warning("notify webhook %s failed (%s)", _host(url), status or "no answer")

    async def _post(self, http: httpx.AsyncClient, request: Outgoing) -> int | None:
        """POST with bounded retries; the last status (None: never answered)."""
        import httpx  # loaded already: ``http`` is its client

        status: int | None = None
        for attempt in range(self.settings.attempts):
            retry_after = None
            try:
                response = await http.post(
                    request.url, headers=request.headers, content=request.body
                )
                status, retry_after = response.status_code, response.headers.get("Retry-After")
            except httpx.HTTPError:
                status = None
            if status is not None and status < 400:
                return status
            delay = retry_delay(attempt, status, retry_after, self.settings.retry_base)
            if delay < 0 or attempt + 1 == self.settings.attempts:
                break
            await trio.sleep(delay)
        return status


async def _contained(work: Callable[[], Awaitable[None]]) -> None:
    """Run one delivery; a bug in it is logged, never allowed to stop the daemon (this task
    lives in the daemon's housekeeping nursery). Cancellation passes through."""
    try:
        await work()
    except Exception:
        log.exception("a notification could not be delivered")


def _host(url: str) -> str:
    """A URL's host, for logs: push endpoints and webhook URLs may carry tokens in the path."""
    return urlsplit(url).hostname or "?"


def _view(sub: Subscription) -> rq.PushSubscription:
    return rq.PushSubscription(
        id=sub.id,
        device_id=sub.device_id or None,
        endpoint=sub.endpoint,
        created_at=sub.created_at,
        last_delivered=sub.last_delivered,
        failures=sub.failures,
    )
