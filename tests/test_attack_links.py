"""An attacker on a link's session driver (``channel/link.py``) against a real daemon: the
operations, guard and front door a WebTransport session or a WebRTC DataChannel is served by,
over an in-memory transport. Every operation's body with fields of the wrong kind, request
targets and methods nobody sends, malformed subscriptions, an authentication with a device id
that is not text, and one link attacked while another works.

Every answer is a reply with a 4xx status and the API's error shape, or an ``error`` frame, or a
documented close; nothing raises out of the link, and the other link never notices. The pure
machine is ``tests/test_attack_frames.py``; the worst frames over a real WebTransport session
are ``test_the_worst_frames_over_a_real_webtransport_session`` below.
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest
import trio

from sidecode_trio.channel import frames as fr
from sidecode_trio.channel.frames import CloseCode
from sidecode_trio.channel.link import Link
from sidecode_trio.ops.front import described_routes
from sidecode_trio.quic.client import QuicClient, SessionClosed
from sidecode_trio.security.identity import b64, unb64

from helpers import Client, load_example

pc = load_example("pair_client")
CERT = b"c" * 32
NESTED = "[" * 10_000 + "]" * 10_000


class MemoryTransport:
    """A link's transport in memory: what it writes (large payloads put back in their place)."""

    addr = ("127.0.0.1", 50_000)

    def __init__(self) -> None:
        self._decoder = fr.FrameDecoder(2**31)
        self._streams: dict[int, bytearray] = {}
        self._large: dict[int, bytes] = {}
        self._next_stream = 3
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[CloseCode, str] | None = None
        self._wrote = trio.Event()

    def buffered(self) -> int:
        return 0

    def write_control(self, data: bytes) -> None:
        for payload in self._decoder.feed(data):
            message = json.loads(payload)
            if message.get("type") == "large":
                message = json.loads(self._large.pop(message["ref"]))
            self.frames.append(message)
        self._wrote.set()

    def write_live(self, data: bytes) -> None:
        self.write_control(data)

    def open_stream(self) -> int:
        self._next_stream += 4
        self._streams[self._next_stream] = bytearray()
        return self._next_stream

    def write_stream(self, stream_id: int, data: bytes, end: bool) -> None:
        self._streams[stream_id] += data
        if end:
            body = self._streams.pop(stream_id)
            self._large[int.from_bytes(body[:4], "big")] = bytes(body[4:])

    def send_datagram(self, data: bytes) -> None:
        pass

    def close_session(self, code: CloseCode, message: str) -> None:
        self.closed = (code, message)
        self._wrote.set()

    def close_now(self, code: CloseCode, message: str) -> None:
        self.close_session(code, message)

    async def next(self, match: Any = lambda frame: True) -> dict[str, Any]:
        """The first frame not read yet that ``match``es (frames before it are dropped)."""
        with trio.fail_after(10):  # a deadline only: the frame is what is waited for
            while True:
                while self.frames:
                    frame = self.frames.pop(0)
                    if match(frame):
                        return frame
                self._wrote = trio.Event()
                await self._wrote.wait()

    async def until_closed(self) -> tuple[CloseCode, str]:
        with trio.fail_after(10):
            while self.closed is None:
                self._wrote = trio.Event()
                await self._wrote.wait()
        return self.closed


@attrs.frozen
class Device:
    id: str
    key: Any  #: nacl.signing.SigningKey


async def paired(owner: Client, scope: str = "admin") -> Device:
    offer = await owner.http.post("/v1/pairings", json={"scope": scope})
    assert offer.status_code == 201, offer.text
    body, key, _ = pc.pair_request(offer.json()["payload"], "attacker")
    reply = await owner.http.post("/v1/pair", json=body)
    assert reply.status_code == 201, reply.text
    return Device(reply.json()["device"]["id"], key)


@attrs.define
class Peer:
    """One link to the daemon, and what it was sent."""

    transport: MemoryTransport
    link: Link
    welcome: dict[str, Any]
    next_id: int = 1000

    def send(self, message: Any) -> None:
        self.raw(json.dumps(message).encode("utf-8", "surrogatepass"))

    def raw(self, payload: bytes) -> None:
        self.link.data_received(fr.frame(payload), False)  # never raises: that is the point

    async def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """A request's reply (or the error frame that answered it)."""
        self.next_id += 1
        request_id = self.next_id
        self.send(
            {"type": "request", "id": request_id, "method": method, "path": path, "body": body}
        )
        return await self.transport.next(lambda f: f.get("id") == request_id)

    async def authenticate(self, device: Device, device_id: str | None = None) -> dict[str, Any]:
        name = device.id if device_id is None else device_id
        message = fr.auth_message(unb64(self.welcome["nonce"]), CERT, name)
        self.send(
            {"type": "auth", "device": name, "signature": b64(device.key.sign(message).signature)}
        )
        return await self.transport.next(lambda f: f["type"] in ("ready", "error"))


