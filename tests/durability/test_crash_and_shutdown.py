"""Crashes and shutdowns of a real gateway process: SIGKILL at any moment loses at most the
text since the last checkpoint and never corrupts the database; SIGTERM lets short runs finish
and interrupts long ones, every reader getting an end; a retried request never runs twice."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from martlet_molt.testing import FakeUpstream, RequestRecord
from tests.conftest import GatewayFactory, script
from tests.process_gateway import (
    GatewayProcess,
    ProcessGateways,
    process_gateways,
    read_only_query,
)
from tests.sse_client import SseEvent, SseStream, parse_lines, read_sse, split_lines

pytestmark = pytest.mark.timeout(60)

Json = dict[str, Any]
FINAL = frozenset({"completed", "failed", "cancelled", "interrupted"})
WAIT = 5.0
"""Seconds any single bounded wait may take."""


@pytest.fixture
def processes(upstream: FakeUpstream, model: str, tmp_path: Path) -> Iterator[ProcessGateways]:
    """Start gateway processes for this test; any still running are killed afterwards."""
    with process_gateways(upstream, model, tmp_path) as factory:
        yield factory


def client_for(url: str, read: float = 10.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(5.0, read=read))


def records_of(upstream: FakeUpstream, model: str) -> list[RequestRecord]:
    """The upstream requests made for this test's model."""
    return [r for r in upstream.records if r.model == model]


def json_text(events: list[SseEvent]) -> str:
    return "".join(e.json()["text"] for e in events if e.event == "delta")


class LiveReader:
    """Reads one SSE response in a background task; the test watches it grow and can see
    how it ended (the run's end event, or a transport error such as a cut socket)."""

    def __init__(
        self, client: httpx.AsyncClient, method: str, url: str, json_body: Any = None
    ) -> None:
        self.stream = SseStream()
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._read(client, method, url, json_body))

    async def _read(self, client: httpx.AsyncClient, method: str, url: str, json_body: Any) -> None:
        try:
            async with client.stream(method, url, json=json_body) as response:
                self.stream.status_code = response.status_code
                self.stream.headers = dict(response.headers)
                self._changed.set()
                if response.status_code != 200:
                    await response.aread()
                    self.stream.comments.append(response.text)
                    return
                async for _ in parse_lines(split_lines(response.aiter_text()), self.stream):
                    self._changed.set()
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self._changed.set()

    @property
    def run_id(self) -> str | None:
        return self.stream.headers.get("x-run-id")

    async def response_started(self, timeout: float = WAIT) -> None:  # noqa: ASYNC109
        """Until the response's headers arrived (or the connection failed first)."""
        async with asyncio.timeout(timeout):
            while not self.stream.status_code and not self.task.done():
                self._changed.clear()
                await self._changed.wait()

    async def wait_for(self, events: int, timeout: float = WAIT) -> None:  # noqa: ASYNC109
        """Until the reader has `events` events (fails if it ended or the time is up)."""
        async with asyncio.timeout(timeout):
            while len(self.stream.events) < events:
                assert not self.task.done(), (self.stream, self.error)
                self._changed.clear()
                await self._changed.wait()

    async def finished(self, timeout: float = WAIT) -> SseStream:  # noqa: ASYNC109
        """The whole response, once the reader's connection has ended."""
        async with asyncio.timeout(timeout):
            await self.task
        return self.stream


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


# A run's saved reply: its row, then its checkpoints' parts in order (a live run's row is empty).
SAVED_CONTENT = (
    "runs.content || coalesce((SELECT group_concat(content, '') FROM "
    "(SELECT content FROM run_parts WHERE run_parts.run_id = runs.run_id ORDER BY part)), '')"
)


async def wait_checkpoint(gateway: GatewayProcess, run_id: str, at_least: int) -> str:
    """Poll the database file (read-only) until the run's saved partial reply holds at least
    `at_least` characters; returns what it holds."""
    async with asyncio.timeout(WAIT):
        while True:
            rows = gateway.query(
                f"SELECT status, {SAVED_CONTENT} FROM runs WHERE run_id = ?", (run_id,)
            )
            if rows:
                status, content = rows[0]
                assert status == "streaming", rows
                if content and len(content) >= at_least:
                    return str(content)
            await asyncio.sleep(0.02)


