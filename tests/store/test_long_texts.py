"""Long texts are saved in parts: no statement binds more than `PART_CHARS` characters of text,
and every text reads back exactly, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from martlet_molt.core.status import RunStatus
from martlet_molt.store.base import Checkpoint, NewMessage
from martlet_molt.store.sql import SqlStore
from martlet_molt.store.text import PART_CHARS, TextPieces, parts_of
from tests.store.test_sql_store import finish, start


def _long_pieces(total: int) -> list[str]:
    """Pieces of varied sizes (one far longer than a part), with characters outside ASCII."""
    sizes = [1, 700, 4096, 3 * PART_CHARS + 11, 5, PART_CHARS, 999]
    pieces: list[str] = []
    made = 0
    i = 0
    while made < total:
        size = min(sizes[i % len(sizes)], total - made)
        pieces.append(("é€a𝄞" * (size // 4 + 1))[:size])
        made += size
        i += 1
    return pieces


@contextmanager
def _largest_text_bound() -> Iterator[list[int]]:
    """The length of the longest text any statement binds while the block runs."""
    largest = [0]

    def look(_conn: Any, _cursor: Any, _statement: str, parameters: Any, *_: Any) -> None:
        rows = parameters if isinstance(parameters, list) else [parameters]
        for row in rows:
            values = row.values() if isinstance(row, dict) else row
            for value in values:
                if isinstance(value, str):
                    largest[0] = max(largest[0], len(value))

    event.listen(Engine, "before_cursor_execute", look)
    try:
        yield largest
    finally:
        event.remove(Engine, "before_cursor_execute", look)


async def _count(store: SqlStore, table: str) -> int:
    return await store._read(  # pyright: ignore[reportPrivateUsage]
        lambda conn: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    )


def test_parts_cover_the_text_in_order_and_in_bounds() -> None:
    pieces = _long_pieces(10 * PART_CHARS + 123)
    parts = list(parts_of(TextPieces(pieces)))
    assert "".join(parts) == "".join(pieces)
    assert all(len(part) == PART_CHARS for part in parts[:-1])
    assert 0 < len(parts[-1]) <= PART_CHARS
    assert list(parts_of("")) == []
    assert list(parts_of("abc", size=2)) == ["ab", "c"]


@pytest.mark.asyncio
async def test_a_long_reply_is_saved_in_parts_and_reads_back_exactly(store: SqlStore) -> None:
    await start(store)
    pieces = _long_pieces(5 * PART_CHARS + 7)
    whole = "".join(pieces)
    with _largest_text_bound() as largest:
        await store.finish_run(
            "r1",
            status=RunStatus.COMPLETED,
            content=TextPieces(pieces),
            error=None,
            usage=None,
            events=[len(whole)],
            messages=[NewMessage("assistant", TextPieces(pieces))],
        )
    assert largest[0] == PART_CHARS  # parts are full but the last; nothing bound is longer

    run = await store.get_run("r1")
    assert run is not None
    assert (run.status, run.content, run.events) == (RunStatus.COMPLETED, whole, [len(whole)])
    messages = await store.list_messages("s1")
    assert [m.content for m in messages] == ["hello 1", whole]
    assert [m.run_id for m in messages] == ["r1", "r1"]
    assert await _count(store, "run_parts") == 6
    assert await _count(store, "message_parts") == 6

    assert await store.delete_session("s1") is True
    assert await _count(store, "run_parts") == 0
    assert await _count(store, "message_parts") == 0


@pytest.mark.asyncio
async def test_a_short_reply_stays_inline(store: SqlStore) -> None:
    await start(store)
    done = await finish(
        store,
        "r1",
        content=TextPieces(["It is ", "42."]),
        messages=[NewMessage("assistant", TextPieces(["It is ", "42."]))],
    )
    assert done.content == "It is 42."
    assert [m.content for m in await store.list_messages("s1")] == ["hello 1", "It is 42."]
    assert await _count(store, "run_parts") == 0
    assert await _count(store, "message_parts") == 0


@pytest.mark.asyncio
async def test_a_long_increment_is_checkpointed_in_parts(store: SqlStore) -> None:
    """A fast stream can add megabytes between two checkpoints; they go in bounded parts too,
    and the live run reads back as everything so far, replay index included."""
    await start(store)
    first = _long_pieces(3 * PART_CHARS)
    with _largest_text_bound() as largest:
        await store.checkpoint_runs([Checkpoint("r1", TextPieces(first), [len("".join(first))])])
        await store.checkpoint_runs([Checkpoint("r1", "tail", [4])])
    assert largest[0] == PART_CHARS  # parts are full but the last; nothing bound is longer
    live = await store.get_run("r1")
    assert live is not None
    assert live.status is RunStatus.STREAMING
    assert live.content == "".join(first) + "tail"
    assert live.events == [3 * PART_CHARS, 4]

    # A long text handed over as one string (as recovery does) is cut into parts as well.
    whole = live.content + "!"
    with _largest_text_bound() as largest:
        done = await finish(
            store,
            "r1",
            status=RunStatus.INTERRUPTED,
            content=whole,
            events=[len(whole)],
            messages=[NewMessage("assistant", whole, status=RunStatus.INTERRUPTED)],
        )
    assert largest[0] == PART_CHARS  # parts are full but the last; nothing bound is longer
    assert (done.content, done.events) == (whole, [len(whole)])
    assert [m.content for m in await store.list_messages("s1")] == ["hello 1", whole]
    assert await store.unfinished_runs() == []
