"""Pushes go to the browsers' push services only (issue 13, item 11: blind SSRF).

No test here sends a byte off this computer: refused endpoints are refused before any lookup or
connection, the resolver is a stub, and the only listener is on loopback, where each test
counts the connections it got (zero, when a push must not go there).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import httpcore
import httpx
import pytest
import trio
from test_notify import new_browser

from sidecode_trio.config import DaemonConfig
from sidecode_trio.errors import BadRequest
from sidecode_trio.notify.destinations import allowed_address, endpoint_problem
from sidecode_trio.notify.service import check_endpoint
from sidecode_trio.notify.subscriptions import SubscriptionStore
from sidecode_trio.notify.transport import GlobalOnlyBackend, push_transport

from helpers import load_example, running_daemon

pytestmark = pytest.mark.trio
pc = load_example("pair_client")

#: what an approve device got accepted before (the issue's list), and more spellings of it
ATTACKS = [
    "https://127.1/x",
    "https://[::ffff:127.0.0.1]/x",
    "https://2130706433/x",
    "https://0x7f.1/x",
    "https://0177.0.0.1/x",
    "https://169.254.169.254/latest/meta-data",
    "https://10.0.0.7/x",
    "https://192.168.1.1/x",
    "https://[fd00::1]/x",
    "https://[::1]/x",
    "https://localhost/x",
    "https://printer.lan/x",
    "https://fcm.googleapis.com.evil.example/x",
    "https://evilfcm.googleapis.com.example/x",
    "https://fcm.googleapis.com:8443/x",  # a port scan of a push service
    "http://fcm.googleapis.com/x",
]


@attrs.define
class Listener:
    """A loopback TCP listener that counts connections (and closes them)."""

    port: int = 0
    connections: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._count, listeners)

    async def _count(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        await stream.aclose()


def stub(answers: dict[str, list[str]]) -> Callable[[str, int], Any]:
    async def resolve(host: str, port: int) -> Iterable[str]:
        return answers[host]

    return resolve


@pytest.mark.parametrize("endpoint", ATTACKS)
async def test_an_endpoint_that_is_not_a_push_service_is_refused(endpoint: str) -> None:
    for loopback_allowed in (False, True):
        if loopback_allowed and endpoint in ("https://[::1]/x", "https://localhost/x"):
            continue  # the tests' own setting lets loopback through, by design
        with pytest.raises(BadRequest) as caught:
            check_endpoint(endpoint, loopback_allowed)
        assert caught.value.code == "bad_push_endpoint"


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://fcm.googleapis.com/fcm/send/abc:def",
        "https://updates.push.services.mozilla.com/wpush/v2/gAAAA",
        "https://web.push.apple.com/QGx2",
        "https://wns2-par02p.notify.windows.com/w/?token=BQYAAA",
        "https://FCM.googleapis.com./fcm/send/x",
        "https://fcm.googleapis.com:443/fcm/send/x",
    ],
)
async def test_the_browsers_push_services_are_accepted(endpoint: str) -> None:
    assert endpoint_problem(endpoint, allow_loopback=False) is None


async def test_only_global_addresses_may_be_connected_to() -> None:
    for address in ("8.8.8.8", "2001:4860:4860::8888", "142.250.1.95"):
        assert allowed_address(address, allow_loopback=False)
    for address in (
        "127.0.0.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.0.1", "169.254.169.254",
        "100.64.0.1", "0.0.0.0", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "fd00::1",
        "fe80::1%eth0", "224.0.0.1", "ff02::1", "255.255.255.255", "not an address",
    ):  # fmt: skip
        assert not allowed_address(address, allow_loopback=False), address
    assert allowed_address("127.0.0.1", allow_loopback=True)
    assert not allowed_address("10.0.0.1", allow_loopback=True)


async def test_a_push_service_name_that_resolves_inwards_is_never_connected_to() -> None:
    """DNS (poisoned, split-horizon, rebinding) says the push service is on this computer or
    the LAN: the push fails before any connection; the listener there sees none."""
    async with trio.open_nursery() as nursery:
        listener = Listener()
        await nursery.start(listener.serve)
        for answer in (["127.0.0.1"], ["8.8.8.8", "127.0.0.1"], ["::ffff:127.0.0.1"], []):
            resolver = stub({"fcm.googleapis.com": answer})
            backend = GlobalOnlyBackend(allow_loopback=False, resolver=resolver)
            with pytest.raises(httpcore.ConnectError):
                await backend.connect_tcp("fcm.googleapis.com", listener.port)
            transport = push_transport(allow_loopback=False, resolver=resolver)
            async with httpx.AsyncClient(transport=transport) as http:
                with pytest.raises(httpx.ConnectError):
                    await http.post(f"https://fcm.googleapis.com:{listener.port}/x", content=b"")
        # the same path connects when the address is allowed (tests' loopback setting)
        allowed = GlobalOnlyBackend(allow_loopback=True, resolver=stub({"x.test": ["127.0.0.1"]}))
        stream = await allowed.connect_tcp("x.test", listener.port)
        await stream.aclose()
        with trio.fail_after(10):
            while listener.connections < 1:
                await trio.sleep(0.01)
        assert listener.connections == 1  # that one, and none of the refused ones
        nursery.cancel_scope.cancel()


async def test_an_approve_device_cannot_subscribe_an_inward_endpoint(
    make_config: Callable[..., DaemonConfig],
) -> None:
    async with running_daemon(make_config(https=True)) as owner:
        with trio.fail_after(30):
            offer = await owner.http.post("/v1/pairings", json={"scope": "approve"})
            credentials = await trio.to_thread.run_sync(pc.pair, offer.json()["payload"], "watch")
            watch = pc.Client(credentials)
            for endpoint in ATTACKS:
                body = new_browser().subscription(endpoint)
                with pytest.raises(RuntimeError, match=r"400.*bad_push_endpoint"):
                    await trio.to_thread.run_sync(
                        watch.call, "POST", "/v1/push/subscriptions", body
                    )
            listed = await trio.to_thread.run_sync(watch.call, "GET", "/v1/push/subscriptions")
            assert listed["subscriptions"] == []


async def test_a_stored_inward_subscription_is_dropped_unsent(
    make_config: Callable[..., DaemonConfig],
) -> None:
    """A subscription stored before endpoints were checked (here: written straight into the
    store, pointing at a loopback listener as ``https://127.1:port``) is removed at its first
    push, and nothing connects to the listener."""
    config = make_config()
    config.state_dir.mkdir(mode=0o700, parents=True)
    async with trio.open_nursery() as nursery:
        listener = Listener()
        await nursery.start(listener.serve)
        store = SubscriptionStore(config.state_dir / "push.sqlite3")
        keys = new_browser().subscription("x")["keys"]
        for endpoint in (f"https://127.1:{listener.port}/x", f"http://127.0.0.1:{listener.port}"):
            store.put("", endpoint, keys["p256dh"], keys["auth"], 1.0)
        store.close()
        async with running_daemon(config) as owner:
            with trio.fail_after(20):
                reply = await owner.http.post("/v1/push/test")
                assert reply.json() == {"queued": 2}
                while (await owner.http.get("/v1/push/subscriptions")).json()["subscriptions"]:
                    await trio.sleep(0.02)
                status = (await owner.http.get("/v1/status")).json()["notify"]
        assert listener.connections == 0
        nursery.cancel_scope.cancel()
    with sqlite3.connect(config.state_dir / "push.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM subscriptions").fetchone() == (0,)
    assert status["push_refused"] == 2 and status["pushed"] == 0
