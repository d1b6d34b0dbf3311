"""WebTransport (HTTP/3 over QUIC) transport: the same protocol as HTTP, over one control stream.

Layers, from the wire inwards::

    endpoint.py   Trio driver: one UDP socket, one nursery per QUIC connection, aioquic's
                  sans-IO QuicConnection + H3Connection, timers from get_timer()
    routing.py    pure: HTTP/3 + WebTransport events -> what the driver must do
    link.py       Trio: one authenticated WebTransport session: calls ops, runs subscriptions
    outbox.py     pure: bounded outbound queues, lanes, large payloads on their own streams
    control.py    pure: the control stream's state machine (hello, auth, requests, subscriptions)
    frames.py     pure: length-prefixed JSON frames, message classes, close codes
    routes.py     requests answered by the HTTP API's own route functions
    client.py     the device side (used by the example client, the tests and the benchmark)

The normative description is ``protocol/PROTOCOL.md`` section 8.
"""
