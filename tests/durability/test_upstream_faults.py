"""An upstream that misbehaves: rate limits and overload before the stream, a dropped
connection, a malformed chunk, an error event or silence mid-stream, a reply past the cap.
Every fault ends the run with a clear error, keeps exactly the text received before it, ends
every reader, and closes the upstream request; nothing (sockets, tasks) is left behind."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from martlet_molt.testing import FakeUpstream, RequestRecord, Script
from tests.conftest import GatewayFactory, script
from tests.gateway_server import GatewayServer
from tests.sse_client import SseEvent, SseStream, read_sse

pytestmark = pytest.mark.timeout(30)

Json = dict[str, Any]
FINAL = frozenset({"completed", "failed", "cancelled", "interrupted"})
WAIT = 5.0
"""Seconds any single bounded wait may take."""


@pytest.fixture
def queue(upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    """The upstream for tests that queue scripts (their model has no script of its own, so
    each request takes the next queued one); leftovers are dropped so no other test gets them."""
    yield upstream
    upstream.clear_queue()


def queued(upstream: FakeUpstream) -> int:
    return upstream.queued_count


def client_for(gateway: GatewayServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.url, timeout=httpx.Timeout(5.0, read=10.0))


def records_of(upstream: FakeUpstream, model: str) -> list[RequestRecord]:
    """The upstream requests made for this test's model."""
    return [r for r in upstream.records if r.model == model]


def json_text(events: list[SseEvent]) -> str:
    return "".join(e.json()["text"] for e in events if e.event == "delta")


async def wait_final(client: httpx.AsyncClient, run_id: str) -> Json:
    """Poll `GET /runs/{id}` (bounded) until the run has ended."""
    async with asyncio.timeout(WAIT):
        while True:
            response = await client.get(f"/runs/{run_id}")
            assert response.status_code == 200, response.text
            run: Json = response.json()
            if run["status"] in FINAL:
                return run
            await asyncio.sleep(0.02)


