"""Notifications end to end: a real daemon driving the fake CLI, a local push endpoint and a local
webhook receiver (both plain HTTP servers on 127.0.0.1, port 0, in the test).

The test plays the browser: it holds the subscription's P-256 private key and auth secret, so it
decrypts each push with an independent RFC 8291 implementation (``http_ece``) and checks the
VAPID JWT's ES256 signature against the daemon's published key.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import http_ece
import pytest
import trio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from sidecode_trio.config import DaemonConfig
from sidecode_trio.security.identity import b64, unb64

from helpers import Client, load_example, running_daemon

pytestmark = pytest.mark.trio
pc = load_example("pair_client")


# -- a local HTTP receiver (the push service, or the webhook's server) ---------------------------


@attrs.frozen
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.define(eq=False)
class Receiver:
    """Answers every POST with ``status`` (or never, with ``hang``) and records it."""

    status: int = 201
    hang: bool = False
    port: int = 0
    received: list[Received] = attrs.field(factory=list)
    _send: trio.MemorySendChannel[Received] = attrs.field(init=False)
    _receive: trio.MemoryReceiveChannel[Received] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[Received](100)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def next(self, timeout: float = 10.0) -> Received:
        with trio.fail_after(timeout):
            return await self._receive.receive()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    request, body = event, b""
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage) and request is not None:
                    await self._answer(stream, conn, request, body)
                    conn.start_next_cycle()
                else:
                    return  # closed, or paused by the client's close
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def _answer(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, body: bytes
    ) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        received = Received(request.target.decode(), headers, body)
        self.received.append(received)
        self._send.send_nowait(received)
        if self.hang:
            await trio.sleep_forever()  # a dead webhook: accepts, never answers
        reply = h11.Response(status_code=self.status, headers=[("Content-Length", "0")])
        await stream.send_all(conn.send(reply))
        await stream.send_all(conn.send(h11.EndOfMessage()))


# -- the browser's side of a subscription ----------------------------------------------------


@attrs.frozen
class Browser:
    """A subscription's keys as a browser holds them, and what it does with a push."""

    key: ec.EllipticCurvePrivateKey
    auth: bytes = attrs.field(factory=lambda: os.urandom(16))

    def subscription(self, endpoint: str) -> dict[str, Any]:
        point = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {"endpoint": endpoint, "expirationTime": None,
                "keys": {"p256dh": b64(point), "auth": b64(self.auth)}}  # fmt: skip

    def decrypt(self, push: Received) -> dict[str, Any]:
        assert push.headers["content-encoding"] == "aes128gcm"
        plain = http_ece.decrypt(
            push.body, private_key=self.key, auth_secret=self.auth, version="aes128gcm"
        )
        return json.loads(plain)  # type: ignore[no-any-return]


def new_browser() -> Browser:
    return Browser(ec.generate_private_key(ec.SECP256R1()))


