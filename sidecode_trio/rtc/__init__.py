"""WebRTC DataChannel through NATs (issue 17, foundation; not wired into the daemon yet).

- :mod:`.signaling` (sans-IO): sealed, signed, replay-proof signaling messages; rendezvous topics
  derived from the pairing secret; the signed DTLS fingerprint statements (pinning).
- :mod:`.ice`: ICE server lists, coturn REST credentials, SDP candidate clean-up.
- :mod:`.broker`: the pub/sub driver the signaling rides on (MQTT via mosquitto).
- :mod:`.peer`: aiortc on its own asyncio thread, bridged to Trio.
- :mod:`.rendezvous`: the two flows over those: the daemon answering offers, a device dialling.

aiortc (and PyAV under it) is imported only by :mod:`.peer` when a peer connection is made, so
importing this package costs nothing. Install it with the ``rtc`` extra.

What the daemon integration still needs (after the transport-neutral feed of issue 16):

* pairing: at redeem, both sides compute :func:`.signaling.rendezvous_secret` (pairing secret,
  transcript); the device store keeps it per device (0600 store); the payload gains only the
  broker URL (``"rv"``) when it is not the default;
* ``serve --rendezvous URL --turn URL --turn-secret-file F``: one task that opens the asyncio
  thread and the broker connection only when enabled, subscribes every active device's
  ``to_daemon`` topic (and unsubscribes, closing its links, on revoke) and runs
  :meth:`.rendezvous.Answerer.serve`; ``on_link`` hands the DataChannel to the same encoder and
  operation table as the WebTransport control stream, the link already bound to a device key;
* an application-level ping (aiortc's consent checks need ~30 s to notice a dead path) and a
  re-dial on network change (aiortc has no ICE restart).
"""
