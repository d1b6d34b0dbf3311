"""Headless Chromium dials the daemon's WebRTC task with ``web/static/rtc-signal.js`` (issue 17
#5): MQTT over WebSocket (the vendored MQTT.js) to a real mosquitto, sealed hello/ice and
offer/answer, both fingerprint statements checked, the DataChannel opens, the daemon's pings are
answered, and a request sent as a text message is refused (``bad_frame``: frames are binary).

Everything runs in one network namespace the test makes (loopback plus a veth pair, since
Chromium gathers no loopback candidates): mosquitto's WebSocket listener binds every address it
can see, and here that is only the namespace's. Chromium runs in it through a wrapper script; the
page comes from 127.0.0.1 there (a secure context). The namespace is removed at the end.
"""

from __future__ import annotations

import functools
import os
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import nacl.signing
import pytest
import trio

from sidecode_trio.channel.link import LinkSettings
from sidecode_trio.config import DaemonConfig
from sidecode_trio.daemon import rtc_sessions
from sidecode_trio.ops.front import open_routes
from sidecode_trio.rtc import service as service_module
from sidecode_trio.rtc.service import RtcService
from sidecode_trio.rtc.settings import RtcSettings
from sidecode_trio.security.auth import Principal
from sidecode_trio.security.devices import DeviceStore, Scope
from sidecode_trio.security.guard import Guard
from sidecode_trio.security.identity import b64, load_identity
from sidecode_trio.security.tls import CertificateStore
from sidecode_trio.web.export import export

import netlab
from helpers import Client, chromium_args, chromium_or_skip, running_daemon, serve_folder

netlab.skip_unless_possible()  # root, ip and mosquitto (fails in CI rather than skip)
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

MQTT_PORT, WS_PORT = 1883, 9001

DIAL = """async ([seed, daemonPk, secret, wsUrl]) => {
  const m = await import('/rtc-signal.js');
  const box = new m.SignalingBox(m.unb64url(seed), (pk) => m.b64url(pk) === daemonPk);
  const t = await m.topics(m.unb64url(secret));
  const t0 = performance.now();
  const broker = await m.connectBroker(wsUrl);
  const t1 = performance.now();
  await broker.subscribe(t.toDevice);
  const daemonKey = m.unb64url(daemonPk);
  const { pc, channel, fps } = await m.dial({ box, daemonKey, topics: t, broker });
  const t2 = performance.now();
  // the certificate DTLS pinned is the one the daemon signed (getStats: remote certificate)
  const stats = [...(await pc.getStats()).values()];
  const transport = stats.find((s) => s.type === 'transport' && s.remoteCertificateId);
  const cert = stats.find((s) => s.id === transport.remoteCertificateId);
  const inbox = [], waiting = [];
  channel.onmessage = (e) => {
    const text = typeof e.data === 'string' ? e.data : new TextDecoder().decode(e.data);
    const frame = JSON.parse(text);
    waiting.length ? waiting.shift()(frame) : inbox.push(frame);
  };
  const next = () => inbox.length ? Promise.resolve(inbox.shift())
                                  : new Promise((resolve) => waiting.push(resolve));
  const frames = [];
  for (let i = 0; i < 3; i++) {
    const ping = await next();
    frames.push(ping);
    channel.send(JSON.stringify({ type: 'pong', n: ping.n }));
  }
  channel.send(JSON.stringify({ type: 'request', id: 1, method: 'GET', path: '/v1/info' }));
  let close = await next();
  while (close.type === 'ping') close = await next();
  frames.push(close);
  pc.close();
  await broker.close();
  return { frames, pinned: `${cert.fingerprintAlgorithm} ${cert.fingerprint.toUpperCase()}`,
           signed: fps, connectMs: t1 - t0, dialMs: t2 - t1 };
}"""


