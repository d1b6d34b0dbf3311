"""The browser's side of the WebRTC path in headless Chromium (issue 17 #1, #4, #5):

* ``web/static/rtc-signal.js`` and ``rtc/signaling.py`` seal and open each other's envelopes, agree
  on topics, key conversion and fingerprint statements, and both refuse tampered and replayed
  messages;
* the exported bundle (``web export``) loads from another loopback origin and shows its unpaired
  screen, with no CSP refusal;
* the web app's pairing stores the same rendezvous secret as the daemon.

Pages come from a plain static server on loopback (``http://127.0.0.1`` is a secure context, so
WebCrypto works), like a static host would serve the exported bundle.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import nacl.signing
import pytest
import trio

from sidecode_trio.config import DaemonConfig
from sidecode_trio.rtc.signaling import (
    SignalingBox,
    SignalingRefused,
    check_fingerprints,
    sign_fingerprints,
    topics,
)
from sidecode_trio.security.devices import DeviceStore
from sidecode_trio.security.identity import b64, unb64
from sidecode_trio.web.export import export
from sidecode_trio.wire.signaling import Hello, IceConfig, IceServer, Offer

from helpers import chromium_args, chromium_or_skip, running_daemon, serve_folder

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

STEP_TIMEOUT_MS = 30_000  # a deadline per step, not a behaviour: loaded 2-core CI
SDP_DEVICE = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    "a=fingerprint:sha-256 AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:"
    "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89\r\n"
)
SDP_DAEMON = SDP_DEVICE.replace("AB:CD", "12:34").replace("sha-256", "sha-384") + (
    "a=fingerprint:sha-256 01:02:03:04:05:06:07:08:09:0A:0B:0C:0D:0E:0F:10:"
    "11:12:13:14:15:16:17:18:19:1A:1B:1C:1D:1E:1F:20\r\n"
)


@contextmanager
def browser_page(problems: list[str]) -> Iterator[Any]:
    chromium = chromium_or_skip()
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=chromium_args())
        try:
            page = browser.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda m: (
                    problems.append(m.text)
                    if m.type == "error" and "Refused to" in m.text
                    else None
                ),
            )
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("site")
    export(root)
    with serve_folder(root) as served:
        yield served.url


def test_the_exported_app_loads_from_another_origin_and_shows_its_unpaired_screen(
    site: str,
) -> None:
    problems: list[str] = []
    with browser_page(problems) as page:
        page.goto(site + "/index.html")
        page.wait_for_selector("#unpaired-view:not([hidden])")
        assert page.evaluate("() => document.querySelector('#pair-view').hidden") is True
    assert problems == []  # every script, style and icon allowed by the bundle's own policy


# --- JS <-> Python sealing --------------------------------------------------------------------

JS_SETUP = """async ([seed, peer]) => {
  const m = await import('/rtc-signal.js');
  const u = (s) => m.unb64url(s);
  window.m = m;
  window.box = new m.SignalingBox(u(seed), (pk) => m.b64url(pk) === peer);
  return m.b64url(window.box.publicKey);
}"""


def refusal(page: Any, expression: str, arg: Any = None) -> str:
    """The ``code`` of the SignalingRefused ``expression`` throws in the page."""
    code: str = page.evaluate(
        f"async (arg) => {{ try {{ await ({expression}); return 'accepted'; }}"
        " catch (e) { return e.code || String(e); } }",
        arg,
    )
    return code


def test_js_and_python_seal_and_open_each_other_and_refuse_tampering_and_replay(
    site: str,
) -> None:
    daemon_key, device_key = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    daemon_pk, device_pk = bytes(daemon_key.verify_key), bytes(device_key.verify_key)
    daemon = SignalingBox(daemon_key, lambda key: key == device_pk)
    problems: list[str] = []
    with browser_page(problems) as page:
        page.goto(site + "/index.html")
        assert page.evaluate(JS_SETUP, [b64(bytes(device_key)), b64(daemon_pk)]) == b64(device_pk)

        # key conversion: the same X25519 keys as PyNaCl (libsodium)
        x_public = page.evaluate("(pk) => m.b64url(m.x25519Public(m.unb64url(pk)))", b64(daemon_pk))
        assert unb64(x_public) == bytes(daemon_key.verify_key.to_curve25519_public_key())
        x_secret = page.evaluate(
            "(s) => m.b64url(m.x25519Secret(m.unb64url(s)))", b64(bytes(device_key))
        )
        assert unb64(x_secret) == bytes(device_key.to_curve25519_private_key())

        # JS seals, Python opens
        sealed = page.evaluate(
            "(pk) => box.seal(m.unb64url(pk), {type: 'hello', cid: 'c1'})", b64(daemon_pk)
        )
        opened = daemon.open(sealed.encode(), wall())
        assert opened.sender == device_pk and opened.message == Hello("c1")
        with pytest.raises(SignalingRefused) as replay:
            daemon.open(sealed.encode(), wall())
        assert replay.value.code == "replayed"
        envelope = json.loads(sealed)
        box = bytearray(unb64(envelope["box"]))
        box[40] ^= 1
        tampered = json.dumps({**envelope, "box": b64(bytes(box))}).encode()
        with pytest.raises(SignalingRefused) as forged:
            daemon.open(tampered, wall())
        assert forged.value.code == "forged"

        # Python seals, JS opens (an ice reply, nested lists and nulls included)
        ice = IceConfig("c1", [IceServer(["stun:h:3478"]), IceServer(["turn:h"], "u", "p")])
        reply = daemon.seal(device_pk, ice, wall()).decode()
        got = page.evaluate("(e) => box.open(e).message", reply)
        assert got == {"type": "ice", "cid": "c1", "servers": [
            {"urls": ["stun:h:3478"], "username": None, "credential": None},
            {"urls": ["turn:h"], "username": "u", "credential": "p"},
        ]}  # fmt: skip
        assert refusal(page, "box.open(arg)", reply) == "replayed"
        env = json.loads(reply)
        flipped = bytearray(unb64(env["box"]))
        flipped[-1] ^= 1
        assert refusal(page, "box.open(arg)", json.dumps({**env, "box": b64(bytes(flipped))})) == (
            "forged"
        )
        stranger = SignalingBox(nacl.signing.SigningKey.generate(), lambda _k: True)
        from_stranger = stranger.seal(device_pk, Hello("c2"), wall()).decode()
        assert refusal(page, "box.open(arg)", from_stranger) == "not_paired"
        stale = daemon.seal(device_pk, Hello("c3"), wall() - 600).decode()
        assert refusal(page, "box.open(arg)", stale) == "stale"
        to_other = daemon.seal(daemon_pk, Hello("c4"), wall()).decode()  # meant for another
        assert refusal(page, "box.open(arg)", to_other) in ("forged", "wrong_recipient")
        assert refusal(page, "box.open(arg)", '{"v":2}') == "malformed"

        # topics from the rendezvous secret
        secret = bytes(range(32))
        js_topics = page.evaluate("async (s) => await m.topics(m.unb64url(s))", b64(secret))
        mine = topics(secret)
        assert js_topics == {"toDaemon": mine.to_daemon, "toDevice": mine.to_device}

        # fingerprint statements: the device's (JS) checks in Python, the daemon's (Python) in JS
        signed = page.evaluate(
            "async (sdp) => await m.signFingerprints(box, 'device', 'c9', sdp)", SDP_DEVICE
        )
        device_fps, device_sig = signed["fps"], signed["fp_sig"]
        check_fingerprints(device_pk, "device", "c9", SDP_DEVICE, device_fps, device_sig)
        with pytest.raises(SignalingRefused):  # bound to its attempt
            check_fingerprints(device_pk, "device", "c8", SDP_DEVICE, device_fps, device_sig)
        fps, fp_sig = sign_fingerprints(daemon_key, "daemon", "c9", SDP_DAEMON, SDP_DEVICE)
        check = (
            "async ([pk, sdp, fps, sig, offer, cid]) => await m.checkFingerprints("
            "m.unb64url(pk), 'daemon', cid, sdp, fps, sig, offer)"
        )
        args = [b64(daemon_pk), SDP_DAEMON, fps, fp_sig, SDP_DEVICE, "c9"]
        assert refusal(page, f"({check})(arg)", args) == "accepted"
        for bad in (
            [*args[:4], SDP_DEVICE + "a=x\r\n", "c9"],  # another offer
            [*args[:5], "c8"],  # another attempt
            [args[0], SDP_DAEMON + "a=fingerprint:sha-1 00:11\r\n", *args[2:]],  # a line added
            [b64(device_pk), *args[1:]],  # signed by someone else
        ):
            assert refusal(page, f"({check})(arg)", bad) == "fingerprint"
        # the Python side refuses a JS offer whose SDP was changed after signing
        offer = Offer("c9", SDP_DEVICE.replace("AB:CD", "AB:CE"), signed["fps"], signed["fp_sig"])
        with pytest.raises(SignalingRefused) as changed:
            check_fingerprints(device_pk, "device", offer.cid, offer.sdp, offer.fps, offer.fp_sig)
        assert changed.value.code == "fingerprint"
    assert problems == []


def wall() -> float:
    return time.time()


# --- the app's pairing --------------------------------------------------------------------


async def test_the_web_app_pairing_stores_the_same_rendezvous_secret_as_the_daemon(
    make_config: Callable[..., DaemonConfig],
) -> None:
    config = make_config()
    problems: list[str] = []
    async with running_daemon(config) as owner:
        offer = (await owner.http.post("/v1/pairings", json={"scope": "chat"})).json()

        def scenario() -> dict[str, Any]:
            with browser_page(problems) as page:
                page.goto(offer["web_link"])
                page.wait_for_selector("#pair-view:not([hidden])")
                page.fill("#pair-name", "Test phone")
                page.click("#pair-button")
                page.wait_for_selector("body[data-paired='true']")
                stored: dict[str, Any] = page.evaluate(
                    "async () => { const a = await import('./auth.js');"
                    " const d = await a.loadDevice(); return {id: d.id, rv: d.rendezvous}; }"
                )
                return stored

        with trio.fail_after(120):
            stored = await trio.to_thread.run_sync(scenario)
    store = DeviceStore(config.state_dir / "devices.sqlite3")
    try:
        assert store.rendezvous(stored["id"]) == unb64(stored["rv"]["secret"])
    finally:
        store.close()
    assert stored["rv"]["url"] is None  # no broker configured: none named
    assert problems == []
