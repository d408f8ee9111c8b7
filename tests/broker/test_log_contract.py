"""One suite for every stream log implementation: a reader gets the writer's events, whether
it reads the writer's own log (memory) or another instance's copy of it (Redis).

Each test takes `make_pair`: a started writer (`LocalLog`) and a way to open a reader.
The first three are the handoff's tests (tests/test_stream_buffer.py), adapted to the pair:
they wait for events, never for time.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from martlet_molt.core.status import RunStatus
from martlet_molt.core.stream_log import EventKind, RunEvent, StreamLog
from martlet_molt.errors import LogTrimmed
from tests.broker.conftest import PairFactory

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


async def _collect(log: StreamLog, after: int = 0) -> list[RunEvent]:
    return [event async for event in log.read(after)]


async def test_handoff_basic(make_pair: PairFactory) -> None:
    """The handoff's basic buffering, read through the pair."""
    pair = await make_pair()
    reader = await pair.open_reader()
    assert reader.status is RunStatus.STREAMING
    assert reader.run_id == pair.writer.run_id
    assert (reader.session_id, reader.principal) == ("s", "p")
    await pair.writer.put("Hello ")
    await pair.writer.put("World!")
    pair.writer.complete()
    pieces = await asyncio.wait_for(_texts(reader), 10)
    assert pieces == ["Hello ", "World!"]
    assert reader.full_content == "Hello World!"
    assert reader.status is RunStatus.COMPLETED
    assert reader.closed


async def _texts(log: StreamLog) -> list[str]:
    return [piece async for piece in log.stream()]


async def test_handoff_iter(make_pair: PairFactory) -> None:
    """The handoff's iterator: chunks written while the reader follows arrive in order."""
    pair = await make_pair()
    reader = await pair.open_reader()
    received: asyncio.Queue[str] = asyncio.Queue()

    async def consume() -> list[str]:
        chunks: list[str] = []
        async for chunk in reader.stream():
            chunks.append(chunk)
            received.put_nowait(chunk)
        return chunks

    task = asyncio.create_task(consume())
    await pair.writer.put("Chunk 1")
    assert await asyncio.wait_for(received.get(), 10) == "Chunk 1"
    await pair.writer.put("Chunk 2")
    assert await asyncio.wait_for(received.get(), 10) == "Chunk 2"
    pair.writer.complete()
    assert await asyncio.wait_for(task, 10) == ["Chunk 1", "Chunk 2"]
    assert reader.status is RunStatus.COMPLETED


async def test_handoff_disconnect(make_pair: PairFactory) -> None:
    """The handoff's disconnect: a reader that stops early does not stop the writer, and
    the whole reply is still there for the next reader."""
    pair = await make_pair()
    reader = await pair.open_reader()
    got_three = asyncio.Event()

    async def consume() -> list[str]:
        chunks: list[str] = []
        async for chunk in reader.stream():
            chunks.append(chunk)
            if len(chunks) >= 3:
                got_three.set()
                break  # the frontend disconnects
        return chunks

    task = asyncio.create_task(consume())
    for i in range(10):
        await pair.writer.put(f"Chunk {i}")
        if i == 2:
            await asyncio.wait_for(got_three.wait(), 10)
    pair.writer.complete()
    assert await asyncio.wait_for(task, 10) == ["Chunk 0", "Chunk 1", "Chunk 2"]
    expected = "".join(f"Chunk {i}" for i in range(10))
    assert pair.writer.full_content == expected
    later = await pair.open_reader()
    assert "".join(await asyncio.wait_for(_texts(later), 10)) == expected
    assert later.status is RunStatus.COMPLETED


async def test_replay_then_live_from_random_cursors(make_pair: PairFactory) -> None:
    """Readers opened mid-run at random cursors get exactly seq cursor+1..end, once each."""
    pair = await make_pair()
    rng = random.Random(7)
    for i in range(50):
        pair.writer.put_sync(f"{i} ")
    await pair.settle()
    cursors = [0, 50, *(rng.randint(0, 50) for _ in range(8))]
    readers = [
        asyncio.create_task(_collect(await pair.open_reader(), cursor)) for cursor in cursors
    ]
    for i in range(50, 150):
        pair.writer.put_sync(f"{i} ")
        if rng.random() < 0.2:
            await asyncio.sleep(0)  # let readers and the flusher run mid-burst
    pair.writer.complete()
    results = await asyncio.wait_for(asyncio.gather(*readers), 10)
    for cursor, events in zip(cursors, results, strict=True):
        assert [event.seq for event in events] == list(range(cursor + 1, 152))
        assert "".join(e.text for e in events) == "".join(f"{i} " for i in range(cursor, 150))


