"""The web app in WebKit, Safari's engine (issue 17: the app must work on Safari, which lacks
WebTransport). Debian's WebKitGTK MiniBrowser under WebDriver (tests/webkit.py) opens the app the
daemon serves, pairs, and drives a session over the path it has: HTTP with streamed SSE on the
daemon's own origin, even though the daemon offers WebTransport (WebKit has none). This WebKit
is built without WebRTC, so the DataChannel path stays Chromium's (test_rtc_app_browser.py); from
another origin it must say why no path can work, not fail on a missing class.

The browser runs in a worker thread (blocking HTTP to its driver) while the daemon runs under
Trio, as with Playwright in test_webapp_browser.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from test_webapp_browser import SMALL_TARGETS
from webkit import WebKit, webkit_browser, webkit_or_skip

from sidecode_trio.config import DaemonConfig
from sidecode_trio.web.export import export

from helpers import running_daemon, serve_folder

# The text of the transcript after the last user message: the current turn's answer.
CURRENT_TURN = """() => {
  const nodes = [...document.getElementById('transcript').children];
  const last = nodes.map((n) => n.classList.contains('user')).lastIndexOf(true);
  return nodes.slice(last + 1).map((n) => n.innerText).join('\\n');
}"""
TURN_ENDS = "(n) => document.querySelectorAll('#transcript .turn-end').length >= n"
ARTIFACTS = Path(__file__).parent / "artifacts"
# Whether the service worker is active, or a refusal (a bound, not a timing: the question is
# whether it installs at all).
SW_READY = """() => Promise.race([
  navigator.serviceWorker.ready.then(() => true),
  new Promise((resolve) => setTimeout(() => resolve(false), 10000)),
])"""
STATS = "() => ({...document.getElementById('transcript').dataset})"


def ticks(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\btick (\d+)\b", text)]


def wait_text(page: WebKit, text: str) -> None:
    page.wait(f"(t) => ({CURRENT_TURN})().includes(t)", text)


def send(page: WebKit, text: str) -> None:
    page.fill("#message", text)
    page.click("#send")


def select(page: WebKit, selector: str, value: str) -> None:
    """Choose ``value`` in a <select> the way a person's choice reaches the app (a change)."""
    page.run(
        "(s, v) => { const e = document.querySelector(s); e.value = v;"
        " e.dispatchEvent(new Event('change', { bubbles: true })); }",
        selector,
        value,
    )


