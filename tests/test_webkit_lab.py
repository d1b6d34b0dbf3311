"""WebKit away from the daemon (issue 17): the exported app in WebKit, in a namespace of its own
where only the broker is (the daemon's addresses are out of its reach), as in
test_pair_browser.py's Chromium variant.

Safari pairs from there through the broker (MQTT over a WebSocket, tweetnacl, WebCrypto: no
WebRTC needed for that) and then dials the DataChannel. This WebKit has no WebRTC, so it plays
Safari for the pairing only (``RTCPeerConnection`` defined, never called: pairing only looks for
it), which runs the pairing code in WebKit's engine against the real broker and daemon; then,
as itself, the app it opens must say on the page that no path can work in this browser, rather
than retry a path it lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from test_rtc_browser_dial import _in_namespace, namespace, offering_through_the_broker, site
from webkit import webkit_browser, webkit_or_skip

from sidecode_trio.config import DaemonConfig
from sidecode_trio.security.devices import DeviceStore
from sidecode_trio.security.identity import unb64

__all__ = ["namespace", "site"]  # the fixtures, imported

PAIR_AS_SAFARI = """async (payload, name) => {
  window.RTCPeerConnection = class RTCPeerConnection {}; // Safari's global, only looked for
  const auth = await import('/auth.js');
  try {
    const device = await auth.pair(payload, name);
    return { ok: true, id: device.id, secret: device.rendezvous.secret };
  } catch (error) {
    return { ok: false, error: String(error.message || error) };
  }
}"""
PROBLEM = """() => ({ problem: document.getElementById('conn-problem').textContent,
  state: document.getElementById('conn').dataset.state })"""


async def test_webkit_pairs_through_the_broker_then_is_told_it_has_no_path_from_there(
    make_config: Callable[..., DaemonConfig],
    namespace: str,
    site: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    webkit_or_skip()
    broker = offering_through_the_broker(make_config, namespace, monkeypatch)
    async with broker as (owner, config, payload):
        service = owner.handle.rtc

        def scenario() -> tuple[dict[str, object], dict[str, object]]:
            # this thread is in the namespace: Xvfb, the driver and the browser are born there
            with webkit_browser(tmp_path / "webkit") as page:
                page.goto(site + "/dial.html")  # no policy: the loopback ws:// broker is allowed
                paired = page.run(PAIR_AS_SAFARI, payload, "WebKit as Safari")
                assert paired["ok"], paired
                page.goto(site + "/")  # the app, as WebKit itself: no WebTransport, no WebRTC
                page.wait_for("#conn-problem:not([hidden])")
                shown = page.run(PROBLEM)
                assert page.page_errors() == []
                return paired, shown

        with trio.fail_after(90):
            paired, shown = await trio.to_thread.run_sync(_in_namespace, namespace, scenario)
        assert service.paired == 1 and service.subscribed() == [paired["id"]]
        store = DeviceStore(config.state_dir / "devices.sqlite3")
        try:  # WebKit's engine computed the rendezvous secret the daemon keeps
            assert store.rendezvous(str(paired["id"])) == unb64(str(paired["secret"]))
        finally:
            store.close()
    assert shown["problem"] == (
        "Cannot connect: this browser has neither WebTransport nor WebRTC, which the app needs"
        " from this address: open it from the computer's own address instead."
    )
    assert shown["state"] == "offline"
