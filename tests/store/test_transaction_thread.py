"""The SQLite store's transaction thread: transactions queued together commit together, and one
that raises leaves the others committed and itself rolled back, as if each had run alone."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import OperationalError

from martlet_molt.store.transaction_thread import TransactionThread
from martlet_molt.store.transactions import SqliteThreads

WAIT = 10.0  # seconds: a bound on every wait, never reached when the code works


COMMITS: dict[Engine, int] = {}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A SQLite file with one table, counting the transactions committed on it."""
    engine = create_engine(f"sqlite+pysqlite:///{tmp_path / 'batch.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE rows (n INTEGER PRIMARY KEY)"))
    COMMITS[engine] = 0

    def count(_conn: Connection) -> None:
        COMMITS[engine] += 1

    event.listen(engine, "commit", count)
    yield engine
    del COMMITS[engine]


@pytest_asyncio.fixture
async def thread(engine: Engine) -> AsyncIterator[TransactionThread]:
    """A transaction thread on the engine, stopped after the test."""
    worker = TransactionThread(engine, "test-transactions")
    try:
        yield worker
    finally:
        await worker.stop(engine.dispose)


def rows(engine: Engine) -> list[int]:
    """The numbers saved, read on a connection of the test's own."""
    with engine.connect() as conn:
        return [n for (n,) in conn.execute(text("SELECT n FROM rows ORDER BY n"))]


def commits(engine: Engine) -> int:
    """Transactions committed on the engine so far."""
    return COMMITS[engine]


def insert(n: int, calls: Counter[int], *, fail: bool = False) -> Callable[[Connection], int]:
    """A transaction inserting `n` (then raising, if `fail`), counting how often it ran."""

    def work(conn: Connection) -> int:
        calls[n] += 1
        conn.execute(text("INSERT INTO rows (n) VALUES (:n)"), {"n": n})
        if fail:
            raise ValueError(f"refused {n}")
        return n

    return work


def blocker(release: threading.Event, entered: threading.Event) -> Callable[[Connection], None]:
    """A transaction that holds the thread until released, so that the next ones queue up."""

    def work(conn: Connection) -> None:
        del conn
        entered.set()
        assert release.wait(WAIT)

    return work


async def queued_behind_blocker(
    worker: TransactionThread, works: list[Callable[[Connection], int]]
) -> list[asyncio.Future[int]]:
    """Submit `works` while the thread is busy, then let it go: they form one batch."""
    release, entered = threading.Event(), threading.Event()
    first = worker.submit(blocker(release, entered))
    assert await asyncio.to_thread(entered.wait, WAIT)
    futures = [worker.submit(work) for work in works]
    release.set()
    await asyncio.wait_for(first, WAIT)
    return futures


@pytest.mark.asyncio
async def test_queued_transactions_commit_together(
    engine: Engine, thread: TransactionThread
) -> None:
    calls: Counter[int] = Counter()
    before = commits(engine)
    futures = await queued_behind_blocker(thread, [insert(n, calls) for n in (1, 2, 3)])
    assert await asyncio.wait_for(asyncio.gather(*futures), WAIT) == [1, 2, 3]
    assert rows(engine) == [1, 2, 3]
    assert commits(engine) - before == 2  # the blocker alone, then the three as one
    assert calls == Counter({1: 1, 2: 1, 3: 1})


@pytest.mark.asyncio
async def test_one_that_raises_is_rolled_back_alone(
    engine: Engine, thread: TransactionThread
) -> None:
    calls: Counter[int] = Counter()
    works = [insert(1, calls), insert(2, calls, fail=True), insert(3, calls)]
    futures = await queued_behind_blocker(thread, works)
    outcomes = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), WAIT)
    assert outcomes[0] == 1
    assert outcomes[2] == 3
    assert isinstance(outcomes[1], ValueError)
    assert str(outcomes[1]) == "refused 2"
    assert rows(engine) == [1, 3]
    # The batch stopped at 2 and was rolled back; then each ran alone.
    assert calls == Counter({1: 2, 2: 2, 3: 1})


@pytest.mark.asyncio
async def test_a_caller_that_left_does_not_stop_the_others(
    engine: Engine, thread: TransactionThread
) -> None:
    calls: Counter[int] = Counter()
    futures = await queued_behind_blocker(thread, [insert(n, calls) for n in (1, 2)])
    futures[0].cancel()
    assert await asyncio.wait_for(futures[1], WAIT) == 2
    assert rows(engine) == [1, 2]  # the cancelled caller's transaction went its own way


@pytest.mark.asyncio
async def test_stop_finishes_what_is_queued_and_refuses_more(engine: Engine) -> None:
    worker = TransactionThread(engine, "test-transactions")
    calls: Counter[int] = Counter()
    futures = [worker.submit(insert(n, calls)) for n in (1, 2)]
    closed: list[str] = []
    await asyncio.wait_for(
        worker.stop(lambda: closed.append(threading.current_thread().name)), WAIT
    )
    assert [f.result() for f in futures] == [1, 2]
    assert closed == ["test-transactions"]  # `last` ran on the thread itself
    with pytest.raises(RuntimeError, match="closed"):
        worker.submit(insert(3, calls))
    assert rows(engine) == [1, 2]


@pytest.mark.asyncio
async def test_a_database_that_cannot_be_opened_fails_each_call(tmp_path: Path) -> None:
    missing = create_engine(f"sqlite+pysqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    worker = TransactionThread(missing, "test-transactions")
    calls: Counter[int] = Counter()
    for n in (1, 2):  # the thread outlives the failure: the second call is answered too
        with pytest.raises(OperationalError, match="unable to open"):
            await asyncio.wait_for(worker.submit(insert(n, calls)), WAIT)
    await asyncio.wait_for(worker.stop(missing.dispose), WAIT)
    assert calls == Counter()


@pytest.mark.asyncio
async def test_a_long_read_holds_up_only_its_own_reader(tmp_path: Path) -> None:
    threads = SqliteThreads(make_url(f"sqlite:///{tmp_path / 'reads.db'}"))
    release, entered = threading.Event(), threading.Event()
    try:
        long_read = asyncio.ensure_future(threads.run(blocker(release, entered), write=False))
        assert await asyncio.to_thread(entered.wait, WAIT)
        quick = await asyncio.wait_for(
            threads.run(lambda conn: conn.execute(text("SELECT 7")).scalar(), write=False), WAIT
        )
        assert quick == 7
        assert not long_read.done()
        release.set()
        await asyncio.wait_for(long_read, WAIT)
    finally:
        release.set()
        await threads.close()
