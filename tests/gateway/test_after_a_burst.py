"""After a burst of runs the gateway gives back what sat idle: once the burst's logs are
evicted, its upstream connections are closed at once, not when their keep-alive expires
(5-10 s later), so the trim that follows finds their memory free. Real gateway, real fake
upstream, real connections counted by the upstream."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from martlet_molt.core.memory import TRIM_AFTER_EVICTED
from martlet_molt.testing import FakeUpstream
from tests.conftest import GatewayFactory, script

pytestmark = pytest.mark.timeout(60)

KEEP_ALIVE_SECONDS = 5.0  # the SDK's keep-alive expiry: an idle connection lasts 5-10 s


@pytest.mark.asyncio
async def test_a_burst_s_idle_upstream_connections_close_once_its_logs_are_evicted(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=3)
    gateway = make_gateway(run_retention_seconds=0.2, eviction_interval_seconds=0.2)
    burst = TRIM_AFTER_EVICTED + 10
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        replies = await asyncio.gather(
            *(client.post("/chat", json={"message": f"q{n}"}) for n in range(burst))
        )
        ended = time.monotonic()
        assert [r.status_code for r in replies] == [200] * burst
        assert {r.json()["reply"] for r in replies} == {"".join(sent.chunks)}
        assert upstream.open_connections > 0  # kept alive for the next runs

        for _ in range(400):  # bounded: well before any keep-alive could expire
            if upstream.open_connections == 0:
                break
            assert time.monotonic() - ended < KEEP_ALIVE_SECONDS - 1, "still open"
            await asyncio.sleep(0.01)
        assert upstream.open_connections == 0

        # The next run opens a connection again, and its reply is saved as ever.
        again = await client.post("/chat", json={"message": "again"})
        assert again.status_code == 200
        assert again.json()["reply"] == "".join(sent.chunks)