def _setns(name: str) -> None:
    netlab._setns(f"/run/netns/{name}")


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[str]:
    """One namespace: lo and a veth pair (10.9.0.1, 10.9.0.2), mosquitto with TCP and WS."""
    name = f"sc-ws-{os.getpid()}-{secrets.token_hex(3)}"
    run = functools.partial(subprocess.run, check=True, capture_output=True)
    run(["ip", "netns", "add", name])
    proc = None
    try:
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        run(["ip", "-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
        for dev, address in (("v0", "10.9.0.1/24"), ("v1", "10.9.0.2/24")):
            run(["ip", "-n", name, "addr", "add", address, "dev", dev])
            run(["ip", "-n", name, "link", "set", dev, "up"])
        conf = tmp_path / "mosquitto.conf"
        conf.write_text(
            "per_listener_settings false\nallow_anonymous true\npersistence false\n"
            f"set_tcp_nodelay true\nlistener {MQTT_PORT} 127.0.0.1\n"
            f"listener {WS_PORT} 127.0.0.1\nprotocol websockets\n"
        )
        proc = subprocess.Popen(
            ["ip", "netns", "exec", name, "mosquitto", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(name, WS_PORT)
        yield name
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _in_namespace(name: str, fn: Any) -> Any:
    """``fn()`` on a new thread inside ``name`` (never a reused worker thread)."""
    return netlab.run_in_namespace(f"/run/netns/{name}", fn)


def _wait_port(name: str, port: int) -> None:
    def probe() -> bool:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return True
            time.sleep(0.05)
        return False

    assert _in_namespace(name, probe), "mosquitto did not start"


@pytest.fixture
def site(namespace: str, tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "site"
    export(root)
    # a page without the app's policy, whose connect-src allows wss: but not a loopback ws:
    (root / "dial.html").write_text("<!doctype html><title>dial</title>")

    with serve_folder(root, functools.partial(_in_namespace, namespace)) as served:
        yield served.url


@asynccontextmanager
async def offering_through_the_broker(
    make_config: Callable[..., DaemonConfig], namespace: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Client, DaemonConfig, dict[str, Any]]]:
    """A daemon without WebTransport whose WebRTC task lives in ``namespace`` (with the broker;
    its addresses, this namespace's loopback, are out of reach there), its config, and a chat
    pairing offer it listens for on the broker."""
    monkeypatch.setattr(
        service_module,
        "RtcService",
        functools.partial(service_module.RtcService, thread_setup=lambda: _setns(namespace)),
    )
    rtc = RtcSettings(rendezvous=f"ws://127.0.0.1:{WS_PORT}", stun=(), ping_interval=1.0)
    config = make_config(rtc=rtc, quic_port=-1)
    async with running_daemon(config) as owner:
        service = owner.handle.rtc
        with trio.fail_after(90):
            await service.ready.wait()
            response = await owner.http.post("/v1/pairings", json={"scope": "chat"})
            payload: dict[str, Any] = response.json()["payload"]
            assert payload["rv"] == f"ws://127.0.0.1:{WS_PORT}"
            while service.pairing() != [payload["sid"]]:
                await trio.sleep(0.02)
        yield owner, config, payload


async def _no_requests(
    who: Principal | None, method: str, target: str, body: Any, remote: str | None
) -> tuple[int, bytes]:
    raise AssertionError("the page sent a request frame")


def _chromium_in(namespace: str, tmp_path: Path) -> str:
    wrapper = tmp_path / "chromium-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {namespace} {chromium_or_skip()} "$@"\n')
    wrapper.chmod(0o700)
    return str(wrapper)


async def test_chromium_dials_the_daemon_through_the_broker_and_a_text_request_is_refused(
    namespace: str, site: str, tmp_path: Path
) -> None:
    chromium = _chromium_in(namespace, tmp_path)
    daemon_key, device_key = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    secret = secrets.token_bytes(32)
    devices = DeviceStore(tmp_path / "devices.sqlite3")
    device = devices.add("browser", b64(bytes(device_key.verify_key)), "fp", Scope.CHAT, secret)
    settings = RtcSettings(
        rendezvous=f"mqtt://127.0.0.1:{MQTT_PORT}", stun=(), ping_interval=0.3, ping_misses=20
    )
    service = RtcService(settings, daemon_key, devices, thread_setup=lambda: _setns(namespace))
    identity = load_identity(tmp_path, "file")
    certs = CertificateStore(tmp_path / "tls", identity, [])
    guard = Guard(identity, certs, devices, "t" * 43, open_routes=open_routes())
    # the links' sessions, as the daemon makes them; this page sends no binary frame, so
    # neither requests nor operations are reached (test_rtc_link.py drives them)
    service.serve_with(rtc_sessions(_no_requests, cast(Any, None), guard, LinkSettings()))
    args = [
        b64(bytes(device_key)),
        b64(bytes(daemon_key.verify_key)),
        b64(secret),
        f"ws://127.0.0.1:{WS_PORT}",
    ]

    def scenario() -> dict[str, Any]:
        flags = chromium_args("--disable-features=WebRtcHideLocalIpsWithMdns")
        with playwright_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=flags)
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(site + "/dial.html")
                result: dict[str, Any] = page.evaluate(DIAL, args)
                assert errors == []
                return result
            finally:
                browser.close()

    try:
        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                await nursery.start(service.run)
                assert service.subscribed() == [device.id]
                result = await trio.to_thread.run_sync(scenario)
                while not service.closed:
                    await trio.sleep(0.02)
                nursery.cancel_scope.cancel()
    finally:
        devices.close()
    print(f"broker connect {result['connectMs']:.0f} ms, hello to open {result['dialMs']:.0f} ms")
    pings = result["frames"][:3]
    assert [f["type"] for f in pings] == ["ping"] * 3 and [f["n"] for f in pings] == [1, 2, 3]
    close = result["frames"][3]
    assert close["type"] == "close" and close["code"] == "bad_frame"  # frames are binary
    assert result["pinned"] in result["signed"]  # DTLS ran with the certificate the daemon signed
    assert service.closed[-1].code == "bad_frame" and service.refused == 0