def run_rows(db_path: Path) -> dict[str, tuple[str, str, str | None]]:
    """run_id -> (status, content, error) of every saved run (the file opened read-only)."""
    rows = read_only_query(db_path, f"SELECT run_id, status, {SAVED_CONTENT}, error FROM runs")
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def integrity(db_path: Path) -> list[str]:
    return [r[0] for r in read_only_query(db_path, "PRAGMA integrity_check")]


# -- 1. SIGKILL mid-run -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sigkill_mid_run_keeps_the_checkpointed_prefix_as_an_interrupted_run(
    processes: ProcessGateways, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=200, delay=0.02)
    gateway = processes(MARTLET_CHECKPOINT_SECONDS="0.2")
    async with client_for(gateway.url) as client:
        first = await read_sse(
            client,
            "POST",
            "/chat/stream",
            json_body={"message": "a long story", "session_id": "crash-1"},
            stop_after=40,
        )
        assert first.status_code == 200, first.comments
        run_id = first.headers["x-run-id"]
        seen = "".join(first.texts)
        assert seen == "".join(sent.chunks[:40])
        live = (await client.get(f"/runs/{run_id}")).json()
        assert live["status"] == "streaming"
        assert live["content"].startswith(seen)
        # A checkpoint written after the reader's 40th event: at least the text it saw.
        held = await wait_checkpoint(gateway, run_id, at_least=len(seen))
        assert sent.text.startswith(held)

    assert gateway.kill() == -signal.SIGKILL
    (record,) = records_of(upstream, model)
    assert await upstream.wait_until_async(lambda _: record.finished, timeout=WAIT)
    assert record.client_disconnected  # the kernel closed the dead process's socket
    assert not record.completed
    status, on_disk, _ = run_rows(gateway.db_path)[run_id]
    assert status == "streaming"  # nobody had the chance to end it
    assert len(on_disk) >= len(held)
    assert sent.text.startswith(on_disk)

    gateway.restart()
    async with client_for(gateway.url) as client:
        run = (await client.get(f"/runs/{run_id}")).json()
        assert run["status"] == "interrupted"
        assert run["error"] == "interrupted"
        assert run["content"] == on_disk  # exactly what the last checkpoint held
        assert run["content"]
        assert sent.text.startswith(run["content"])
        assert len(run["content"]) >= len(held)
        assert run["completed_at"] is not None

        session = (await client.get("/sessions/crash-1")).json()
        assert session["active_run_id"] is None
        assert [(m["role"], m["content"], m["run_id"]) for m in session["messages"]] == [
            ("user", "a long story", run_id),
            ("assistant", on_disk, run_id),
        ]
        assert session["messages"][1]["status"] == "interrupted"

        text = await read_sse(client, "GET", f"/runs/{run_id}/stream")
        assert text.status_code == 200, text.comments
        assert text.texts[-1] == "[ERROR] interrupted"
        assert "".join(text.texts[:-1]) == on_disk

        as_json = await read_sse(client, "GET", f"/runs/{run_id}/stream?format=json")
        assert as_json.status_code == 200, as_json.comments
        assert [e.event for e in as_json.events[-2:]] == ["error", "done"]
        assert as_json.events[-2].json() == {"message": "interrupted"}
        done = as_json.events[-1].json()
        assert (done["status"], done["error"]) == ("interrupted", "interrupted")
        assert json_text(as_json.events) == on_disk
        seqs = [int(e.id or 0) for e in as_json.events]
        assert seqs == list(range(1, len(seqs) + 1))
        # The text reader's ids are the same log's ids (resume works across the restart).
        assert text.events[-1].id == as_json.events[-1].id

    # Nothing is generated again on its own: the upstream saw that one request only.
    assert len(records_of(upstream, model)) == 1
    assert "was interrupted by a restart" in gateway.log_text(current_only=True)


