"""What each failure of a deployment does to its runs: real gateway processes on one PostgreSQL
database and one Redis, killed with SIGKILL, paused with SIGSTOP, restarted with SIGTERM, and
cut from Redis or PostgreSQL through a TCP proxy.

Every test asserts what the issue promises: a defined end for every run whatever dies, no run
generated twice, and nothing already saved lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from martlet_molt.testing import FakeUpstream
from tests.cluster.instances import ClusterFactory, ClusterSettings
from tests.cluster.services import REDIS_URL
from tests.conftest import script
from tests.gateway.test_runs_api import records_of, wait_for_upstream_disconnect
from tests.process_gateway import GatewayProcess
from tests.sse_client import SseStream, read_sse
from tests.web.cut_proxy import CutProxy

LEASE_SECONDS = 2.0
TIMEOUT = 15.0
"""Seconds any single wait in these tests may take."""

Json = dict[str, Any]


StartInstance = Callable[..., GatewayProcess]


@pytest.fixture
def start_instance(clusters: ClusterFactory) -> StartInstance:
    """Start one gateway process of the test's deployment (shared database and Redis)."""

    def start(name: str, **settings: str) -> GatewayProcess:
        values = {
            "MARTLET_RUN_LEASE_SECONDS": str(LEASE_SECONDS),
            "MARTLET_CHECKPOINT_SECONDS": "0.2",
            **settings,
        }
        return clusters.instance(name, **values).start()

    return start


def _client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=TIMEOUT)


async def _run(client: httpx.AsyncClient, run_id: str) -> Json:
    response = await client.get(f"/runs/{run_id}")
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


async def _until_status(client: httpx.AsyncClient, run_id: str, statuses: set[str]) -> Json:
    async with asyncio.timeout(TIMEOUT):
        while True:
            run = await _run(client, run_id)
            if run["status"] in statuses:
                return run
            await asyncio.sleep(0.05)


async def _start_streaming(client: httpx.AsyncClient, events: int = 3) -> SseStream:
    first = await read_sse(
        client, "POST", "/chat/stream?format=json", json_body={"message": "go"}, stop_after=events
    )
    assert first.status_code == 200, first.comments
    return first


async def _try_start(client: httpx.AsyncClient) -> SseStream:
    """Ask for a new run and hang up at once: its status says whether it was taken."""
    return await read_sse(
        client, "POST", "/chat/stream", json_body={"message": "new"}, stop_after=0
    )


async def _upstream_asked(upstream: FakeUpstream, model: str) -> bool:
    """Whether this test's run has reached the upstream (bounded wait)."""
    return await upstream.wait_until_async(
        lambda u: any(r.model == model for r in u.records), timeout=TIMEOUT
    )


