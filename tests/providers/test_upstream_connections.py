"""The provider reuses its upstream connection from one run to the next: after `[DONE]` it
reads the body to its end, so the SDK's pool keeps the connection (no new TCP or TLS
handshake before every run's first token)."""

from __future__ import annotations

import pytest

from martlet_molt.providers.base import ModelOptions, TextDelta
from martlet_molt.providers.openai import OpenAIProvider
from tests.conftest import script
from tests.fake_upstream import FakeUpstream
from tests.web.cut_proxy import CutProxy


async def _text(provider: OpenAIProvider) -> str:
    pieces: list[str] = []
    async for delta in provider.stream([{"role": "user", "content": "hi"}]):
        if isinstance(delta, TextDelta):
            pieces.append(delta.text)
    return "".join(pieces)


@pytest.mark.asyncio
async def test_sequential_runs_share_one_upstream_connection(
    upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=20)
    with CutProxy(upstream.port) as proxy:
        provider = OpenAIProvider(model=model, base_url=f"{proxy.url}/v1", max_retries=0)
        try:
            for _ in range(5):
                assert await _text(provider) == "".join(sent.chunks)
        finally:
            await provider.aclose()
        assert proxy.accepted == 1


@pytest.mark.asyncio
async def test_a_request_s_options_reach_the_upstream(upstream: FakeUpstream, model: str) -> None:
    """Per-request options win over the provider's defaults; unset ones are not sent."""
    script(upstream, model, token_count=2)
    provider = OpenAIProvider(
        model="configured-default", base_url=f"{upstream.url}/v1", max_retries=0, max_tokens=99
    )
    try:
        options = ModelOptions(model=model, temperature=0.25, top_p=0.5, max_tokens=7)
        async for _ in provider.stream([{"role": "user", "content": "hi"}], (), options):
            pass
        async for _ in provider.stream([{"role": "user", "content": "hi"}]):
            pass
    finally:
        await provider.aclose()
    asked, plain = upstream.requests[-2:]
    assert (asked["model"], asked["temperature"], asked["top_p"]) == (model, 0.25, 0.5)
    assert asked["max_tokens"] == 7
    assert plain["model"] == "configured-default"
    assert plain["max_tokens"] == 99
    assert "temperature" not in plain
    assert "top_p" not in plain