def check_vapid(push: Received, daemon_key: str, audience: str) -> dict[str, Any]:
    """Verify the push's VAPID JWT (RFC 8292) against the daemon's key; returns its claims."""
    match = re.fullmatch(r"vapid t=([^,\s]+), k=(\S+)", push.headers["authorization"])
    assert match is not None, push.headers["authorization"]
    token, key = match[1], match[2]
    assert key == daemon_key
    header, claims, signature = token.split(".")
    assert json.loads(unb64(header)) == {"typ": "JWT", "alg": "ES256"}
    raw = unb64(signature)
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64(key))
    public.verify(der, f"{header}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))  # raises if bad
    body: dict[str, Any] = json.loads(unb64(claims))
    assert body["aud"] == audience
    assert time.time() < body["exp"] <= time.time() + 24 * 3600
    assert body["sub"].startswith(("mailto:", "https://"))
    return body


# -- fixtures ---------------------------------------------------------------------------------


@attrs.frozen
class Rig:
    owner: Client
    push: Receiver
    hook: Receiver


@asynccontextmanager
async def rig(
    make_config: Callable[..., DaemonConfig],
    *,
    push_status: int = 201,
    hook_hangs: bool = False,
    **config: Any,
) -> AsyncIterator[Rig]:
    push, hook = Receiver(status=push_status), Receiver(hang=hook_hangs)
    async with trio.open_nursery() as nursery:
        await nursery.start(push.serve)
        await nursery.start(hook.serve)
        settings = {
            "https": True,  # pairing binds device tokens to the certificate
            "push_allow_loopback": True,
            "notify_webhook": f"{hook.url}/hook",
            "notify_format": "json",
            "notify_hold": 0.2,
            "notify_cooldown": 0.0,
            **config,
        }
        async with running_daemon(make_config(**settings)) as owner:
            yield Rig(owner, push, hook)
        nursery.cancel_scope.cancel()


async def subscribe(owner: Client, browser: Browser, endpoint: str) -> dict[str, Any]:
    reply = await owner.http.post("/v1/push/subscriptions", json=browser.subscription(endpoint))
    assert reply.status_code == 201, reply.text
    return reply.json()  # type: ignore[no-any-return]


async def vapid_key(owner: Client) -> str:
    reply = await owner.http.get("/v1/push/vapid")
    assert reply.status_code == 200, reply.text
    return str(reply.json()["public_key"])


# -- tests ------------------------------------------------------------------------------------


async def test_an_approval_is_pushed_and_webhooked_with_actions(
    make_config: Callable[..., DaemonConfig], work_dir: Any
) -> None:
    with trio.fail_after(30):
        async with rig(make_config) as r:
            browser = new_browser()
            await subscribe(r.owner, browser, f"{r.push.url}/push/abc")
            created = await r.owner.create(work_dir, "[[bash:npm test]]")
            sid = created["session"]["id"]

            push = await r.push.next()
            assert push.path == "/push/abc"
            check_vapid(push, await vapid_key(r.owner), r.push.url)
            assert push.headers["urgency"] == "high" and int(push.headers["ttl"]) > 0
            assert len(push.headers["topic"]) <= 32
            note = browser.decrypt(push)
            assert note["kind"] == "approval" and note["session_id"] == sid
            assert note["title"] == "Approve: Run `npm test`"
            assert note["body"].endswith(f"— {work_dir.name}")
            assert [a["action"] for a in note["actions"]] == ["allow", "deny"]
            assert note["tag"] == f"sidecode-{sid}" and note["url"] == f"/app/#s={sid}"

            hook = await r.hook.next()
            assert hook.path == "/hook" and hook.headers["content-type"] == "application/json"
            sent = hook.json()
            assert sent["kind"] == "approval" and sent["request_id"] == note["request_id"]
            allow = sent["actions"][0]
            assert allow["action"] == "allow" and allow["body"] == {"behavior": "allow"}
            assert "token" not in hook.body.decode().lower()  # no credential travels

            # Answer the way the notification's Allow button does (the path it carries).
            reply = await r.owner.http.post(allow["path"], json=allow["body"])
            assert reply.status_code == 200, reply.text
            # the notification's stale buttons are replaced at once (a push only, quietly)
            answered = browser.decrypt(await r.push.next())
            assert answered["kind"] == "resolved" and answered["tag"] == note["tag"]
            assert answered["title"] == "Answered: Run `npm test`" and answered["actions"] == []
            assert answered["body"].startswith("Allowed by local owner")
            finished = browser.decrypt(await r.push.next())
            assert finished["kind"] == "finished" and finished["actions"] == []
            assert finished["title"] == "Finished: [[bash:npm test]]"
            assert (await r.hook.next()).json()["kind"] == "finished"
            # exactly one of each: the approval was not repeated before the finish
            assert [browser.decrypt(p)["kind"] for p in r.push.received] == [
                "approval",
                "resolved",
                "finished",
            ]
            assert len(r.hook.received) == 2
            status = (await r.owner.http.get("/v1/status")).json()["notify"]
            assert status["pushed"] == 3 and status["webhooks"] == 2


async def test_a_failed_turn_and_a_crash_are_notified_once_each(
    make_config: Callable[..., DaemonConfig], work_dir: Any
) -> None:
    with trio.fail_after(30):
        async with rig(make_config) as r:
            browser = new_browser()
            await subscribe(r.owner, browser, f"{r.push.url}/p")
            sid = (await r.owner.create(work_dir, "[[error:529]]"))["session"]["id"]
            failed = browser.decrypt(await r.push.next())
            assert failed["kind"] == "failed" and failed["session_id"] == sid
            assert failed["title"].startswith("Failed: ")
            assert (await r.hook.next()).json()["kind"] == "failed"

            await r.owner.send(sid, "[[crash]]")  # turn.failed and status errored: one push
            crashed = browser.decrypt(await r.push.next())
            assert crashed["kind"] == "failed"
            await r.owner.send(sid, "hello again")  # the CLI is respawned; a fence
            assert browser.decrypt(await r.push.next())["kind"] == "finished"
            kinds = [browser.decrypt(p)["kind"] for p in r.push.received]
            assert kinds == ["failed", "failed", "finished"]


async def test_a_gone_subscription_is_removed(
    make_config: Callable[..., DaemonConfig], work_dir: Any
) -> None:
    with trio.fail_after(30):
        async with rig(make_config, push_status=410) as r:
            browser = new_browser()
            sub = await subscribe(r.owner, browser, f"{r.push.url}/gone")
            listed = (await r.owner.http.get("/v1/push/subscriptions")).json()
            assert [s["id"] for s in listed["subscriptions"]] == [sub["id"]]
            await r.owner.create(work_dir, "hi")
            await r.push.next()  # the push service says 410 Gone
            while (await r.owner.http.get("/v1/push/subscriptions")).json()["subscriptions"]:
                await trio.sleep(0.02)
            status = (await r.owner.http.get("/v1/status")).json()["notify"]
            assert status["push_expired"] == 1 and len(r.push.received) == 1  # no retry


async def test_a_dead_webhook_slows_neither_the_session_nor_the_pushes(
    make_config: Callable[..., DaemonConfig], work_dir: Any
) -> None:
    with trio.fail_after(30):
        async with rig(make_config, hook_hangs=True, https=False) as r:  # SSE helper: plain
            browser = new_browser()
            await subscribe(r.owner, browser, f"{r.push.url}/p")
            sid = (await r.owner.create(work_dir, "first"))["session"]["id"]
            async with r.owner.events(sid) as stream:
                await stream.until_type("turn.completed")
                await r.hook.next()  # the webhook took the request and will never answer
                assert browser.decrypt(await r.push.next())["kind"] == "finished"
                await r.owner.send(sid, "[[fast:200]]")
                done = await stream.until_type("turn.completed")  # events keep flowing
                assert done.body["result"]
            assert browser.decrypt(await r.push.next())["kind"] == "finished"
            assert len(r.hook.received) == 1  # still stuck on the first


async def test_a_device_owns_its_subscriptions_and_revoking_drops_them(
    make_config: Callable[..., DaemonConfig],
) -> None:
    with trio.fail_after(30):
        async with rig(make_config) as r:
            offer = await r.owner.http.post("/v1/pairings", json={"scope": "approve"})
            credentials = await trio.to_thread.run_sync(pc.pair, offer.json()["payload"], "watch")
            phone = pc.Client(credentials)

            async def call(method: str, path: str, body: Any = None) -> Any:
                return await trio.to_thread.run_sync(phone.call, method, path, body)

            key = (await call("GET", "/v1/push/vapid"))["public_key"]
            assert key == await vapid_key(r.owner)
            mine = await call(
                "POST", "/v1/push/subscriptions", new_browser().subscription(f"{r.push.url}/a")
            )
            assert mine["device_id"] == phone._device_id
            await subscribe(r.owner, new_browser(), f"{r.push.url}/owner")
            listed = await call("GET", "/v1/push/subscriptions")
            assert [s["id"] for s in listed["subscriptions"]] == [mine["id"]]  # its own only
            assert listed["public_key"] == key
            queued = await call("POST", "/v1/push/test")
            assert queued == {"queued": 1}
            assert (await r.push.next()).path == "/a"  # the test push went to this device only

            reply = await r.owner.http.delete(f"/v1/devices/{phone._device_id}")
            assert reply.status_code == 200
            left = (await r.owner.http.get("/v1/push/subscriptions")).json()["subscriptions"]
            assert [s["endpoint"] for s in left] == [f"{r.push.url}/owner"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"endpoint": "ftp://push.example.com/x", "keys": None}, "invalid_field"),
        ("not json", "invalid_json"),
        ({"endpoint": "https://push.example.com/x"}, "invalid_field"),
        ({"endpoint": "ftp://push.example.com/x", "keys": {"p256dh": "", "auth": ""}},
         "bad_push_endpoint"),
        ({"endpoint": "http://push.example.com/x", "keys": {"p256dh": "", "auth": ""}},
         "bad_push_endpoint"),
        ({"endpoint": "https://u:p@push.example.com/x", "keys": {"p256dh": "", "auth": ""}},
         "bad_push_endpoint"),
        ({"endpoint": "https://fcm.googleapis.com/fcm/send/x",
          "keys": {"p256dh": "AAAA", "auth": "x"}},
         "bad_push_keys"),
        ({"endpoint": "https://fcm.googleapis.com/fcm/send/x",
          "keys": {"p256dh": b64(b"\x04" + b"\x01" * 64), "auth": b64(os.urandom(16))}},
         "bad_push_keys"),  # not a point on the curve
        ("short auth", "bad_push_keys"),
    ],
)  # fmt: skip
async def test_bad_subscriptions_are_refused_with_a_clear_code(
    make_config: Callable[..., DaemonConfig], body: Any, code: str
) -> None:
    with trio.fail_after(20):
        async with running_daemon(make_config()) as owner:
            if body == "short auth":
                body = new_browser().subscription("https://fcm.googleapis.com/fcm/send/x")
                body["keys"]["auth"] = b64(b"12345678")
            if isinstance(body, str):
                reply = await owner.http.post(
                    "/v1/push/subscriptions",
                    content=body,
                    headers={"Content-Type": "application/json"},
                )
            else:
                reply = await owner.http.post("/v1/push/subscriptions", json=body)
            assert reply.status_code == 400, reply.text
            assert reply.json()["error"]["code"] == code


