"""What the gateway sends upstream besides the conversation."""

from __future__ import annotations

import httpx
import pytest

from martlet_molt.testing import FakeUpstream
from tests.conftest import GatewayFactory, script


@pytest.mark.asyncio
@pytest.mark.parametrize("max_tokens", [None, 7])
async def test_max_tokens_is_sent_only_when_set(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str, max_tokens: int | None
) -> None:
    script(upstream, model, tokens=["ok"])
    gateway = make_gateway(max_tokens=max_tokens)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        answer = (await client.post("/chat", json={"message": "hi"})).json()
    assert answer["status"] == "completed"
    (body,) = [request for request in upstream.requests if request.get("model") == model]
    assert body.get("max_tokens") == max_tokens
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