@pytest.mark.asyncio
async def test_sigkill_with_concurrent_runs_keeps_each_runs_checkpoint(
    processes: ProcessGateways, upstream: FakeUpstream, model: str
) -> None:
    """Checkpoints of several live runs go to the store in one batch: each run's partial
    reply must be there, not only when a single run is streaming."""
    sent = script(upstream, model, token_count=500, delay=0.02)
    gateway = processes(MARTLET_CHECKPOINT_SECONDS="0.2")
    async with client_for(gateway.url) as client:
        readers = [
            LiveReader(client, "POST", "/chat/stream", {"message": "go", "session_id": f"many-{i}"})
            for i in range(3)
        ]
        for reader in readers:
            await reader.wait_for(20)
        seen = {str(r.run_id): "".join(r.stream.texts) for r in readers}

        # Ten checkpoint intervals, well before the runs (10 s of tokens) could end.
        deadline = time.monotonic() + 2.0
        while True:
            rows = run_rows(gateway.db_path)
            short = {
                run_id: (rows[run_id][0], len(rows[run_id][1]))
                for run_id, text in seen.items()
                if rows[run_id][0] != "streaming" or len(rows[run_id][1]) < len(text)
            }
            if not short or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        failures = [line for line in gateway.log_text().splitlines() if "checkpoint" in line]
        assert not short, (
            f"saved (status, chars) per run {short}, readers saw "
            f"{ {k: len(v) for k, v in seen.items()} }; gateway log: {failures[:2]}"
        )
        held = {run_id: rows[run_id][1] for run_id in seen}
        gateway.kill()
        for reader in readers:
            await reader.finished()
            assert reader.error is not None  # cut by the crash

    rows = run_rows(gateway.db_path)
    for run_id, text in held.items():
        status, content, _ = rows[run_id]
        assert status == "streaming"
        assert len(content) >= len(text)
        assert sent.text.startswith(content)


# -- 2. SIGKILL at random moments: the database survives ----------------------------------


class Started:
    """Run ids in the order their responses started, and a way to wait for a count."""

    def __init__(self) -> None:
        self.run_ids: list[str] = []
        self._grew = asyncio.Event()

    def add(self, run_id: str) -> None:
        self.run_ids.append(run_id)
        self._grew.set()

    async def reach(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.run_ids) < count:
                self._grew.clear()
                await self._grew.wait()


async def chat_repeatedly(
    client: httpx.AsyncClient, session_id: str, started: Started, cut: list[str]
) -> None:
    """Start runs in one session back to back, reading each to its end, until the gateway
    dies under it. Run ids are recorded as soon as the response headers arrive."""
    while True:
        reader = LiveReader(
            client, "POST", "/chat/stream", {"message": "go", "session_id": session_id}
        )
        try:
            await reader.response_started(timeout=10.0)
            if reader.run_id is not None:
                started.add(reader.run_id)
            stream = await reader.finished(timeout=10.0)
        except TimeoutError:
            reader.task.cancel()
            cut.append(f"{session_id}: reader hung")
            return
        if reader.error is not None:
            cut.append(f"{session_id}: {type(reader.error).__name__}")
            return
        assert stream.status_code == 200, stream.comments
        assert stream.texts[-1] == "[DONE]", stream.texts[-3:]


