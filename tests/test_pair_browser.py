"""The exported web app pairs from another origin (issue 17): headless Chromium loads the bundle
from a plain static server on 127.0.0.1 (a secure context, another origin than the daemon's) and
``auth.js`` ``pair()`` completes the pairing without the daemon's HTTPS (which a browser would
refuse: self-signed certificate, no CORS): over WebTransport pinned by the payload's ``cert``
when the daemon is reachable, and through the broker, sealed, when it is not (the browser in a
namespace of its own with only the broker, as in test_rtc_browser_dial.py)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from test_rtc_browser_dial import _chromium_in, namespace, offering_through_the_broker, site

from sidecode_trio.config import DaemonConfig
from sidecode_trio.security.devices import DeviceStore
from sidecode_trio.security.identity import unb64
from sidecode_trio.security.tls import PROMOTE_BEFORE, make_certificate
from sidecode_trio.web.export import export

from helpers import chromium_args, chromium_or_skip, running_daemon, serve_folder

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

    with serve_folder(root) as served:
        yield served.url


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


@contextmanager
def paired_page(chromium: str, static_site: str, fragment: str, name: str) -> Iterator[Any]:
    """A page of the app on ``static_site`` that paired as ``name`` with the offer's link
    ``fragment`` (over WebTransport) and is live on it; the browser closes after."""
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=chromium_args())
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{static_site}/#{fragment}")
            page.wait_for_selector("#pair-view:not([hidden])")
            page.fill("#pair-name", name)
            page.click("#pair-button")
            page.wait_for_selector("#conn[data-state='live'][data-transport='webtransport']")
            yield page
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
    broker = offering_through_the_broker(make_config, namespace, monkeypatch)
    async with broker as (owner, config, payload):
        service = owner.handle.rtc
        assert payload["quic"] == []
        with trio.fail_after(90):
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


#: The device record as a browser paired before box keys had it: no box key, a broker to dial
#: (nothing listens there), and no direct address (the daemon is away from this browser).
AGE_THE_RECORD = """async () => {
  const db = await new Promise((resolve, reject) => {
    const req = indexedDB.open('sidecode-trio', 1);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  await new Promise((resolve, reject) => {
    const tx = db.transaction('device', 'readwrite');
    const store = tx.objectStore('device');
    const get = store.get('self');
    get.onsuccess = () => {
      const device = get.result;
      delete device.box;
      device.daemon.quic = [];
      device.rendezvous.url = 'ws://127.0.0.1:9/mqtt';
      store.put(device, 'self');
    };
    tx.oncomplete = resolve;
    tx.onerror = () => reject(tx.error);
  });
  db.close();
}"""


async def test_a_device_paired_before_box_keys_is_told_to_pair_again_on_the_page(
    make_config: Callable[..., DaemonConfig], static_site: str
) -> None:
    """Opened away from the daemon, an old device record cannot use the WebRTC path: the page
    says why and what to do (not only the console), and the indicator says offline."""
    chromium = chromium_or_skip()
    async with running_daemon(make_config()) as owner:
        offer = (await owner.http.post("/v1/pairings", json={"scope": "chat"})).json()
        fragment = offer["web_link"].split("#", 1)[1]

        def run() -> dict[str, Any]:
            # paired over WebTransport, as above
            with paired_page(chromium, static_site, fragment, "old phone") as page:
                page.evaluate(AGE_THE_RECORD)
                page.goto(f"{static_site}/")
                page.wait_for_selector("#conn-problem:not([hidden])")
                page.wait_for_selector("#conn[data-state='offline']")
                return dict(
                    page.evaluate(
                        """() => ({ problem: document.getElementById('conn-problem')
                                      .textContent,
                                    role: document.getElementById('conn-problem')
                                      .getAttribute('role'),
                                    label: document.getElementById('conn-label')
                                      .textContent })"""
                    )
                )

        with trio.fail_after(90):
            shown = await trio.to_thread.run_sync(run)
    assert "paired before it could use the peer-to-peer path: pair it again" in shown["problem"]
    assert "Open a new pairing link" in shown["problem"] and shown["role"] == "alert"
    assert shown["label"].startswith("offline")


PINNED = "async () => (await (await import('./auth.js')).loadDevice()).daemon.certs"


def until_pinned(page: Any, condition: Callable[[list[dict[str, Any]]], bool]) -> None:
    """Wait until the device record's certificates satisfy ``condition`` (the record is
    written after the link is up, by its /v1/info)."""
    deadline = time.monotonic() + 30  # a deadline only
    while not condition(certs := page.evaluate(PINNED)):
        assert time.monotonic() < deadline, certs
        page.wait_for_timeout(50)


async def test_from_another_origin_the_app_dials_direct_pinning_the_certificate_it_learnt(
    make_config: Callable[..., DaemonConfig], static_site: str
) -> None:
    """The exported app's links go direct over WebTransport, pinned by the certificates its
    device record keeps: the payload's at first, then each link's /v1/info. It learns the next
    certificate while the current one still serves, so after the daemon switches to it the next
    dial still goes direct (and the record then forgets the old one)."""
    chromium = chromium_or_skip()
    async with running_daemon(make_config()) as owner:
        certificates = owner.handle.quic.certificates
        first = certificates.current.sha256.hex()
        offer = (await owner.http.post("/v1/pairings", json={"scope": "chat"})).json()
        fragment = offer["web_link"].split("#", 1)[1]
        token = trio.lowlevel.current_trio_token()

        def make_next() -> str:
            current = certificates.current
            certificates.next = make_certificate(
                current.cert_path.parent, "next", [], dt.datetime.now(dt.UTC)
            )
            certificates.refresh()
            return str(certificates.next.sha256.hex())

        def switch() -> str:
            """The daemon's rotation a day before the current certificate expires (its clock
            moved there; the next one was made a few seconds after the current one)."""
            current, upcoming = certificates.current, certificates.next
            gap = upcoming.not_after - current.not_after
            assert gap > dt.timedelta(0)
            assert certificates.refresh(now=upcoming.not_after - PROMOTE_BEFORE - gap / 2)
            assert certificates.current.sha256 == upcoming.sha256
            return str(upcoming.sha256.hex())

        def redial(page: Any) -> None:
            page.evaluate("() => { window.old = window.sidecode.client.link; }")
            page.evaluate("() => window.sidecode.client.drop()")
            page.wait_for_function(
                "() => { const l = window.sidecode.client.link; return l && l !== window.old"
                " && !l.closed && l.kind === 'webtransport'; }"
            )
            page.wait_for_selector("#conn[data-state='live'][data-transport='webtransport']")

        def run() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            with paired_page(chromium, static_site, fragment, "phone") as page:
                seen["label"] = page.text_content("#conn-label")
                seen["paired"] = page.evaluate(PINNED)
                seen["next"] = trio.from_thread.run_sync(make_next, trio_token=token)
                redial(page)  # its /v1/info names the next certificate too
                until_pinned(page, lambda certs: len(certs) == 2)
                seen["both"] = page.evaluate(PINNED)
                seen["switched"] = trio.from_thread.run_sync(switch, trio_token=token)
                redial(page)  # pinned by what the record learnt
                until_pinned(page, lambda certs: certs[0]["sha256"] == seen["switched"])
                seen["after"] = page.evaluate(PINNED)
                return seen

        with trio.fail_after(120):
            seen = await trio.to_thread.run_sync(run)
    assert seen["label"] == "live · direct"
    assert [c["sha256"] for c in seen["paired"]] == [first]
    assert [c["sha256"] for c in seen["both"]] == [first, seen["next"]]
    assert all(c["not_after"] for c in seen["both"])
    assert seen["switched"] == seen["next"] != first
    assert seen["after"][0]["sha256"] == seen["next"]  # then the one made after it
    assert first not in [c["sha256"] for c in seen["after"]]
