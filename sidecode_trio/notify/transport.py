"""The push client's connections: httpx with a network backend that connects only to the global
addresses :func:`~.destinations.allowed_address` accepts (see :mod:`.destinations` for why).

Apart from :mod:`.destinations` so that httpx (and httpcore) are loaded when the first
notification is delivered, not when the daemon starts (most daemons never push: no subscription,
no webhook).
"""

from __future__ import annotations

from collections.abc import Iterable

import httpcore
import httpx

from .destinations import Resolver, allowed_address, resolve


class GlobalOnlyBackend(httpcore.AsyncNetworkBackend):
    """httpcore's Trio backend, connecting only to checked addresses (see the module's doc)."""

    def __init__(self, allow_loopback: bool, resolver: Resolver = resolve) -> None:
        self._inner = httpcore.TrioBackend()
        self._allow_loopback = allow_loopback
        self._resolve = resolver

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = list(await self._resolve(host, port))
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not addresses or not all(allowed_address(a, self._allow_loopback) for a in addresses):
            # all or nothing: a name that also points inwards is not a push service
            raise httpcore.ConnectError(f"{host} resolves to an address pushes may not go to")
        failure: Exception | None = None
        for address in addresses:  # in the resolver's order (e.g. IPv6 first): the first that
            try:  # connects; TLS then checks the certificate against the name, not the address
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("pushes never go to a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def push_transport(allow_loopback: bool, resolver: Resolver = resolve) -> httpx.AsyncBaseTransport:
    """httpx's transport with the pool's network backend swapped for :class:`GlobalOnlyBackend`
    (httpx does not take a backend; the pool is built exactly as httpx builds it, no proxy:
    a proxy would make the peer the proxy, and the address check meaningless)."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=100,  # httpx's defaults
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=GlobalOnlyBackend(allow_loopback, resolver),
    )
    return transport
