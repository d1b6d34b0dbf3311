"""HTTP/SSE transport: a quart-trio app on hypercorn's trio worker, calling :mod:`..ops`."""
