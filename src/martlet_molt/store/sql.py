"""`SqlStore`: the `Store` protocol on SQLAlchemy 2 Core, one code path for SQLite and PostgreSQL.

Each operation is one synchronous function of a `Connection`, run whole as one transaction by
`store.transactions` (SQLite on its own threads, PostgreSQL on asyncpg). Statements are built
once, at import, and executed with parameters, so a call pays no statement construction.

SQLite (the default) is tuned for a gateway: WAL so readers never block the writer, a busy
timeout, foreign keys on, one writer thread that queues writes, and `BEGIN IMMEDIATE` so that a
second process waits for the file lock instead of failing half-way through a transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

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
from martlet_molt.store.parts import (
    append_checkpoints,
    insert_message,
    message_texts_in_parts,
    replace_run_parts,
    run_with_parts,
)
from martlet_molt.store.schema import (
    SCHEMA_VERSION,
    message_record,
    metadata,
    run_parts,
    runs,
    schema_version,
    session_record,
)
from martlet_molt.store.schema import messages as messages_table
from martlet_molt.store.schema import sessions as sessions_table
from martlet_molt.store.text import StoredText, inline_or_parts
from martlet_molt.store.transactions import T, Transactions, Work, open_transactions

_UNFINISHED = (RunStatus.PENDING.value, RunStatus.STREAMING.value)
_SCHEMA_LOCK_KEY = 0x6D6F6C74  # PostgreSQL advisory lock held while creating the schema


def _now() -> datetime:
    return datetime.now(UTC)


def _is_unfinished(status: Any) -> Any:
    # `IN (...)` expands per statement, which executemany cannot do; spell it out.
    return or_(*(status == value for value in _UNFINISHED))


def _session_upsert(dialect_insert: Any) -> Any:
    """Create a session or touch it, handing back its owner either way."""
    upsert = dialect_insert(sessions_table)
    return upsert.on_conflict_do_update(
        index_elements=[sessions_table.c.session_id],
        set_={"updated_at": upsert.excluded.updated_at},
    ).returning(sessions_table.c.principal)


_UPSERT_SESSION = {
    "sqlite": _session_upsert(sqlite_insert),
    "postgresql": _session_upsert(pg_insert),
}
_INSERT_RUN = insert(runs)
_SELECT_RUN = select(runs).where(runs.c.run_id == bindparam("run_id"))
_SELECT_RUN_BY_REQUEST = select(runs).where(
    runs.c.session_id == bindparam("session_id"),
    runs.c.client_request_id == bindparam("client_request_id"),
)
_MARK_STREAMING = (
    update(runs)
    .where(runs.c.run_id == bindparam("b_run_id"), _is_unfinished(runs.c.status))
    .values(status=RunStatus.STREAMING.value, updated_at=bindparam("b_now"))
)
_FINISH_RUN = (
    update(runs)
    .where(runs.c.run_id == bindparam("b_run_id"))
    .values(
        status=bindparam("b_status"),
        content=bindparam("b_content"),
        error=bindparam("b_error"),
        usage=bindparam("b_usage"),
        events=bindparam("b_events"),
        updated_at=bindparam("b_now"),
        completed_at=bindparam("b_now"),
    )
    # Not the content or events just written: they can be megabytes, and the caller has them.
    .returning(runs.c.session_id)
)
_TOUCH_SESSION = (
    update(sessions_table)
    .where(sessions_table.c.session_id == bindparam("b_session_id"))
    .values(updated_at=bindparam("b_now"))
)
_SELECT_SESSION = select(sessions_table).where(
    sessions_table.c.session_id == bindparam("session_id")
)
_SELECT_MESSAGES = (
    select(messages_table)
    .where(messages_table.c.session_id == bindparam("session_id"))
    .order_by(messages_table.c.message_id)
)


def _message_values(session_id: str, message: NewMessage, at: datetime) -> dict[str, Any]:
    """A message row's values but its text, which `insert_message` places."""
    return {
        "session_id": session_id,
        "role": message.role,
        "status": message.status.value,
        "run_id": message.run_id,
        "tool_calls": message.tool_calls,
        "tool_call_id": message.tool_call_id,
        "name": message.name,
        "created_at": at,
    }