@pytest.mark.asyncio
async def test_sigkill_at_random_moments_never_corrupts_sqlite(
    processes: ProcessGateways, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=30, delay=0.01)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    gateway = processes(MARTLET_CHECKPOINT_SECONDS="0.05")
    started = Started()
    for round_number in range(3):
        if round_number:
            gateway.restart()
        cut: list[str] = []
        before = len(started.run_ids)
        async with client_for(gateway.url) as client:
            workers = [
                asyncio.create_task(chat_repeatedly(client, f"r{round_number}-s{i}", started, cut))
                for i in range(5)
            ]
            await started.reach(before + 5)
            # The kill point is chosen at random (seeded): that sleep is the experiment.
            await asyncio.sleep(rng.uniform(0.0, 0.6))
            gateway.kill()
            async with asyncio.timeout(WAIT):
                await asyncio.gather(*workers)
        assert len(cut) == 5, (seed, cut)
        problems = integrity(gateway.db_path)
        assert problems == ["ok"], (seed, round_number, problems)

    gateway.restart()
    rows = run_rows(gateway.db_path)
    assert set(started.run_ids) <= set(rows), seed
    statuses = {status for status, _, _ in rows.values()}
    assert statuses <= {"completed", "interrupted"}, (seed, statuses)
    assert "interrupted" in statuses, seed  # every round killed runs mid-flight
    for run_id, (status, content, error) in rows.items():
        if status == "completed":
            assert (content, error) == (sent.text, None), (seed, run_id)
        else:
            assert error == "interrupted", (seed, run_id)
            assert sent.text.startswith(content), (seed, run_id)
    # Every run has its question and exactly one answer, with the run's status and text.
    messages = read_only_query(
        gateway.db_path, "SELECT run_id, role, content, status FROM messages ORDER BY message_id"
    )
    by_run: dict[str, list[tuple[str, str, str]]] = {}
    for run_id, role, content, status in messages:
        by_run.setdefault(run_id, []).append((role, content, status))
    assert set(by_run) == set(rows), seed
    for run_id, (status, content, _) in rows.items():
        roles = [m[0] for m in by_run[run_id]]
        assert roles == ["user", "assistant"], (seed, run_id, by_run[run_id])
        assert by_run[run_id][1][1:] == (content, status), (seed, run_id)
    async with client_for(gateway.url) as client:
        for run_id in started.run_ids:
            run = (await client.get(f"/runs/{run_id}")).json()
            assert run["status"] == rows[run_id][0], (seed, run_id)
        # The gateway is usable after all that.
        again = await client.post("/chat", json={"message": "still there?"})
        assert again.status_code == 200, again.text
        assert again.json()["reply"] == sent.text
    assert integrity(gateway.db_path) == ["ok"]


# -- 3. SIGTERM: a run that finishes within the grace period -------------------------------


@pytest.mark.asyncio
async def test_sigterm_lets_a_short_run_finish_and_its_reader_get_done(
    processes: ProcessGateways, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=40, delay=0.03)
    grace = 5.0
    gateway = processes(MARTLET_SHUTDOWN_GRACE_SECONDS=str(grace))
    async with client_for(gateway.url) as client:
        reader = LiveReader(
            client, "POST", "/chat/stream", {"message": "short one", "session_id": "term-1"}
        )
        await reader.wait_for(3)
        run_id = reader.run_id
        assert run_id is not None
        gateway.terminate()
        stopped_at = time.monotonic()
        stream = await reader.finished(timeout=grace + 5)
        assert reader.error is None, reader.error  # the socket was not cut
        assert stream.texts == [*sent.chunks, "[DONE]"]

    code = gateway.wait(grace + 5)
    elapsed = time.monotonic() - stopped_at
    log = gateway.log_text(current_only=True)
    assert elapsed < grace + 3, (elapsed, log)
    assert "gateway stopped" in log, log  # the lifespan's shutdown ran to its end

    rows = run_rows(gateway.db_path)
    assert rows[run_id] == ("completed", sent.text, None)
    (record,) = records_of(upstream, model)
    assert record.completed
    # After its drain the process ends the way a SIGTERM'd process conventionally does:
    # uvicorn re-raises the captured signal once shutdown is complete (or exits 0).
    assert code in (0, -signal.SIGTERM), (code, log)


# -- 4. SIGTERM: a run longer than the grace period -----------------------------------------


