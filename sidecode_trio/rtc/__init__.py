"""WebRTC DataChannel through NATs (issue 17, foundation; not wired into the daemon yet).

- :mod:`.signaling` (sans-IO): sealed, signed, replay-proof signaling messages; rendezvous topics
  derived from the pairing secret; the signed DTLS fingerprint statements (pinning).
- :mod:`.ice`: ICE server lists, coturn REST credentials, SDP candidate clean-up.
- :mod:`.broker`: the pub/sub driver the signaling rides on (MQTT via mosquitto).
- :mod:`.peer`: aiortc on its own asyncio thread, bridged to Trio.
- :mod:`.rendezvous`: the two flows over those: the daemon answering offers, a device dialling.

aiortc (and PyAV under it) is imported only by :mod:`.peer` when a peer connection is made, so
importing this package costs nothing. Install it with the ``rtc`` extra.
"""
