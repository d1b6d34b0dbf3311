"""The device side of the framed control protocol, whatever carries it (pure protocol over a
:class:`Carrier`): hello, authentication, requests and subscriptions. ``quic/client.py`` carries
it over WebTransport, ``rtc/client.py`` over a WebRTC DataChannel (example clients, tests,
benchmarks)."""

from __future__ import annotations

import math
from typing import Any, Protocol

import attrs
import nacl.exceptions
import nacl.signing
import trio

from ..security.identity import b64, unb64
from ..security.tls import signed_message
from . import frames as fr


class Carrier(Protocol):
    """Control messages in order, both ways. ``cert_sha256`` is the hash of the daemon's
    certificate on this connection (what ``auth`` signs with the nonce); ``closed`` is
    ``(code, reason)`` once the connection ended."""

    closed: tuple[int, str] | None
    cert_sha256: bytes

    def send(self, message: dict[str, Any]) -> None: ...

    async def receive(self) -> dict[str, Any]: ...


class PinError(Exception):
    """The server's certificate is not one the pinned daemon key vouches for."""


class SessionClosed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"session closed: {code:#x} {reason}")
        self.code = code
        self.reason = reason


class RequestFailed(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


def verify_certificate(cert_sha256: bytes, info: dict[str, Any], daemon_key: bytes) -> None:
    """Raise :class:`PinError` unless ``info`` lists the hash, signed by ``daemon_key``."""
    for entry in info.get("certificates", []):
        if entry.get("sha256") == cert_sha256.hex():
            try:
                signature = unb64(entry["signature"])
                nacl.signing.VerifyKey(daemon_key).verify(signed_message(cert_sha256), signature)
            except (nacl.exceptions.BadSignatureError, ValueError, KeyError) as exc:
                raise PinError("the certificate is not signed by the daemon's key") from exc
            return
    raise PinError("the certificate is not one the daemon's key vouches for")


@attrs.define
class Subscription:
    id: int
    receive: trio.MemoryReceiveChannel[dict[str, Any]]
    last_id: str | None = None  #: ``"<epoch>:<cursor>"`` of the last event or snapshot seen

    async def next(self) -> dict[str, Any]:
        """The next frame of this subscription (``event``, ``snapshot``, ``sessions``, ...)."""
        try:
            message = await self.receive.receive()
        except trio.EndOfChannel:
            raise SessionClosed(0, "the subscription ended") from None
        if message.get("type") in ("event", "snapshot"):
            self.last_id = message["id"]
        return message


class DeviceSession:
    """The control protocol, client side: one reader task sorts frames by request and
    subscription; callers await replies and subscription frames."""

    def __init__(self, client: Carrier) -> None:
        self.client = client
        self.welcome: dict[str, Any] = {}
        self._next_id = 1
        self._replies: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._subs: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self.errors: list[dict[str, Any]] = []
        self.closing: dict[str, Any] | None = None

    async def start(self, nursery: trio.Nursery, client_name: str = "python") -> None:
        """Say hello and start the reader; returns once ``welcome`` arrived."""
        self.client.send({"type": "hello", "versions": list(fr.VERSIONS), "client": client_name})
        welcome = await self.client.receive()
        if welcome.get("type") != "welcome":
            raise SessionClosed(0, f"expected welcome, got {welcome}")
        self.welcome = welcome
        nursery.start_soon(self._read)

    async def _read(self) -> None:
        try:
            while True:
                message = await self.client.receive()
                kind = message.get("type")
                if kind == "reply" and message["id"] in self._replies:
                    self._replies.pop(message["id"]).send_nowait(message)
                elif kind == "reply" and message["id"] in self._subs:
                    self._subs[message["id"]].send_nowait(message)
                elif "sub" in message and message["sub"] in self._subs:
                    self._subs[message["sub"]].send_nowait(message)
                    if kind == "end":
                        self._subs.pop(message["sub"]).close()
                elif kind == "close":
                    self.closing = message
                elif kind == "ready" or (kind == "error" and message.get("id") is None):
                    if 0 in self._replies:  # the answer to authenticate()
                        self._replies.pop(0).send_nowait(message)
                    else:
                        self.errors.append(message)
                elif kind == "error" and message.get("id") in self._replies:
                    self._replies.pop(message["id"]).send_nowait(message)
                else:
                    self.errors.append(message)
        except SessionClosed:
            pass
        finally:
            for channel in [*self._replies.values(), *self._subs.values()]:
                channel.close()

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """An HTTP API request over the session; the reply body, or :class:`RequestFailed`."""
        status, reply = await self.call(method, path, body)
        if status >= 400:
            raise RequestFailed(status, reply)
        return reply

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        request_id = self._new_id()
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._replies[request_id] = send
        message: dict[str, Any] = {"type": "request", "id": request_id, "method": method}
        message["path"] = path
        if body is not None:
            message["body"] = body
        self.client.send(message)
        try:
            reply = await receive.receive()
        except trio.EndOfChannel:
            raise SessionClosed(*(self.client.closed or (0, "closed"))) from None
        if reply.get("type") == "error":
            return 400, {"error": {"code": reply["code"], "message": reply["message"]}}
        return int(reply["status"]), reply["body"]

    async def authenticate(self, device_id: str, key: nacl.signing.SigningKey) -> dict[str, Any]:
        nonce = unb64(self.welcome["nonce"])
        message = fr.auth_message(nonce, self.client.cert_sha256, device_id)
        signature = b64(key.sign(message).signature)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._replies[0] = send  # the ready (or error) frame has no id: see _read
        self.client.send({"type": "auth", "device": device_id, "signature": signature})
        try:
            reply = await receive.receive()
        except trio.EndOfChannel:
            raise SessionClosed(*(self.client.closed or (0, "closed"))) from None
        if reply.get("type") != "ready":
            raise RequestFailed(401, reply)
        return reply

    async def subscribe(self, path: str, since: str | None = None) -> Subscription:
        sub_id = self._new_id()
        send, receive = trio.open_memory_channel[dict[str, Any]](math.inf)
        self._subs[sub_id] = send
        message: dict[str, Any] = {"type": "subscribe", "id": sub_id, "path": path}
        if since is not None:
            message["since"] = since
        self.client.send(message)
        subscription = Subscription(sub_id, receive, since)
        first = await subscription.next()
        if first.get("type") != "reply" or first.get("status") != 200:
            raise RequestFailed(int(first.get("status", 400)), first.get("body", first))
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self.client.send({"type": "unsubscribe", "id": subscription.id})