async def open_peer(owner: Client, nursery: trio.Nursery) -> Peer:
    transport = MemoryTransport()
    link = owner.handle.quic.new_link(transport, CERT)
    link.start(nursery)
    peer = Peer(transport, link, {})
    peer.send({"type": "hello", "versions": [1]})
    peer.welcome = await transport.next()
    assert peer.welcome["type"] == "welcome", peer.welcome
    return peer


async def ready_peer(owner: Client, nursery: trio.Nursery, device: Device) -> Peer:
    peer = await open_peer(owner, nursery)
    assert (await peer.authenticate(device))["type"] == "ready"
    return peer


def assert_4xx(reply: dict[str, Any], *statuses: int) -> dict[str, Any]:
    """A reply with a client error and the API's error shape; its error."""
    assert reply["type"] == "reply", reply
    assert 400 <= reply["status"] < 500, reply
    assert not statuses or reply["status"] in statuses, reply
    error = reply["body"]["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str), reply
    assert set(reply["body"]) == {"error"} and set(error) == {"code", "message"}, reply
    return dict(error)


def assert_error_frame(frame: dict[str, Any], code: str, request_id: int | None) -> None:
    assert frame["type"] == "error" and frame["code"] == code, frame
    assert frame["id"] == request_id and isinstance(frame["message"], str), frame


# -- every operation's body, every field of the wrong kind -------------------------------------

#: one value of every JSON kind (NaN and Infinity are not JSON: refused with the frame)
KINDS: dict[str, Any] = {
    "null": None,
    "true": True,
    "zero": 0,
    "huge": 10**400,
    "minus zero": -0.0,
    "float": 1.5,
    "string": "x",
    "surrogate": "\ud800",
    "nul": "\x00",
    "list": ["a"],
    "object": {"a": 1},
    "nested": json.loads("[" * 200 + "]" * 200),
}


def accepted(annotation: Any) -> tuple[type, ...]:
    """The JSON kinds a body field of ``annotation`` is structured from (every kind: Any)."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return (object,)
    if origin in (typing.Union, types.UnionType):
        return tuple(k for arg in typing.get_args(annotation) for k in accepted(arg))
    if annotation is type(None):
        return (type(None),)
    if origin is Literal:
        return ()  # a fixed set of strings, none of which KINDS holds
    if annotation is float:
        return (int, float)
    if origin is list or annotation is list:
        return (list,)
    if origin is dict or attrs.has(annotation):
        return (dict,)
    return (annotation,)


def takes(annotation: Any, value: Any) -> bool:
    kinds = accepted(annotation)
    if isinstance(value, bool):
        return bool in kinds or object in kinds
    return isinstance(value, kinds)


def minimal(cls: type) -> dict[str, Any]:
    """A body of ``cls`` with its required fields only, each of the right kind."""
    body: dict[str, Any] = {}
    for field in attrs.fields(attrs.resolve_types(cls)):
        if field.default is not attrs.NOTHING:
            continue
        annotation = field.type
        if typing.get_origin(annotation) is Literal:
            body[field.name] = typing.get_args(annotation)[0]
        elif attrs.has(annotation):
            body[field.name] = minimal(annotation)
        else:
            body[field.name] = {str: "x", bool: False, int: 1, float: 1.0}[annotation]
    return body


def target(path: str) -> str:
    for name in ("session_id", "request_id", "tool_use_id", "device_id", "subscription_id"):
        path = path.replace("{" + name + "}", "nope")
    return path


BODY_ROUTES = [route for route in described_routes() if route.body is not None]


async def test_every_operation_answers_fields_of_the_wrong_kind_with_400(daemon: Client) -> None:
    device = await paired(daemon)
    checked = 0
    async with trio.open_nursery() as nursery:
        peer = await ready_peer(daemon, nursery, device)
        for route in BODY_ROUTES:
            assert route.body is not None
            base = minimal(route.body)
            for field in attrs.fields(attrs.resolve_types(route.body)):
                for value in KINDS.values():
                    body = {**base, field.name: value}
                    reply = await peer.call(route.method, target(route.path), body)
                    if takes(field.type, value):  # the right kind: the operation's to judge
                        assert reply["status"] < 400 or assert_4xx(reply), reply
                        continue
                    error = assert_4xx(reply, 400)
                    assert error["code"] == "invalid_field", (route.path, field.name, reply)
                    assert f"$.{field.name}" in error["message"], (route.path, reply)
                    checked += 1
                if field.default is attrs.NOTHING:  # a required field left out
                    body = {k: v for k, v in base.items() if k != field.name}
                    reply = await peer.call(route.method, target(route.path), body)
                    assert assert_4xx(reply, 400)["code"] == "invalid_field", reply
            # A body that is not an object is the frame's error (a bad frame: counted, so on a
            # link of its own, within the budget of 16).
            shapes = await ready_peer(daemon, nursery, device)
            for shape in ([], [base], "x", 1, True):
                shapes.send({"type": "request", "id": 7, "method": route.method,
                             "path": target(route.path), "body": shape})  # fmt: skip
                frame = await shapes.transport.next(lambda f: f.get("id") == 7)
                assert_error_frame(frame, "invalid_field", 7)
            assert shapes.link.close_code is None
        assert checked > 150  # every field of every body class, not a handful
        assert (await peer.call("GET", "/v1/sessions"))["status"] == 200
        assert peer.link.close_code is None  # request errors are not bad frames
        nursery.cancel_scope.cancel()


TARGETS = [
    ("GET", "//[/v1/info"),  # urlsplit's "Invalid IPv6 URL": was a 500
    ("GET", "http://[/v1/info"),
    ("GET", ""),
    ("GET", "v1/info"),
    ("GET", "/v1/info\x00"),
    ("GET", "/v1/sessions/\x00"),
    ("GET", "/v1/sessions/..%2F..%2Fetc%2Fpasswd"),
    ("GET", "/v1/sessions/../../etc/passwd"),
    ("GET", "/v1/sessions/nope/tools/..%2F..%2F..%2Fetc%2Fpasswd/output"),
    ("DELETE", "/v1/sessions/..%2F..?log=remove"),
    ("GET", "/v1/sessions/\ud800"),
    ("GET", "/v1/sessions/%ED%A0%80"),
    ("GET", "/v1/" + "x" * 100_000),
    ("GET", "/v1/audit?limit=\ud800"),
    ("GET", "/v1/audit?limit=10**400"),
    ("GET", "/v1/audit?limit=" + "9" * 5000),
    ("GET", "/v1/audit?limit=-1"),
    ("GET", "/v1/sessions?status=\x00&archived=maybe"),
    ("GET", "/v1/folders?path=../../../etc&hidden=%FF"),
    ("GET", "/v1/folders?path=/etc"),
    ("GET", "/v1/sessions/nope/events"),
    ("GET", "/v1/events"),
    ("BREW", "/v1/info"),
    ("", "/v1/sessions"),
    ("\x00", "/v1/sessions"),
    ("\ud800", "/v1/sessions"),
    ("GET\r\nX-Injected: 1", "/v1/sessions"),
    ("POST", "/v1/info"),
]


async def test_targets_and_methods_nobody_sends_are_client_errors(daemon: Client) -> None:
    device = await paired(daemon)
    async with trio.open_nursery() as nursery:
        peer = await ready_peer(daemon, nursery, device)
        for method, path in TARGETS:
            assert_4xx(await peer.call(method, path), 400, 403, 404, 405)
        assert (await peer.call("GET", "/v1/sessions"))["status"] == 200
        nursery.cancel_scope.cancel()


async def test_lone_surrogates_over_a_link_are_refused_with_the_request_id(
    daemon: Client, work_dir: Path
) -> None:
    """A model's name with one went on the CLI's command line (the daemon ended); a cwd's
    reached realpath (a 500); a query's reached the folder browser."""
    device = await paired(daemon)
    async with trio.open_nursery() as nursery:
        peer = await ready_peer(daemon, nursery, device)
        cwd = str(work_dir)
        for method, path, body in (
            ("POST", "/v1/sessions", {"cwd": cwd, "model": "m\ud800"}),
            ("POST", "/v1/sessions", {"cwd": cwd + "/\udfff"}),
            ("POST", "/v1/sessions", {"cwd": cwd, "prompt": "\ud800"}),
            ("GET", f"/v1/folders?path={cwd}/\ud800", None),
            ("GET", "/v1/sessions?q=\ud800", None),
        ):
            error = assert_4xx(await peer.call(method, path, body), 400)
            assert "lone surrogate" in error["message"] or "request target" in error["message"]
        created = await peer.call("POST", "/v1/sessions", {"cwd": cwd, "prompt": "\ud83d\ude00"})
        assert created["status"] == 201, created  # a pair is a character
        nursery.cancel_scope.cancel()


# -- subscriptions -----------------------------------------------------------------------------


async def test_malformed_subscriptions_are_refused_and_the_link_lives_on(
    daemon: Client, work_dir: Path
) -> None:
    device = await paired(daemon)
    session = await daemon.create(work_dir, "hello")
    sid = session["session"]["id"]
    epoch = (await daemon.snapshot(sid))["epoch"]
    events = f"/v1/sessions/{sid}/events"
    async with trio.open_nursery() as nursery:
        peer = await ready_peer(daemon, nursery, device)

        async def subscribe(sub: int, path: str, since: str | None = None) -> dict[str, Any]:
            peer.send({"type": "subscribe", "id": sub, "path": path, "since": since})
            return await peer.transport.next(lambda f: f["type"] == "reply" and f["id"] == sub)

        for n, since in enumerate(
            [
                "a:b",
                ":-1",
                ":",
                f"{epoch}:",
                f"{epoch}:-1",
                f"{epoch}:1.5",
                f"{epoch}:²",
                f"{epoch}:0x10",
                "epoch:99999999999999999999",
                f"{epoch}:{'9' * 5000}",
                "no colon",
                "x" * 100_000,
            ]
        ):
            error = assert_4xx(await subscribe(n, events, since), 400)
            assert error["code"] == "bad_request" and "event id" in error["message"], error
        for n, path in enumerate(
            [
                "/v1/sessions/nope/events",
                "/v1/sessions/\ud800/events",
                "/v1/sessions/../events",
                "/v1/sessions//events",
                "/v1/sessions/%2e%2e/events",
                "/v1/nope/events",
                "/v2/events",
                "../../etc/passwd",
                "",
                "\x00",
            ],
            start=100,
        ):
            assert_4xx(await subscribe(n, path), 400, 404)
        # another epoch, or a cursor past the end: a snapshot, not an error (as over SSE)
        for n, since in enumerate(
            ["\ud800:1", "\x00:1", "other:3", f"{epoch}:999999999"], start=200
        ):
            assert (await subscribe(n, events, since))["status"] == 200
            snapshot = await peer.transport.next(lambda f: f["type"] == "snapshot")
            assert snapshot["id"].startswith(epoch + ":"), snapshot
        # the same id twice: 409, and the first subscription goes on
        assert (await subscribe(300, "/v1/events"))["status"] == 200
        assert assert_4xx(await subscribe(300, "/v1/events"), 409)["code"] == "conflict"
        # unsubscribing an id the link does not follow: an error frame, not silence
        for unknown in (301, -1, 10**400):
            peer.send({"type": "unsubscribe", "id": unknown})
            frame = await peer.transport.next(lambda f: f["type"] in ("error", "end"))
            assert_error_frame(frame, "unknown_subscription", unknown)
        peer.send({"type": "unsubscribe", "id": 300})
        assert await peer.transport.next(lambda f: f["type"] == "end") == {
            "type": "end",
            "sub": 300,
            "reason": "unsubscribed",
        }
        peer.send({"type": "unsubscribe", "id": 300})  # again: unknown now
        frame = await peer.transport.next(lambda f: f["type"] in ("error", "end"))
        assert_error_frame(frame, "unknown_subscription", 300)
        # none of that counted as a bad frame: the link serves on
        assert peer.link.close_code is None and peer.link.protocol.errors == 0
        assert (await subscribe(400, events, f"{epoch}:0"))["status"] == 200
        first = await peer.transport.next(lambda f: f.get("sub") == 400)
        assert first["type"] == "event" and first["id"] == f"{epoch}:1", first
        nursery.cancel_scope.cancel()


# -- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device_id", ["\ud800", "dev_\udfff", "\x00", "", "../" * 100, "d" * 16_000, "dev_1\n"]
)
async def test_an_auth_with_a_device_id_nobody_has_is_refused_with_unauthorized(
    daemon: Client, device_id: str
) -> None:
    """A lone surrogate in ``device`` raised UnicodeEncodeError out of the link (building the
    signed message): the connection died without an answer."""
    device = await paired(daemon)
    async with trio.open_nursery() as nursery:
        peer = await open_peer(daemon, nursery)
        answer = await peer.authenticate(device, device_id)
        assert_error_frame(answer, "unauthorized", None)
        code, _ = await peer.transport.until_closed()
        assert code is CloseCode.UNAUTHORIZED
        good = await ready_peer(daemon, nursery, device)  # the device itself is fine
        assert (await good.call("GET", "/v1/sessions"))["status"] == 200
        nursery.cancel_scope.cancel()


