"""The run manager in-process: task ownership and the save-before-end order."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from martlet_molt.config import Settings
from martlet_molt.core.recovery import interrupt_orphaned_runs
from martlet_molt.core.run_spec import RunSpec
from martlet_molt.core.runs import RunManager
from martlet_molt.core.status import RunStatus
from martlet_molt.core.stream_log import EventKind
from martlet_molt.core.tools import ToolRegistry
from martlet_molt.providers.base import ChatMessage, Delta, ModelOptions, TextDelta, ToolSpec
from martlet_molt.store import create_store
from martlet_molt.store.base import RunRecord, Store


class GatedProvider:
    """Yields its pieces only once the test opens the gate, from a future nobody else holds."""

    name = "gated"
    model = "gated-model"

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.gate = asyncio.Event()

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        options: ModelOptions | None = None,
    ) -> AsyncIterator[Delta]:
        await self.gate.wait()
        for piece in self.pieces:
            yield TextDelta(piece)

    async def release_idle_connections(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = create_store(f"sqlite:///{tmp_path / 'runs.db'}")
    await opened.open()
    yield opened
    await opened.close()


def _manager(store: Store, provider: Any) -> RunManager:
    settings = Settings(_env_file=None, openai_api_key="x")  # pyright: ignore[reportCallIssue]
    return RunManager(settings=settings, store=store, provider=provider, tools=ToolRegistry())


@pytest.mark.asyncio
async def test_the_manager_keeps_the_task_alive(store: Store) -> None:
    """Defect 8: the loop holds tasks weakly; the manager holds them strongly until they end."""
    provider = GatedProvider(["kept ", "alive"])
    runs = _manager(store, provider)
    log = await runs.start(RunSpec.of_message("hi", principal=""))
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0)
    assert runs.running_count == 1
    provider.gate.set()
    while not log.closed:
        await asyncio.wait_for(log.wait(log.last_seq), 5)
    record = await store.get_run(log.run_id)
    assert record is not None
    assert record.status is RunStatus.COMPLETED
    assert record.content == "kept alive"
    assert runs.running_count == 0
    await runs.close()


@pytest.mark.asyncio
async def test_the_reply_is_saved_before_readers_see_the_end(store: Store) -> None:
    """Defect 12: when a reader sees the end event, the store already has the final run."""
    provider = GatedProvider(["a", "b"])
    runs = _manager(store, provider)
    log = await runs.start(RunSpec.of_message("hi", principal=""))
    provider.gate.set()
    seen: list[RunStatus] = []
    async for event in log.read():
        if event.kind is EventKind.END:
            record = await store.get_run(log.run_id)
            assert record is not None
            seen.append(record.status)
    assert seen == [RunStatus.COMPLETED]
    await runs.close()


class FailingSaveStore:
    """A store whose final save fails: the run must not look successful."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def finish_run(self, run_id: str, **kwargs: Any) -> RunRecord:
        raise OSError("disk full")


@pytest.mark.asyncio
async def test_a_failed_save_is_reported_as_a_failure(store: Store) -> None:
    provider = GatedProvider(["lost?"])
    runs = _manager(FailingSaveStore(store), provider)  # pyright: ignore[reportArgumentType]
    log = await runs.start(RunSpec.of_message("hi", principal=""))
    provider.gate.set()
    events = [event async for event in log.read()]
    assert events[-1].data is not None
    assert events[-1].data["status"] == "failed"
    assert "could not be saved" in str(events[-1].data["error"])
    await runs.close()


@pytest.mark.asyncio
async def test_shutdown_interrupts_runs_past_the_grace_period(store: Store) -> None:
    provider = GatedProvider(["never"])
    runs = _manager(store, provider)
    log = await runs.start(RunSpec.of_message("hi", principal=""))
    await runs.close(grace_seconds=0.05)
    assert log.status is RunStatus.INTERRUPTED
    record = await store.get_run(log.run_id)
    assert record is not None
    assert record.status is RunStatus.INTERRUPTED
    messages = await store.list_messages(log.session_id)
    assert [(m.role, m.status) for m in messages] == [
        ("user", RunStatus.COMPLETED),
        ("assistant", RunStatus.INTERRUPTED),
    ]


@pytest.mark.asyncio
async def test_start_up_marks_orphaned_runs_interrupted(store: Store) -> None:
    await store.start_run(session_id="s1", principal="", run_id="run_orphan", user_message="hi")
    await store.set_run_status("run_orphan", RunStatus.STREAMING)
    await store.checkpoint_run("run_orphan", content="half a rep", events=[4, 6])
    assert await interrupt_orphaned_runs(store) == 1
    record = await store.get_run("run_orphan")
    assert record is not None
    assert record.status is RunStatus.INTERRUPTED
    assert record.content == "half a rep"
    messages = await store.list_messages("s1")
    assert [(m.role, m.content, m.status) for m in messages] == [
        ("user", "hi", RunStatus.COMPLETED),
        ("assistant", "half a rep", RunStatus.INTERRUPTED),
    ]
