"""A streamed upstream body is read from aiohttp's own reader (the fast path), and gives the
same deltas as httpx2's reading of the same reply; its idle timeout is kept by an
`IdleTimer` looking a few times per idle period, not by a timer per chunk."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2
import pytest
from aiohttp import SocketTimeoutError

from martlet_molt.providers.base import Delta, TextDelta
from martlet_molt.providers.openai import data_payloads, parse_chunk
from martlet_molt.providers.upstream_http import (
    BODY_READER,
    IDLE_TIMER,
    IdleTimer,
    UpstreamHttpClient,
    body_chunks,
)
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


@pytest.mark.asyncio
@pytest.mark.parametrize(("max_idle", "left_open"), [(3, 3), (None, 10)])
async def test_idle_connections_beyond_the_limits_keep_alive_count_are_closed(
    upstream: FakeUpstream, model: str, max_idle: int | None, left_open: int
) -> None:
    sent = script(upstream, model, token_count=5)
    limits = httpx2.Limits(max_connections=50, max_keepalive_connections=max_idle)
    all_open = asyncio.Barrier(10)
    texts: list[str] = []

    async def one(client: httpx2.AsyncClient, together: asyncio.Barrier | None) -> None:
        async with _request(client, upstream, model) as response:
            if together is not None:
                await together.wait()  # ten responses at once: ten connections
            deltas = await _deltas(body_chunks(response))
        texts.append("".join(delta.text for delta in deltas if isinstance(delta, TextDelta)))

    async with UpstreamHttpClient(limits=limits) as client:
        await asyncio.wait_for(asyncio.gather(*(one(client, all_open) for _ in range(10))), 10)
        assert texts == ["".join(sent.chunks)] * 10
        await _until_open(upstream, left_open)
        # After a burst the gateway closes every idle one (`release_idle_connections`).
        client.close_idle_connections()
        await _until_open(upstream, 0)
        # And the next request simply opens a new one.
        await asyncio.wait_for(one(client, None), 10)
        assert texts[-1] == "".join(sent.chunks)


async def _until_open(upstream: FakeUpstream, count: int) -> None:
    """Until the upstream counts `count` open connections: it sees a close a moment after the
    client makes it (bounded)."""
    deadline = time.monotonic() + 5
    for _ in range(250):
        if upstream.open_connections <= count or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert upstream.open_connections == count


IDLE = 0.4


async def _silence_before_the_timeout(chunks: AsyncIterator[bytes]) -> float:
    """Read until the idle timeout fails the body; how long after the last chunk it did."""
    last = time.monotonic()
    try:
        async for _ in chunks:
            last = time.monotonic()
    except SocketTimeoutError:
        return time.monotonic() - last
    raise AssertionError("the body ended without the idle timeout")


@pytest.mark.asyncio
async def test_a_body_silent_for_the_idle_timeout_fails_within_a_quarter_more(
    upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, token_count=6, stall_after=2)
    async with (
        UpstreamHttpClient(timeout=httpx2.Timeout(10.0, read=IDLE)) as client,
        _request(client, upstream, model) as response,
    ):
        assert isinstance(response.extensions.get(IDLE_TIMER), IdleTimer)
        silent = await _silence_before_the_timeout(body_chunks(response))
    assert IDLE <= silent < IDLE * 1.25 + 0.2, silent


@pytest.mark.asyncio
async def test_chunks_slower_than_the_timer_s_looks_but_within_the_idle_timeout_all_arrive(
    upstream: FakeUpstream, model: str
) -> None:
    """Chunks IDLE / 2 apart: the timer looks twice between two of them and sees bytes."""
    sent = script(upstream, model, token_count=6, delay=IDLE / 2)
    async with (
        UpstreamHttpClient(timeout=httpx2.Timeout(10.0, read=IDLE)) as client,
        _request(client, upstream, model) as response,
    ):
        deltas = await _deltas(body_chunks(response))
    assert "".join(d.text for d in deltas if isinstance(d, TextDelta)) == "".join(sent.chunks)
