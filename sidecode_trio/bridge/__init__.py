"""The Remote Control bridge: Claude Code's cloud sessions, relayed like local ones.

Sans-IO cores (:mod:`.api` request builders and parsers, :mod:`.mapping` upstream event →
domain events, :mod:`.link` the reconnect/keep-alive/stall machine, the pure parts of
:mod:`.credentials`) and thin Trio drivers (:mod:`.client` over httpx and trio-websocket,
:mod:`.remote` the per-session follower and the bridge service).
"""
