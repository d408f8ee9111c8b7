"""Any instance serves any run: two real gateways on one PostgreSQL database and one Redis.

A run is started on instance A; everything else (resume, cancel, a second message, a retried
request, another principal) is asked of instance B, over real HTTP and SSE.
"""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from martlet_molt.testing import FakeUpstream
from tests.cluster.conftest import InstanceFactory
from tests.conftest import script
from tests.gateway.test_runs_api import wait_for_upstream_disconnect
from tests.sse_client import SseEvent, SseStream, parse_lines, read_sse, split_lines

TIMEOUT = 10.0
"""Seconds any single wait in these tests may take."""

TOKENS = [f"t{i} " for i in range(40)]


def client_of(url: str, **kwargs: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=TIMEOUT, headers=kwargs or None)


async def first_events(
    client: httpx.AsyncClient, path: str, body: dict[str, object], count: int
) -> SseStream:
    """Start a stream and hang up after `count` events (a real disconnect)."""
    return await read_sse(client, "POST", path, json_body=body, stop_after=count)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("wire_format", ["text", "json"])
async def test_a_reader_resumes_on_the_other_instance_at_random_cursors(
    make_instance: InstanceFactory, upstream: FakeUpstream, model: str, wire_format: str
) -> None:
    """A reader hangs up after a random number of events, again and again, and resumes each
    time on the other instance with `Last-Event-ID`: it gets every event exactly once."""
    script(upstream, model, tokens=TOKENS, delay=0.01)
    a, b = make_instance(), make_instance()
    async with client_of(a.url) as on_a, client_of(b.url) as on_b:
        first = await first_events(
            on_a, f"/chat/stream?format={wire_format}", {"message": "count"}, 3
        )
        assert first.status_code == 200
        run_id = first.headers["x-run-id"]
        seen = list(first.events)
        chooser = random.Random(run_id)
        instances = [on_b, on_a]
        for hop in range(40):
            cursor = int(seen[-1].id or 0)
            resumed = await read_sse(
                instances[hop % 2],
                "GET",
                f"/runs/{run_id}/stream?format={wire_format}",
                headers={"Last-Event-ID": str(cursor)},
                stop_after=chooser.randint(1, 6),
            )
            assert resumed.status_code == 200, resumed.comments
            seen += resumed.events
            if _is_end(seen[-1], wire_format):
                break
        assert [int(e.id or 0) for e in seen] == list(range(1, len(TOKENS) + 2))
        assert "".join(_delta_text(e, wire_format) for e in seen[:-1]) == "".join(TOKENS)
        # `?after=` on B from the start: the very events A streamed first.
        whole = await read_sse(on_b, "GET", f"/runs/{run_id}/stream?format={wire_format}&after=0")
        assert [(e.id, e.data) for e in whole.events] == [(e.id, e.data) for e in seen]
        run = (await on_a.get(f"/runs/{run_id}")).json()
        assert run["status"] == "completed"
        assert run["content"] == "".join(TOKENS)


def _is_end(event: SseEvent, wire_format: str) -> bool:
    return event.event == "done" if wire_format == "json" else event.data == "[DONE]"


