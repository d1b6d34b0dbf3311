"""The web app and a rendezvous's credentials (README "A server that lets nobody in"), under Node
with a fake MQTT.js beside copies of ``rtc-signal.js`` and ``pair-remote.js``: the pairing
payload's ``"rv"`` carries them (``wss://:tk_...@host``, ``rtc/auth.py:device_url``), and

* ``connectBroker`` presents them as the daemon's paho does (a bare token: the password, with an
  empty user name), not in the URL it gives MQTT.js, whose own parser reads ``:tk_...`` as a
  user name;
* no error the page shows holds them: a broker that cannot be reached, an ``rv`` a browser
  cannot speak (ntfy), are named as ``***@host`` (``rtc/auth.py:redact``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import NODE, run_node_harness

STATIC = Path(__file__).parent.parent / "sidecode_trio" / "web" / "static"
TOKEN = "tk_s3cret0token"

FAKE_MQTT = """
export const connects = [];
export default {
  connect(url, options) {
    connects.push({ url, username: options.username ?? null, password: options.password ?? null });
    const handlers = {};
    const client = {
      once(name, fn) { handlers[name] = fn; },
      on() {},
      end() {},
    };
    setTimeout(() => handlers.close && handlers.close(), 0);  // nobody answers
    return client;
  },
};
"""

HARNESS = """
globalThis.self = globalThis;
globalThis.RTCPeerConnection = class {};  // WebRTC, but no WebTransport (as Safari)
const { connects } = await import("./vendor/mqtt.esm.js");
const signal = await import("./rtc-signal.js");
const { sendPair } = await import("./pair-remote.js");
const out = { connects, errors: [] };
for (const url of ["wss://:TOKEN@broker.example:8884/mqtt",
                   "wss://phil:p%40ss%3Aword@broker.example:8884/mqtt"]) {
  try { await signal.connectBroker(url); } catch (error) { out.errors.push(String(error.message)); }
}
const payload = { v: 1, pk: "AAAA", sid: "s", secret: "AAAA", quic: [],
                  rv: "ntfy+https://:TOKEN@ntfy.example" };
try { await sendPair(payload, {}); } catch (error) { out.errors.push(String(error.message)); }
console.log(JSON.stringify(out));
""".replace("TOKEN", TOKEN)


@pytest.mark.skipif(NODE is None, reason="needs node")
def test_the_web_app_presents_broker_credentials_and_never_shows_them(tmp_path: Path) -> None:
    (tmp_path / "vendor").mkdir()
    shutil.copy(STATIC / "vendor" / "nacl-fast.min.js", tmp_path / "vendor")
    shutil.copy(STATIC / "rtc-signal.js", tmp_path)
    shutil.copy(STATIC / "pair-remote.js", tmp_path)
    (tmp_path / "vendor" / "mqtt.esm.js").write_text(FAKE_MQTT)
    result = run_node_harness(tmp_path, HARNESS)
    token, basic = result["connects"]
    # the bare token is CONNECT's password with an empty user name, as paho sends it
    assert token == {"url": "wss://broker.example:8884/mqtt", "username": "", "password": TOKEN}
    assert basic == {
        "url": "wss://broker.example:8884/mqtt",
        "username": "phil",
        "password": "p@ss:word",
    }
    unreachable_token, unreachable_basic, ntfy = result["errors"]
    assert "wss://***@broker.example:8884/mqtt" in unreachable_token
    assert "wss://***@broker.example:8884/mqtt" in unreachable_basic
    assert "ntfy+https://***@ntfy.example" in ntfy
    for message in result["errors"]:
        assert TOKEN not in message and "p@ss" not in message and "p%40ss" not in message
