"""Two instances behind the repository's nginx config: both serve, streams pass unbuffered."""

from __future__ import annotations

import re

import httpx
import pytest

from martlet_molt.testing import FakeUpstream
from tests.cluster.conftest import StartCluster
from tests.conftest import script
from tests.sse_client import SseStream, parse_lines, read_sse, split_lines

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0
"""Seconds any single step may take."""


def _served_by(logs: list[str], run_id: str) -> list[int]:
    """Which instances (by index) logged the end of this run."""
    return [i for i, log in enumerate(logs) if re.search(rf"run {run_id} ended", log)]


def test_both_instances_and_nginx_answer_health_checks(start_cluster: StartCluster) -> None:
    cluster = start_cluster(2)
    for url in [*cluster.urls, cluster.balancer_url]:
        for path in ("/healthz", "/readyz"):
            answer = httpx.get(f"{url}{path}", timeout=WAIT)
            assert answer.status_code == 200, (url, path, answer.text, cluster.log_text())


@pytest.mark.asyncio
async def test_chats_through_nginx_stream_to_the_end_and_read_back_on_either_instance(
    start_cluster: StartCluster, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=8, delay=0.01)
    cluster = start_cluster(2)
    run_ids: list[str] = []
    async with httpx.AsyncClient(base_url=cluster.balancer_url, timeout=WAIT) as client:
        for n in range(4):
            session_id = f"balanced-{n}"
            body = {"message": f"question {n}", "session_id": session_id}
            stream = await read_sse(client, "POST", "/chat/stream", json_body=body)
            assert stream.status_code == 200, (stream.comments, cluster.log_text())
            assert stream.texts == [*sent.chunks, "[DONE]"]
            run_id = stream.headers["x-run-id"]
            run_ids.append(run_id)
            # Three requests a round: in turn, each instance starts runs and reads the others'.
            saved = (await client.get(f"/sessions/{session_id}")).json()
            replies = [(m["role"], m["content"], m["status"]) for m in saved["messages"]]
            assert replies[-1] == ("assistant", sent.text, "completed"), saved
            run = (await client.get(f"/runs/{run_id}")).json()
            assert (run["status"], run["content"]) == ("completed", sent.text), run
    logs = [instance.log_text() for instance in cluster.instances]
    served = [_served_by(logs, run_id) for run_id in run_ids]
    assert all(len(by) == 1 for by in served), served
    assert {by[0] for by in served} == {0, 1}, served  # round robin used both instances


@pytest.mark.asyncio
async def test_nginx_passes_each_event_on_before_the_upstream_finishes(
    start_cluster: StartCluster, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=6, delay=0.5)
    cluster = start_cluster(2)
    async with httpx.AsyncClient(base_url=cluster.balancer_url, timeout=WAIT) as client:
        body = {"message": "slowly, please", "session_id": "unbuffered"}
        stream = SseStream()
        async with client.stream("POST", "/chat/stream", json=body) as response:
            assert response.status_code == 200, await response.aread()
            events = parse_lines(split_lines(response.aiter_text()), stream)
            first = await anext(events)
            # The upstream is still sending (about 2.5 s to go): nginx held nothing back.
            (record,) = [r for r in upstream.records if r.model == model]
            assert first.data == sent.chunks[0]
            assert not record.completed
            async for _ in events:
                pass
    assert stream.texts == [*sent.chunks, "[DONE]"]
    assert record.completed
