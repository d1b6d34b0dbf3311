"""The WebTransport layer's pure parts, fed in memory: framing, the control state machine, the
outbox's bounds and order, and the session routing."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from aioquic.h3.events import (
    DatagramReceived,
    DataReceived,
    HeadersReceived,
    WebTransportStreamDataReceived,
)
from hypothesis import given
from hypothesis import strategies as st

from sidecode_trio.channel import frames as fr
from sidecode_trio.channel.control import (
    Authenticate,
    Call,
    Cancel,
    Close,
    ControlProtocol,
    Open,
    Phase,
    Send,
)
from sidecode_trio.channel.frames import CloseCode
from sidecode_trio.channel.link import Link, LinkSettings
from sidecode_trio.channel.outbox import ControlWrite, Limits, Outbox, Overflow, StreamWrite
from sidecode_trio.quic import routing
from sidecode_trio.quic.client import _parse_close
from sidecode_trio.quic.endpoint import close_capsule, session_urls
from sidecode_trio.security.auth import Principal
from sidecode_trio.security.devices import Scope

WHO = Principal("dev_1", "phone", Scope.CHAT)


def framed(message: dict[str, Any]) -> bytes:
    return fr.frame(json.dumps(message).encode())


def sent(actions: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(a.payload) for a in actions if isinstance(a, Send)]


def closes(actions: list[Any]) -> list[CloseCode]:
    return [a.code for a in actions if isinstance(a, Close)]


def protocol(max_frame: int = 1000) -> ControlProtocol:
    return ControlProtocol(
        welcome=b'{"type":"welcome"}',
        max_frame=max_frame,
        now=100.0,
        open_routes={("GET", "/v1/info")},
        max_errors=3,
    )


# -- framing ----------------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(1, 50))
def test_frames_survive_any_split(payloads: list[bytes], step: int) -> None:
    data = b"".join(fr.frame(p) for p in payloads)
    decoder = fr.FrameDecoder(300)
    out: list[bytes] = []
    for i in range(0, len(data), step):
        out += decoder.feed(data[i : i + step])
    assert out == payloads
    assert decoder.buffered == 0


def test_an_oversize_frame_is_refused_from_its_header() -> None:
    decoder = fr.FrameDecoder(10)
    with pytest.raises(fr.FrameTooLarge):
        decoder.feed(fr.HEADER.pack(11))  # refused before its body is buffered


def test_close_capsule_round_trip() -> None:
    assert _parse_close(close_capsule(CloseCode.LAGGING, "slow")) == (0x104, "slow")
    assert _parse_close(b"\x01") is None


def test_session_urls_name_each_address() -> None:
    urls = session_urls(["http://localhost:8765", "http://10.0.0.2:8765"], 8766)
    assert urls == ["https://127.0.0.1:8766/v1/wt", "https://10.0.0.2:8766/v1/wt"]


# -- the control state machine ----------------------------------------------------------------


def test_hello_then_auth_then_requests() -> None:
    p = protocol()
    assert sent(p.receive(framed({"type": "hello", "versions": [1, 2]}), False)) == [
        {"type": "welcome"}
    ]
    assert p.phase is Phase.AUTH
    actions = p.receive(framed({"type": "auth", "device": "dev_1", "signature": "x"}), False)
    assert [type(a) for a in actions] == [Authenticate]
    assert sent(p.authenticated(WHO))[0]["type"] == "ready"
    assert p.phase.value == "ready"
    assert p.timer() is None
    request = {"type": "request", "id": 1, "method": "GET", "path": "/v1/sessions"}
    subscribe = {"type": "subscribe", "id": 2, "path": "/v1/events"}
    actions = p.receive(
        framed(request) + framed(subscribe) + framed({"type": "unsubscribe", "id": 2}), False
    )
    assert [type(a) for a in actions] == [Call, Open, Cancel]
    assert actions[0] == Call(fr.Request(1, "GET", "/v1/sessions"), WHO)


def test_the_first_frame_must_be_a_hello_with_a_common_version() -> None:
    p = protocol()
    assert closes(p.receive(framed({"type": "auth", "device": "d", "signature": "s"}), False)) == [
        CloseCode.PROTOCOL_ERROR
    ]
    assert p.receive(framed({"type": "hello", "versions": [1]}), False) == []  # closed: ignored
    p = protocol()
    actions = p.receive(framed({"type": "hello", "versions": [7]}), False)
    assert sent(actions)[0]["code"] == "unsupported_version"
    assert closes(actions) == [CloseCode.UNSUPPORTED_VERSION]
    p = protocol()
    assert closes(p.receive(fr.frame(b"[1]"), False)) == []  # not an object: an error frame
    assert closes(p.receive(framed({"type": "hello"}), False)) == [CloseCode.PROTOCOL_ERROR]


def test_before_auth_only_open_routes_and_bad_frames_are_counted() -> None:
    p = protocol()
    p.receive(framed({"type": "hello", "versions": [1]}), False)
    info = p.receive(
        framed({"type": "request", "id": 1, "method": "get", "path": "/v1/info"}), False
    )
    assert info == [Call(fr.Request(1, "get", "/v1/info"), None)]
    refused = p.receive(
        framed({"type": "request", "id": 2, "method": "GET", "path": "/v1/x"}), False
    )
    assert sent(refused)[0]["status"] == 401 and sent(refused)[0]["id"] == 2
    assert sent(p.receive(fr.frame(b"{nope"), False))[0]["code"] == "bad_frame"
    bad = sent(p.receive(framed({"type": "request", "id": 3, "method": 5}), False))[0]
    assert (bad["code"], bad["id"]) == ("invalid_field", 3)
    assert closes(p.receive(framed({"type": "what"}), False)) == [CloseCode.PROTOCOL_ERROR]
    assert p.errors == 4


def test_oversize_frames_end_of_stream_and_the_handshake_deadline() -> None:
    p = protocol(max_frame=10)
    assert closes(p.receive(fr.HEADER.pack(11), False)) == [CloseCode.FRAME_TOO_LARGE]
    p = protocol()
    assert closes(p.receive(b"", True)) == [CloseCode.NORMAL]
    p = protocol()
    assert p.timer() == 110.0
    assert p.handle_timer(109.9) == []
    assert closes(p.handle_timer(110.0)) == [CloseCode.UNAUTHORIZED]
    assert p.timer() is None


def test_a_daemon_close_says_why_once() -> None:
    p = protocol()
    actions = p.close(CloseCode.REVOKED, "revoked")
    assert sent(actions)[0]["reason"] == "revoked"
    assert closes(actions) == [CloseCode.REVOKED]
    assert p.close(CloseCode.GOING_AWAY, "bye") == []


# -- the outbox -------------------------------------------------------------------------------


def control_frames(writes: list[Any]) -> list[dict[str, Any]]:
    decoder = fr.FrameDecoder(1 << 20)
    return [
        json.loads(p) for w in writes if isinstance(w, ControlWrite) for p in decoder.feed(w.data)
    ]


def test_lanes_keep_their_order_and_take_turns() -> None:
    box = Outbox(Limits(max_frames=1000))
    for i in range(100):
        box.push(1, json.dumps({"lane": 1, "i": i}).encode())
    box.push(2, b'{"lane":2,"i":0}')
    got = control_frames(box.pull(1 << 20))
    assert [m["i"] for m in got if m["lane"] == 1] == list(range(100))
    assert got.index({"lane": 2, "i": 0}) == 64  # lane 2 got its turn after one batch of lane 1
    assert not box.pending


def test_pull_respects_the_budget_and_never_splits_a_frame() -> None:
    box = Outbox()
    for _ in range(10):
        box.push(0, b'"%s"' % (b"x" * 98))
    first = box.pull(250)
    assert len(control_frames(first)) == 3  # 104 + 104 + 104 bytes: over by under one frame
    assert len(control_frames(box.pull(1 << 20))) == 7


def test_large_payloads_get_a_placeholder_and_their_own_stream_in_chunks() -> None:
    box = Outbox(Limits(inline_limit=100, chunk=1000))
    big = json.dumps({"type": "snapshot", "pad": "y" * 2500}).encode()
    box.push(1, big)
    box.push(1, b'{"type":"event"}')
    writes = box.pull(1 << 20)
    assert control_frames(writes) == [
        {"type": "large", "ref": 0, "size": len(big)},
        {"type": "event"},
    ]
    chunks = [w for w in writes if isinstance(w, StreamWrite)]
    assert [(c.first, c.last) for c in chunks] == [(True, False), (False, False), (False, True)]
    data = b"".join(c.data for c in chunks)
    assert fr.REF.unpack_from(data) == (0,) and data[fr.REF.size :] == big


def test_a_replay_is_produced_only_as_it_is_sent() -> None:
    produced = []

    def replay() -> Any:
        for i in range(1000):
            produced.append(i)
            yield b'{"i":%d}' % i

    box = Outbox(Limits(max_frames=10))
    box.push_lazy(1, replay())  # a thousand frames, counted as one
    box.pull(100)
    assert len(produced) < 20
    assert len(control_frames(box.pull(1 << 20))) > 900


def test_overflow_when_a_client_does_not_read() -> None:
    box = Outbox(Limits(max_frames=5, max_large=2, inline_limit=10))
    for _ in range(5):
        box.push(1, b"{}")
    with pytest.raises(Overflow):
        box.push(1, b"{}")
    box.push(2, b"x" * 20)
    box.push(3, b"x" * 20)
    with pytest.raises(Overflow):
        box.push(4, b"x" * 20)
    box.clear(1)
    assert box.statistics()["peak_frames"] == 5


def test_a_live_frame_skips_the_outbox_only_when_nothing_waits() -> None:
    box = Outbox(Limits(inline_limit=100))
    assert box.bypass(b'{"i":0}') == fr.frame(b'{"i":0}')
    assert box.statistics()["written"] == len(fr.frame(b'{"i":0}')) and not box.pending
    assert box.bypass(b"x" * 101) is None  # large: a placeholder and a stream, via push
    box.push(2, b'{"i":1}')
    assert box.bypass(b'{"i":2}') is None  # something waits (any lane): it goes after it


class FakeTransport:
    """What a link writes, and the back-pressure it is shown."""

    def __init__(self) -> None:
        self.buffered_bytes = 0
        self.control: list[bytes] = []
        self.live: list[bytes] = []

    def buffered(self) -> int:
        return self.buffered_bytes

    def write_control(self, data: bytes) -> None:
        self.control.append(data)

    def write_live(self, data: bytes) -> None:
        self.live.append(data)

    def open_stream(self) -> int:
        return 3

    def write_stream(self, stream_id: int, data: bytes, end: bool) -> None:
        pass

    def send_datagram(self, data: bytes) -> None:
        pass

    def close_session(self, code: CloseCode, message: str) -> None:
        pass

    def close_now(self, code: CloseCode, message: str) -> None:
        pass


def fake_link(transport: FakeTransport) -> Link:
    guard: Any = attrs.make_class("G", {"open_routes": attrs.field(default=frozenset())})()
    requests: Any = None
    ops: Any = None
    settings = LinkSettings(high_water=1000, outbox=Limits(inline_limit=100))
    return Link(transport, requests, ops, guard, settings, nonce=b"n" * 32,
                cert_sha256=b"c" * 32, version="1", remote=None)  # fmt: skip


def waiting(link: Link) -> bool:
    return link.outbox.pending  # (a call: mypy would take the property as narrowed)


async def test_a_caught_up_link_puts_a_live_event_on_the_wire_in_the_call() -> None:
    transport = FakeTransport()
    link = fake_link(transport)
    link.live(1, b'{"i":0}')  # nothing waits, room: straight to the transport, no task
    assert transport.live == [fr.frame(b'{"i":0}')] and not waiting(link)
    link.kick()  # an acknowledgement with nothing queued wakes no writer
    assert not link._kick.is_set()
    transport.buffered_bytes = 1000  # at the high-water mark: the outbox holds it, bounded
    link.live(1, b'{"i":1}')
    assert len(transport.live) == 1 and waiting(link) and link._kick.is_set()
    transport.buffered_bytes = 0
    link.live(1, b'{"i":2}')  # something waits: it goes after it, in order
    assert len(transport.live) == 1
    assert control_frames([ControlWrite(b"".join(transport.control))]) == [{"i": 1}, {"i": 2}]
    link.live(1, b'{"pad":"%s"}' % (b"y" * 200))  # large: a placeholder, then its own stream
    assert len(transport.live) == 1 and fr.REF.size < len(transport.control[-1]) < 100


# -- routing ----------------------------------------------------------------------------------


def connect(stream_id: int, path: bytes = b"/v1/wt") -> HeadersReceived:
    headers = [(b":method", b"CONNECT"), (b":protocol", b"webtransport"), (b":path", path)]
    return HeadersReceived(headers=headers, stream_id=stream_id, stream_ended=False)


def test_one_session_one_control_stream() -> None:
    router = routing.SessionRouter("/v1/wt")
    early = WebTransportStreamDataReceived(b"hi", 4, False, 0)
    assert router.handle(early) == []  # before its CONNECT: held
    actions = router.handle(connect(0))
    assert actions == [routing.Accept(0, ""), routing.ControlData(b"hi", False)]
    assert router.handle(connect(8)) == [routing.Reject(8, 429)]
    get = HeadersReceived([(b":method", b"GET"), (b":path", b"/")], 12, True)
    assert router.handle(get) == [routing.Reject(12, 404)]
    other = WebTransportStreamDataReceived(b"x", 16, False, 0)
    assert router.handle(other) == [routing.StopStream(16)]
    uni = WebTransportStreamDataReceived(b"x", 2, False, 0)
    assert router.handle(uni) == [routing.StopStream(2)]
    assert router.handle(DatagramReceived(b"p", 0)) == [routing.Datagram(b"p")]
    assert router.handle(DataReceived(b"", 0, True)) == [routing.SessionEnded()]


def test_early_data_is_bounded() -> None:
    router = routing.SessionRouter("/v1/wt", max_early=10)
    assert router.handle(WebTransportStreamDataReceived(b"x" * 8, 4, False, 0)) == []
    flood = WebTransportStreamDataReceived(b"x" * 8, 8, False, 0)
    assert router.handle(flood) == [routing.StopStream(8)]


def test_frames_before_authentication_have_the_open_limit() -> None:
    p = ControlProtocol(welcome=b"{}", max_frame=1000, now=100.0, open_frame=100)
    p.receive(framed({"type": "hello", "versions": [1]}), False)
    assert closes(p.receive(fr.HEADER.pack(101), False)) == [CloseCode.FRAME_TOO_LARGE]
    p = ControlProtocol(welcome=b"{}", max_frame=1000, now=100.0, open_frame=100)
    p.receive(framed({"type": "hello", "versions": [1]}), False)
    p.receive(framed({"type": "auth", "device": "dev_1", "signature": "x"}), False)
    p.authenticated(WHO)
    request = {
        "type": "request",
        "id": 1,
        "method": "POST",
        "path": "/v1/x",
        "body": {"t": "y" * 500},
    }
    assert [type(a) for a in p.receive(framed(request), False)] == [Call]  # the full limit now