async def test_push_routes_need_credentials_and_loopback_endpoints_need_the_setting(
    make_config: Callable[..., DaemonConfig],
) -> None:
    with trio.fail_after(20):
        async with running_daemon(make_config()) as owner:
            anonymous = owner.http.headers.pop("Authorization")
            for method, path in [
                ("GET", "/v1/push/vapid"),
                ("GET", "/v1/push/subscriptions"),
                ("POST", "/v1/push/subscriptions"),
                ("DELETE", "/v1/push/subscriptions/push_x"),
                ("POST", "/v1/push/test"),
            ]:
                reply = await owner.http.request(method, path, json={})
                assert reply.status_code == 401, (method, path, reply.text)
            owner.http.headers["Authorization"] = anonymous
            local = new_browser().subscription("http://127.0.0.1:9/push")
            reply = await owner.http.post("/v1/push/subscriptions", json=local)
            assert reply.status_code == 400
            assert reply.json()["error"]["code"] == "bad_push_endpoint"
            gone = await owner.http.delete("/v1/push/subscriptions/push_nope")
            assert gone.status_code == 404
            assert gone.json()["error"]["code"] == "unknown_subscription"


async def test_the_device_that_answered_is_not_told_what_it_just_did(
    make_config: Callable[..., DaemonConfig], work_dir: Any
) -> None:
    with trio.fail_after(30):
        async with rig(make_config) as r:
            offer = await r.owner.http.post("/v1/pairings", json={"scope": "approve"})
            credentials = await trio.to_thread.run_sync(pc.pair, offer.json()["payload"], "phone")
            phone = pc.Client(credentials)
            phone_browser, owner_browser = new_browser(), new_browser()
            sub = phone_browser.subscription(f"{r.push.url}/phone")
            await trio.to_thread.run_sync(phone.call, "POST", "/v1/push/subscriptions", sub)
            await subscribe(r.owner, owner_browser, f"{r.push.url}/owner")
            sid = (await r.owner.create(work_dir, "[[bash:echo hi]]"))["session"]["id"]
            first, second = await r.push.next(), await r.push.next()
            assert {first.path, second.path} == {"/phone", "/owner"}  # both asked
            note = phone_browser.decrypt(first if first.path == "/phone" else second)
            path = f"/v1/sessions/{sid}/permissions/{note['request_id']}"
            await trio.to_thread.run_sync(phone.call, "POST", path, {"behavior": "allow"})

            async def owner_push(kind: str) -> dict[str, Any]:
                push = await r.push.next()
                assert push.path == "/owner", push.path  # the phone hears nothing more
                got = owner_browser.decrypt(push)
                assert got["kind"] == kind
                return got

            assert (await owner_push("resolved"))["body"].startswith("Allowed by phone")
            await owner_push("finished")
            await r.owner.send(sid, "again")  # a fence: the phone's queue has drained by now
            await owner_push("finished")
            assert [p.path for p in r.push.received].count("/phone") == 1


async def test_a_broken_subscription_does_not_stop_the_others(
    make_config: Callable[..., DaemonConfig], work_dir: Any, tmp_path: Any
) -> None:
    with trio.fail_after(30):
        async with rig(make_config) as r:
            browser = new_browser()
            await subscribe(r.owner, browser, f"{r.push.url}/good")
            with sqlite3.connect(tmp_path / "state" / "push.sqlite3") as db:  # a corrupt row
                db.execute(
                    "INSERT INTO subscriptions (id, device_id, endpoint, p256dh, auth, created_at)"
                    " VALUES ('push_bad', '', ?, 'not-a-key', 'x', 0)",
                    (f"{r.push.url}/bad",),
                )
            sid = (await r.owner.create(work_dir, "hi"))["session"]["id"]
            assert browser.decrypt(await r.push.next())["kind"] == "finished"
            await r.owner.send(sid, "still there?")  # the notifier survived the bad one
            assert browser.decrypt(await r.push.next())["kind"] == "finished"
            assert [p.path for p in r.push.received] == ["/good", "/good"]
