"""The HTTP client the SDK talks to an upstream through: the SDK's own aiohttp client, whose
responses also carry aiohttp's reader of their body, so a streamed reply is read from it
directly.

Between aiohttp's reader and the gateway, a streamed body otherwise passes through three
async generators per read (the SDK's aiohttp stream, httpx2's elapsed-time wrapper, httpx2's
`aiter_raw`), each resumed and suspended for every paced token; reading aiohttp's reader
directly saves about 6 µs of CPU per token (docs/BENCHMARKS.md, "Paced tokens: the steps
after the ping clock"). The request itself (retries, headers, status errors) stays the SDK's.

Once the headers are in, the body's idle timeout is an `IdleTimer`: aiohttp would otherwise
cancel and arm a timer on every chunk it receives, for every token of a paced reply.

The SDK's connection limits say how many idle keep-alive connections to keep (100); httpx
honours that, but the aiohttp transport passes only the total to aiohttp, whose pool keeps
every connection a burst opened until its keep-alive expires. `IdleCappedConnector` closes
the oldest idle ones past the limit, so after a burst of a thousand runs the memory of nine
hundred connections is not held for another 5-10 s (docs/BENCHMARKS.md, "Measurements behind
the code").
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import aiohttp
import httpx2
from aiohttp import SocketTimeoutError
from openai import DefaultAioHttpClient
from openai._vendor.httpx_aiohttp.transport import AiohttpTransport

# The response extensions that hold aiohttp's reader of the body, and its `IdleTimer`.
BODY_READER = "martlet_body_reader"
IDLE_TIMER = "martlet_idle_timer"


class IdleCappedConnector(aiohttp.TCPConnector):
    """aiohttp's connector, keeping at most `max_idle` idle keep-alive connections: the
    oldest beyond that are closed as soon as another one comes back to the pool.

    aiohttp has no public hook for this: it extends the private `_release`, and reads the
    private pool of idle connections (`_conns`: per host, a deque of (protocol, release
    time), oldest first). Where a release of aiohttp changes them, the cap's test fails."""

    def __init__(self, *, max_idle: int, **options: Any) -> None:
        super().__init__(**options)  # pyright: ignore[reportUnknownMemberType]
        self.max_idle = max_idle

    def _release(self, *args: Any, **kwargs: Any) -> None:
        super()._release(*args, **kwargs)  # pyright: ignore[reportUnknownMemberType]
        self.close_idle(keep=self.max_idle)

    def close_idle(self, *, keep: int = 0) -> None:
        """Close the oldest idle connections until at most `keep` are left."""
        idle = self._conns  # pyright: ignore[reportPrivateUsage]
        beyond = sum(len(pooled) for pooled in idle.values()) - keep
        for _ in range(beyond):
            key = min(idle, key=lambda host: idle[host][0][1])
            protocol, _released_at = idle[key].popleft()
            if not idle[key]:
                del idle[key]
            protocol.close()


class UpstreamHttpClient(DefaultAioHttpClient):
    """The SDK's aiohttp client with every transport it makes exposing the body's reader,
    keeping no more idle connections than the SDK's limits allow, and able to close them
    all (`close_idle_connections`)."""

    def __init__(self, **options: Any) -> None:
        self._connectors: list[IdleCappedConnector] = []  # the transports are made below
        super().__init__(**options)

    def _init_transport(self, *args: Any, **kwargs: Any) -> httpx2.AsyncBaseTransport:
        inner = super()._init_transport(*args, **kwargs)
        if isinstance(inner, AiohttpTransport) and not inner.uds:
            inner.client = partial(self._session_for, inner)
        return BodyReaderTransport(inner)

    def _session_for(self, transport: AiohttpTransport) -> aiohttp.ClientSession:
        """The session the SDK's aiohttp transport would make (`get_client`), with a
        connector that keeps at most the limits' `max_keepalive_connections` idle."""
        limits = transport.limits
        options: dict[str, Any] = {
            "keepalive_timeout": limits.keepalive_expiry,
            "ssl": transport.ssl_context,
        }
        if limits.max_connections is not None:
            options["limit"] = limits.max_connections
        if transport.local_address:
            options["local_addr"] = (transport.local_address, 0)
        max_idle = limits.max_keepalive_connections
        max_idle = sys.maxsize if max_idle is None else max_idle
        connector = IdleCappedConnector(max_idle=max_idle, **options)
        self._connectors.append(connector)
        return aiohttp.ClientSession(connector=connector)

    def close_idle_connections(self) -> None:
        """Close every connection no request is using."""
        for connector in self._connectors:
            connector.close_idle()