async def test_webkit_pairs_and_drives_a_session_over_http_on_the_daemons_origin(
    make_config: Callable[..., DaemonConfig], work_dir: Path, tmp_path: Path
) -> None:
    webkit_or_skip()
    (work_dir / "notes.txt").write_text("hello world\n")
    async with running_daemon(make_config()) as owner:  # WebTransport offered: WebKit has none
        offer = (await owner.http.post("/v1/pairings", json={"scope": "admin"})).json()
        link, fingerprint = offer["web_link"], offer["payload"]["fp"]
        assert offer["payload"]["quic"]

        def scenario() -> dict[str, object]:
            with webkit_browser(tmp_path / "webkit") as page:
                features = page.run(
                    "() => ({ webtransport: typeof WebTransport, rtc: typeof RTCPeerConnection,"
                    " ua: navigator.userAgent })"
                )
                features["version"] = page.version
                page.goto(link)
                page.wait_for("#pair-view:not([hidden])")
                small = {"pairing": page.run(SMALL_TARGETS, 44)}
                assert page.text("#pair-fingerprint") == fingerprint
                page.fill("#pair-name", "WebKit phone")
                page.click("#pair-button")  # a non-extractable Ed25519 key, WebCrypto's own
                page.wait_for("body[data-paired='true']")
                assert "#pair=" not in page.url
                page.wait_for("#conn[data-state='live']")
                conn = page.run("() => ({...document.getElementById('conn').dataset})")
                assert conn["transport"] == "sse" and conn["path"] == "direct", conn

                # a session in a folder; its first answer streams in
                page.click("#menu")
                page.wait_for("#sessions")
                small["drawer"] = page.run(SMALL_TARGETS, 44)
                page.click("#new-session")
                page.wait_for("#new-view:not([hidden]) #folders button")
                small["new session"] = page.run(SMALL_TARGETS, 44)
                page.click(f"#folders button[data-path='{work_dir}']")
                page.wait(
                    "(p) => document.getElementById('folder-path').textContent === p",
                    str(work_dir),
                )
                page.fill("#new-prompt", "Hello from WebKit")
                select(page, "#new-mode", "default")
                page.click("#start")
                page.wait_for("#session-view:not([hidden]) #transcript")
                session_id = str(page.run("() => window.sidecode.view.id"))
                wait_text(page, "You said: Hello from WebKit")
                page.wait(TURN_ENDS, 1)

                # approve an edit from its card: the diff before it runs, then the file changed
                send(page, "[[edit:notes.txt|hello world|goodbye world]]")
                page.wait_for("#permissions .card .dl.ins")
                small["permission card"] = page.run(SMALL_TARGETS, 44)
                page.screenshot(ARTIFACTS / "webkit-phone.png")
                page.click("#permissions .card [data-action='allow']")
                page.wait("() => !document.querySelector('#permissions .card')")
                page.wait(TURN_ENDS, 2)
                assert (work_dir / "notes.txt").read_text() == "goodbye world\n"

                # the SSE stream drops mid-turn: it resumes from its (epoch, cursor), exactly
                before = page.run(STATS)
                send(page, "[[slow:40]]")
                wait_text(page, "tick 3 ")
                page.run("() => window.sidecode.client.drop()")
                page.wait(TURN_ENDS, 3)
                assert ticks(page.run(CURRENT_TURN)) == list(range(40))
                stats = page.run(STATS)
                assert stats["snapshots"] == before["snapshots"], stats  # resumed, no snapshot
                assert stats["duplicates"] == "0", stats

                # reload mid-turn: the transcript continues from the snapshot, nothing twice
                send(page, "[[slow:40]]")
                wait_text(page, "tick 3 ")
                page.reload()
                page.wait_for("#conn[data-state='live']")
                page.wait(TURN_ENDS, 4)
                assert ticks(page.run(CURRENT_TURN)) == list(range(40))
                items = page.run("() => window.sidecode.view.state.items")
                stats = page.run(STATS)
                assert stats["duplicates"] == "0", stats

                # the service worker installed and controls the page (the offline shell)
                assert page.run(
                    "async () => { await navigator.serviceWorker.ready;"
                    " return !!navigator.serviceWorker.controller; }"
                )
                assert page.page_errors() == []
                # WebKit's form controls and fonts keep every tap target at 44 px, as Chromium's
                assert {name: found for name, found in small.items() if found} == {}
                return {"features": features, "session": session_id, "items": items}

        with trio.fail_after(120):  # each step has its own 15 s limit in the browser
            seen = await trio.to_thread.run_sync(scenario)
        snap = await owner.snapshot(str(seen["session"]))
        devices = (await owner.http.get("/v1/devices")).json()["devices"]
    # the browser's fold (snapshot, then events) is the daemon's, item for item
    assert seen["items"] == snap["items"]
    assert [d["name"] for d in devices] == ["WebKit phone"]
    features = seen["features"]
    assert isinstance(features, dict) and features["webtransport"] == "undefined"
    print(f"WebKitGTK: {features}")