def _delta_text(event: SseEvent, wire_format: str) -> str:
    if wire_format == "json":
        assert event.event == "delta"
        text: str = event.json()["text"]
        return text
    return event.data


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_cancel_sent_to_the_other_instance_stops_the_owner(
    make_instance: InstanceFactory, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, token_count=1000, delay=0.02)
    a, b = make_instance(), make_instance()
    async with client_of(a.url) as on_a, client_of(b.url) as on_b:
        first = await first_events(on_a, "/chat/stream?format=json", {"message": "go"}, 3)
        run_id = first.headers["x-run-id"]
        cancelled = await on_b.post(f"/runs/{run_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        run = cancelled.json()
        assert run["status"] == "cancelled"
        assert run["content"].startswith("tok0 tok1 tok2 ")
        assert await wait_for_upstream_disconnect(upstream, model)
        again = await on_b.post(f"/runs/{run_id}/cancel")
        assert again.json() == run
        on_owner = (await on_a.get(f"/runs/{run_id}")).json()
        assert on_owner["status"] == "cancelled"
        assert on_owner["content"] == run["content"]
        session = (await on_b.get(f"/sessions/{run['session_id']}")).json()
        assert [(m["role"], m["status"]) for m in session["messages"]] == [
            ("user", "completed"),
            ("assistant", "cancelled"),
        ]
        assert session["messages"][1]["content"] == run["content"]


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_one_active_run_per_session_holds_across_instances(
    make_instance: InstanceFactory, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, token_count=200, delay=0.02)
    a, b = make_instance(), make_instance()
    async with client_of(a.url) as on_a, client_of(b.url) as on_b:
        first = await first_events(on_a, "/chat/stream", {"message": "one"}, 1)
        run_id, session_id = first.headers["x-run-id"], first.headers["x-session-id"]
        busy = await on_b.post("/chat/stream", json={"message": "two", "session_id": session_id})
        assert busy.status_code == 409, busy.text
        assert run_id in busy.text
        detail = (await on_b.get(f"/sessions/{session_id}")).json()
        assert detail["active_run_id"] == run_id
        listed = (await on_b.get("/sessions")).json()["sessions"]
        assert [s["active_run_id"] for s in listed if s["session_id"] == session_id] == [run_id]
        await on_b.post(f"/runs/{run_id}/cancel")
        after = await on_b.post("/chat", json={"message": "three", "session_id": session_id})
        assert after.status_code == 200, after.text
        assert after.json()["status"] == "completed"


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_retried_request_attaches_to_its_run_on_any_instance(
    make_instance: InstanceFactory, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=TOKENS, delay=0.01)
    a, b = make_instance(), make_instance()
    async with client_of(a.url) as on_a, client_of(b.url) as on_b:
        started = await on_a.post("/chat", json={"message": "first"})
        session_id = started.json()["session_id"]
        body = {"message": "again", "session_id": session_id, "client_request_id": "req-1"}
        first = await first_events(on_a, "/chat/stream?format=json", body, 2)
        retried = await read_sse(on_b, "POST", "/chat/stream?format=json", json_body=body)
        assert retried.status_code == 200, retried.comments
        assert retried.headers["x-run-id"] == first.headers["x-run-id"]
        assert retried.events[-1].json()["status"] == "completed"
        assert len([r for r in upstream.records if r.model == model]) == 2


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_another_principal_cannot_see_a_run_on_any_instance(
    make_instance: InstanceFactory, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, token_count=200, delay=0.02)
    keys = {"api_keys": "key-alice,key-bob"}
    a, b = make_instance(**keys), make_instance(**keys)
    alice = {"Authorization": "Bearer key-alice"}
    bob = {"Authorization": "Bearer key-bob"}
    async with client_of(a.url, **alice) as alice_a, client_of(b.url, **bob) as bob_b:
        first = await first_events(alice_a, "/chat/stream", {"message": "mine"}, 1)
        run_id, session_id = first.headers["x-run-id"], first.headers["x-session-id"]
        for path in (f"/runs/{run_id}", f"/runs/{run_id}/stream", f"/sessions/{session_id}"):
            assert (await bob_b.get(path)).status_code == 404, path
        assert (await bob_b.post(f"/runs/{run_id}/cancel")).status_code == 404
        taken = await bob_b.post("/chat", json={"message": "x", "session_id": session_id})
        assert taken.status_code == 404
        async with client_of(b.url, **alice) as alice_b:
            assert (await alice_b.get(f"/runs/{run_id}")).status_code == 200
            await alice_b.post(f"/runs/{run_id}/cancel")


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_live_reader_on_the_other_instance_sees_every_event_once(
    make_instance: InstanceFactory, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=TOKENS, delay=0.02)
    a, b = make_instance(), make_instance()
    async with client_of(a.url) as on_a, client_of(b.url) as on_b:
        async with on_a.stream("POST", "/chat/stream?format=json", json={"message": "x"}) as own:
            run_id = own.headers["x-run-id"]
            owner_stream = SseStream()
            remote = asyncio.create_task(
                read_sse(on_b, "GET", f"/runs/{run_id}/stream?format=json")
            )
            async with asyncio.timeout(TIMEOUT):
                async for _ in parse_lines(split_lines(own.aiter_text()), owner_stream):
                    pass
            remote_stream = await asyncio.wait_for(remote, TIMEOUT)
        assert [e.id for e in remote_stream.events] == [e.id for e in owner_stream.events]
        assert [e.data for e in remote_stream.events] == [e.data for e in owner_stream.events]
        assert remote_stream.events[-1].json()["status"] == "completed"


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_run_live_elsewhere_reads_fresh_and_its_session_deletes_from_any_instance(
    make_instance: InstanceFactory, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, token_count=1000, delay=0.01)
    a, b = make_instance(checkpoint_seconds=30.0), make_instance()
    async with client_of(a.url) as on_a, client_of(b.url) as on_b:
        first = await first_events(on_a, "/chat/stream?format=json", {"message": "go"}, 30)
        run_id, session_id = first.headers["x-run-id"], first.headers["x-session-id"]
        # No checkpoint has reached the store yet: B answers from the owner's mirror.
        seen = "".join(e.json()["text"] for e in first.events)
        live = (await on_b.get(f"/runs/{run_id}")).json()
        assert live["status"] == "streaming"
        assert live["content"].startswith(seen)
        deleted = await on_b.delete(f"/sessions/{session_id}")
        assert deleted.status_code == 204, deleted.text
        assert await wait_for_upstream_disconnect(upstream, model)
        for client in (on_a, on_b):
            assert (await client.get(f"/sessions/{session_id}")).status_code == 404
            assert (await client.get(f"/runs/{run_id}")).status_code == 404
            assert (await client.get(f"/runs/{run_id}/stream")).status_code == 404


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_finished_run_reads_the_same_on_every_instance(
    make_instance: InstanceFactory, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=TOKENS[:3])
    a, b = make_instance(), make_instance()
    async with client_of(a.url) as on_a, client_of(b.url) as on_b:
        done = await on_a.post("/chat", json={"message": "once"})
        assert done.status_code == 200, done.text
        run_id = done.json()["run_id"]
        on_owner = (await on_a.get(f"/runs/{run_id}")).json()
        elsewhere = (await on_b.get(f"/runs/{run_id}")).json()
        assert on_owner["status"] == elsewhere["status"] == "completed"
        assert on_owner == elsewhere
