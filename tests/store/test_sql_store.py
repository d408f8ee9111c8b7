"""The `SqlStore` contract, run against SQLite and PostgreSQL alike (see conftest)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import QueuePool

from martlet_molt.core.status import RunStatus
from martlet_molt.errors import (
    Conflict,
    InvalidRequest,
    RunNotFound,
    SessionBusy,
    SessionNotFound,
)
from martlet_molt.store.base import Checkpoint, NewMessage, RunRecord, Store
from martlet_molt.store.migrations import HEAD_REVISION
from martlet_molt.store.sql import SqlStore
from martlet_molt.store.transactions import SqliteThreads

EVENTS: list[Any] = [
    {"type": "run.started", "run_id": "r1"},
    5,
    {"type": "tool_call", "call": {"id": "c1", "args": {"x": [1, 2.5, None, True]}}},
    12,
    {"type": "run.completed"},
]
USAGE = {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17, "details": {"a": 1}}


def is_postgres(store: SqlStore) -> bool:
    return not store._sqlite  # pyright: ignore[reportPrivateUsage]


async def start(store: Store, n: int = 1, **kwargs: Any) -> RunRecord:
    params: dict[str, Any] = {
        "session_id": f"s{n}",
        "principal": "alice",
        "run_id": f"r{n}",
        "user_message": f"hello {n}",
    }
    params.update(kwargs)
    return await store.start_run(**params)


async def finish(store: Store, run_id: str, **kwargs: Any) -> RunRecord:
    params: dict[str, Any] = {
        "status": RunStatus.COMPLETED,
        "content": "done",
        "error": None,
        "usage": None,
        "events": [4],
        "messages": [NewMessage(role="assistant", content="done")],
    }
    params.update(kwargs)
    await store.finish_run(run_id, **params)
    saved = await store.get_run(run_id)
    assert saved is not None
    return saved


def assert_utc(*values: datetime | None) -> None:
    for value in values:
        assert value is not None
        assert value.tzinfo is not None
        assert value.utcoffset() == timedelta(0)


@pytest.mark.asyncio
async def test_sql_store_satisfies_the_protocol(store: SqlStore) -> None:
    s: Store = store
    await s.ping()


@pytest.mark.asyncio
async def test_start_run_creates_session_user_message_and_pending_run(store: SqlStore) -> None:
    run = await start(store, client_request_id="req-1")

    assert run.status is RunStatus.PENDING
    assert (run.content, run.events, run.error, run.usage) == ("", [], None, None)
    assert run.completed_at is None
    assert await store.get_run("r1") == run

    session = await store.get_session("s1")
    assert session is not None
    assert session.principal == "alice"
    assert session.created_at == session.updated_at == run.created_at

    [message] = await store.list_messages("s1")
    assert (message.role, message.content, message.status) == ("user", "hello 1", "completed")
    assert message.run_id == "r1"
    assert message.session_id == "s1"
    assert message.tool_calls is None


@pytest.mark.asyncio
async def test_start_run_on_existing_session_touches_it(store: SqlStore) -> None:
    await start(store)
    await finish(store, "r1")
    before = await store.get_session("s1")
    await start(store, run_id="r2", user_message="again")
    after = await store.get_session("s1")

    assert before is not None
    assert after is not None
    assert after.created_at == before.created_at
    assert after.updated_at >= before.updated_at
    assert [m.content for m in await store.list_messages("s1")] == ["hello 1", "done", "again"]


@pytest.mark.asyncio
async def test_finish_run_saves_state_and_messages_in_order(store: SqlStore) -> None:
    started = await start(store)
    tool_calls = [{"id": "c1", "type": "function", "function": {"name": "calc", "arguments": "{}"}}]
    new = [
        NewMessage(role="assistant", content="", tool_calls=tool_calls),
        NewMessage(role="tool", content="42", tool_call_id="c1", name="calc"),
        NewMessage(role="assistant", content="It is 42.", run_id="r1"),
    ]

    done = await finish(store, "r1", content="It is 42.", usage=USAGE, events=EVENTS, messages=new)

    assert done.status is RunStatus.COMPLETED
    assert (done.content, done.error, done.usage, done.events) == ("It is 42.", None, USAGE, EVENTS)
    assert done.completed_at is not None
    assert done.completed_at >= started.created_at
    assert done.created_at == started.created_at
    assert await store.get_run("r1") == done

    saved = await store.list_messages("s1")
    assert [(m.role, m.content) for m in saved] == [
        ("user", "hello 1"),
        ("assistant", ""),
        ("tool", "42"),
        ("assistant", "It is 42."),
    ]
    assert saved[1].tool_calls == tool_calls
    assert (saved[2].tool_call_id, saved[2].name) == ("c1", "calc")
    assert all(m.run_id == "r1" for m in saved)
    assert [m.message_id for m in saved] == sorted(m.message_id for m in saved)

    session = await store.get_session("s1")
    assert session is not None
    assert session.updated_at == done.completed_at


@pytest.mark.asyncio
async def test_finish_run_failed_keeps_error_and_partial_messages(store: SqlStore) -> None:
    await start(store)
    msg = NewMessage(role="assistant", content="partial", status=RunStatus.FAILED)
    failed = await finish(
        store, "r1", status=RunStatus.FAILED, content="partial", error="boom", messages=[msg]
    )
    assert (failed.status, failed.error, failed.usage) == (RunStatus.FAILED, "boom", None)
    assert (await store.list_messages("s1"))[-1].status is RunStatus.FAILED


@pytest.mark.asyncio
async def test_finish_unknown_run_raises_and_writes_nothing(store: SqlStore) -> None:
    await start(store)
    with pytest.raises(RunNotFound):
        await finish(store, "nope")
    assert len(await store.list_messages("s1")) == 1


@pytest.mark.asyncio
async def test_checkpoint_updates_live_runs_only(store: SqlStore) -> None:
    await start(store)
    await store.set_run_status("r1", RunStatus.STREAMING)
    await store.checkpoint_run("r1", content="Hel", events=[{"type": "run.started"}, 3])

    live = await store.get_run("r1")
    assert live is not None
    assert (live.status, live.content, live.events) == (
        RunStatus.STREAMING,
        "Hel",
        [{"type": "run.started"}, 3],
    )
    assert live.completed_at is None

    done = await finish(store, "r1", content="Hello", events=[5])
    await store.checkpoint_run("r1", content="stale", events=[1])
    await store.set_run_status("r1", RunStatus.STREAMING)
    assert await store.get_run("r1") == done


@pytest.mark.asyncio
async def test_checkpoints_append_and_finishing_folds_them(store: SqlStore) -> None:
    """Each checkpoint carries only what is new; the run reads as everything so far."""
    await start(store)
    await store.checkpoint_run("r1", content="Hel", events=[{"kind": "tool_call"}, 3])
    await store.checkpoint_run("r1", content="lo, ", events=[2, 2])
    await store.checkpoint_run("r1", content="world", events=[5])
    live = await store.get_run("r1")
    assert live is not None
    assert (live.status, live.content) == (RunStatus.STREAMING, "Hello, world")
    assert live.events == [{"kind": "tool_call"}, 3, 2, 2, 5]
    assert [r.content for r in await store.unfinished_runs()] == ["Hello, world"]
    found = await store.find_run_by_request(session_id="s1", client_request_id="nope")
    assert found is None

    done = await finish(store, "r1", content="Hello, world!", events=[13])
    assert (done.content, done.events) == ("Hello, world!", [13])
    assert await store.get_run("r1") == done
    parts = await store._read(  # pyright: ignore[reportPrivateUsage]
        lambda conn: conn.execute(text("SELECT count(*) FROM run_parts")).scalar()
    )
    assert parts == 0


@pytest.mark.asyncio
async def test_another_principals_session_is_not_found_and_untouched(store: SqlStore) -> None:
    await start(store)
    before = await store.get_session("s1")
    with pytest.raises(SessionNotFound):
        await store.start_run(
            session_id="s1", principal="mallory", run_id="r9", user_message="let me in"
        )
    assert await store.get_session("s1") == before
    assert await store.get_run("r9") is None
    assert [m.content for m in await store.list_messages("s1")] == ["hello 1"]


@pytest.mark.asyncio
async def test_checkpoints_of_many_runs_go_in_one_batch(store: SqlStore) -> None:
    """The run manager checkpoints every live run at once; final runs are left alone."""
    for n in (1, 2, 3):
        await start(store, n)
        await store.set_run_status(f"r{n}", RunStatus.STREAMING)
    done = await finish(store, "r3", content="final", events=[5])
    await store.checkpoint_runs([Checkpoint(f"r{n}", f"partial {n}", [9]) for n in (1, 2, 3)])
    for n in (1, 2):
        record = await store.get_run(f"r{n}")
        assert record is not None
        assert (record.status, record.content, record.events) == (
            RunStatus.STREAMING,
            f"partial {n}",
            [9],
        )
    assert await store.get_run("r3") == done


@pytest.mark.asyncio
async def test_set_run_status_to_final_sets_completed_at(store: SqlStore) -> None:
    await start(store)
    await store.set_run_status("r1", RunStatus.INTERRUPTED)
    run = await store.get_run("r1")
    assert run is not None
    assert run.status is RunStatus.INTERRUPTED
    assert_utc(run.completed_at)


@pytest.mark.asyncio
async def test_unfinished_runs(store: SqlStore) -> None:
    for n in range(1, 5):
        await start(store, n)
    await store.set_run_status("r2", RunStatus.STREAMING)
    await finish(store, "r3")
    await finish(store, "r4", status=RunStatus.CANCELLED)

    unfinished = await store.unfinished_runs()
    assert [(r.run_id, r.status) for r in unfinished] == [
        ("r1", RunStatus.PENDING),
        ("r2", RunStatus.STREAMING),
    ]


@pytest.mark.asyncio
async def test_list_sessions_pages_filters_and_counts(store: SqlStore) -> None:
    for n in range(1, 8):
        await start(store, n)
    await start(store, 100, principal="bob")
    await finish(store, "r3")  # s3 becomes the most recently updated

    first, total = await store.list_sessions(principal="alice", limit=3, offset=0)
    second, total2 = await store.list_sessions(principal="alice", limit=3, offset=3)
    last, total3 = await store.list_sessions(principal="alice", limit=3, offset=6)
    beyond, total4 = await store.list_sessions(principal="alice", limit=3, offset=30)

    assert total == total2 == total3 == total4 == 7
    assert [s.session_id for s in first] == ["s3", "s7", "s6"]
    assert [s.session_id for s in second] == ["s5", "s4", "s2"]
    assert [s.session_id for s in last] == ["s1"]
    assert beyond == []
    updated = [s.updated_at for s in first + second + last]
    assert updated == sorted(updated, reverse=True)

    bobs, bob_total = await store.list_sessions(principal="bob", limit=10, offset=0)
    assert ([s.session_id for s in bobs], bob_total) == (["s100"], 1)
    assert await store.list_sessions(principal="carol", limit=10, offset=0) == ([], 0)


@pytest.mark.asyncio
async def test_delete_session_cascades(store: SqlStore) -> None:
    await start(store, 1, client_request_id="req")
    await finish(store, "r1")
    await start(store, 2)

    assert await store.delete_session("s1") is True
    assert await store.get_session("s1") is None
    assert await store.list_messages("s1") == []
    assert await store.get_run("r1") is None
    assert await store.find_run_by_request(session_id="s1", client_request_id="req") is None
    assert await store.delete_session("s1") is False
    assert await store.delete_session("never") is False

    assert await store.get_run("r2") is not None
    assert len(await store.list_messages("s2")) == 1
    # The request id is free again once its session is gone.
    await start(store, 1, client_request_id="req")


@pytest.mark.asyncio
async def test_find_run_by_request(store: SqlStore) -> None:
    run = await start(store, client_request_id="req-1")
    done = await finish(store, "r1")
    await start(store, run_id="r2")  # no request id: any number of these
    await finish(store, "r2")
    await start(store, run_id="r3")
    await finish(store, "r3")

    assert run.status is RunStatus.PENDING
    assert await store.find_run_by_request(session_id="s1", client_request_id="req-1") == done
    assert await store.find_run_by_request(session_id="s1", client_request_id="other") is None
    assert await store.find_run_by_request(session_id="s2", client_request_id="req-1") is None

    # The same request id on another session is a different request.
    await start(store, 2, run_id="r5", client_request_id="req-1")
    with pytest.raises(Conflict):
        await start(store, run_id="r4", client_request_id="req-1")
    with pytest.raises(Conflict):
        await start(store, run_id="r1")
    # The failed attempts left nothing behind.
    assert [m.run_id for m in await store.list_messages("s1")] == [
        "r1",
        "r1",
        "r2",
        "r2",
        "r3",
        "r3",
    ]
    assert await store.get_run("r4") is None
    # A retry while its run is still unfinished is a duplicate too, not a busy session.
    await start(store, 3, run_id="r6", client_request_id="req-2")
    with pytest.raises(Conflict) as duplicate:
        await start(store, 3, run_id="r7", client_request_id="req-2")
    assert not isinstance(duplicate.value, SessionBusy)


TRICKY_TEXT = (
    "Grüße, naïve café — 你好，世界！こんにちは 안녕하세요 🙂👩🏽‍💻🇫🇷\n"
    "line two\r\nline three\ttabbed\n\n"
    "e\u0301 (combining) \u200b zero-width, 'quotes' \"double\" \\backslash\\ % _ ;--\n"
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 beyond the BMP: 𠜎𠜱𠝹\n"
)


@pytest.mark.asyncio
async def test_unicode_and_newlines_round_trip_exactly(store: SqlStore) -> None:
    await start(store, user_message=TRICKY_TEXT, principal="ユーザー🙂", session_id="セッション")
    usage = {"note": TRICKY_TEXT}
    events: list[Any] = [len(TRICKY_TEXT), {"type": "x", "text": TRICKY_TEXT}]
    calls = [{"id": "c", "function": {"name": "f", "arguments": TRICKY_TEXT}}]
    await store.checkpoint_run("r1", content=TRICKY_TEXT, events=events)
    checkpointed = await store.get_run("r1")
    assert checkpointed is not None
    assert (checkpointed.content, checkpointed.events) == (TRICKY_TEXT, events)

    done = await finish(
        store,
        "r1",
        content=TRICKY_TEXT * 50,
        error=TRICKY_TEXT,
        usage=usage,
        events=events,
        messages=[
            NewMessage(role="assistant", content=TRICKY_TEXT, tool_calls=calls),
            NewMessage(role="tool", content=TRICKY_TEXT, tool_call_id="c", name="f"),
        ],
    )
    again = await store.get_run("r1")
    assert again is not None
    assert again == done
    assert again.content == TRICKY_TEXT * 50
    assert (again.error, again.usage, again.events) == (TRICKY_TEXT, usage, events)

    saved = await store.list_messages("セッション")
    assert [m.content for m in saved] == [TRICKY_TEXT] * 3
    assert saved[1].tool_calls == calls
    sessions, _ = await store.list_sessions(principal="ユーザー🙂", limit=5, offset=0)
    assert [s.session_id for s in sessions] == ["セッション"]


@pytest.mark.asyncio
async def test_nul_character(store: SqlStore) -> None:
    """SQLite keeps NUL; PostgreSQL text cannot, so the store refuses it cleanly up front."""
    text_with_nul = "before\x00after"
    if is_postgres(store):
        with pytest.raises(InvalidRequest):
            await start(store, user_message=text_with_nul)
        assert await store.get_session("s1") is None
        await start(store)
        with pytest.raises(InvalidRequest):
            await store.checkpoint_run("r1", content=text_with_nul, events=[])
        with pytest.raises(InvalidRequest):
            await finish(store, "r1", messages=[NewMessage(role="assistant", content="\x00")])
        run = await store.get_run("r1")
        assert run is not None
        assert run.status is RunStatus.PENDING
        assert len(await store.list_messages("s1")) == 1
    else:
        await start(store, user_message=text_with_nul)
        reply = NewMessage(role="assistant", content=text_with_nul)
        done = await finish(store, "r1", content=text_with_nul, messages=[reply])
        assert done.content == text_with_nul
        assert [m.content for m in await store.list_messages("s1")] == [text_with_nul] * 2
    # A NUL inside JSON is escaped as \u0000 and is fine everywhere.
    await start(store, 2)
    done = await finish(store, "r2", usage={"k": "a\x00b"}, events=[{"t": "\x00"}])
    assert (done.usage, done.events) == ({"k": "a\x00b"}, [{"t": "\x00"}])


@pytest.mark.asyncio
async def test_timestamps_are_timezone_aware_utc(store: SqlStore) -> None:
    before = datetime.now(UTC)
    run = await start(store)
    done = await finish(store, "r1")
    after = datetime.now(UTC)

    session = await store.get_session("s1")
    stored = await store.get_run("r1")
    assert session is not None
    assert stored is not None
    [listed], _ = await store.list_sessions(principal="alice", limit=1, offset=0)
    messages = await store.list_messages("s1")
    unfinished = await start(store, 2)
    [pending] = await store.unfinished_runs()
    assert pending == unfinished

    assert_utc(run.created_at, run.updated_at, done.created_at, done.updated_at)
    assert_utc(done.completed_at, stored.created_at, stored.updated_at, stored.completed_at)
    assert_utc(session.created_at, session.updated_at, listed.created_at, listed.updated_at)
    assert_utc(*(m.created_at for m in messages), pending.created_at, pending.updated_at)
    assert before <= stored.created_at <= stored.updated_at <= after
    assert stored.completed_at is not None
    assert stored.completed_at <= after


@pytest.mark.asyncio
async def test_many_concurrent_runs(store: SqlStore) -> None:
    """~50 runs started, streamed and finished at once (one at a time per session): no lost
    writes, no 'database is locked'."""

    async def one(n: int) -> None:
        session_id = f"s{n % 10}"  # several runs share a session, one after the other
        await store.start_run(
            session_id=session_id, principal="alice", run_id=f"r{n}", user_message=f"q{n}"
        )
        await store.set_run_status(f"r{n}", RunStatus.STREAMING)
        await store.checkpoint_run(f"r{n}", content=f"a{n}", events=[2])
        await store.list_sessions(principal="alice", limit=5, offset=0)
        await store.finish_run(
            f"r{n}",
            status=RunStatus.COMPLETED,
            content=f"a{n}!",
            error=None,
            usage={"n": n},
            events=[3],
            messages=[NewMessage(role="assistant", content=f"a{n}!")],
        )

    async def session(k: int) -> None:
        for n in range(k, 50, 10):
            await one(n)

    await asyncio.gather(*(session(k) for k in range(10)))

    assert await store.unfinished_runs() == []
    sessions, total = await store.list_sessions(principal="alice", limit=100, offset=0)
    assert total == len(sessions) == 10
    for s in sessions:
        saved = await store.list_messages(s.session_id)
        assert len(saved) == 10
        # Each run's question precedes its answer.
        order = [m.content for m in saved]
        for m in saved:
            if m.role == "user":
                assert order.index(m.content) < order.index(f"a{m.content[1:]}!")
    for n in range(50):
        run = await store.get_run(f"r{n}")
        assert run is not None
        assert (run.status, run.content, run.usage) == (RunStatus.COMPLETED, f"a{n}!", {"n": n})


@pytest.mark.asyncio
async def test_racing_starts_on_one_session_commit_one_and_refuse_the_rest(store: SqlStore) -> None:
    """Starts that queue together (on SQLite, one batch on the writer) still succeed or fail
    one by one: the session's single unfinished run is the first, the others are refused and
    leave no question behind, and starts on other sessions in the same burst are kept."""
    racing = [start(store, 1, run_id=f"r1-{k}", user_message=f"q{k}") for k in range(8)]
    others = [start(store, n) for n in range(2, 6)]
    outcomes = await asyncio.gather(*racing, *others, return_exceptions=True)
    won = [o for o in outcomes[:8] if isinstance(o, RunRecord)]
    refused = [o for o in outcomes[:8] if isinstance(o, SessionBusy)]
    assert (len(won), len(refused)) == (1, 7)
    assert [m.content for m in await store.list_messages("s1")] == [
        f"q{won[0].run_id.removeprefix('r1-')}"
    ]
    assert all(isinstance(o, RunRecord) for o in outcomes[8:])
    for n in range(2, 6):
        assert [m.content for m in await store.list_messages(f"s{n}")] == [f"hello {n}"]


@pytest.mark.asyncio
async def test_open_twice_on_same_database(store_url: str) -> None:
    first = SqlStore(store_url)
    await first.open()
    await first.open()  # idempotent
    await start(first)
    await first.close()

    second = SqlStore(store_url)
    await second.open()  # schema already there
    third = SqlStore(store_url)
    await third.open()  # two live stores on one database (two workers)
    try:
        assert await second.get_run("r1") is not None
        await asyncio.gather(*(start(second if n % 2 else third, n) for n in range(2, 22)))
        _, total = await third.list_sessions(principal="alice", limit=1, offset=0)
        assert total == 21
        versions = await second._read(  # pyright: ignore[reportPrivateUsage]
            lambda conn: conn.execute(text("SELECT version_num FROM alembic_version")).all()
        )
        assert [tuple(v) for v in versions] == [(HEAD_REVISION,)]
    finally:
        await second.close()
        await third.close()


@pytest.mark.asyncio
async def test_closed_store_raises_and_reopens(store: SqlStore) -> None:
    await start(store)
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(RuntimeError, match="not open"):
        await store.ping()
    await store.open()
    assert await store.get_run("r1") is not None


@pytest.mark.asyncio
async def test_releasing_idle_connections_keeps_the_store_working(store: SqlStore) -> None:
    """A release in the middle of traffic: what was saved stays, what is under way goes on."""
    await start(store, 1)
    under_way = [start(store, n) for n in range(2, 12)]
    outcomes = await asyncio.gather(*under_way, store.release_idle_connections())
    assert all(isinstance(o, RunRecord) for o in outcomes[:-1])
    await finish(store, "r1")
    await store.release_idle_connections()
    _, total = await store.list_sessions(principal="alice", limit=1, offset=0)
    assert total == 11
    assert [m.content for m in await store.list_messages("s1")] == ["hello 1", "done"]


def _pooled(store: SqlStore) -> int:
    """How many connections wait in the SQLite store's pool (SQLAlchemy's own count)."""
    threads = store._transactions  # pyright: ignore[reportPrivateUsage]
    assert isinstance(threads, SqliteThreads)
    pool = threads._engine.pool  # pyright: ignore[reportPrivateUsage]
    assert isinstance(pool, QueuePool)
    return pool.checkedin()


@pytest.mark.asyncio
async def test_sqlite_releases_its_idle_connections_and_opens_them_again(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'm.db'}")
    await store.open()
    try:
        # Reads spread over both readers, a write on the writer: connections left in the pool.
        await asyncio.gather(start(store, 1), *(store.get_session("s1") for _ in range(20)))
        assert _pooled(store) >= 2
        await store.release_idle_connections()
        # Only the connection of the writer's batch, which did the closing, is back.
        assert _pooled(store) == 1
        await asyncio.gather(finish(store, "r1"), *(store.get_session("s1") for _ in range(20)))
        assert [m.content for m in await store.list_messages("s1")] == ["hello 1", "done"]
    finally:
        await store.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
async def test_an_in_memory_store_keeps_its_data_through_a_release(url: str) -> None:
    store = SqlStore(url)
    await store.open()
    try:
        await start(store, 1)
        await store.release_idle_connections()
        assert [m.content for m in await store.list_messages("s1")] == ["hello 1"]
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_sqlite_file_is_tuned(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "m.db"
    store = SqlStore(f"sqlite:///{path}")
    await store.open()
    try:
        pragmas = await store._read(  # pyright: ignore[reportPrivateUsage]
            lambda conn: {
                name: conn.execute(text(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
            }
        )
        assert pragmas == {
            "journal_mode": "wal",
            "foreign_keys": 1,
            "busy_timeout": 5000,
            "synchronous": 1,  # NORMAL
        }
        await start(store)
    finally:
        await store.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    raw.close()
    assert {
        "ix_messages_session_message",
        "ix_runs_session",
        "ix_runs_status",
        "ux_runs_session_request",
        "ix_sessions_principal_updated",
    } <= names


@pytest.mark.asyncio
@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite+aiosqlite://"])
async def test_in_memory_sqlite(url: str) -> None:
    store = SqlStore(url)
    assert make_url(url).get_backend_name() == "sqlite"
    await store.open()
    try:

        async def one(n: int) -> None:
            await start(store, n)
            await store.get_session(f"s{n}")
            await finish(store, f"r{n}")

        await asyncio.gather(*(one(n) for n in range(20)))
        _, total = await store.list_sessions(principal="alice", limit=1, offset=0)
        assert total == 20
        assert await store.unfinished_runs() == []
    finally:
        await store.close()
