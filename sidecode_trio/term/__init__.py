"""The terminal client: ``sidecode-trio attach`` and ``sidecode-trio send`` (pure rendering in
``render``, the SSE parser in ``sse``, the Trio driver in ``attach``)."""