def _upstream_requests(upstream: FakeUpstream, model: str) -> int:
    return len(records_of(upstream, model))


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_a_killed_owner_s_run_ends_interrupted_within_the_lease(
    start_instance: StartInstance, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, token_count=3000, delay=0.01)
    owner: GatewayProcess = start_instance("owner")
    other: GatewayProcess = start_instance("other")
    async with _client(owner.url) as on_owner, _client(other.url) as on_other:
        first = await _start_streaming(on_owner, 20)
        run_id = first.headers["x-run-id"]
        reader = asyncio.create_task(
            read_sse(on_other, "GET", f"/runs/{run_id}/stream?format=json&after=20")
        )
        await _until_status(on_other, run_id, {"streaming"})
        await asyncio.sleep(0.5)  # a few checkpoints' worth of text to keep
        owner.kill()
        killed_at = time.monotonic()
        run = await _until_status(on_other, run_id, {"interrupted"})
        took = time.monotonic() - killed_at
        assert took <= LEASE_SECONDS + 1.5, f"taken over after {took:.2f}s"
        assert run["content"].startswith("tok0 tok1 ")
        assert "".join(f"tok{i} " for i in range(3000)).startswith(run["content"])
        remote = await asyncio.wait_for(reader, TIMEOUT)
        assert remote.events[-1].event == "done"
        assert remote.events[-1].json()["status"] == "interrupted"
        session = (await on_other.get(f"/sessions/{run['session_id']}")).json()
        assert [(m["role"], m["status"]) for m in session["messages"]] == [
            ("user", "completed"),
            ("assistant", "interrupted"),
        ]
        assert session["messages"][1]["content"] == run["content"]
        assert _upstream_requests(upstream, model) == 1


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_a_paused_owner_that_comes_back_is_fenced(
    start_instance: StartInstance, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, token_count=3000, delay=0.01)
    owner: GatewayProcess = start_instance("owner")
    other: GatewayProcess = start_instance("other")
    async with _client(owner.url) as on_owner, _client(other.url) as on_other:
        first = await _start_streaming(on_owner, 20)
        run_id = first.headers["x-run-id"]
        await asyncio.sleep(0.5)
        owner.pause()
        try:
            taken = await _until_status(on_other, run_id, {"interrupted"})
        finally:
            owner.resume()
        assert owner.wait_for_log(f"run {run_id} was taken over", timeout=TIMEOUT)
        assert await wait_for_upstream_disconnect(upstream, model)
        # The owner carried on for a while after SIGCONT; none of it reached the store.
        await asyncio.sleep(LEASE_SECONDS)
        for client in (on_owner, on_other):
            after = await _run(client, run_id)
            assert after["status"] == "interrupted"
            assert after["content"] == taken["content"]
        session = (await on_other.get(f"/sessions/{taken['session_id']}")).json()
        assert [m["role"] for m in session["messages"]] == ["user", "assistant"]
        assert session["messages"][1]["content"] == taken["content"]
        assert _upstream_requests(upstream, model) == 1


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_an_instance_starting_while_runs_stream_leaves_them_alone(
    start_instance: StartInstance, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, token_count=300, delay=0.01)
    first_instance: GatewayProcess = start_instance("first")
    async with _client(first_instance.url) as client:
        runs = [(await _start_streaming(client, 1)).headers["x-run-id"] for _ in range(3)]
        second: GatewayProcess = start_instance("second")
        async with _client(second.url) as on_second:
            for run_id in runs:
                run = await _until_status(on_second, run_id, {"completed", "interrupted"})
                assert run["status"] == "completed"
                assert run["content"] == "".join(f"tok{i} " for i in range(300))


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_losing_redis_mid_run_keeps_the_run_and_refuses_new_ones(
    start_instance: StartInstance, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, token_count=400, delay=0.01)
    port = make_url(REDIS_URL).port or 6379
    with CutProxy(port) as proxy:
        database = make_url(REDIS_URL).database or 0
        owner: GatewayProcess = start_instance(
            "owner", MARTLET_REDIS_URL=f"redis://127.0.0.1:{proxy.port}/{database}"
        )
        async with _client(owner.url) as client:
            reading = asyncio.create_task(
                read_sse(client, "POST", "/chat/stream?format=json", json_body={"message": "go"})
            )
            assert await _upstream_asked(upstream, model)
            proxy.cut()
            async with asyncio.timeout(TIMEOUT):
                while True:
                    refused = await _try_start(client)
                    if refused.status_code == 503:
                        break
                    await asyncio.sleep(0.05)
            assert "Redis" in refused.comments[0]
            assert (await client.get("/readyz")).status_code == 503
            stream = await asyncio.wait_for(reading, TIMEOUT)
            done = stream.events[-1].json()
            assert done["status"] == "completed"
            texts = [e.json()["text"] for e in stream.events if e.event == "delta"]
            assert "".join(texts) == "".join(f"tok{i} " for i in range(400))
            assert [int(e.id or 0) for e in stream.events] == list(range(1, 402))
            run_id = stream.headers["x-run-id"]
            assert (await _run(client, run_id))["content"] == "".join(texts)
            proxy.restore()
            async with asyncio.timeout(TIMEOUT):
                while True:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.1)
            again = await client.post("/chat", json={"message": "back"})
            assert again.status_code == 200, again.text
            assert again.json()["status"] == "completed"


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_losing_postgres_mid_run_retries_the_save(
    start_instance: StartInstance,
    upstream: FakeUpstream,
    model: str,
    cluster_settings: ClusterSettings,
) -> None:
    script(upstream, model, token_count=150, delay=0.01)
    url = make_url(cluster_settings.database_url)
    with CutProxy(url.port or 5432) as proxy:
        through_proxy = url.set(host="127.0.0.1", port=proxy.port)
        owner: GatewayProcess = start_instance(
            "owner", MARTLET_DATABASE_URL=through_proxy.render_as_string(hide_password=False)
        )
        async with _client(owner.url) as client:
            reading = asyncio.create_task(
                read_sse(client, "POST", "/chat/stream?format=json", json_body={"message": "go"})
            )
            assert await _upstream_asked(upstream, model)
            proxy.cut()
            refused = await client.post("/chat", json={"message": "new"})
            assert refused.status_code == 503, refused.text
            assert (await client.get("/readyz")).status_code == 503
            assert await upstream.wait_until_async(
                lambda u: any(r.model == model and r.completed for r in u.records),
                timeout=TIMEOUT,
            )
            await asyncio.sleep(0.5)  # the final save is failing and being retried now
            assert not reading.done()
            proxy.restore()
            stream = await asyncio.wait_for(reading, TIMEOUT)
            assert stream.events[-1].json()["status"] == "completed"
            run = await _run(client, stream.headers["x-run-id"])
            assert run["status"] == "completed"
            assert run["content"] == "".join(f"tok{i} " for i in range(150))
