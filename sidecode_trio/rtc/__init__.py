"""WebRTC DataChannel through NATs (issue 17): the daemon reachable from anywhere.

- :mod:`.signaling` (sans-IO): sealed, signed, replay-proof signaling messages; rendezvous topics
  derived from the pairing secret; the signed DTLS fingerprint statements (pinning).
- :mod:`.ice`: ICE server lists, coturn REST credentials, SDP candidate clean-up.
- :mod:`.broker`: the pub/sub driver the signaling rides on (MQTT via mosquitto); :mod:`.ntfy`
  the same over an ntfy server (``ntfy+https://``), chosen by the URL's scheme; :mod:`.auth`
  the credentials of a server that lets nobody in without them (redacted wherever shown).
- :mod:`.peer`: aiortc on its own asyncio thread, bridged to Trio.
- :mod:`.rendezvous`: the two flows over those: the daemon answering offers, a device dialling.
- :mod:`.pairing` (sans-IO, and the device's driver): pairing through the broker for a device
  that reaches no address of the daemon (a request sealed to the daemon's key on a topic derived
  from the one-time secret, the reply sealed back and signed).

aiortc (and PyAV under it) is imported only by :mod:`.peer` when a peer connection is made, so
importing this package costs nothing. Install it with the ``rtc`` extra.

Wired into the daemon (``serve --rendezvous URL``): pairing gives both sides the device's
rendezvous secret (``security/pairing.py``; kept in the 0600 device store, dropped on revoke, the
payload's ``"rv"`` names the broker); :mod:`.settings` is the ``[rtc]`` configuration;
:mod:`.service` is the daemon's one task (the asyncio thread, the broker, one subscription per
active device, the answerer, TURN credentials minted per device); :mod:`.link` serves each open
link (the framed protocol of ``channel/``, the text keep-alive, ``bufferedAmount`` as
back-pressure); :mod:`.client` is a device's side of it; :mod:`.reach` is ``doctor``'s
reachability report.

The browser's side is ``web/static/rtc-signal.js`` (signaling, with the X25519 box key the app
registers at pairing), ``rtc-link.js`` (the link) and ``pair-remote.js`` (pairing through the
broker or over WebTransport). aiortc has no ICE restart: after a network change a device dials
anew and its subscriptions resume from their cursors.
"""
