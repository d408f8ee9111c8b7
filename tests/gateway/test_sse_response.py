"""The hand-written SSE response: a reader that hangs up while its run is silent is noticed
within about a ping interval, pings go out as `: ping` comments only while the run is silent,
and a reader far behind a long reply gets every event in bounded batches. Over real HTTP where
the server's behaviour is the point; in-process where the exact sends and tasks are."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from martlet_molt.app import GatewayApp
from martlet_molt.core.local_log import LocalLog
from martlet_molt.core.stream_log import EventKind
from martlet_molt.gateway.native_events import SseFormat, encode_json, native_encoder
from martlet_molt.gateway.sse import BATCH_EVENTS, SseResponse
from martlet_molt.metrics import Metrics
from martlet_molt.testing import FakeUpstream
from tests.conftest import GatewayFactory, script

pytestmark = pytest.mark.timeout(15)

PING = b": ping\n\n"
T = TypeVar("T")


def client_for(url: str, read: float = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(5.0, read=read))


async def gauge(client: httpx.AsyncClient, name: str) -> float:
    """One unlabelled sample of `GET /metrics`."""
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    for line in response.text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} missing from /metrics")


async def run_json(client: httpx.AsyncClient, run_id: str) -> Any:
    response = await client.get(f"/runs/{run_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def poll(read: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float) -> T:  # noqa: ASYNC109
    """Read until `done` holds (the server's side is not observable otherwise); bounded."""
    deadline = time.monotonic() + timeout
    for _ in range(1_000):
        value = await read()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"still {value!r} after {timeout} s"
        await asyncio.sleep(0.02)
    raise AssertionError("polled too often")


# -- over real HTTP -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_reader_that_hangs_up_while_the_run_is_silent_is_noticed_and_the_run_goes_on(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    ping_seconds = 0.2
    gateway = make_gateway(sse_ping_seconds=ping_seconds)
    # One token, then 3 s of silence from the upstream, then the last token.
    sent = script(upstream, model, tokens=["first ", "second"], delay=3.0)
    async with client_for(gateway.url) as client:
        async with client.stream(
            "POST", "/chat/stream?format=json", json={"message": "hi"}
        ) as response:
            assert response.status_code == 200
            run_id = response.headers["x-run-id"]
            async for chunk in response.aiter_bytes():
                if b"event: delta" in chunk:
                    break  # hang up (the connection is closed) after the first event
        hung_up_at = time.monotonic()

        # The server's reader ends within about a ping interval, while the run is silent.
        await poll(lambda: gauge(client, "martlet_readers"), lambda n: n == 0, 10 * ping_seconds)
        noticed_after = time.monotonic() - hung_up_at
        assert await gauge(client, "martlet_client_disconnects_total") == 1
        during = await run_json(client, run_id)
        assert during["status"] == "streaming", noticed_after
        assert during["content"] == "first "

        # The run goes on to its end, its reply saved whole.
        run = await poll(lambda: run_json(client, run_id), lambda r: r["status"] != "streaming", 8)
        assert run["status"] == "completed"
        assert run["content"] == sent.text


@pytest.mark.asyncio
async def test_pings_are_comments_sent_only_while_the_run_is_silent(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(sse_ping_seconds=0.2)
    script(upstream, model, tokens=["Hello", ", world"], first_delay=1.2)
    async with (
        client_for(gateway.url, read=1.0) as client,
        client.stream("POST", "/chat/stream", json={"message": "hi"}) as response,
    ):
        assert response.status_code == 200
        headers = response.headers
        body = b"".join([chunk async for chunk in response.aiter_bytes()])

    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert headers["x-run-id"].startswith("run_")
    assert headers["x-session-id"]
    events = b"id: 1\ndata: Hello\n\nid: 2\ndata: , world\n\nid: 3\ndata: [DONE]\n\n"
    assert body.endswith(events), body  # the wire bytes of the handoff's format, unchanged
    pings = body.removesuffix(events)
    assert pings == PING * (len(pings) // len(PING)), body  # only pings before the first event
    assert len(pings) // len(PING) >= 2, body


# -- in process: exact sends, tasks and bookkeeping -----------------------------------------


class Client:
    """The ASGI side of one connection: records what is sent; hangs up when told."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.sent = asyncio.Event()
        self.gone = asyncio.Event()

    async def receive(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.messages.append(message)
        self.sent.set()

    @property
    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.messages if m["type"] == "http.response.body"]


def long_reply(deltas: int) -> LocalLog:
    log = LocalLog("session")
    log.start()
    for index in range(deltas):
        log.put_sync(f"t{index} ")
    log.complete()
    return log


def test_events_after_with_a_limit_gives_bounded_batches_of_every_event_in_order() -> None:
    log = long_reply(100_000)
    last = log.last_seq
    assert last == 100_001
    seen: list[int] = []
    cursor = 0
    for _ in range(last // 512 + 2):
        batch = log.events_after(cursor, limit=512)
        if not batch:
            break
        assert len(batch) <= 512
        seen.extend(event.seq for event in batch)
        cursor = batch[-1].seq
    assert seen == list(range(1, last + 1))
    assert log.events_after(10, limit=3)[0].text == "t10 "
    assert [e.seq for e in log.events_after(last - 2, limit=512)] == [last - 1, last]
    assert log.events_after(last, limit=512) == []
    assert len(log.events_after(0)) == last  # no limit: everything, as before
    with pytest.raises(ValueError, match="limit"):
        log.events_after(0, limit=0)


@pytest.mark.asyncio
async def test_read_batches_passes_the_limit_through() -> None:
    log = long_reply(2_000)
    sizes: list[int] = []
    seqs: list[int] = []
    async for batch in log.read_batches(after=5, limit=300):
        sizes.append(len(batch))
        seqs.extend(event.seq for event in batch)
    assert max(sizes) == 300
    assert seqs == list(range(6, log.last_seq + 1))


@pytest.mark.asyncio
async def test_a_lagging_reader_gets_every_event_in_bounded_sends_and_leaves_no_task() -> None:
    log = long_reply(20_000)
    metrics = Metrics()
    client = Client()
    before = asyncio.all_tasks()
    response = SseResponse(
        log, encoder=native_encoder(SseFormat.JSON, 0), ping_seconds=5.0, metrics=metrics
    )
    await asyncio.wait_for(
        response({"type": "http", "method": "GET"}, client.receive, client.send), 10
    )

    assert client.messages[0]["type"] == "http.response.start"
    # The end event goes out with the end of the body: one write, not two.
    assert client.messages[-1]["more_body"] is False
    assert client.messages[-1]["body"].endswith(
        b'event: done\ndata: {"status":"completed","usage":null,"error":null}\n\n'
    )
    assert all(message["more_body"] for message in client.messages[1:-1])
    bodies = client.bodies
    assert all(body.count(b"\n\n") <= BATCH_EVENTS for body in bodies)
    assert len(bodies) == -(-log.last_seq // BATCH_EVENTS)
    assert b"".join(bodies) == encode_json(log.events_after(0)).encode()
    assert metrics.registry.get_sample_value("martlet_readers") == 0
    assert metrics.registry.get_sample_value("martlet_client_disconnects_total") == 0

    left = asyncio.all_tasks() - before
    if left:  # the hang-up watcher was cancelled; it finishes without any help
        await asyncio.wait(left, timeout=1.0)
    assert all(task.done() for task in left)


@pytest.mark.asyncio
async def test_the_start_goes_through_the_middleware_and_the_body_past_it() -> None:
    log = long_reply(1_000)
    seen_by_middleware: list[str] = []

    class Watch:
        """A pure ASGI middleware that sees every message sent through it."""

        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            async def watched(message: Message) -> None:
                seen_by_middleware.append(message["type"])
                await send(message)

            await self.app(scope, receive, watched)

    app = GatewayApp()
    app.add_middleware(Watch)

    @app.get("/stream")
    async def stream() -> SseResponse:  # pyright: ignore[reportUnusedFunction]
        return SseResponse(log, encoder=native_encoder(SseFormat.JSON, 0), ping_seconds=5.0)

    client = Client()
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/stream",
        "raw_path": b"/stream",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    await asyncio.wait_for(app(scope, client.receive, client.send), 10)

    # The middleware knows the response started (so it never sends an error response of its
    # own), and no body chunk pays for its wrapper.
    assert seen_by_middleware == ["http.response.start"]
    assert client.messages[0]["status"] == 200
    assert b"".join(client.bodies) == encode_json(log.events_after(0)).encode()
    assert client.messages[-1]["more_body"] is False


@pytest.mark.asyncio
async def test_a_hang_up_during_silence_ends_the_reader_once_and_leaves_the_run_alone() -> None:
    log = LocalLog("session")
    log.start()
    log.put_sync("so far")
    metrics = Metrics()
    client = Client()
    before = asyncio.all_tasks()
    response = SseResponse(
        log, encoder=native_encoder(SseFormat.TEXT, 0), ping_seconds=0.05, metrics=metrics
    )
    reader = asyncio.ensure_future(
        response({"type": "http", "method": "GET"}, client.receive, client.send)
    )
    for _ in range(100):  # wait for the first ping: the reader is idle on a silent run
        client.sent.clear()
        await asyncio.wait_for(client.sent.wait(), 2.0)
        if client.bodies[-1] == PING:
            break
    assert metrics.registry.get_sample_value("martlet_readers") == 1

    client.gone.set()
    hung_up_at = time.monotonic()
    await asyncio.wait_for(reader, 2.0)
    assert time.monotonic() - hung_up_at < 1.0
    assert client.bodies[0] == b"id: 1\ndata: so far\n\n"
    assert set(client.bodies[1:-1]) == {PING}
    assert metrics.registry.get_sample_value("martlet_readers") == 0
    assert metrics.registry.get_sample_value("martlet_client_disconnects_total") == 1
    assert not log.closed  # the run is not the reader's to end
    log.put_sync(" and more")
    assert [e.kind for e in log.events_after(0)] == [EventKind.DELTA, EventKind.DELTA]

    left = asyncio.all_tasks() - before
    if left:
        await asyncio.wait(left, timeout=1.0)
    assert all(task.done() for task in left)


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until `condition` holds (the test's timeout bounds it)."""
    while True:
        if condition():
            break
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_readers_of_silent_runs_share_one_ping_clock_that_stops_with_the_last() -> None:
    logs = [LocalLog("session") for _ in range(20)]
    clients = [Client() for _ in logs]
    for log in logs:
        log.start()
    before = asyncio.all_tasks()
    readers = [
        asyncio.ensure_future(
            SseResponse(log, encoder=native_encoder(SseFormat.TEXT, 0), ping_seconds=0.05)(
                {"type": "http", "method": "GET"}, client.receive, client.send
            )
        )
        for log, client in zip(logs, clients, strict=True)
    ]
    await until(lambda: all(client.bodies.count(PING) >= 2 for client in clients))
    clocks = [t for t in asyncio.all_tasks() - before if t.get_name() == "sse-ping-clock"]
    assert len(clocks) == 1

    for log in logs:
        log.put_sync("at last")
        log.complete()
    await asyncio.wait_for(asyncio.gather(*readers), 2.0)
    for client in clients:
        assert set(client.bodies[:-1]) == {PING}  # pings only while silent, then the events
        assert client.bodies[-1] == b"id: 1\ndata: at last\n\nid: 2\ndata: [DONE]\n\n"
    await asyncio.wait(clocks, timeout=1.0)
    assert all(clock.done() for clock in clocks)


@pytest.mark.asyncio
async def test_a_reader_cancelled_while_waiting_is_cancelled_not_pinged() -> None:
    log = LocalLog("session")
    log.start()
    client = Client()
    response = SseResponse(log, encoder=native_encoder(SseFormat.TEXT, 0), ping_seconds=0.05)
    reader = asyncio.ensure_future(
        response({"type": "http", "method": "GET"}, client.receive, client.send)
    )
    await until(lambda: client.bodies.count(PING) >= 1)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(reader, 2.0)