# -- one link attacked, another working ---------------------------------------------------------


def close_code(peer: Peer) -> CloseCode | None:
    return peer.link.close_code  # (a call: mypy would take the attribute as narrowed)


WORST: list[dict[str, Any]] = [
    {"type": []},
    {"type": {"request": 1}},
    {"type": ["request"], "id": 1, "method": "GET", "path": "/v1/info"},
    {"type": "subscribe", "id": {"": 1}, "path": "/v1/events"},
    {"type": "request", "id": 5, "method": "GET", "path": "/v1/info", "body": "x"},
    {"type": "unsubscribe", "id": "all"},
]
WORST_RAW = [
    b'{"type": "request", "id": 6, "method": "GET", "path": "/v1/info", "body": {"a": NaN}}',
    NESTED.encode(),
    b"\xff" * 100,
    b'{"type": "request", "id": ' + b"9" * 5000 + b"}",
]


async def test_a_link_under_attack_leaves_the_other_links_alone(
    daemon: Client, work_dir: Path
) -> None:
    device = await paired(daemon)
    async with trio.open_nursery() as nursery:
        victim = await ready_peer(daemon, nursery, device)
        victim.send({"type": "subscribe", "id": 1, "path": "/v1/events"})
        assert (await victim.transport.next(lambda f: f.get("id") == 1))["status"] == 200
        attacker = await ready_peer(daemon, nursery, device)
        for message in WORST:
            attacker.send(message)
            assert (await attacker.transport.next())["type"] == "error"
        for payload in WORST_RAW:
            attacker.raw(payload)
            frame = await attacker.transport.next()
            assert_error_frame(frame, "bad_frame", None)
        assert close_code(attacker) is None  # 10 bad frames: within the budget of 16
        while close_code(attacker) is None:
            attacker.send({"type": []})
        assert close_code(attacker) is CloseCode.PROTOCOL_ERROR
        assert (await attacker.transport.until_closed())[0] is CloseCode.PROTOCOL_ERROR
        # the other link: requests answered, its subscription follows a new session
        created = await victim.call("POST", "/v1/sessions", {"cwd": str(work_dir), "prompt": "hi"})
        assert created["status"] == 201, created
        sid = created["body"]["session"]["id"]
        changed = await victim.transport.next(
            lambda f: f.get("sub") == 1 and f["type"] == "session"
        )
        assert changed["session"]["id"] == sid
        assert victim.link.close_code is None and victim.link.protocol.errors == 0
        nursery.cancel_scope.cancel()


