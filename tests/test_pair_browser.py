"""The exported web app pairs from another origin (issue 17): headless Chromium loads the bundle
from a plain static server on 127.0.0.1 (a secure context, another origin than the daemon's) and
``auth.js`` ``pair()`` completes the pairing without the daemon's HTTPS (which a browser would
refuse: self-signed certificate, no CORS): over WebTransport pinned by the payload's ``cert``
when the daemon is reachable, and through the broker, sealed, when it is not (the browser in a
namespace of its own with only the broker, as in test_rtc_browser_dial.py)."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from test_rtc_browser_dial import WS_PORT, _chromium_in, _setns, namespace, site

from sidecode_trio.config import DaemonConfig
from sidecode_trio.rtc import service as service_module
from sidecode_trio.rtc.settings import RtcSettings
from sidecode_trio.security.devices import DeviceStore
from sidecode_trio.security.identity import unb64
from sidecode_trio.web.export import export

from helpers import chromium_args, chromium_or_skip, running_daemon

__all__ = ["namespace", "site"]  # the fixtures, imported
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

PAIR = """async ([payload, name]) => {
  const auth = await import('/auth.js');
  const t0 = performance.now();
  try {
    const device = await auth.pair(payload, name);
    return { ok: true, id: device.id, public_key: device.publicKey, scope: device.scope,
             secret: device.rendezvous.secret, box: device.box.publicKey,
             ms: performance.now() - t0, stored: (await auth.loadDevice()).id };
  } catch (error) {
    return { ok: false, error: String(error.message || error) };
  }
}"""


@pytest.fixture
def static_site(tmp_path: Path) -> Iterator[str]:
    """The exported bundle on 127.0.0.1 (this namespace), with a blank page to run scripts in."""
    root = tmp_path / "static"
    export(root)
    (root / "blank.html").write_text("<!doctype html><title>pair</title>")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_pairings(
    chromium: str, page_url: str, attempts: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each payload of ``attempts`` given to ``pair()`` in one page, in order."""
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=chromium_args())
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(page_url)
            results = [page.evaluate(PAIR, [payload, "chromium"]) for payload in attempts]
            assert errors == []
            return results
        finally:
            browser.close()


async def test_the_exported_app_pairs_over_webtransport_from_another_origin(
    make_config: Callable[..., DaemonConfig], static_site: str
) -> None:
    chromium = chromium_or_skip()
    async with running_daemon(make_config()) as owner:
        payload = (await owner.http.post("/v1/pairings", json={"scope": "chat"})).json()["payload"]
        assert payload["quic"] and payload["cert"] and "rv" not in payload
        assert not any(url.startswith(static_site) for url in payload["http"])  # another origin
        impostor = {**payload, "cert": "ab" * 32}  # someone else's certificate: never trusted
        tcp_broker = {**impostor, "rv": "mqtts://broker.example:8883"}  # not for browsers
        with trio.fail_after(60):
            refused, unreachable, paired = await trio.to_thread.run_sync(
                run_pairings,
                chromium,
                static_site + "/blank.html",
                [impostor, tcp_broker, payload],
            )
        assert not refused["ok"] and "could not reach the daemon to pair" in refused["error"]
        assert not unreachable["ok"] and "needs a wss:// URL" in unreachable["error"]
        assert paired["ok"], paired
        assert paired["stored"] == paired["id"] and paired["scope"] == "chat"
        devices = (await owner.http.get("/v1/devices")).json()["devices"]
        assert [(d["id"], d["name"]) for d in devices] == [(paired["id"], "chromium")]
    print(f"paired over WebTransport in {paired['ms']:.0f} ms")


async def test_the_exported_app_pairs_through_the_broker_when_no_address_answers(
    make_config: Callable[..., DaemonConfig],
    namespace: str,
    site: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The browser is in a namespace where only the broker is: the daemon's addresses (this
    namespace's loopback) are out of its reach, and the daemon has no WebTransport."""
    chromium = _chromium_in(namespace, tmp_path)
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
            payload = (await owner.http.post("/v1/pairings", json={"scope": "chat"})).json()[
                "payload"
            ]
            assert payload["quic"] == [] and payload["rv"] == f"ws://127.0.0.1:{WS_PORT}"
            while service.pairing() != [payload["sid"]]:
                await trio.sleep(0.02)
            (paired,) = await trio.to_thread.run_sync(
                run_pairings, chromium, site + "/dial.html", [payload]
            )
        assert paired["ok"], paired
        assert service.paired == 1 and service.subscribed() == [paired["id"]]
        assert service.pairing() == []
        store = DeviceStore(config.state_dir / "devices.sqlite3")
        try:  # the browser computed the rendezvous secret the daemon keeps
            assert store.rendezvous(paired["id"]) == unb64(paired["secret"])
            # and registered the box key the sealed reply was boxed to (it opened it)
            assert store.box_key(paired["public_key"]) == paired["box"]
        finally:
            store.close()
    print(f"paired through the broker in {paired['ms']:.0f} ms")