async def test_webkit_over_the_daemons_https_once_the_certificate_is_accepted(
    make_config: Callable[..., DaemonConfig], work_dir: Path, tmp_path: Path
) -> None:
    """Safari's real path from a phone on the LAN: the daemon's own self-signed HTTPS, the
    warning clicked through (``acceptInsecureCerts``), no WebTransport: HTTP/SSE bound to it."""
    webkit_or_skip()
    async with running_daemon(make_config(https=True)) as owner:
        assert owner.handle.url.startswith("https://")
        offer = (await owner.http.post("/v1/pairings", json={"scope": "chat"})).json()
        link = offer["web_link"]
        assert link.startswith(owner.handle.url.rstrip("/") + "/app/#pair=")
        session_id = (await owner.create(work_dir, "over https"))["session"]["id"]

        def scenario() -> bool:
            with webkit_browser(tmp_path / "webkit", accept_insecure_certs=True) as page:
                page.goto(link)
                page.wait_for("#pair-view:not([hidden])")
                page.fill("#pair-name", "WebKit on the LAN")
                page.click("#pair-button")
                page.wait_for("#conn[data-state='live']")
                assert page.run("() => document.getElementById('conn').dataset.transport") == "sse"
                page.goto(link.split("#")[0] + f"#s={session_id}")
                wait_text(page, "You said: over https")
                send(page, "[[bash:echo tls > tls.txt]]")
                page.click("#permissions .card [data-action='allow']")
                page.wait(TURN_ENDS, 2)
                # whether this WebKit installs a service worker from a certificate clicked
                # through (Chrome does not): reported, not asserted; the app works either way
                registered = bool(page.run(SW_READY))
                if registered:  # it takes the page over when the page loads again
                    page.reload()
                    page.wait_for("#conn[data-state='live']")
                    assert page.run("() => !!navigator.serviceWorker.controller")
                assert page.page_errors() == []
                return registered

        with trio.fail_after(120):
            registered = await trio.to_thread.run_sync(scenario)
    assert (work_dir / "tls.txt").read_text() == "tls\n"
    print(f"a service worker controls the page over a clicked-through certificate: {registered}")


@pytest.fixture
def static_site(tmp_path: Path) -> Iterator[str]:
    """The exported bundle on 127.0.0.1 (another origin than the daemon's), with a blank page
    to run scripts in (as test_pair_browser.py's, which only runs where the lab can)."""
    root = tmp_path / "static"
    export(root)
    (root / "blank.html").write_text("<!doctype html><title>pair</title>")

    with serve_folder(root) as served:
        yield served.url


PAIR = """async (payload, name) => {
  const auth = await import('/auth.js');
  try {
    return { ok: true, id: (await auth.pair(payload, name)).id };
  } catch (error) {
    return { ok: false, error: String(error.message || error) };
  }
}"""


async def test_webkit_on_another_origin_is_told_which_path_it_lacks_before_pairing(
    make_config: Callable[..., DaemonConfig], static_site: str, tmp_path: Path
) -> None:
    """The exported app (another origin) can reach a daemon only over WebTransport or WebRTC.
    A WebKit without either is told so, and pairs nothing it could never use: through a broker
    it could pair (MQTT over a WebSocket needs no WebRTC), then never connect. Safari (WebRTC,
    no WebTransport) facing a daemon with no broker is told what is missing on each side."""
    webkit_or_skip()
    async with running_daemon(make_config()) as owner:
        offer = (await owner.http.post("/v1/pairings", json={"scope": "chat"})).json()
        payload = offer["payload"]
        assert payload["quic"] and payload["cert"] and "rv" not in payload
        brokered = {**payload, "rv": "ws://127.0.0.1:9/mqtt"}  # dialled only if it could help

        def scenario() -> list[dict[str, object]]:
            with webkit_browser(tmp_path / "webkit") as page:
                page.goto(static_site + "/blank.html")
                results = [page.run(PAIR, p, "WebKit") for p in (payload, brokered)]
                # Safari's globals: RTCPeerConnection is there (only detected, never called here)
                page.run("() => { window.RTCPeerConnection = class RTCPeerConnection {}; }")
                results.append(page.run(PAIR, payload, "Safari"))
                assert page.page_errors() == []
                return results

        with trio.fail_after(60):
            lacking, through_broker, safari = await trio.to_thread.run_sync(scenario)
        devices = (await owner.http.get("/v1/devices")).json()["devices"]
    for refused in (lacking, through_broker):
        assert not refused["ok"] and "neither WebTransport nor WebRTC" in str(refused["error"])
        assert "ws://127.0.0.1:9" not in str(refused["error"])  # the broker was not dialled
    assert not safari["ok"]
    assert str(safari["error"]) == (
        "could not reach the daemon to pair: this browser has no WebTransport;"
        " the daemon names no broker (serve --rendezvous)"
    )
    assert devices == []