class SqlStore:
    """The gateway's store on a SQLAlchemy URL (SQLite or PostgreSQL); see the module docstring."""

    def __init__(self, url: str) -> None:
        self._url = make_url(url)
        self._sqlite = self._url.get_backend_name() == "sqlite"
        self._upsert_session = _UPSERT_SESSION["sqlite" if self._sqlite else "postgresql"]
        self._transactions: Transactions | None = None

    async def open(self) -> None:
        """Connect, create the schema if missing and check its version."""
        if self._transactions is not None:
            return
        self._transactions = open_transactions(self._url)
        try:
            await self._write(self._create_schema)
        except BaseException:
            await self.close()
            raise

    def _create_schema(self, conn: Connection) -> None:
        if not self._sqlite:  # several workers may start at once
            conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
        metadata.create_all(conn)
        version = conn.scalar(select(func.max(schema_version.c.version)))
        if version is None:
            conn.execute(insert(schema_version).values(version=SCHEMA_VERSION))
        elif version > SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema version {version} is newer than this code "
                f"({SCHEMA_VERSION}); upgrade martlet-molt"
            )
        elif version < SCHEMA_VERSION:
            # 1 -> 2 added `run_parts`, 2 -> 3 `message_parts`: `create_all` has just made them.
            conn.execute(update(schema_version).values(version=SCHEMA_VERSION))

    async def close(self) -> None:
        """Release every connection; the store can be opened again."""
        if self._transactions is not None:
            transactions, self._transactions = self._transactions, None
            await transactions.close()

    def _runner(self) -> Transactions:
        if self._transactions is None:
            raise RuntimeError("store is not open")
        return self._transactions

    async def _write(self, work: Work[T]) -> T:
        """One write transaction (queued behind the others on SQLite)."""
        return await self._runner().run(work, write=True)

    async def _read(self, work: Work[T]) -> T:
        """One read transaction: a consistent snapshot."""
        return await self._runner().run(work, write=False)

    async def ping(self) -> None:
        """Raise if the database cannot be reached."""
        await self._read(lambda conn: conn.execute(select(1)).all())

    def _check_text(self, *values: StoredText | None) -> None:
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
        record = RunRecord(
            run_id=run_id,
            session_id=session_id,
            principal=principal,
            status=RunStatus.PENDING,
            content="",
            error=None,
            created_at=now,
            updated_at=now,
            completed_at=None,
            client_request_id=client_request_id,
        )
        # Spelled out, not `asdict`: that deep-copies every field, a tenth of this call.
        run: dict[str, Any] = {
            "run_id": run_id,
            "session_id": session_id,
            "principal": principal,
            "status": record.status.value,
            "content": "",
            "error": None,
            "usage": None,
            "events": [],
            "client_request_id": client_request_id,
            "created_at": now,
            "updated_at": now,
            "completed_at": None,
        }
        question = NewMessage(role="user", content=user_message, run_id=run_id)
        session = {
            "session_id": session_id,
            "principal": principal,
            "created_at": now,
            "updated_at": now,
        }

        def work(conn: Connection) -> None:
            owner = conn.execute(self._upsert_session, session).scalar_one()
            if owner != principal:  # raising rolls the touch back
                raise SessionNotFound(f"session {session_id} not found")
            insert_message(conn, _message_values(session_id, question, now), question.content)
            conn.execute(_INSERT_RUN, run)

        try:
            await self._write(work)
        except IntegrityError as exc:
            raise Conflict(
                f"run {run_id} or request {client_request_id} already exists",
                run_id=run_id,
                client_request_id=client_request_id,
            ) from exc
        return record

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run, or None."""

        def work(conn: Connection) -> RunRecord | None:
            row = conn.execute(_SELECT_RUN, {"run_id": run_id}).mappings().first()
            return None if row is None else run_with_parts(conn, row)

        return await self._read(work)

    async def find_run_by_request(
        self, *, session_id: str, client_request_id: str
    ) -> RunRecord | None:
        """The run a client already started with this request id on this session, or None."""
        parameters = {"session_id": session_id, "client_request_id": client_request_id}

        def work(conn: Connection) -> RunRecord | None:
            row = conn.execute(_SELECT_RUN_BY_REQUEST, parameters).mappings().first()
            return None if row is None else run_with_parts(conn, row)

        return await self._read(work)

    async def set_run_status(self, run_id: str, status: RunStatus) -> None:
        """Move a live run along; a run that is already final is left as it is."""
        now = _now()
        values: dict[str, Any] = {"status": status.value, "updated_at": now}
        if status.is_final:
            values["completed_at"] = now
        statement = (
            update(runs)
            .where(runs.c.run_id == run_id, runs.c.status.in_(_UNFINISHED))
            .values(**values)
        )
        await self._write(lambda conn: conn.execute(statement))

    async def checkpoint_run(self, run_id: str, *, content: str, events: list[Any]) -> None:
        """Append what a live run streamed since its previous checkpoint; a final run is
        never touched."""
        await self.checkpoint_runs([Checkpoint(run_id, content, events)])

    async def checkpoint_runs(self, checkpoints: Sequence[Checkpoint]) -> None:
        """Append many live runs' new text in one transaction: a part per run, numbered after
        its last one, and `streaming` on its row. Final runs are skipped."""
        if not checkpoints:
            return
        for checkpoint in checkpoints:
            self._check_text(checkpoint.content)
        now = _now()
        run_ids = [c.run_id for c in checkpoints]

        def work(conn: Connection) -> None:
            live = set(
                conn.scalars(
                    select(runs.c.run_id).where(
                        runs.c.run_id.in_(run_ids), runs.c.status.in_(_UNFINISHED)
                    )
                )
            )
            if not live:
                return
            last_parts = select(run_parts.c.run_id, func.max(run_parts.c.part)).where(
                run_parts.c.run_id.in_(live)
            )
            last = {
                run_id: part
                for run_id, part in conn.execute(last_parts.group_by(run_parts.c.run_id))
            }
            append_checkpoints(conn, [c for c in checkpoints if c.run_id in live], last)
            conn.execute(_MARK_STREAMING, [{"b_run_id": run_id, "b_now": now} for run_id in live])

        await self._write(work)

    async def finish_run(
        self,
        run_id: str,
        *,
        status: RunStatus,
        content: StoredText,
        error: str | None,
        usage: JsonObject | None,
        events: list[Any],
        messages: list[NewMessage],
    ) -> None:
        """Save a run's final state and its new messages (tool turns, the reply) atomically.
        The final text replaces the checkpoints: inline in the row, or as parts when long.

        A message without a `run_id` is attributed to this run.
        """
        self._check_text(content, error, run_id)
        for m in messages:
            self._check_text(m.role, m.content, m.run_id, m.tool_call_id, m.name)
        now = _now()

        def work(conn: Connection) -> None:
            inline, parts = inline_or_parts(content)
            final = {
                "b_run_id": run_id,
                "b_status": status.value,
                "b_content": inline,
                "b_error": error,
                "b_usage": usage,
                "b_events": events,
                "b_now": now,
            }
            session_id = conn.execute(_FINISH_RUN, final).scalar()
            if session_id is None:
                raise RunNotFound(f"run {run_id} not found", run_id=run_id)
            replace_run_parts(conn, run_id, parts)
            for m in messages:  # one by one: ids must follow the given order
                values = _message_values(session_id, replace(m, run_id=m.run_id or run_id), now)
                insert_message(conn, values, m.content)
            conn.execute(_TOUCH_SESSION, {"b_session_id": session_id, "b_now": now})

        await self._write(work)

    async def unfinished_runs(self) -> list[RunRecord]:
        """Runs still `pending` or `streaming`, oldest first, with their checkpoints."""
        query = select(runs).where(runs.c.status.in_(_UNFINISHED)).order_by(runs.c.created_at)

        def work(conn: Connection) -> list[RunRecord]:
            return [run_with_parts(conn, row) for row in conn.execute(query).mappings().all()]

        return await self._read(work)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None."""

        def work(conn: Connection) -> SessionRecord | None:
            row = conn.execute(_SELECT_SESSION, {"session_id": session_id}).mappings().first()
            return None if row is None else session_record(row)

        return await self._read(work)

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

        def work(conn: Connection) -> tuple[list[SessionRecord], int]:
            rows = conn.execute(page).mappings().all()
            return [session_record(r) for r in rows], int(conn.scalar(count) or 0)

        return await self._read(work)

    async def list_messages(self, session_id: str) -> list[MessageRecord]:
        """A session's messages in order."""

        def work(conn: Connection) -> list[MessageRecord]:
            rows = conn.execute(_SELECT_MESSAGES, {"session_id": session_id}).mappings().all()
            records = [message_record(r) for r in rows]
            if all(record.content for record in records):
                return records  # a message held in parts has an empty row
            texts = message_texts_in_parts(conn, session_id)
            return [
                replace(r, content=texts[r.message_id]) if r.message_id in texts else r
                for r in records
            ]

        return await self._read(work)

    async def delete_session(self, session_id: str) -> bool:
        """Delete a session; its messages and runs go with it (ON DELETE CASCADE)."""
        statement = delete(sessions_table).where(sessions_table.c.session_id == session_id)
        deleted = await self._write(lambda conn: conn.execute(statement).rowcount)
        return deleted > 0
