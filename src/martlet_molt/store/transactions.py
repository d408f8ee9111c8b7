"""How `SqlStore` runs a transaction: a plain function over a SQLAlchemy `Connection`, awaited.

Every store operation is written once, as a synchronous function of a `Connection`, and run
whole by one of two runners:

- `SqliteThreads` (SQLite): the standard library driver on threads of the store's own, one
  writer and two readers (`store.transaction_thread`). A whole transaction is one hop to a
  thread and back, and transactions queued together share the hop and one commit. (An async
  driver such as aiosqlite makes a hop per cursor operation, and starting a run took several
  times as long: docs/BENCHMARKS.md, "Measurements behind the code".) The single writer
  thread is also the queue that serialises writes.
- `AsyncEngineTransactions` (PostgreSQL through asyncpg): `AsyncConnection.run_sync`, which
  runs the same function on the event loop, awaiting each statement.

A caller that is cancelled while a transaction is on its way may leave it to commit or roll
back on its own, as with any database client; callers that must know the outcome shield it.
"""

from __future__ import annotations

import sqlite3
import time
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from martlet_molt.store.transaction_thread import TransactionThread, Work

# The async extension loads the ORM (its memory: docs/BENCHMARKS.md, "Measurements behind the
# code"): only PostgreSQL needs it.
if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")

WRITE_OPTION = "martlet_write"  # connection execution option: this transaction will write
_READER_THREADS = 2
WAL_SWITCH_ATTEMPTS = 50


class Transactions(Protocol):
    """Runs one function as one transaction, from async code."""

    async def run(self, work: Work[T], *, write: bool, control: bool = False) -> T:
        """Run `work` in a transaction: committed if it returns, rolled back if it raises.
        `control` work (lease renewals) must not queue behind a burst of ordinary work."""
        ...

    async def close(self) -> None:
        """Release every connection (and thread)."""
        ...

    async def release_idle_connections(self) -> None:
        """Close the pooled connections no transaction is using."""
        ...


def is_memory(url: URL) -> bool:
    """Whether a SQLite URL names a private in-memory database."""
    return url.database in (None, "", ":memory:")


def _sqlite_on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    """Tune every new SQLite connection, and take transaction control away from the driver."""
    # sqlite3's legacy mode would BEGIN lazily and only before DML; `_sqlite_on_begin` decides.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # The busy timeout first, so that the others wait for a lock rather than fail on it.
    cursor.execute("PRAGMA busy_timeout=5000")
    _switch_to_wal(cursor)
    for pragma in ("PRAGMA foreign_keys=ON", "PRAGMA synchronous=NORMAL"):
        cursor.execute(pragma)
    cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """Put the file in WAL mode. Switching a new file takes an exclusive lock for which SQLite
    does not wait when several processes open it at once, so a busy answer is retried."""
    for attempt in range(WAL_SWITCH_ATTEMPTS):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == WAL_SWITCH_ATTEMPTS - 1:
                raise
            time.sleep(0.01 * (attempt + 1))


def _sqlite_on_begin(conn: Connection) -> None:
    """Writers take the write lock up front (waiting `busy_timeout`), readers a snapshot, so a
    second process waits for the file lock instead of failing half-way through a transaction."""
    writes = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


class SqliteThreads:
    """SQLite on threads of its own: one writer (the write queue), two readers (WAL snapshots),
    each running what is queued for it in batches (`TransactionThread`).

    An in-memory database is one connection, so everything runs on the writer thread.
    """

    def __init__(self, url: URL) -> None:
        url = url.set(drivername="sqlite+pysqlite")  # `sqlite+aiosqlite` URLs mean the same file
        options: dict[str, Any] = {}
        if is_memory(url):
            options["poolclass"] = StaticPool
            options["connect_args"] = {"check_same_thread": False}
        else:
            Path(url.database or "").parent.mkdir(parents=True, exist_ok=True)
        self._engine: Engine = create_engine(url, **options)
        event.listen(self._engine, "connect", _sqlite_on_connect)
        event.listen(self._engine, "begin", _sqlite_on_begin)
        write = {WRITE_OPTION: True}
        self._writer = TransactionThread(
            self._engine, "martlet-sqlite-writer", execution_options=write
        )
        self._readers = (
            [self._writer]
            if is_memory(url)
            else [
                TransactionThread(self._engine, f"martlet-sqlite-reader-{i}")
                for i in range(_READER_THREADS)
            ]
        )

    async def run(self, work: Work[T], *, write: bool, control: bool = False) -> T:
        """Run `work` as one transaction on the writer thread, or on a reader thread."""
        del control  # one process: its writes queue on one thread whatever they are
        if write:
            return await self._writer.submit(work)
        # The least busy reader: a long read (an export, a search) holds up only its own.
        reader = min(self._readers, key=attrgetter("pending"))
        return await reader.submit(work)

    async def release_idle_connections(self) -> None:
        """Close the pooled connections no thread is using, and with them their page caches
        (up to 2 MB each, in the threads' malloc arenas). The writer does it, from inside a
        batch: the connection the batch holds stays open, so no close is the file's last,
        which would checkpoint the whole WAL; that one only empties its cache. An in-memory
        database keeps its one connection (closing it would lose the database)."""
        if self._writer in self._readers:
            return
        pool = self._engine.pool

        def close_the_others(connection: Connection) -> None:
            pool.dispose()
            connection.exec_driver_sql("PRAGMA shrink_memory")

        await self._writer.submit(close_the_others)

    async def close(self) -> None:
        """Stop the readers, then the writer, which closes what the pool still holds."""
        for reader in self._readers:
            if reader is not self._writer:
                await reader.stop()
        await self._writer.stop(self._engine.dispose)


class AsyncEngineTransactions:
    """A database with an async driver (asyncpg): the same functions, run on the event loop."""

    def __init__(self, url: URL) -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        self._engine: AsyncEngine = create_async_engine(url, pool_pre_ping=True)
        # A connection of its own for leases: a renewal that waited for the pool behind a burst
        # of saves could come late enough for another instance to take live runs over.
        self._control: AsyncEngine = create_async_engine(
            url, pool_pre_ping=True, pool_size=1, max_overflow=1
        )

    async def run(self, work: Work[T], *, write: bool, control: bool = False) -> T:
        """Run `work` as one transaction; each statement is awaited on the event loop."""
        del write  # PostgreSQL needs no write queue
        engine = self._control if control else self._engine
        async with engine.connect() as conn, conn.begin():
            return await conn.run_sync(work)

    async def release_idle_connections(self) -> None:
        """Nothing: PostgreSQL's pooled connections hold little memory in this process, and
        a new one costs a round trip and authentication."""

    async def close(self) -> None:
        """Release every pooled connection."""
        await self._engine.dispose()
        await self._control.dispose()


def open_transactions(url: URL) -> Transactions:
    """The runner for a URL's backend."""
    if url.get_backend_name() == "sqlite":
        return SqliteThreads(url)
    return AsyncEngineTransactions(url)