async def test_many_readers_each_get_every_event(make_pair: PairFactory) -> None:
    """Readers never take events from each other: twenty readers, every event each."""
    pair = await make_pair()
    readers = [asyncio.create_task(_collect(await pair.open_reader())) for _ in range(20)]
    for i in range(200):
        pair.writer.put_sync(f"{i},")
        if i % 25 == 0:
            await asyncio.sleep(0)
    pair.writer.complete()
    results = await asyncio.wait_for(asyncio.gather(*readers), 10)
    expected = list(pair.writer.events_after(0))
    assert all(events == expected for events in results)
    assert len(expected) == 201


@pytest.mark.parametrize(
    ("end", "status", "error"),
    [
        ("fail", RunStatus.FAILED, "upstream dropped"),
        ("interrupt", RunStatus.INTERRUPTED, "interrupted"),
        ("cancel", RunStatus.CANCELLED, None),
    ],
)
async def test_the_end_event_ends_readers_with_the_final_status(
    make_pair: PairFactory, end: str, status: RunStatus, error: str | None
) -> None:
    """Waiting readers finish on the end event and see the run's final status and error."""
    pair = await make_pair()
    reader = await pair.open_reader()
    waiting = asyncio.create_task(_collect(reader))
    pair.writer.put_sync("partial")
    if end == "fail":
        pair.writer.fail("upstream dropped")
    elif end == "interrupt":
        pair.writer.interrupt()
    else:
        pair.writer.cancel()
    events = await asyncio.wait_for(waiting, 10)
    kinds = [EventKind.DELTA, *([EventKind.ERROR] if error else []), EventKind.END]
    assert [event.kind for event in events] == kinds
    assert events[-1].data == {"status": status.value, "usage": None, "error": error}
    assert (reader.status, reader.error, reader.closed) == (status, error, True)
    assert reader.last_seq == pair.writer.last_seq


async def test_text_is_exact(make_pair: PairFactory) -> None:
    """Line breaks of every kind, any unicode (a lone surrogate too), marker-like text,
    tool events and delta metadata read back exactly as written."""
    pair = await make_pair()
    writer = pair.writer
    pieces = ["a\r\nb", "\r", "\n\n", "héllo ", "😀", "中文", "\ud800", "[DONE]", "[ERROR] x", " "]
    for piece in pieces:
        writer.put_sync(piece)
    writer.put_sync("with data", {"index": 0, "note": "ü"})
    writer.add_tool_call(call_id="c1", name="calculator", arguments='{"expression":"1+1"}')
    writer.add_tool_result(call_id="c1", name="calculator", content="2\n😀")
    writer.set_usage({"total_tokens": 3, "ratio": 0.1})
    writer.complete()
    reader = await pair.open_reader()
    events = await asyncio.wait_for(_collect(reader), 10)
    assert events == list(writer.events_after(0))
    assert reader.full_content == writer.full_content == "".join(pieces) + "with data"
    assert events[-1].data == {"status": "completed", "usage": writer.usage, "error": None}


async def test_a_silent_run_keeps_its_readers_waiting(make_pair: PairFactory) -> None:
    """Silence is not an end: `wait` times out, and only the end event finishes a reader."""
    pair = await make_pair()
    reader = await pair.open_reader()
    assert await reader.wait(0, timeout=0.05) is False
    assert not reader.closed
    pair.writer.put_sync("late")
    assert await reader.wait(0, timeout=10) is True
    pair.writer.complete()
    assert [e.kind for e in await asyncio.wait_for(_collect(reader), 10)] == [
        EventKind.DELTA,
        EventKind.END,
    ]


async def test_bounds(make_pair: PairFactory) -> None:
    """A batch holds at most `limit` events; a log that keeps only its newest entries says
    so (`LogTrimmed`) for a cursor before them, never skipping events silently."""
    pair = await make_pair(max_entries=5, flush_interval_seconds=0.0)
    for i in range(300):
        pair.writer.put_sync(f"{i};")
        await pair.settle()  # one entry each
    pair.writer.complete()
    await pair.settle()
    reader = await pair.open_reader()
    with pytest.raises(ValueError, match="limit"):
        reader.events_after(0, limit=0)
    assert [e.seq for e in reader.events_after(295, limit=3)] == [296, 297, 298]
    if pair.max_entries is None:
        assert len(reader.events_after(0)) == 301
        return
    with pytest.raises(LogTrimmed) as trimmed:
        reader.events_after(0)
    oldest = trimmed.value.first_held
    assert 1 < oldest <= 301 - pair.max_entries
    with pytest.raises(LogTrimmed):
        await asyncio.wait_for(_collect(reader, oldest - 2), 10)
    events = await asyncio.wait_for(_collect(reader, oldest - 1), 10)
    assert [e.seq for e in events] == list(range(oldest, 302))