class BodyReaderTransport(httpx2.AsyncBaseTransport):
    """Puts aiohttp's reader of a response's body in `response.extensions[BODY_READER]`.

    The SDK's aiohttp stream keeps the aiohttp response in a private attribute; where a
    release of the SDK moves it, the extension is simply absent and the body is read through
    httpx2 as before (a test fails, so the loss is noticed)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """The inner transport's response, with the body's reader when it has one."""
        response = await self._inner.handle_async_request(request)
        aiohttp_response: object = getattr(response.stream, "_aiohttp_response", None)
        if not isinstance(aiohttp_response, aiohttp.ClientResponse):
            return response
        reader = aiohttp_response.content
        response.extensions[BODY_READER] = reader
        idle: object = request.extensions.get("timeout", {}).get("read")
        connection = aiohttp_response.connection
        protocol = connection.protocol if connection is not None else None
        stream = response.stream
        if (
            isinstance(idle, int | float)
            and idle > 0
            and protocol is not None
            and isinstance(stream, httpx2.AsyncByteStream)
        ):
            # From here on the timer below keeps the idle timeout, not aiohttp's per chunk.
            protocol.read_timeout = None
            timer = response.extensions[IDLE_TIMER] = IdleTimer(reader, idle)
            response.stream = _TimedStream(stream, timer)
        return response

    async def aclose(self) -> None:
        """Close the inner transport (and its connection pool)."""
        await self._inner.aclose()


def body_chunks(response: httpx2.Response) -> AsyncIterator[bytes]:
    """An async iterator over a streamed response's body: aiohttp's own where the response
    carries its reader, httpx2's otherwise."""
    reader: object = response.extensions.get(BODY_READER)
    if isinstance(reader, aiohttp.StreamReader):
        return reader.iter_any()
    return response.aiter_raw()


class IdleTimer:
    """Fails a body's reader once it has received nothing for `idle` seconds.

    It looks a few times per idle period at how many bytes the reader has received (one
    timer event per look), instead of a timer cancelled and armed again on every chunk; it
    fires between `idle` and `1.25 * idle` after the last byte."""

    LOOKS = 4

    def __init__(self, reader: aiohttp.StreamReader, idle: float) -> None:
        self._reader = reader
        self._interval = idle / self.LOOKS
        self._seen = reader.total_bytes
        self._quiet = 0
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(self._interval, self._look)

    def _look(self) -> None:
        reader = self._reader
        if reader.is_eof() or reader.exception() is not None:
            return
        if reader.total_bytes != self._seen:
            self._seen, self._quiet = reader.total_bytes, 0
        else:
            self._quiet += 1
        if self._quiet >= self.LOOKS:
            # What aiohttp raises for the same silence, so its callers see no difference.
            reader.set_exception(SocketTimeoutError("Timeout on reading data from socket"))
            return
        self._handle = self._loop.call_later(self._interval, self._look)

    def cancel(self) -> None:
        """Stop looking (the response is closed)."""
        self._handle.cancel()


class _TimedStream(httpx2.AsyncByteStream):
    """The SDK's body stream, which also stops the body's `IdleTimer` when it is closed."""

    def __init__(self, inner: httpx2.AsyncByteStream, timer: IdleTimer) -> None:
        self._inner = inner
        self._timer = timer

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._inner.__aiter__()

    async def aclose(self) -> None:
        self._timer.cancel()
        await self._inner.aclose()
