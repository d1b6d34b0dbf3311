"""aiortc under Trio: one asyncio loop on a dedicated thread, frames handed over through channels.

aiortc is asyncio-only. It gets its own event loop on one thread (:class:`AsyncioThread`), shared
by every peer connection; Trio keeps the main thread. The bridge, measured in the lab
(``reference/webrtc-anywhere.md`` §2), is as fast as plain asyncio and 30-50 % faster than
trio-asyncio:

* Trio → asyncio: ``asyncio.run_coroutine_threadsafe`` plus a done-callback that wakes Trio with
  ``TrioToken.run_sync_soon`` (:meth:`AsyncioThread.run`; cancelling the Trio side cancels the
  asyncio task), or ``loop.call_soon_threadsafe`` for fire-and-forget (a DataChannel send).
* asyncio → Trio: ``run_sync_soon(send_channel.send_nowait, item)`` only. The asyncio thread never
  waits for Trio (``trio.from_thread.run`` there would stall every peer connection, and deadlock
  while Trio awaits the loop).

aiortc objects are touched on the asyncio thread only. aiortc is imported lazily, by the first
:class:`AsyncioThread`, so the daemon's start-up time and idle memory do not change unless the
WebRTC path is used. At that import two lab-measured workarounds are applied: aioice's first
STUN retransmit goes from 0.5 s to 0.1 s (hole punching otherwise costs 0.4 s more, because the
daemon's first check to the phone is always dropped by the phone's NAT), and every peer
connection gets an explicit ICE server list (aiortc's default is Google's public STUN server).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, TypeVar

import trio

from ..errors import SidecodeError
from .ice import IceServer, strip_mdns
from .signaling import sdp_fingerprints

if TYPE_CHECKING:
    from aiortc import RTCDataChannel, RTCPeerConnection

log = logging.getLogger(__name__)

T = TypeVar("T")
STUN_RETRY: Final = 0.1  # aioice's first STUN retransmit (its default 0.5 s), near a WAN RTT
CHANNEL_LABEL: Final = "sidecode"
SEND_HIGH: Final = 1024 * 1024  # bytes queued in aiortc before send() waits
SEND_SYNC_EVERY: Final = 64 * 1024  # bytes sent between two checks of aiortc's queue


class RtcError(SidecodeError):
    """The peer connection failed, closed, or could not be set up."""

    status = 502
    code = "rtc_failed"


_imported = False


def _import_aiortc() -> None:
    """Import aiortc (and PyAV under it) once, and apply the aioice workaround."""
    global _imported
    if not _imported:
        import aioice.stun
        import aiortc  # noqa: F401

        aioice.stun.RETRY_RTO = STUN_RETRY  # read per transaction, so setting it here works
        _imported = True


class AsyncioThread:
    """An asyncio loop on its own thread, seen from Trio; made by :func:`open_asyncio_thread`."""

    def __init__(self, thread_setup: Callable[[], None] | None) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread_setup = thread_setup
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._main, name="aiortc", daemon=True)
        self._ready = threading.Event()
        self._setup_failed: Exception | None = None

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            if self._thread_setup is not None:
                self._thread_setup()
        except Exception as exc:
            self._setup_failed = exc
            self.loop.close()
            return
        finally:
            self._ready.set()
        self.loop.run_forever()
        pending = asyncio.all_tasks(self.loop)  # drain on stop
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    async def run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Await the coroutine ``fn(*args)`` on the asyncio loop; Trio cancellation cancels it."""
        future = asyncio.run_coroutine_threadsafe(fn(*args), self.loop)
        done = trio.Event()
        future.add_done_callback(lambda _: self.to_trio(done.set))
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the asyncio loop, without waiting (FIFO with :meth:`run`)."""
        self.loop.call_soon_threadsafe(fn, *args)

    def to_trio(self, fn: Callable[..., object], *args: Any) -> None:
        """From the asyncio thread: run ``fn(*args)`` in Trio soon. Never blocks."""
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass


@asynccontextmanager
async def open_asyncio_thread(
    thread_setup: Callable[[], None] | None = None,
) -> AsyncIterator[AsyncioThread]:
    """The asyncio thread for aiortc; stopped and joined on exit (close peers first).

    ``thread_setup`` runs first on the new thread (the network lab uses it to put every socket
    of that thread in a network namespace)."""
    await trio.to_thread.run_sync(_import_aiortc)  # 0.2 s of imports, off the Trio thread
    aio = AsyncioThread(thread_setup)
    aio._thread.start()
    await trio.to_thread.run_sync(aio._ready.wait)
    if aio._setup_failed is not None:
        await trio.to_thread.run_sync(aio._thread.join)
        raise RtcError(f"cannot start the aiortc thread: {aio._setup_failed}")
    try:
        yield aio
    finally:
        aio.loop.call_soon_threadsafe(aio.loop.stop)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(aio._thread.join)


class TrioDataChannel:
    """A reliable, ordered DataChannel seen from Trio.

    Made on the asyncio thread as soon as aiortc reports the channel, so no message is missed.
    Inbound messages wait in an unbounded channel: aiortc has no SCTP-level flow control to push
    back with, and dropping would corrupt the framed protocol on top. Sending applies
    back-pressure: every ``SEND_SYNC_EVERY`` bytes it waits until aiortc's queue is below
    ``SEND_HIGH`` (the loop runs ``call_soon`` items and coroutines in FIFO order, so that wait
    happens after the sends before it)."""

    def __init__(self, aio: AsyncioThread, channel: RTCDataChannel) -> None:
        self._aio, self._channel, self._since = aio, channel, 0
        self._tx, self._rx = trio.open_memory_channel[bytes | str](math.inf)
        channel.bufferedAmountLowThreshold = SEND_HIGH // 4
        channel.on("message", lambda message: aio.to_trio(self._tx.send_nowait, message))
        channel.on("close", lambda: aio.to_trio(self._tx.close))

    @property
    def label(self) -> str:
        return self._channel.label

    async def send(self, message: bytes | str) -> None:
        self._aio.call_soon(self._channel.send, message)
        self._since += len(message)
        if self._since >= SEND_SYNC_EVERY:
            self._since = 0
            await self._aio.run(self._wait_low)

    async def _wait_low(self) -> None:  # on the asyncio thread
        if self._channel.bufferedAmount <= SEND_HIGH:
            return
        low: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def drained() -> None:
            if not low.done():
                low.set_result(None)

        self._channel.once("bufferedamountlow", drained)
        await low

    async def receive(self) -> bytes | str:
        """The next message; ``trio.EndOfChannel`` once the channel closed."""
        return await self._rx.receive()


def _configuration(servers: list[IceServer]) -> Any:
    from aiortc import RTCConfiguration, RTCIceServer

    return RTCConfiguration(
        iceServers=[RTCIceServer(s.urls, s.username, s.credential) for s in servers]
    )


class PeerConnection:
    """One ``RTCPeerConnection`` with one DataChannel, owned from Trio.

    Make it with :meth:`offer` (the device) or :meth:`answer` (the daemon); both return only once
    ICE gathering is complete (non-trickle: the whole SDP crosses the broker in one message).
    Close it with :meth:`aclose` before the :class:`AsyncioThread` stops."""

    def __init__(self, aio: AsyncioThread, pc: RTCPeerConnection) -> None:
        self._aio, self.pc = aio, pc
        self._open = trio.Event()
        self._ended: str | None = None
        self._channel: TrioDataChannel | None = None
        self.state = "new"

    def _attach(self) -> None:  # on the asyncio thread, before anything can happen
        def state_changed() -> None:
            state = self.pc.connectionState
            self._aio.to_trio(self._set_state, state)

        self.pc.on("connectionstatechange", state_changed)

    def _channel_seen(self, channel: RTCDataChannel) -> None:  # on the asyncio thread
        wrapped = TrioDataChannel(self._aio, channel)
        if channel.readyState == "open":
            self._aio.to_trio(self._opened, wrapped)
        else:
            channel.once("open", lambda: self._aio.to_trio(self._opened, wrapped))

    def _opened(self, channel: TrioDataChannel) -> None:
        self._channel = channel
        self._open.set()

    def _set_state(self, state: str) -> None:
        self.state = state
        if state in ("failed", "closed") and self._ended is None:
            self._ended = state
            self._open.set()

    @classmethod
    async def offer(
        cls, aio: AsyncioThread, servers: list[IceServer]
    ) -> tuple[PeerConnection, str]:
        """A new connection with our DataChannel, and its complete SDP offer."""

        async def make() -> tuple[PeerConnection, str]:
            from aiortc import RTCPeerConnection

            peer = cls(aio, RTCPeerConnection(_configuration(servers)))
            peer._attach()
            peer._channel_seen(peer.pc.createDataChannel(CHANNEL_LABEL))
            try:
                await peer.pc.setLocalDescription(await peer.pc.createOffer())
            except BaseException:
                await peer.pc.close()
                raise
            return peer, peer.pc.localDescription.sdp

        return await aio.run(make)

    @classmethod
    async def answer(
        cls, aio: AsyncioThread, servers: list[IceServer], offer_sdp: str
    ) -> tuple[PeerConnection, str]:
        """A new connection answering ``offer_sdp`` (already checked), and its complete answer."""

        async def make() -> tuple[PeerConnection, str]:
            from aiortc import RTCPeerConnection, RTCSessionDescription

            peer = cls(aio, RTCPeerConnection(_configuration(servers)))
            peer._attach()
            peer.pc.on("datachannel", peer._channel_seen)
            stripped, _mdns = strip_mdns(offer_sdp)
            try:
                await peer.pc.setRemoteDescription(RTCSessionDescription(stripped, "offer"))
                await peer.pc.setLocalDescription(await peer.pc.createAnswer())
            except BaseException:
                await peer.pc.close()
                raise
            return peer, peer.pc.localDescription.sdp

        try:
            return await aio.run(make)
        except Exception as exc:  # aiortc's parser raises several kinds on an SDP it cannot use
            raise RtcError(f"cannot answer this offer: {exc}") from None

    async def accept_answer(self, answer_sdp: str) -> None:
        """Apply the daemon's answer (already checked); ICE and DTLS start."""

        async def apply() -> None:
            from aiortc import RTCSessionDescription

            await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

        try:
            await self._aio.run(apply)
        except Exception as exc:  # as in answer(): a bad SDP, whatever aiortc calls it
            raise RtcError(f"cannot use this answer: {exc}") from None

    def local_fingerprints(self) -> list[str]:
        """Our DTLS certificate's fingerprints, as written in our SDP."""
        return sdp_fingerprints(self.pc.localDescription.sdp)

    async def channel(self) -> TrioDataChannel:
        """The DataChannel once it is open (ICE, DTLS and SCTP done); :class:`RtcError` if the
        connection fails or closes first. Put a deadline around it: ICE may take up to ~30 s to
        give up."""
        await self._open.wait()
        if self._channel is None:
            raise RtcError(f"the peer connection {self._ended} before its channel opened")
        return self._channel

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._aio.run(self.pc.close)