# -- the worst of it over a real WebTransport session ------------------------------------------


async def read_until_closed(client: QuicClient) -> None:
    while True:
        await client.receive()


async def test_the_worst_frames_over_a_real_webtransport_session(daemon: Client) -> None:
    """Before authentication (no pairing needed): types that are lists or objects, NaN, nesting
    and an auth whose device id is a lone surrogate. The connection died with an internal error
    (the exception reached the endpoint's datagram handler) instead of error frames and an
    ``unauthorized`` close; another session is served throughout."""
    port = daemon.handle.quic_port
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            bystander = await QuicClient.connect(nursery, "127.0.0.1", port)
            bystander.send({"type": "hello", "versions": [1]})
            assert (await bystander.receive())["type"] == "welcome"
            client = await QuicClient.connect(nursery, "127.0.0.1", port)
            client.send({"type": "hello", "versions": [1]})
            assert (await client.receive())["type"] == "welcome"
            messages: list[dict[str, Any]] = [{"type": []}, {"type": {}, "id": 2}]
            for message in messages:
                client.send(message)
                answer = await client.receive()
                assert answer["type"] == "error" and answer["code"] == "unknown_type", answer
            for payload in (WORST_RAW[0], b"[" * 8000 + b"]" * 8000):  # 17 KiB before auth
                client.send_raw(fr.frame(payload))
                answer = await client.receive()
                assert answer["type"] == "error" and answer["code"] == "bad_frame", answer
            client.send({"type": "request", "id": 3, "method": "GET", "path": "/v1/info"})
            assert (await client.receive())["status"] == 200  # an open route, still served
            client.send_raw(fr.frame(b'{"type": "auth", "device": "\\ud800", "signature": "x"}'))
            answer = await client.receive()
            assert answer["type"] == "error" and answer["code"] == "unauthorized", answer
            with pytest.raises(SessionClosed) as closed:
                await read_until_closed(client)
            assert closed.value.code == CloseCode.UNAUTHORIZED
            bystander.send({"type": "request", "id": 1, "method": "GET", "path": "/v1/info"})
            assert (await bystander.receive())["status"] == 200
            nursery.cancel_scope.cancel()
