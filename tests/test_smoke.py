from __future__ import annotations

import httpx
import pytest

from martlet_molt.testing import FakeUpstream
from tests.conftest import script
from tests.gateway_server import GatewayServer
from tests.sse_client import read_sse


@pytest.mark.asyncio
async def test_chat_stream_round_trip(
    gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, tokens=["Hello", " wor", "ld\nline2"])
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        stream = await read_sse(client, "POST", "/chat/stream", json_body={"message": "hi"})
        assert stream.status_code == 200, stream.comments
        assert stream.texts[-1] == "[DONE]"
        assert "".join(stream.texts[:-1]) == sent.text
        run_id = stream.headers["x-run-id"]
        run = (await client.get(f"/runs/{run_id}")).json()
        assert run["status"] == "completed"
        assert run["content"] == sent.text
        session = (await client.get(f"/sessions/{run['session_id']}")).json()
        assert [m["role"] for m in session["messages"]] == ["user", "assistant"]
        assert session["messages"][1]["content"] == sent.text
