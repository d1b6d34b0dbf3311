"""The upstream link's state machine (sans I/O): reconnect with backoff, keep-alive, stall.

The driver tells it what happened (``connecting``, ``connected``, ``received`` a frame or a
pong, ``failed``) with the current time, and asks :meth:`UpstreamLink.poll` what to do next::

    IDLE ──connecting──▶ CONNECTING ──connected──▶ LIVE ──failed──▶ BACKOFF ──connecting──▶ ...
      ▲                      │ failed                │ stop            │ stop
      └──────── stop ────────┴───────────────────────┴─────────────────┴──▶ STOPPED

While LIVE: after ``ping_interval`` of silence it asks for a ping; after ``stall_timeout`` with
no frame and no pong it reports a stall (the driver drops the socket and calls ``failed``).
Backoff doubles from ``initial`` to ``maximum`` with full jitter in its upper half, and resets
once a connection has stayed up for ``stable_after``.
"""

from __future__ import annotations

import enum
import random
from typing import Final

import attrs

STABLE_AFTER: Final = 30.0  # seconds up before the backoff ladder starts again at the bottom


class LinkState(enum.StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    LIVE = "live"
    BACKOFF = "backoff"
    STOPPED = "stopped"


class Action(enum.Enum):
    WAIT = "wait"  #: nothing to do before ``deadline``
    PING = "ping"  #: send a keep-alive ping now
    STALLED = "stalled"  #: silent past the stall bound: drop the socket and reconnect
    CONNECT = "connect"  #: (IDLE or BACKOFF elapsed) open the connection now


_TRANSITIONS: Final[dict[tuple[LinkState, str], LinkState]] = {
    (LinkState.IDLE, "connecting"): LinkState.CONNECTING,
    (LinkState.BACKOFF, "connecting"): LinkState.CONNECTING,
    (LinkState.CONNECTING, "connected"): LinkState.LIVE,
    (LinkState.CONNECTING, "failed"): LinkState.BACKOFF,
    (LinkState.LIVE, "failed"): LinkState.BACKOFF,
}


class BadTransition(RuntimeError):
    """Programmer misuse of the machine (e.g. ``connected`` while IDLE)."""


@attrs.frozen
class Timing:
    ping_interval: float = 20.0
    stall_timeout: float = 45.0
    initial: float = 1.0
    maximum: float = 60.0
    stable_after: float = STABLE_AFTER


@attrs.frozen
class Step:
    action: Action
    deadline: float | None = None  #: for WAIT: when to poll again (None: only on input)


class UpstreamLink:
    def __init__(self, timing: Timing, rng: random.Random | None = None) -> None:
        self.timing = timing
        self._rng = rng or random.Random()
        self.state = LinkState.IDLE
        self.failures = 0  #: consecutive failed attempts (the backoff ladder's rung)
        self.connects = 0  #: successful connections
        self.stalls = 0
        self.retry_at: float | None = None
        self._connected_at = 0.0
        self._last_rx = 0.0
        self._last_ping: float | None = None

    def __repr__(self) -> str:
        return f"<UpstreamLink {self.state.value} failures={self.failures} stalls={self.stalls}>"

    def _go(self, event: str) -> None:
        target = _TRANSITIONS.get((self.state, event))
        if target is None:
            raise BadTransition(f"{event!r} in state {self.state.value}")
        self.state = target

    # -- inputs --------------------------------------------------------------------------------

    def connecting(self, now: float) -> None:
        self._go("connecting")
        self.retry_at = None

    def connected(self, now: float) -> None:
        self._go("connected")
        self.connects += 1
        self._connected_at = self._last_rx = now
        self._last_ping = None

    def received(self, now: float) -> None:
        """A frame or a pong arrived: the link is alive."""
        if self.state is LinkState.LIVE:
            self._last_rx = max(self._last_rx, now)
            self._last_ping = None

    def pinged(self, now: float) -> None:
        self._last_ping = now

    def failed(self, now: float, *, stalled: bool = False) -> float:
        """The connection failed or dropped; returns the delay before the next attempt."""
        was_stable = (
            self.state is LinkState.LIVE and now - self._connected_at >= self.timing.stable_after
        )
        self._go("failed")
        self.stalls += stalled
        self.failures = 1 if was_stable else self.failures + 1
        delay = self.backoff(self.failures)
        self.retry_at = now + delay
        return delay

    def stop(self) -> None:
        self.state = LinkState.STOPPED
        self.retry_at = None

    def backoff(self, failures: int) -> float:
        """Delay after ``failures`` consecutive failures: 0 for the first one (reconnect at
        once: a single drop is normal), then ``initial * 2**(n-2)`` capped at ``maximum``,
        jittered uniformly in its upper half so many clients do not retry in step."""
        if failures <= 1:
            return 0.0
        ceiling = min(self.timing.maximum, self.timing.initial * 2.0 ** (failures - 2))
        jitter: float = self._rng.random()
        return ceiling / 2 + jitter * ceiling / 2

    # -- output --------------------------------------------------------------------------------

    def poll(self, now: float) -> Step:
        if self.state is LinkState.IDLE:
            return Step(Action.CONNECT)
        if self.state is LinkState.BACKOFF:
            assert self.retry_at is not None
            if now >= self.retry_at:
                return Step(Action.CONNECT)
            return Step(Action.WAIT, self.retry_at)
        if self.state is not LinkState.LIVE:
            return Step(Action.WAIT, None)
        stall_at = self._last_rx + self.timing.stall_timeout
        if now >= stall_at:
            return Step(Action.STALLED)
        if self._last_ping is None:
            ping_at = self._last_rx + self.timing.ping_interval
            if now >= ping_at:
                return Step(Action.PING)
            return Step(Action.WAIT, min(ping_at, stall_at))
        return Step(Action.WAIT, stall_at)

    def statistics(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "failures": self.failures,
            "connects": self.connects,
            "stalls": self.stalls,
        }
