"""`SqlStore`: the `Store` protocol on SQLAlchemy 2 async, one code path for SQLite and PostgreSQL.

SQLite (the default) is tuned for a gateway: WAL so readers never block the writer, a busy
timeout, foreign keys on, and every write serialised in-process by an `asyncio.Lock` and taken
with `BEGIN IMMEDIATE` so that a second process waits for the file lock instead of failing
half-way through a transaction. PostgreSQL needs none of that.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager, nullcontext
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Insert,
    RowMapping,
    Select,
    bindparam,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from martlet_molt.core.status import RunStatus
from martlet_molt.errors import Conflict, InvalidRequest, RunNotFound, SessionNotFound
from martlet_molt.store.base import (
    Checkpoint,
    JsonObject,
    MessageRecord,
    NewMessage,
    RunRecord,
    SessionRecord,
)
from martlet_molt.store.schema import (
    SCHEMA_VERSION,
    message_record,
    metadata,
    run_record,
    runs,
    schema_version,
    session_record,
)
from martlet_molt.store.schema import messages as messages_table
from martlet_molt.store.schema import sessions as sessions_table

_UNFINISHED = (RunStatus.PENDING.value, RunStatus.STREAMING.value)
_WRITE_OPTION = "martlet_write"  # connection execution option: this transaction will write
_SCHEMA_LOCK_KEY = 0x6D6F6C74  # PostgreSQL advisory lock held while creating the schema


def _now() -> datetime:
    return datetime.now(UTC)


def _is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:")


def _insert_message(session_id: str, message: NewMessage, at: datetime) -> Insert:
    values = {**asdict(message), "status": message.status.value}
    return insert(messages_table).values(session_id=session_id, created_at=at, **values)


def _sqlite_on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    """Tune every new SQLite connection, and take transaction control away from the driver."""
    # sqlite3's legacy mode would BEGIN lazily and only before DML; `_sqlite_on_begin` decides.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in (
        "PRAGMA journal_mode=WAL",
        "PRAGMA busy_timeout=5000",
        "PRAGMA foreign_keys=ON",
        "PRAGMA synchronous=NORMAL",
    ):
        cursor.execute(pragma)
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    """Writers take the write lock up front (waiting `busy_timeout`), readers a snapshot."""
    writes = conn.get_execution_options().get(_WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


class SqlStore:
    """The gateway's store on any SQLAlchemy async URL; see the module docstring for tuning."""

    def __init__(self, url: str) -> None:
        self._url = make_url(url)
        self._sqlite = self._url.get_backend_name() == "sqlite"
        self._engine: AsyncEngine | None = None
        # SQLite has one writer at a time: queue writers here rather than in busy retries.
        self._write_lock = asyncio.Lock() if self._sqlite else None
        # An in-memory database is one shared connection: reads must queue behind writes too.
        self._read_lock = self._write_lock if self._sqlite and _is_memory(self._url) else None

    async def open(self) -> None:
        """Connect, create the schema if missing and check its version."""
        if self._engine is not None:
            return
        options: dict[str, Any] = {}
        if not self._sqlite:
            options["pool_pre_ping"] = True
        elif _is_memory(self._url):
            options["poolclass"] = StaticPool
        else:
            Path(self._url.database or "").parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(self._url, **options)
        if self._sqlite:
            event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
            event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        self._engine = engine
        try:
            await self._create_schema()
        except BaseException:
            await self.close()
            raise

    async def _create_schema(self) -> None:
        async with self._write() as conn:
            if not self._sqlite:  # several workers may start at once
                await conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
            await conn.run_sync(metadata.create_all)
            version = await conn.scalar(select(func.max(schema_version.c.version)))
            if version is None:
                await conn.execute(insert(schema_version).values(version=SCHEMA_VERSION))
            elif version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"database schema version {version} is newer than this code "
                    f"({SCHEMA_VERSION}); upgrade martlet-molt"
                )
            # Migrations from older versions go here, one step per version.

    async def close(self) -> None:
        """Release every pooled connection; the store can be opened again."""
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.dispose()

    async def ping(self) -> None:
        """Raise if the database cannot be reached."""
        async with self._read() as conn:
            await conn.execute(select(1))

    @asynccontextmanager
    async def _write(self) -> AsyncGenerator[AsyncConnection, None]:
        """One write transaction, serialised for SQLite."""
        if self._engine is None:
            raise RuntimeError("store is not open")
        async with self._write_lock or nullcontext(), self._engine.connect() as conn:
            await conn.execution_options(**{_WRITE_OPTION: True})
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncGenerator[AsyncConnection, None]:
        """One read transaction: a consistent snapshot."""
        if self._engine is None:
            raise RuntimeError("store is not open")
        lock = self._read_lock or nullcontext()
        async with lock, self._engine.connect() as conn, conn.begin():
            yield conn

    async def _first(self, query: Select[Any]) -> RowMapping | None:
        async with self._read() as conn:
            return (await conn.execute(query)).mappings().first()

    async def _all(self, query: Select[Any]) -> Sequence[RowMapping]:
        async with self._read() as conn:
            return (await conn.execute(query)).mappings().all()

    def _check_text(self, *values: str | None) -> None:
        """Refuse text PostgreSQL cannot store, before any SQL runs.

        PostgreSQL `text` cannot hold NUL (U+0000); the server would reject the statement
        mid-transaction. Checking first gives a clean `InvalidRequest` and nothing is written.
        SQLite stores NUL fine, so there it round-trips. (JSON columns escape it as `\\u0000`.)
        """
        if not self._sqlite and any(v is not None and "\x00" in v for v in values):
            raise InvalidRequest("text contains a NUL character, which the database cannot store")

    async def start_run(
        self,
        *,
        session_id: str,
        principal: str,
        run_id: str,
        user_message: str,
        client_request_id: str | None = None,
    ) -> RunRecord:
        """Create the session if new, save the user message and a `pending` run, atomically.
        Another principal's session raises `SessionNotFound` and changes nothing."""
        self._check_text(session_id, principal, run_id, user_message, client_request_id)
        now = _now()
        dialect_insert = sqlite_insert if self._sqlite else pg_insert
        upsert = dialect_insert(sessions_table).values(
            session_id=session_id, principal=principal, created_at=now, updated_at=now
        )
        upsert = upsert.on_conflict_do_update(
            index_elements=[sessions_table.c.session_id],
            set_={"updated_at": upsert.excluded.updated_at},
        )
        upsert = upsert.returning(sessions_table.c.principal)
        try:
            async with self._write() as conn:
                owner = (await conn.execute(upsert)).scalar_one()
                if owner != principal:  # raising rolls the touch back
                    raise SessionNotFound(f"session {session_id} not found")
                question = NewMessage(role="user", content=user_message, run_id=run_id)
                await conn.execute(_insert_message(session_id, question, now))
                new_run = insert(runs).values(
                    run_id=run_id,
                    session_id=session_id,
                    principal=principal,
                    status=RunStatus.PENDING.value,
                    content="",
                    events=[],
                    client_request_id=client_request_id,
                    created_at=now,
                    updated_at=now,
                )
                row = (await conn.execute(new_run.returning(*runs.c))).mappings().one()
        except IntegrityError as exc:
            raise Conflict(
                f"run {run_id} or request {client_request_id} already exists",
                run_id=run_id,
                client_request_id=client_request_id,
            ) from exc
        return run_record(row)

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run, or None."""
        found = await self._first(select(runs).where(runs.c.run_id == run_id))
        return None if found is None else run_record(found)

    async def find_run_by_request(
        self, *, session_id: str, client_request_id: str
    ) -> RunRecord | None:
        """The run a client already started with this request id on this session, or None."""
        query = select(runs).where(
            runs.c.session_id == session_id, runs.c.client_request_id == client_request_id
        )
        found = await self._first(query)
        return None if found is None else run_record(found)

    async def set_run_status(self, run_id: str, status: RunStatus) -> None:
        """Move a live run along; a run that is already final is left as it is."""
        now = _now()
        values: dict[str, Any] = {"status": status.value, "updated_at": now}
        if status.is_final:
            values["completed_at"] = now
        async with self._write() as conn:
            await conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id, runs.c.status.in_(_UNFINISHED))
                .values(**values)
            )

    async def checkpoint_run(self, run_id: str, *, content: str, events: list[Any]) -> None:
        """Save the partial reply of a live run; a final run is never overwritten."""
        await self.checkpoint_runs([Checkpoint(run_id, content, events)])

    async def checkpoint_runs(self, checkpoints: Sequence[Checkpoint]) -> None:
        """Save many partial replies in one transaction (one statement, many parameter sets)."""
        if not checkpoints:
            return
        for checkpoint in checkpoints:
            self._check_text(checkpoint.content)
        now = _now()
        statement = (
            update(runs)
            # `IN (...)` expands per statement, which executemany cannot do; spell it out.
            .where(
                runs.c.run_id == bindparam("b_run_id"),
                or_(*(runs.c.status == status for status in _UNFINISHED)),
            )
            .values(
                status=RunStatus.STREAMING.value,
                content=bindparam("b_content"),
                events=bindparam("b_events"),
                updated_at=now,
            )
        )
        parameters = [
            {"b_run_id": c.run_id, "b_content": c.content, "b_events": c.events}
            for c in checkpoints
        ]
        async with self._write() as conn:
            await conn.execute(statement, parameters)

    async def finish_run(
        self,
        run_id: str,
        *,
        status: RunStatus,
        content: str,
        error: str | None,
        usage: JsonObject | None,
        events: list[Any],
        messages: list[NewMessage],
    ) -> RunRecord:
        """Save a run's final state and its new messages (tool turns, the reply) atomically.

        A message without a `run_id` is attributed to this run.
        """
        self._check_text(content, error, run_id)
        for m in messages:
            self._check_text(m.role, m.content, m.run_id, m.tool_call_id, m.name)
        now = _now()
        stmt = (
            update(runs)
            .where(runs.c.run_id == run_id)
            .values(
                status=status.value,
                content=content,
                error=error,
                usage=usage,
                events=events,
                updated_at=now,
                completed_at=now,
            )
            .returning(*runs.c)
        )
        async with self._write() as conn:
            found = (await conn.execute(stmt)).mappings().first()
            if found is None:
                raise RunNotFound(f"run {run_id} not found", run_id=run_id)
            record = run_record(found)
            for m in messages:  # one by one: ids must follow the given order
                m = replace(m, run_id=m.run_id or run_id)
                await conn.execute(_insert_message(record.session_id, m, now))
            await conn.execute(
                update(sessions_table)
                .where(sessions_table.c.session_id == record.session_id)
                .values(updated_at=now)
            )
        return record

    async def unfinished_runs(self) -> list[RunRecord]:
        """Runs still `pending` or `streaming`, oldest first."""
        query = select(runs).where(runs.c.status.in_(_UNFINISHED)).order_by(runs.c.created_at)
        return [run_record(r) for r in await self._all(query)]

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None."""
        query = select(sessions_table).where(sessions_table.c.session_id == session_id)
        found = await self._first(query)
        return None if found is None else session_record(found)

    async def list_sessions(
        self, *, principal: str, limit: int, offset: int
    ) -> tuple[list[SessionRecord], int]:
        """One page of a principal's sessions, most recently updated first, and the total."""
        mine = sessions_table.c.principal == principal
        page = (
            select(sessions_table)
            .where(mine)
            .order_by(sessions_table.c.updated_at.desc(), sessions_table.c.session_id)
            .limit(limit)
            .offset(offset)
        )
        count = select(func.count()).select_from(sessions_table).where(mine)
        async with self._read() as conn:
            rows = (await conn.execute(page)).mappings().all()
            total = await conn.scalar(count)
        return [session_record(r) for r in rows], int(total or 0)

    async def list_messages(self, session_id: str) -> list[MessageRecord]:
        """A session's messages in order."""
        query = (
            select(messages_table)
            .where(messages_table.c.session_id == session_id)
            .order_by(messages_table.c.message_id)
        )
        return [message_record(r) for r in await self._all(query)]

    async def delete_session(self, session_id: str) -> bool:
        """Delete a session; its messages and runs go with it (ON DELETE CASCADE)."""
        stmt = delete(sessions_table).where(sessions_table.c.session_id == session_id)
        async with self._write() as conn:
            result = await conn.execute(stmt)
        return result.rowcount > 0
