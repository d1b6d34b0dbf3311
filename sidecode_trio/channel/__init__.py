"""The framed control protocol, whatever carries it (a WebTransport session, a WebRTC
DataChannel): the normative description is ``protocol/PROTOCOL.md`` §10 and §13.

::

    frames.py     pure: length-prefixed JSON frames, server messages, close codes
    control.py    pure: the state machine (hello, auth, requests, subscriptions)
    outbox.py     pure: bounded outbound queues, lanes, large payloads on their own streams
    link.py       Trio: one session driven against the operations, the feed and the guard,
                  over a small Transport protocol (buffered bytes, writes, close)
    routes.py     what a request is dispatched into (the front door, ``ops/front.py``)
    client.py     the device side over any carrier (example clients, tests, benchmarks)
"""
