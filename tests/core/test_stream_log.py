"""The stream log itself: the handoff buffer's defects, each held as a regression test."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from martlet_molt.core.local_log import LocalLog
from martlet_molt.core.local_logs import LocalLogs
from martlet_molt.core.status import RunStatus
from martlet_molt.core.stream_log import EventKind, RunEvent
from martlet_molt.errors import InvalidTransition, ReplyTooLong, TooManyRuns


def _started(**kwargs: object) -> LocalLog:
    log = LocalLog("s", **kwargs)  # pyright: ignore[reportArgumentType]
    log.start()
    return log


async def _collect(log: LocalLog, after: int = 0) -> list[RunEvent]:
    return [event async for event in log.read(after)]


@pytest.mark.asyncio
async def test_writer_never_waits_for_absent_readers() -> None:
    """Defects 1 and 2: 10,000 unread appends never block, and the end is always appended."""
    log = _started()
    for i in range(10_000):
        log.put_sync(f"c{i} ")
    log.complete()
    assert log.last_seq == 10_001
    assert log.full_content == "".join(f"c{i} " for i in range(10_000))


@pytest.mark.asyncio
async def test_every_reader_gets_every_event() -> None:
    """Defect 3: readers never take events from each other; a late reader replays all."""
    log = _started()
    first = asyncio.create_task(_collect(log))
    second = asyncio.create_task(_collect(log))
    await asyncio.sleep(0)
    for i in range(100):
        await log.put(f"{i},")
        if i % 10 == 0:
            await asyncio.sleep(0)
    log.complete()
    early_a, early_b = await asyncio.wait_for(asyncio.gather(first, second), 5)
    late = await asyncio.wait_for(_collect(log), 5)
    assert early_a == early_b == late
    assert [e.seq for e in late] == list(range(1, 102))
    assert late[-1].kind is EventKind.END


@pytest.mark.asyncio
async def test_resume_after_seq_has_no_gap_or_duplicate() -> None:
    """Replay then live from one list: the events after `n` are exactly seq n+1..end."""
    log = _started()
    for i in range(5):
        log.put_sync(str(i))
    resumed = asyncio.create_task(_collect(log, after=3))
    await asyncio.sleep(0)
    for i in range(5, 8):
        log.put_sync(str(i))
        await asyncio.sleep(0)
    log.complete()
    events = await asyncio.wait_for(resumed, 5)
    assert [e.seq for e in events] == [4, 5, 6, 7, 8, 9]
    assert "".join(e.text for e in events) == "34567"


@pytest.mark.asyncio
async def test_text_that_looks_like_a_marker_is_just_text() -> None:
    """Defect 6: no in-band markers: `[DONE]` and `[ERROR] x` are ordinary deltas."""
    log = _started()
    for piece in ("a", "[DONE]", "[ERROR] x", "b"):
        log.put_sync(piece)
    log.complete()
    assert [piece async for piece in log.stream()] == ["a", "[DONE]", "[ERROR] x", "b"]


@pytest.mark.asyncio
async def test_a_silent_run_keeps_its_readers_waiting() -> None:
    """Defect 4: readers never give up on silence; only the end event ends them."""
    log = _started()
    assert await log.wait(0, timeout=0.05) is False
    reader = asyncio.create_task(_collect(log))
    await asyncio.sleep(0.1)
    assert not reader.done()
    log.put_sync("late")
    log.complete()
    events = await asyncio.wait_for(reader, 5)
    assert [e.kind for e in events] == [EventKind.DELTA, EventKind.END]


@pytest.mark.asyncio
async def test_a_waiting_reader_runs_as_soon_as_the_writer_yields_once() -> None:
    """A writer relaying a burst yields once after the first token (`Agent`); the reader it
    woke must run in that turn, not after the rest of the burst."""
    log = _started()
    woke: list[int] = []

    async def reader() -> None:
        for timeout in (None, 60.0):  # with no deadline, and with one
            await log.wait(log.last_seq, timeout=timeout)
            woke.append(log.last_seq)

    task = asyncio.create_task(reader())
    for _ in range(3):  # let it reach its first wait
        await asyncio.sleep(0)
    for token in range(1, 3):
        log.put_sync(f"t{token}")
        await asyncio.sleep(0)
        assert woke == list(range(1, token + 1))
        for _ in range(3):  # back to waiting
            await asyncio.sleep(0)
    await asyncio.wait_for(task, 5)


def test_failure_is_an_error_then_an_end() -> None:
    """Defect 11: the end and the error are events, never swallowed."""
    log = _started()
    log.put_sync("partial")
    log.fail("upstream dropped")
    kinds = [e.kind for e in log.events_after(0)]
    assert kinds == [EventKind.DELTA, EventKind.ERROR, EventKind.END]
    end = log.events_after(2)[-1]
    assert end.data == {"status": "failed", "usage": None, "error": "upstream dropped"}
    assert log.status is RunStatus.FAILED


def test_transitions_are_guarded() -> None:
    """A finished run never changes; text cannot be added before the run starts."""
    log = LocalLog("s")
    with pytest.raises(InvalidTransition):
        log.put_sync("too early")
    log.start()
    log.complete()
    with pytest.raises(InvalidTransition):
        log.fail("late")
    with pytest.raises(InvalidTransition):
        log.put_sync("late")


def test_reply_cap_keeps_what_fits() -> None:
    log = _started(max_chars=10)
    log.put_sync("12345678")
    with pytest.raises(ReplyTooLong):
        log.put_sync("abcdef")
    assert log.full_content == "12345678ab"


def test_many_small_pieces_join_once() -> None:
    """Defect 9: 200,000 appends with frequent reads of the whole text stay linear."""
    log = _started()
    expected: list[str] = []
    for i in range(200_000):
        piece = f"{i % 10}"
        log.put_sync(piece)
        expected.append(piece)
        if i % 20_000 == 0:
            assert log.full_content == "".join(expected)
    assert log.full_content == "".join(expected)
    assert log.content_length == 200_000


def test_replay_index_rebuilds_the_same_events() -> None:
    """After eviction a run is rebuilt from the store with the live run's seq numbers."""
    log = _started()
    log.put_sync("héllo\n")
    log.add_tool_call(call_id="c1", name="calculator", arguments='{"expression":"1+1"}')
    log.add_tool_result(call_id="c1", name="calculator", content="2")
    log.put_sync("😀 done")
    log.set_usage({"total_tokens": 3})
    index = log.replay_index()
    log.complete()
    rebuilt = LocalLog.from_saved(
        run_id=log.run_id,
        session_id="s",
        principal="",
        status=RunStatus.COMPLETED,
        content=log.full_content,
        error=None,
        usage=log.usage,
        index=index,
    )
    assert list(rebuilt.events_after(0)) == list(log.events_after(0))
    assert rebuilt.status is RunStatus.COMPLETED


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [(RunStatus.COMPLETED, None, "length"), (RunStatus.FAILED, "upstream dropped", None)],
)
def test_a_saved_outcome_rebuilds_the_same_end(
    status: RunStatus, error: str | None, reason: str | None
) -> None:
    """The end event (its finish reason too) is saved with the outcome: a log rebuilt from the
    store ends exactly as the live one did."""
    log = _started()
    log.put_sync("cut sho")
    log.set_usage({"total_tokens": 2})
    log.set_finish_reason(reason)
    index = log.replay_index() + log.closing_index(status, error)
    log.fail(error) if error else log.complete()
    assert log.events_after(0)[-1].data == {
        "status": status.value,
        "usage": {"total_tokens": 2},
        "error": error,
        **({"finish_reason": reason} if reason else {}),
    }
    rebuilt = LocalLog.from_saved(
        run_id=log.run_id,
        session_id="s",
        principal="",
        status=status,
        content=log.full_content,
        error=error,
        usage=log.usage,
        index=index,
    )
    assert list(rebuilt.events_after(0)) == list(log.events_after(0))


