"""The HTTP client the SDK talks to an upstream through: the SDK's own aiohttp client, whose
responses also carry aiohttp's reader of their body, so a streamed reply is read from it
directly.

Between aiohttp's reader and the gateway, a streamed body otherwise passes through three
async generators per read (the SDK's aiohttp stream, httpx2's elapsed-time wrapper, httpx2's
`aiter_raw`), each resumed and suspended for every paced token; reading aiohttp's reader
directly saves about 6 µs of CPU per token (docs/BENCHMARKS.md, "Paced tokens: the steps
after the ping clock"). The request itself (retries, headers, status errors) stays the SDK's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2
from openai import DefaultAioHttpClient

# The response extension that holds aiohttp's reader of the body.
BODY_READER = "martlet_body_reader"


class UpstreamHttpClient(DefaultAioHttpClient):
    """The SDK's aiohttp client with every transport it makes exposing the body's reader."""

    def _init_transport(self, *args: Any, **kwargs: Any) -> httpx2.AsyncBaseTransport:
        return BodyReaderTransport(super()._init_transport(*args, **kwargs))


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
        if isinstance(aiohttp_response, aiohttp.ClientResponse):
            response.extensions[BODY_READER] = aiohttp_response.content
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
