"""A rolling restart under load: two instances behind nginx, a client keeping chats in flight
through nginx (some of its readers hanging up and resuming), while each instance in turn gets
SIGTERM, drains, exits and starts again with the same name, as docs/DEPLOYMENT.md says.

No reply may be lost or changed: every chat that got a run id ends with a final status, a
completed run's saved text is exactly the upstream's, no chat is answered 5xx except a 502 or
503 that the client retries with the same `client_request_id` (as the chat page and the terminal
client do), and no chat reaches the upstream twice.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest

from martlet_molt.testing import FakeUpstream
from tests.cluster.conftest import StartCluster
from tests.conftest import script
from tests.process_gateway import GatewayProcess
from tests.sse_client import SseEvent, SseStream, parse_lines, split_lines

TOKENS = [f"r{i} " for i in range(25)]
TEXT = "".join(TOKENS)
"""Each reply: 25 chunks 100 ms apart (2.5 s), well inside the grace period."""
GRACE_SECONDS = 10
CHATTERS = 14
"""Chats in flight at any time (each client loop has one chat at a time)."""
WAIT = 20.0
"""Seconds any single step may take (an instance's drain, exit or start; one request)."""
MAX_ATTEMPTS = 100
"""Requests at most per chat (its start retried after 503s, its reading resumed)."""
RETRY_PAUSE = 0.1
FINAL = {"completed", "failed", "cancelled", "interrupted"}


@dataclass
class Chat:
    """What the client saw of one chat."""

    message: str
    run_id: str | None = None
    events: list[SseEvent] = field(default_factory=lambda: [])
    retried: int = 0
    resumed_on_purpose: int = 0
    resumed_after_a_cut: int = 0
    errors: list[str] = field(default_factory=lambda: [])
    """Anything a user would call broken: another 5xx, a refused request, an odd answer."""

    @property
    def done(self) -> SseEvent | None:
        return self.events[-1] if self.events and self.events[-1].event == "done" else None


class LoadClient:
    """Chat loops through nginx until told to stop; each chat in a new session."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.chats: list[Chat] = []
        self.stopping = asyncio.Event()
        self.started = 0

    async def loop(self, number: int) -> None:
        chooser = random.Random(number)
        for turn in range(1_000):
            if self.stopping.is_set():
                return
            chat = Chat(message=f"chat {number}.{turn}")
            self.chats.append(chat)
            await self.chat(chat, chooser)

    async def chat(self, chat: Chat, chooser: random.Random) -> None:
        body = {"message": chat.message, "client_request_id": uuid.uuid4().hex}
        # A third of the readers hang up once at a random event and resume.
        hang_up_after = chooser.randint(1, len(TOKENS)) if chooser.random() < 1 / 3 else None
        for _ in range(MAX_ATTEMPTS):
            if chat.done is not None:
                return
            if chat.run_id is None:
                request = self.client.stream("POST", "/chat/stream?format=json", json=body)
            else:
                last = chat.events[-1].id if chat.events else "0"
                request = self.client.stream(
                    "GET",
                    f"/runs/{chat.run_id}/stream?format=json",
                    headers={"Last-Event-ID": last or "0"},
                )
            try:
                async with request as response:
                    if response.status_code in (502, 503):
                        # A stopping instance's answer, or nginx's when the connection it sent
                        # the request on was reset: retried with the same client_request_id.
                        await response.aread()
                        chat.retried += 1
                        await asyncio.sleep(RETRY_PAUSE)
                        continue
                    if response.status_code != 200:
                        await response.aread()
                        chat.errors.append(f"{response.status_code}: {response.text}")
                        return
                    if chat.run_id is None:
                        chat.run_id = response.headers["x-run-id"]
                        self.started += 1
                    stream = SseStream()
                    async for event in parse_lines(split_lines(response.aiter_text()), stream):
                        chat.events.append(event)
                        if hang_up_after is not None and len(chat.events) == hang_up_after:
                            hang_up_after = None
                            chat.resumed_on_purpose += 1
                            break
            except httpx.TransportError as exc:
                if chat.run_id is None:
                    chat.errors.append(f"starting the chat: {exc!r}")
                    return
                chat.resumed_after_a_cut += 1  # an instance went away under this reader
        if chat.done is None:
            chat.errors.append(f"no end after {MAX_ATTEMPTS} requests")

    async def wait_started(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while self.started < count:  # noqa: ASYNC110 (a count, polled: no event per chat)
                await asyncio.sleep(0.05)


async def _restart(instance: GatewayProcess) -> float:
    """SIGTERM, wait for the exit, start again with the same name, wait until it is ready.
    Returns how long the drain took."""
    began = time.monotonic()
    instance.terminate()
    code = await asyncio.to_thread(instance.wait, WAIT)
    drained = time.monotonic() - began
    # Drained, then ended as a SIGTERM'd process conventionally does (uvicorn re-raises it).
    assert code in (0, -signal.SIGTERM), instance.log_text(current_only=True)
    await asyncio.to_thread(instance.start, WAIT)
    async with httpx.AsyncClient(base_url=instance.url, timeout=WAIT) as direct:
        assert (await direct.get("/readyz")).status_code == 200
    return drained


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_a_rolling_restart_under_load_loses_and_changes_no_reply(
    start_cluster: StartCluster, upstream: FakeUpstream, model: str
) -> None:
    """The documented procedure: each instance in turn gets SIGTERM, drains, starts again and
    answers `/readyz`, and the next one goes at once (nginx retries a refused connection on the
    other instance: `max_fails=0`, so a restart takes no instance out of its rotation)."""
    script(upstream, model, tokens=TOKENS, delay=0.1)
    cluster = start_cluster(2, MARTLET_SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS))
    balancer = cluster.balancer
    assert balancer is not None
    limits = httpx.Limits(max_connections=4 * CHATTERS)
    async with httpx.AsyncClient(
        base_url=cluster.balancer_url, timeout=WAIT, limits=limits
    ) as client:
        load = LoadClient(client)
        loops = [asyncio.create_task(load.loop(n)) for n in range(CHATTERS)]
        try:
            await load.wait_started(CHATTERS)
            drains = [await _restart(instance) for instance in cluster.instances]
            load.stopping.set()
            async with asyncio.timeout(WAIT):
                await asyncio.gather(*loops)
        finally:
            for task in loops:
                task.cancel()

        chats = load.chats
        assert [c.errors for c in chats if c.errors] == [], cluster.log_text()
        runs = {c.run_id: c for c in chats if c.run_id is not None}
        assert len(runs) == len(chats), "every chat got a run id"
        saved: dict[str, tuple[str, str]] = {}
        for run_id in runs:
            answer = await client.get(f"/runs/{run_id}")
            assert answer.status_code == 200, answer.text
            saved[run_id] = (answer.json()["status"], answer.json()["content"])

    statuses = Counter(status for status, _ in saved.values())
    for run_id, chat in runs.items():
        status, content = saved[run_id]
        assert chat.done is not None, (run_id, chat)
        assert chat.done.json()["status"] == status, (run_id, chat.done)
        assert [int(e.id or 0) for e in chat.events] == list(range(1, len(chat.events) + 1))
        shown = "".join(e.json()["text"] for e in chat.events if e.event == "delta")
        assert shown == content, run_id
        if status == "completed":
            assert content == TEXT, run_id
        else:
            assert status == "interrupted", (run_id, status)
            assert TEXT.startswith(content), run_id
    # The grace period is longer than a reply: every run on a draining instance finished.
    assert statuses == {"completed": len(runs)}, statuses

    asked = Counter(r.body["messages"][-1]["content"] for r in upstream.records if r.model == model)
    assert asked == Counter(c.message for c in chats), "every chat reached the upstream once"

    logs = [instance.log_text() for instance in cluster.instances]
    per_instance = [sum(f"run {run_id} started" in log for run_id in runs) for log in logs]
    assert sum(per_instance) == len(runs)
    drained_runs = [log.count("running runs") for log in logs]
    taken_over = sum(log.count("taken over by another instance") for log in logs)
    print(
        f"\nrolling restart: {len(chats)} chats, {dict(statuses)}, started per instance "
        f"{per_instance}, drains {[f'{d:.1f}s' for d in drains]} ({drained_runs} waited on "
        f"running runs), 502/503 retried {sum(c.retried for c in chats)}, resumed on purpose "
        f"{sum(c.resumed_on_purpose for c in chats)}, resumed after a cut "
        f"{sum(c.resumed_after_a_cut for c in chats)}; 'taken over' warnings {taken_over}"
    )
