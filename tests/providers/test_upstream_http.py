"""A streamed upstream body is read from aiohttp's own reader (the fast path), and gives the
same deltas as httpx2's reading of the same reply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2
import pytest

from martlet_molt.providers.base import Delta, TextDelta
from martlet_molt.providers.openai import data_payloads, parse_chunk
from martlet_molt.providers.upstream_http import BODY_READER, UpstreamHttpClient, body_chunks
from martlet_molt.testing import FakeUpstream
from tests.conftest import script


async def _deltas(chunks: AsyncIterator[bytes]) -> list[Delta]:
    payloads = [payload async for payload in data_payloads(chunks)]
    assert payloads[-1] == b"[DONE]"
    return [delta for payload in payloads[:-1] for delta in parse_chunk(payload)]


def _request(client: httpx2.AsyncClient, upstream: FakeUpstream, model: str) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    return client.stream("POST", f"{upstream.base_url}/chat/completions", json=body)


@pytest.mark.asyncio
async def test_a_streamed_body_is_read_from_aiohttp_with_the_same_payloads(
    upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=30)
    async with UpstreamHttpClient() as client:
        async with _request(client, upstream, model) as response:
            assert isinstance(response.extensions.get(BODY_READER), aiohttp.StreamReader)
            direct = await _deltas(body_chunks(response))
        async with _request(client, upstream, model) as response:
            through_httpx2 = await _deltas(response.aiter_raw())
    assert direct == through_httpx2
    text = "".join(delta.text for delta in direct if isinstance(delta, TextDelta))
    assert text == "".join(sent.chunks)