def assert_failed_ending(stream: SseStream, error: str) -> None:
    """A json reader of a failed run: contiguous ids, then `error`, then `done` (failed)."""
    assert stream.status_code == 200, stream.comments
    seqs = [int(e.id or 0) for e in stream.events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert [e.event for e in stream.events[-2:]] == ["error", "done"]
    assert {e.event for e in stream.events[:-2]} <= {"delta"}
    assert stream.events[-2].json() == {"message": error}
    done = stream.events[-1].json()
    assert (done["status"], done["error"]) == ("failed", error)


# -- 1. errors before the stream starts: the SDK retries ----------------------------------


@pytest.mark.asyncio
async def test_429_with_retry_after_zero_is_retried_and_the_run_completes(
    make_gateway: GatewayFactory, queue: FakeUpstream, model: str
) -> None:
    # Scripts by model win over the queue; this test's model has none, so the queue answers.
    assert model not in queue.scripts_by_model
    answer = Script(tokens=["after ", "a ", "retry"])
    queue.enqueue(Script(error_status=429, retry_after="0"), answer)
    gateway = make_gateway()
    async with client_for(gateway) as client:
        chat = await client.post("/chat", json={"message": "busy?", "session_id": "rl-1"})
        assert chat.status_code == 200, chat.text
        body = chat.json()
        assert (body["status"], body["reply"], body["error"]) == ("completed", answer.text, None)
        run = (await client.get(f"/runs/{body['run_id']}")).json()
        assert (run["status"], run["content"]) == ("completed", answer.text)
    records = records_of(queue, model)
    assert [r.status for r in records] == [429, 200]
    assert records[1].completed
    assert queued(queue) == 0


@pytest.mark.asyncio
async def test_503_past_the_retry_budget_fails_the_run_after_exactly_two_requests(
    make_gateway: GatewayFactory, queue: FakeUpstream, model: str
) -> None:
    queue.enqueue(*(Script(error_status=503) for _ in range(3)))
    gateway = make_gateway(upstream_max_retries=1)
    async with client_for(gateway) as client:
        chat = await client.post("/chat", json={"message": "overloaded?", "session_id": "ov-1"})
        assert chat.status_code == 200, chat.text
        body = chat.json()
        assert body["status"] == "failed"
        assert "HTTP 503" in body["error"], body
        assert body["reply"] == ""

        run = (await client.get(f"/runs/{body['run_id']}")).json()
        assert (run["status"], run["content"], run["error"]) == ("failed", "", body["error"])
        session = (await client.get("/sessions/ov-1")).json()
        messages = [(m["role"], m["content"]) for m in session["messages"]]
        assert messages[0] == ("user", "overloaded?")  # saved before the model was called
        assert all(m["status"] == "failed" for m in session["messages"][1:])

        stream = await read_sse(client, "GET", f"/runs/{body['run_id']}/stream?format=json")
        assert_failed_ending(stream, body["error"])
    assert [r.status for r in records_of(queue, model)] == [503, 503]
    assert queued(queue) == 1  # the third 503 was never asked for


@pytest.mark.asyncio
async def test_an_unreachable_upstream_fails_the_run_saying_so(
    make_gateway: GatewayFactory,
) -> None:
    """Nothing listens at the upstream's address: the run fails as unreachable (not as a
    silent upstream) once the retries are spent, and the question stays saved."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    gateway = make_gateway(
        openai_base_url=f"http://127.0.0.1:{closed_port}/v1", upstream_max_retries=0
    )
    async with client_for(gateway) as client:
        chat = await client.post("/chat", json={"message": "anyone?", "session_id": "gone-1"})
        assert chat.status_code == 200, chat.text
        body = chat.json()
        assert (body["status"], body["reply"]) == ("failed", "")
        assert body["error"] == "could not reach the upstream: Connection refused"
        session = (await client.get("/sessions/gone-1")).json()
        question = session["messages"][0]
        assert (question["role"], question["content"]) == ("user", "anyone?")


# -- 2. faults mid-stream ---------------------------------------------------------------

BEFORE_FAULT = 4
"""Content chunks the upstream sends before each fault."""
IDLE = 1.0
"""The upstream idle timeout in these tests: short, yet far above a loaded machine's jitter
(it also bounds the wait for response headers)."""

FAULTS: dict[str, tuple[dict[str, Any], str]] = {
    # fault: (script fields, words the run's error must contain)
    "drop": ({"fail_after": BEFORE_FAULT}, "connection dropped mid-stream"),
    "malformed": ({"malformed_after": BEFORE_FAULT}, "malformed chunk"),
    "error_event": (
        {"error_event_after": BEFORE_FAULT},
        "The server had an error while processing your request",
    ),
    "idle": ({"stall_after": BEFORE_FAULT}, "went silent for longer than the idle timeout"),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_mid_stream_fault_fails_the_run_keeping_exactly_what_arrived(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str, fault: str
) -> None:
    fields, words = FAULTS[fault]
    sent = script(upstream, model, token_count=12, delay=0.02, **fields)
    partial = "".join(sent.chunks[:BEFORE_FAULT])
    gateway = make_gateway(upstream_idle_timeout_seconds=IDLE)
    session_id = f"fault-{fault.replace('_', '-')}"
    async with client_for(gateway) as client:
        started = time.monotonic()
        live = await read_sse(
            client,
            "POST",
            "/chat/stream?format=json",
            json_body={"message": "go", "session_id": session_id},
        )
        took = time.monotonic() - started
        run_id = live.headers["x-run-id"]

        run = (await client.get(f"/runs/{run_id}")).json()
        assert run["status"] == "failed", run
        error: str = run["error"]
        assert words in error, error
        assert run["content"] == partial

        # The live reader and a late one (json and text) all see the text, the error, the end.
        assert_failed_ending(live, error)
        assert json_text(live.events) == partial
        late = await read_sse(client, "GET", f"/runs/{run_id}/stream?format=json")
        assert [(e.id, e.event, e.data) for e in late.events] == [
            (e.id, e.event, e.data) for e in live.events
        ]
        text = await read_sse(client, "GET", f"/runs/{run_id}/stream")
        assert text.texts == [*sent.chunks[:BEFORE_FAULT], f"[ERROR] {error}"]

        session = (await client.get(f"/sessions/{session_id}")).json()
        assert [(m["role"], m["content"], m["status"]) for m in session["messages"]] == [
            ("user", "go", "completed"),
            ("assistant", partial, "failed"),
        ]
        assert session["active_run_id"] is None

    (record,) = records_of(upstream, model)
    assert await upstream.wait_until_async(lambda _: record.finished, timeout=WAIT)
    assert record.chunks_sent == BEFORE_FAULT
    assert not record.completed
    if fault == "drop":
        assert record.dropped
    elif fault == "error_event":
        assert not record.client_disconnected  # the upstream ended the response itself
    else:  # the gateway hung up on a malformed or silent upstream
        assert record.client_disconnected
    if fault == "idle":
        assert IDLE <= took < IDLE + 3, took  # it waited the idle timeout, not forever


# -- 3. the reply cap ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_reply_cap_ends_the_run_with_exactly_the_first_50_chars(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=40, delay=0.01)
    assert len(sent.text) > 50
    gateway = make_gateway(max_reply_chars=50)
    async with client_for(gateway) as client:
        live = await read_sse(
            client,
            "POST",
            "/chat/stream?format=json",
            json_body={"message": "talk", "session_id": "cap-1"},
        )
        run_id = live.headers["x-run-id"]
        run = (await client.get(f"/runs/{run_id}")).json()
        assert run["status"] == "failed"
        assert "limit of 50 characters" in run["error"], run["error"]
        assert run["content"] == sent.text[:50]
        assert_failed_ending(live, run["error"])
        assert json_text(live.events) == sent.text[:50]
        session = (await client.get("/sessions/cap-1")).json()
        assert [(m["role"], m["content"], m["status"]) for m in session["messages"]] == [
            ("user", "talk", "completed"),
            ("assistant", sent.text[:50], "failed"),
        ]
    (record,) = records_of(upstream, model)
    assert await upstream.wait_until_async(lambda _: record.finished, timeout=WAIT)
    assert record.client_disconnected  # no more tokens are paid for past the cap
    assert not record.completed


# -- 4. nothing leaks ------------------------------------------------------------------


def open_sockets(ports: set[int]) -> list[str]:
    """This process's TCP sockets touching these ports (listening sockets included; both
    ends of a loopback connection are ours when client and server live here)."""
    found: list[str] = []
    for conn in psutil.Process().net_connections(kind="tcp"):
        local = conn.laddr.port if conn.laddr else None
        remote = conn.raddr.port if conn.raddr else None
        if local in ports or remote in ports:
            found.append(f"{conn.status} {local}->{remote}")
    return sorted(found)


def gateway_loop(gateway: GatewayServer) -> asyncio.AbstractEventLoop:
    """The event loop the gateway's thread runs (its periodic chores are tasks in it)."""
    chores = gateway.app.state.runs._chores  # pyright: ignore[reportPrivateUsage]
    assert chores, "the run manager has no periodic tasks to find its loop by"
    loop: asyncio.AbstractEventLoop = chores[0].get_loop()
    return loop


