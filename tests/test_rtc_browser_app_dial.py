"""The web app dials the daemon with only what its pairing stored (issue 17 #4): headless
Chromium pairs through the app (``auth.js`` ``pair()``, which registers an X25519 box key bound
into the pairing proof), then ``rtc-signal.js`` ``deviceSignalingBox`` + ``deviceTopics`` +
``dial`` open a DataChannel to the daemon's WebRTC task through a real mosquitto: envelopes and
the offer's fingerprint statement are signed by the non-extractable WebCrypto key, boxed with the
registered box key, and both fingerprint statements are checked before DTLS runs.

The daemon runs whole (``serve``) on a thread inside a network namespace the test makes (see
``test_rtc_browser_dial.py``: loopback plus a veth pair, since Chromium gathers no loopback
candidates), so its HTTP port, broker connection and aiortc all live there; Chromium runs there
through a wrapper. The namespace is removed at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from test_rtc_browser_dial import WS_PORT, _chromium_in, namespace

from sidecode_trio.config import DaemonConfig
from sidecode_trio.rtc.settings import RtcSettings
from sidecode_trio.security.devices import DeviceStore

import netlab
from helpers import chromium_args, running_daemon

netlab.skip_unless_possible()  # root, ip and mosquitto (fails in CI rather than skip)
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

__all__ = ["namespace"]  # the fixture, shared with test_rtc_browser_dial.py

STEP_TIMEOUT_MS = 30_000

#: Only the stored device record: no key, topic or URL comes from the test.
DIAL = """async () => {
  const auth = await import('/app/auth.js');
  const m = await import('/app/rtc-signal.js');
  const device = await auth.loadDevice();
  const box = await m.deviceSignalingBox(device);
  const t = await m.deviceTopics(device);
  const broker = await m.connectBroker(device.rendezvous.url);
  await broker.subscribe(t.toDevice);
  const { pc, channel, fps } = await m.dial({ box, daemonKey: box.daemonKey, topics: t, broker });
  const stats = [...(await pc.getStats()).values()];
  const transport = stats.find((s) => s.type === 'transport' && s.remoteCertificateId);
  const cert = stats.find((s) => s.id === transport.remoteCertificateId);
  const ping = await new Promise((resolve) => {
    channel.onmessage = (e) => resolve(JSON.parse(
      typeof e.data === 'string' ? e.data : new TextDecoder().decode(e.data)));
  });
  channel.send(JSON.stringify({ type: 'pong', n: ping.n }));
  window.held = { pc, broker };
  // a record from before box keys: a clear error, not a box that seals with a derived key
  const old = { ...device };
  delete old.box;
  const stale = await m.deviceSignalingBox(old).then(() => 'accepted', (e) => e.message);
  return { stale,
    device: { id: device.id, box: device.box.publicKey,
              extractable: device.privateKey.extractable },
    ping, signed: fps, pinned: `${cert.fingerprintAlgorithm} ${cert.fingerprint.toUpperCase()}`,
  };
}"""

CLOSE = "async () => { window.held.pc.close(); await window.held.broker.close(); }"


def _run_in_namespace(name: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` on a new thread inside ``name``; threads it starts are there too, and the Trio
    workers among them are moved back after (netlab.run_in_namespace says why)."""
    return netlab.run_in_namespace(f"/run/netns/{name}", fn)


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await trio.sleep(0.02)


def test_the_app_pairs_then_dials_the_daemon_with_only_its_stored_device_record(
    namespace: str, make_config: Callable[..., DaemonConfig], tmp_path: Path
) -> None:
    chromium = _chromium_in(namespace, tmp_path)
    rtc = RtcSettings(
        rendezvous=f"ws://127.0.0.1:{WS_PORT}", stun=(), ping_interval=0.3, ping_misses=100
    )
    config = make_config(rtc=rtc)
    problems: list[str] = []

    def browse(
        web_link: str, ready: trio.Event, counted: trio.Event, token: trio.lowlevel.TrioToken
    ) -> Any:
        flags = chromium_args("--disable-features=WebRtcHideLocalIpsWithMdns")
        with playwright_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=flags)
            try:
                # the daemon's /app/ policy allows its own origin and WebTransport only; the
                # broker's ws:// origin is the app's to add (its WebRTC link), not this test's
                page = browser.new_context(bypass_csp=True).new_page()
                page.set_default_timeout(STEP_TIMEOUT_MS)
                page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
                page.goto(web_link)
                page.wait_for_selector("#pair-view:not([hidden])")
                page.fill("#pair-name", "Web phone")
                page.click("#pair-button")  # app.js -> auth.js pair()
                page.wait_for_selector("body[data-paired='true']")
                result = page.evaluate(DIAL)
                trio.from_thread.run_sync(ready.set, trio_token=token)
                # held open until the daemon has counted the link (checked on its side)
                trio.from_thread.run(counted.wait, trio_token=token)
                page.evaluate(CLOSE)
                return result
            finally:
                browser.close()

    async def main() -> tuple[Any, list[str], int, int]:
        async with running_daemon(config) as owner:
            service = owner.handle.rtc
            assert service is not None
            with trio.fail_after(120):
                await service.ready.wait()
                offer = (await owner.http.post("/v1/pairings", json={"scope": "chat"})).json()
                assert offer["payload"]["rv"] == rtc.rendezvous
                ready, counted = trio.Event(), trio.Event()
                token = trio.lowlevel.current_trio_token()
                async with trio.open_nursery() as nursery:
                    box: list[Any] = []

                    async def run_browser() -> None:
                        link = offer["web_link"]
                        box.append(
                            await trio.to_thread.run_sync(browse, link, ready, counted, token)
                        )

                    nursery.start_soon(run_browser)
                    await ready.wait()
                    await _until(lambda: service.links() == 1)  # the daemon serves the link
                    links = service.links()
                    counted.set()
                await _until(lambda: bool(service.closed))
                return box[0], service.subscribed(), links, service.refused

    result, subscribed, links, refused = _run_in_namespace(namespace, lambda: trio.run(main))
    assert problems == []
    device = result["device"]
    assert subscribed == [device["id"]] and links == 1 and refused == 0
    assert device["extractable"] is False  # the signing key stays non-extractable
    # the daemon speaks over the channel (pings come every 0.3 s: on a loaded machine the first
    # can pass before the page's handler is set, so the one seen may be a later one)
    assert result["ping"]["type"] == "ping" and result["ping"]["n"] >= 1, result["ping"]
    assert result["pinned"] in result["signed"]  # DTLS ran with the certificate the daemon signed
    assert "pair it again" in result["stale"]
    store = DeviceStore(config.state_dir / "devices.sqlite3")
    try:
        # the daemon keeps the box key the app registered (bound into the pairing proof)
        assert store.get(device["id"]).box_public_key == device["box"]
    finally:
        store.close()