@pytest.mark.asyncio
async def test_sigterm_interrupts_a_run_past_the_grace_and_refuses_new_ones(
    processes: ProcessGateways, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=20, stall_after=5)
    grace = 1.0
    gateway = processes(MARTLET_SHUTDOWN_GRACE_SECONDS=str(grace))
    async with client_for(gateway.url) as client:
        reader = LiveReader(
            client, "POST", "/chat/stream", {"message": "never ends", "session_id": "term-2"}
        )
        await reader.wait_for(5)
        run_id = reader.run_id
        assert run_id is not None
        gateway.terminate()
        stopped_at = time.monotonic()

        # Once the drain has begun (logged after new runs are refused), try to start one.
        assert gateway.wait_for_log("waiting up to", timeout=WAIT), gateway.log_text()
        refused: int | str
        try:
            late = await client.post("/chat", json={"message": "late", "session_id": "late-1"})
            refused = late.status_code
            assert late.status_code == 503, late.text
            assert late.json()["error"]["message"] == (
                "the gateway is shutting down; try again shortly"
            )
        except httpx.TransportError as exc:  # the listener was already closed: also fine
            refused = type(exc).__name__

        stream = await reader.finished(timeout=grace + 6)
        assert reader.error is None, reader.error
        assert stream.texts[-1] == "[ERROR] interrupted"
        assert stream.texts[:-1] == sent.chunks[:5]

    code = gateway.wait(grace + 6)
    elapsed = time.monotonic() - stopped_at
    log = gateway.log_text(current_only=True)
    assert grace - 0.2 <= elapsed < grace + 6, (elapsed, log)
    assert "gateway stopped" in log, log

    (record,) = records_of(upstream, model)  # the late request never reached the upstream
    assert await upstream.wait_until_async(lambda _: record.finished, timeout=WAIT)
    assert record.client_disconnected  # interrupting the run closed the upstream request

    rows = run_rows(gateway.db_path)
    partial = "".join(sent.chunks[:5])
    assert rows[run_id] == ("interrupted", partial, "interrupted")
    assert len(rows) == 1, (refused, rows)  # nothing was started during the drain

    gateway.restart()
    async with client_for(gateway.url) as client:
        run = (await client.get(f"/runs/{run_id}")).json()
        assert (run["status"], run["content"], run["error"]) == (
            "interrupted",
            partial,
            "interrupted",
        )
        session = (await client.get("/sessions/term-2")).json()
        assert [(m["role"], m["content"], m["status"]) for m in session["messages"]][1:] == [
            ("assistant", partial, "interrupted")
        ]
        assert (await client.get("/sessions/late-1")).status_code == 404
    assert code in (0, -signal.SIGTERM), (code, log)  # see the SIGTERM exit-code test
    assert len(records_of(upstream, model)) == 1


# -- 5. idempotent start -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_retried_request_attaches_to_its_run_and_never_runs_twice(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=30, delay=0.03)
    body = {"message": "once only", "session_id": "s1", "client_request_id": "abc"}
    gateway = make_gateway()
    async with client_for(gateway.url) as client:
        first = await read_sse(client, "POST", "/chat/stream", json_body=body, stop_after=2)
        assert first.status_code == 200, first.comments
        run_id = first.headers["x-run-id"]

        retry = await read_sse(client, "POST", "/chat/stream", json_body=body, stop_after=1)
        assert retry.status_code == 200, retry.comments
        assert retry.headers["x-run-id"] == run_id
        assert retry.events[0].id == "1"  # the retry reads the same log from the start

        other = await client.post("/chat/stream", json={**body, "client_request_id": "xyz"})
        assert other.status_code == 409, other.text
        assert other.json()["error"]["details"]["active_run_id"] == run_id

        run = await wait_final(client, run_id)
        assert (run["status"], run["content"]) == ("completed", sent.text)

        after = await read_sse(client, "POST", "/chat/stream", json_body=body)
        assert after.status_code == 200, after.comments
        assert after.headers["x-run-id"] == run_id
        assert after.texts == [*sent.chunks, "[DONE]"]

        chat = await client.post("/chat", json=body)
        assert chat.status_code == 200, chat.text
        assert (chat.json()["run_id"], chat.json()["reply"]) == (run_id, sent.text)

        session = (await client.get("/sessions/s1")).json()
        assert [m["role"] for m in session["messages"]] == ["user", "assistant"]
    assert len(records_of(upstream, model)) == 1

    # After a restart the store still knows which run the request started.
    gateway.stop()
    again = make_gateway()
    async with client_for(again.url) as client:
        retry = await read_sse(client, "POST", "/chat/stream", json_body=body)
        assert retry.status_code == 200, retry.comments
        assert retry.headers["x-run-id"] == run_id
        assert retry.texts == [*sent.chunks, "[DONE]"]
    assert len(records_of(upstream, model)) == 1