def _finished(manager: LocalLogs, chars: int, ended: datetime) -> LocalLog:
    log = manager.create("s")
    log.start()
    log.put_sync("x" * chars)
    log.complete()
    log.completed_at = ended
    return log


def test_manager_limits_active_runs() -> None:
    """Defect 13: `max_buffers` is a real limit on active runs."""
    manager = LocalLogs(max_buffers=2)
    manager.create("a").start()
    manager.create("b").start()
    with pytest.raises(TooManyRuns):
        manager.create("c")


def test_manager_evicts_by_age_count_and_size() -> None:
    """Defect 13: finished logs are dropped after retention, and beyond count and size caps."""
    now = datetime.now(UTC)
    manager = LocalLogs(retention_seconds=60, max_finished=3, max_finished_chars=1_000)
    old = _finished(manager, 10, now - timedelta(seconds=120))
    recent = [_finished(manager, 10, now - timedelta(seconds=30 - i)) for i in range(4)]
    active = manager.create("live")
    active.start()
    assert manager.evict(now) == 2
    assert manager.get(old.run_id) is None
    assert manager.get(recent[0].run_id) is None
    assert all(manager.get(log.run_id) for log in recent[1:])
    assert manager.get(active.run_id) is active
    big = _finished(manager, 2_000, now)
    assert manager.evict(now) == 4
    assert manager.get(big.run_id) is None
    assert manager.get(active.run_id) is active


def test_every_delta_reads_back_exactly_across_compaction() -> None:
    """Text is compacted into chunks as it grows; each event still reads back its own piece."""
    log = _started()
    pieces = [f"{i}{'é' * (i % 7)}\n" * (1 + i % 3) for i in range(2_000)]
    seen: list[str] = []
    for i, piece in enumerate(pieces):
        log.put_sync(piece)
        if i % 97 == 0:
            seen.extend(event.text for event in log.events_after(len(seen)))
            assert log.full_content == "".join(pieces[: i + 1])
    seen.extend(event.text for event in log.events_after(len(seen)))
    assert seen == pieces
    assert [event.text for event in log.events_after(1_500)] == pieces[1_500:]


def test_checkpoints_are_the_increments_since_the_last_one() -> None:
    """Each checkpoint carries only the events since the previous one (text and index);
    joined in order they rebuild exactly what the run streamed, across chunk boundaries."""
    log = _started()
    pieces = [f"{i}{'é' * (i % 5)}-" * (1 + i % 4) for i in range(3_000)]
    saved_text: list[str] = []
    saved_index: list[object] = []
    saved_through = 0
    for i, piece in enumerate(pieces):
        log.put_sync(piece)
        if i == 1_000:
            log.add_tool_call(call_id="c1", name="calculator", arguments="{}")
        if i % 409 == 0 or i == len(pieces) - 1:
            saved_text.append(str(log.content_after(saved_through)))
            saved_index.extend(log.replay_index(saved_through))
            saved_through = log.last_seq
    assert "".join(saved_text) == "".join(pieces) == log.full_content
    assert saved_index == log.replay_index()
    assert str(log.content_after(log.last_seq)) == ""
    assert log.replay_index(log.last_seq) == []
