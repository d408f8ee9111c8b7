"""`martlet-molt serve --workers 2`: two worker processes on one port, replaced when one dies,
drained together on SIGTERM; refused without Redis, and Redis refused with SQLite."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Set as AbstractSet
from pathlib import Path

import httpx
import psutil
import pytest

from martlet_molt.config import Settings
from martlet_molt.errors import SettingsRefused
from martlet_molt.testing import FakeUpstream
from tests.cluster.instances import ClusterFactory
from tests.conftest import script
from tests.databases import fetch_rows
from tests.process_gateway import GatewayProcess, clean_env
from tests.sse_client import SseStream, parse_lines, split_lines

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0
"""Seconds any single step may take."""
WORKERS_REFUSED = (
    "martlet-molt: --workers 2 needs MARTLET_REDIS_URL: without Redis, runs live in one "
    "process and another worker could not see them"
)
SQLITE_REFUSED = (
    "martlet-molt: MARTLET_REDIS_URL needs a PostgreSQL MARTLET_DATABASE_URL: several "
    "instances need PostgreSQL to share sessions and runs, and SQLite is one process's file"
)


def _workers(supervisor: GatewayProcess) -> list[psutil.Process]:
    """The supervisor's worker processes (its other child is multiprocessing's tracker)."""
    workers: list[psutil.Process] = []
    for child in psutil.Process(supervisor.pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                workers.append(child)
        except psutil.Error:  # gone, or a zombie not yet reaped
            continue
    return workers


def _listens_on(process: psutil.Process, port: int) -> bool:
    try:
        connections = process.net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections)


def _wait_for_workers(
    supervisor: GatewayProcess, *, without: AbstractSet[int] = frozenset()
) -> list[int]:
    """The pids of two workers listening on the port, none of them in `without` (bounded)."""
    deadline = time.monotonic() + WAIT
    while True:
        workers = [w for w in _workers(supervisor) if w.pid not in without]
        if len(workers) == 2 and all(_listens_on(w, supervisor.port) for w in workers):
            return [w.pid for w in workers]
        assert time.monotonic() < deadline, supervisor.log_text()
        time.sleep(0.05)


def _chat(url: str, message: str) -> httpx.Response:
    """One chat on a connection of its own (whichever worker accepts it answers)."""
    return httpx.post(f"{url}/chat", json={"message": message}, timeout=WAIT)


def test_two_workers_serve_one_port_and_a_dead_one_is_replaced(
    clusters: ClusterFactory, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=4)
    supervisor = clusters.instance("workers", args=["--workers", "2"]).start()
    first, second = _wait_for_workers(supervisor)
    # Each worker alone answers: while one is frozen, the other takes the connection.
    for frozen in (first, second):
        os.kill(frozen, signal.SIGSTOP)
        try:
            reply = _chat(supervisor.url, f"while {frozen} is frozen")
        finally:
            os.kill(frozen, signal.SIGCONT)
        assert reply.status_code == 200, (reply.text, supervisor.log_text())
        assert reply.json()["reply"] == sent.text

    os.kill(first, signal.SIGKILL)
    replacement = set(_wait_for_workers(supervisor, without={first})) - {second}
    assert len(replacement) == 1, supervisor.log_text()
    assert "exited with -9; starting a replacement" in supervisor.log_text()
    assert _chat(supervisor.url, "after the replacement").status_code == 200
    assert supervisor.alive


@pytest.mark.asyncio
async def test_sigterm_drains_every_worker_and_saves_their_runs(
    clusters: ClusterFactory, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=8, delay=0.2)
    supervisor = clusters.instance("workers", args=["--workers", "2"]).start()
    _wait_for_workers(supervisor)

    async def chat(session_id: str, started: asyncio.Event) -> SseStream:
        stream = SseStream()
        async with (
            httpx.AsyncClient(base_url=supervisor.url, timeout=WAIT) as client,
            client.stream(
                "POST", "/chat/stream", json={"message": "hi", "session_id": session_id}
            ) as response,
        ):
            stream.headers = dict(response.headers)
            async for _ in parse_lines(split_lines(response.aiter_text()), stream):
                started.set()
        return stream

    started = [asyncio.Event(), asyncio.Event()]
    readers = [asyncio.create_task(chat(f"drain-{n}", started[n])) for n in range(2)]
    async with asyncio.timeout(WAIT):
        await asyncio.gather(*(event.wait() for event in started))
    supervisor.terminate()
    async with asyncio.timeout(WAIT):
        streams = await asyncio.gather(*readers)
    for stream in streams:  # each run finished within the grace period, to its last token
        assert stream.texts == [*sent.chunks, "[DONE]"], supervisor.log_text()
    assert await asyncio.to_thread(supervisor.wait, WAIT) == 0, supervisor.log_text()
    assert "all workers stopped" in supervisor.log_text()

    run_ids = [stream.headers["x-run-id"] for stream in streams]
    rows = await fetch_rows(
        clusters.shared.database_url,
        "SELECT status, content FROM runs WHERE run_id IN ($1, $2)",
        *run_ids,
    )
    assert rows == [("completed", sent.text)] * 2


def _serve(tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "martlet_molt", "serve", *args],
        cwd=tmp_path,
        env=clean_env({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", **settings}),
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
        check=False,
    )


def test_several_workers_without_redis_are_refused_in_one_line(tmp_path: Path) -> None:
    refused = _serve(tmp_path, "--workers", "2", "--port", "0")
    assert (refused.returncode, refused.stderr.strip()) == (2, WORKERS_REFUSED), refused


def test_redis_with_a_sqlite_store_is_refused_in_one_line(tmp_path: Path) -> None:
    refused = _serve(tmp_path, "--port", "0", MARTLET_REDIS_URL="redis://127.0.0.1:6379/0")
    assert (refused.returncode, refused.stderr.strip()) == (2, SQLITE_REFUSED), refused


@pytest.mark.asyncio
async def test_an_app_built_directly_refuses_redis_with_sqlite(tmp_path: Path) -> None:
    from martlet_molt.app import create_app

    settings = Settings(
        _env_file=None,  # pyright: ignore[reportCallIssue]
        redis_url="redis://127.0.0.1:6379/0",
        database_url=f"sqlite:///{tmp_path / 'martlet.db'}",
        openai_base_url="http://127.0.0.1:9/v1",
    )
    app = create_app(settings)
    with pytest.raises(SettingsRefused, match="several instances need PostgreSQL"):
        async with app.router.lifespan_context(app):
            pass
    assert not (tmp_path / "martlet.db").exists()  # refused before anything was opened
