"""WebTransport (HTTP/3 over QUIC) transport: the same protocol as HTTP, over one control stream.

Layers, from the wire inwards::

    endpoint.py   Trio driver: one UDP socket, one nursery per QUIC connection, aioquic's
                  sans-IO QuicConnection + H3Connection, timers from get_timer()
    routing.py    pure: HTTP/3 + WebTransport events -> what the driver must do
    client.py     the device side (used by the example client, the tests and the benchmark)

The session itself (state machine, frames, outbox, the driver that calls the operations) is
transport-neutral and lives in ``channel/``: the WebRTC DataChannel (``rtc/``) serves it too.

The normative description is ``protocol/PROTOCOL.md`` section 8.
"""