async def _task_names() -> list[str]:
    me = asyncio.current_task()
    return sorted(t.get_name() for t in asyncio.all_tasks() if t is not me)


async def tasks_in(loop: asyncio.AbstractEventLoop) -> list[str]:
    """Names of the live tasks in the gateway's loop (counted from inside that loop)."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_task_names(), loop))


LEAK_SCRIPTS: dict[str, Script] = {
    "drop": Script(token_count=10, delay=0.01, fail_after=3),
    "malformed": Script(token_count=10, delay=0.01, malformed_after=3),
    "stall": Script(token_count=10, stall_after=3),
    "cancel": Script(token_count=100, delay=0.02),
    "disconnect": Script(token_count=20, delay=0.01),
}
EXPECTED_STATUS = {
    "drop": "failed",
    "malformed": "failed",
    "stall": "failed",
    "cancel": "cancelled",
    "disconnect": "completed",
}


async def _read_all(client: httpx.AsyncClient, session_id: str) -> SseStream:
    return await read_sse(
        client,
        "POST",
        "/chat/stream?format=json",
        json_body={"message": "x", "session_id": session_id},
    )


@pytest.mark.asyncio
async def test_twenty_faulty_runs_leave_no_sockets_or_tasks_behind(
    make_gateway: GatewayFactory, queue: FakeUpstream, model: str
) -> None:
    # No SDK retries: each upstream request must take exactly one queued script.
    gateway = make_gateway(upstream_idle_timeout_seconds=IDLE, upstream_max_retries=0)
    loop = gateway_loop(gateway)
    ports = {gateway.port, queue.port}
    kinds = list(LEAK_SCRIPTS) * 4

    # Warm up with as many overlapping completed runs as the test has (their upstream
    # connections go back to the SDK's keep-alive pool, which may hold them afterwards).
    completing = kinds.count("disconnect")
    queue.enqueue(*(Script(token_count=10, delay=0.02) for _ in range(completing)))
    async with client_for(gateway) as client:
        warm = await asyncio.gather(*(_read_all(client, f"warm-{i}") for i in range(completing)))
        assert all(s.events[-1].json()["status"] == "completed" for s in warm)
    assert await queue.wait_until_async(
        lambda u: all(r.finished for r in u.records if r.model == model), timeout=WAIT
    )
    # The baseline: once the gateway has closed its side of the warm-up client's connections.
    deadline = time.monotonic() + WAIT
    while True:
        if not any(s.startswith("CLOSE_WAIT") for s in open_sockets(ports)):
            break
        assert time.monotonic() < deadline, open_sockets(ports)
        await asyncio.sleep(0.02)
    base_sockets = open_sockets(ports)
    base_tasks = await tasks_in(loop)

    readers: list[asyncio.Task[SseStream]] = []
    run_ids: dict[str, str] = {}
    async with client_for(gateway) as client:
        for i, kind in enumerate(kinds):
            queue.enqueue(LEAK_SCRIPTS[kind])
            session_id = f"leak-{i}-{kind}"
            if kind == "cancel":
                first = await read_sse(
                    client,
                    "POST",
                    "/chat/stream",
                    json_body={"message": "x", "session_id": session_id},
                    stop_after=1,
                )
                run_ids[session_id] = first.headers["x-run-id"]
                cancelled = await client.post(f"/runs/{run_ids[session_id]}/cancel")
                assert cancelled.json()["status"] == "cancelled", cancelled.text
            elif kind == "disconnect":
                first = await read_sse(
                    client,
                    "POST",
                    "/chat/stream",
                    json_body={"message": "x", "session_id": session_id},
                    stop_after=2,
                )
                run_ids[session_id] = first.headers["x-run-id"]
            else:
                readers.append(asyncio.create_task(_read_all(client, session_id)))
            # Each request takes the next queued script: wait for it to be taken.
            n = completing + i + 1
            assert await queue.wait_until_async(
                lambda u, n=n: len([r for r in u.records if r.model == model]) >= n,
                timeout=WAIT,
            )
        async with asyncio.timeout(WAIT):
            streams = await asyncio.gather(*readers)
        for stream in streams:
            run_ids[stream.headers["x-session-id"]] = stream.headers["x-run-id"]
            assert [e.event for e in stream.events[-2:]] == ["error", "done"]
        assert len(run_ids) == len(kinds)
        for session_id, run_id in run_ids.items():
            run = await wait_final(client, run_id)
            kind = session_id.rsplit("-", 1)[1]
            assert run["status"] == EXPECTED_STATUS[kind], (session_id, run)

    assert await queue.wait_until_async(
        lambda u: all(r.finished for r in u.records if r.model == model), timeout=WAIT
    )
    records = [r for r in queue.records if r.model == model][completing:]
    assert len(records) == len(kinds)
    assert sum(r.completed for r in records) == kinds.count("disconnect")

    # Everything goes back to where it was (bounded poll: closes finish asynchronously).
    deadline = time.monotonic() + WAIT
    while True:
        sockets, tasks = open_sockets(ports), await tasks_in(loop)
        settled = (
            len(sockets) <= len(base_sockets)
            and len(tasks) <= len(base_tasks)
            and not any(s.startswith("CLOSE_WAIT") for s in sockets)
        )
        if settled or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert len(tasks) <= len(base_tasks), (base_tasks, tasks)
    assert len(sockets) <= len(base_sockets), (base_sockets, sockets)
    assert not [s for s in sockets if s.startswith("CLOSE_WAIT")], sockets
