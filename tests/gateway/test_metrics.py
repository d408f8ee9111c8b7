"""`GET /metrics` and `GET /readyz` on real gateways, and the upstream error classification."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from martlet_molt.core.runs import RunManager
from martlet_molt.errors import (
    ProviderError,
    UpstreamHttpError,
    UpstreamMalformed,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from martlet_molt.metrics import UPSTREAM_ERROR_KINDS, Metrics, classify_upstream_error
from martlet_molt.store import create_store
from martlet_molt.testing import FakeUpstream
from tests.conftest import GatewayFactory, script
from tests.gateway_server import GatewayServer
from tests.sse_client import read_sse

pytestmark = pytest.mark.timeout(10)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def client_for(gateway: GatewayServer, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.url, timeout=5.0, headers=headers)


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} missing"
    return samples[key]


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def scrape_until(
    client: httpx.AsyncClient,
    condition: Callable[[Samples], bool],
    timeout: float = 3.0,  # noqa: ASYNC109
) -> Samples:
    """Scrape until `condition` holds (the server notices hang-ups asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = await scrape(client)
        if condition(samples):
            return samples
        assert time.monotonic() < deadline, "metrics never reached the expected state"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_metrics_count_completed_cancelled_and_failed_runs(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway()
    async with client_for(gateway) as client:
        before = await scrape(client)
        assert value(before, "martlet_runs_total", status="completed") == 0
        assert value(before, "martlet_readers") == 0
        assert value(before, "martlet_active_runs") == 0

        # 1. Completed, read to the end over SSE.
        script(upstream, model, tokens=["Hello", ", ", "world"], prompt_tokens=7)
        done = await read_sse(
            client, "POST", "/chat/stream?format=json", json_body={"message": "a"}
        )
        assert done.events[-1].json()["status"] == "completed"
        completed_id = done.headers["x-run-id"]

        # 2. Cancelled, after its only reader hung up mid-stream.
        script(upstream, model, token_count=200, token_text="x{i} ", delay=0.02)
        cut = await read_sse(
            client, "POST", "/chat/stream?format=json", json_body={"message": "b"}, stop_after=2
        )
        cancelled_id = cut.headers["x-run-id"]
        await scrape_until(
            client,
            lambda s: (
                value(s, "martlet_client_disconnects_total") == 1
                and value(s, "martlet_readers") == 0
            ),
        )
        cancelled = (await client.post(f"/runs/{cancelled_id}/cancel")).json()
        assert cancelled["status"] == "cancelled"

        # 3. Failed: the upstream drops the connection after two chunks.
        script(upstream, model, tokens=["ab", "cd", "ef", "gh"], fail_after=2)
        failed = (await client.post("/chat", json={"message": "c"})).json()
        assert failed["status"] == "failed", failed

        replies = [
            (await client.get(f"/runs/{run_id}")).json()["content"]
            for run_id in (completed_id, cancelled_id, failed["run_id"])
        ]
        assert replies[0] == "Hello, world"
        assert replies[1]
        assert replies[2] == "abcd"

        samples = await scrape_until(client, lambda s: value(s, "martlet_active_runs") == 0)

    assert value(samples, "martlet_runs_started_total") == 3
    for status, count in (("completed", 1), ("cancelled", 1), ("failed", 1), ("interrupted", 0)):
        assert value(samples, "martlet_runs_total", status=status) == count, status
    assert value(samples, "martlet_streamed_characters_total") == sum(map(len, replies))
    assert value(samples, "martlet_tokens_total", kind="prompt") == 7
    assert value(samples, "martlet_tokens_total", kind="completion") == 3
    assert value(samples, "martlet_time_to_first_token_seconds_count") == 3
    assert value(samples, "martlet_time_to_first_token_seconds_sum") > 0
    assert value(samples, "martlet_run_duration_seconds_count") == 3
    assert value(samples, "martlet_run_duration_seconds_bucket", le="+Inf") == 3
    assert value(samples, "martlet_upstream_errors_total", kind="connection") == 1
    for kind in UPSTREAM_ERROR_KINDS:
        if kind != "connection":
            assert value(samples, "martlet_upstream_errors_total", kind=kind) == 0, kind
    assert value(samples, "martlet_client_disconnects_total") == 1
    assert value(samples, "martlet_readers") == 0
    assert value(samples, "martlet_active_runs") == 0


@pytest.mark.asyncio
async def test_an_upstream_http_error_is_counted_by_kind(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(upstream_max_retries=0)
    script(upstream, model, error_status=429)
    async with client_for(gateway) as client:
        failed = (await client.post("/chat", json={"message": "hi"})).json()
        assert failed["status"] == "failed", failed
        samples = await scrape(client)
    assert value(samples, "martlet_upstream_errors_total", kind="rate_limited") == 1
    assert value(samples, "martlet_runs_total", status="failed") == 1
    assert value(samples, "martlet_time_to_first_token_seconds_count") == 0
    assert value(samples, "martlet_run_duration_seconds_count") == 1


@pytest.mark.asyncio
async def test_each_gateway_counts_only_its_own_runs(
    make_gateway: GatewayFactory,
    upstream: FakeUpstream,
    model: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    first = make_gateway()
    other_db = tmp_path_factory.mktemp("other") / "martlet.db"
    second = make_gateway(database_url=f"sqlite:///{other_db}")
    script(upstream, model, tokens=["one"])
    async with client_for(first) as a, client_for(second) as b:
        assert (await a.post("/chat", json={"message": "hi"})).json()["status"] == "completed"
        assert value(await scrape(a), "martlet_runs_total", status="completed") == 1
        assert value(await scrape(b), "martlet_runs_total", status="completed") == 0


@pytest.mark.asyncio
async def test_readyz_answers_while_the_store_answers(gateway: GatewayServer, model: str) -> None:
    runs: RunManager = gateway.app.state.runs
    async with client_for(gateway) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready"
        assert body["store"] == "ok"
        assert body["model"] == model
        assert body["provider"].startswith("openai")

        # The same gateway with a store that no longer answers (closed) is not ready.
        closed = create_store(gateway.settings.database_url)
        await closed.open()
        await closed.close()
        working, runs.store = runs.store, closed
        try:
            not_ready = await client.get("/readyz")
        finally:
            runs.store = working
        assert not_ready.status_code == 503, not_ready.text
        error = not_ready.json()["error"]
        assert error["code"] == "unavailable"
        assert error["details"]["store"] == "unavailable"

        assert (await client.get("/readyz")).status_code == 200


@pytest.mark.asyncio
async def test_metrics_need_a_key_when_keys_are_on_and_readyz_does_not(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway(api_keys="metrics-key")
    async with client_for(gateway) as client:
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/readyz")).status_code == 200
        authorised = await client.get("/metrics", headers={"Authorization": "Bearer metrics-key"})
        assert authorised.status_code == 200
        assert "martlet_runs_total" in authorised.text


@pytest.mark.asyncio
async def test_metrics_are_left_out_of_the_openapi_schema(gateway: GatewayServer) -> None:
    async with client_for(gateway) as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/metrics" not in paths
    assert "/readyz" in paths


# -- units -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (UpstreamHttpError(429, "slow down"), "rate_limited"),
        (UpstreamHttpError(503, "overloaded"), "http_5xx"),
        (UpstreamHttpError(500, "oops"), "http_5xx"),
        (UpstreamHttpError(401, "bad key"), "http_4xx"),
        (UpstreamHttpError(404, "no such model"), "http_4xx"),
        (UpstreamHttpError(302, "moved"), "other"),
        (UpstreamTimeout("upstream went silent for longer than the idle timeout"), "timeout"),
        (UpstreamTimeout("could not reach the upstream: connecting timed out"), "timeout"),
        (UpstreamUnreachable("could not reach the upstream: Connection refused"), "connection"),
        (UpstreamUnreachable("upstream connection dropped mid-stream (ReadError)"), "connection"),
        (UpstreamMalformed("not a JSON object"), "malformed"),
        (ProviderError("upstream error: something"), "other"),
        # The type decides, never the wording.
        (ProviderError("upstream returned HTTP 502: Bad gateway."), "other"),
        (ProviderError("upstream went silent for longer than the idle timeout"), "other"),
        (UpstreamUnreachable("upstream stream failed: timed out"), "connection"),
        (RuntimeError("upstream returned HTTP 503: busy"), "other"),
    ],
)
def test_upstream_errors_are_classified_by_type(error: BaseException, kind: str) -> None:
    assert classify_upstream_error(error) == kind
    assert kind in UPSTREAM_ERROR_KINDS


def test_an_http_error_carries_its_status_and_says_it() -> None:
    error = UpstreamHttpError(502, "Bad gateway.")
    assert (error.status, error.message) == (502, "upstream returned HTTP 502: Bad gateway.")
    assert isinstance(error, ProviderError)
    assert (error.status_code, error.code) == (502, "provider_error")


def test_metrics_objects_do_not_share_a_registry() -> None:
    first, second = Metrics(), Metrics()
    first.reader_connected()
    first.reader_disconnected(finished=False)
    first.upstream_error("not-a-kind")
    first.run_ended(
        "completed",
        chars=5,
        duration=0.5,
        ttft=None,
        usage={"prompt_tokens": 2, "completion_tokens": "?"},
    )
    a = parse(first.exposition().decode())
    b = parse(second.exposition().decode())
    assert value(a, "martlet_client_disconnects_total") == 1
    assert value(a, "martlet_readers") == 0
    assert value(a, "martlet_upstream_errors_total", kind="other") == 1
    assert value(a, "martlet_streamed_characters_total") == 5
    assert value(a, "martlet_tokens_total", kind="prompt") == 2
    assert value(a, "martlet_tokens_total", kind="completion") == 0
    assert value(a, "martlet_time_to_first_token_seconds_count") == 0
    assert value(b, "martlet_client_disconnects_total") == 0
    assert value(b, "martlet_runs_total", status="completed") == 0
