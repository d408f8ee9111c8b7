"""`SqlStore`: the `Store` protocol on SQLAlchemy 2 Core, one code path for SQLite and PostgreSQL.

Each operation is one synchronous function of a `Connection`, run whole as one transaction by
`store.transactions` (SQLite on its own threads, PostgreSQL on asyncpg). Statements are built
once, at import, and executed with parameters, so a call pays no statement construction.

SQLite (the default) is tuned for a gateway: WAL so readers never block the writer, a busy
timeout, foreign keys on, one writer thread that queues writes, and `BEGIN IMMEDIATE` so that a
second process waits for the file lock instead of failing half-way through a transaction.

`open` migrates the schema (`store.migrations`); leases and fencing for several instances are
in `store.leases`, the saving of a final run, shared with a takeover, in `store.final`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Insert,
    Row,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from martlet_molt.core.status import RunStatus
from martlet_molt.errors import (
    Conflict,
    InvalidRequest,
    LeaseLost,
    RunNotFound,
    SessionBusy,
    SessionNotFound,
)
from martlet_molt.store.base import (
    Checkpoint,
    JsonObject,
    Lease,
    MessageRecord,
    NewMessage,
    RenewedLeases,
    RunRecord,
    SessionHit,
    SessionRecord,
)
from martlet_molt.store.final import (
    FINISH_FENCED_RUN,
    FINISH_RUN,
    is_unfinished,
    message_values,
    save_final,
)
from martlet_molt.store.leases import LeaseClock, renew, take_over
from martlet_molt.store.migrations import upgrade_schema
from martlet_molt.store.parts import (
    append_checkpoints,
    insert_message,
    message_texts_in_parts,
    run_with_parts,
)
from martlet_molt.store.schema import UNFINISHED, message_record, run_parts, runs, session_record
from martlet_molt.store.schema import messages as messages_table
from martlet_molt.store.schema import sessions as sessions_table
from martlet_molt.store.search import find_sessions
from martlet_molt.store.sessions import (
    RENAME_SESSION,
    SELECT_SESSION,
    UPSERT_SESSION,
    first_title,
)
from martlet_molt.store.text import StoredText
from martlet_molt.store.transactions import T, Transactions, Work, open_transactions


def _now() -> datetime:
    return datetime.now(UTC)


_INSERT_RUN = insert(runs)
_SELECT_ACTIVE_RUN = (
    select(runs.c.run_id, runs.c.client_request_id)
    .where(runs.c.session_id == bindparam("session_id"), runs.c.status.in_(UNFINISHED))
    .limit(1)
)
_SELECT_LIVE_FENCES = (
    select(runs.c.run_id, runs.c.fence)
    .where(runs.c.run_id.in_(bindparam("run_ids", expanding=True)), runs.c.status.in_(UNFINISHED))
    .order_by(runs.c.run_id)
    .with_for_update()  # PostgreSQL: a takeover waits, or skips these runs this time
)
_REQUEST_CANCEL = (
    update(runs)
    .where(runs.c.run_id == bindparam("b_run_id"), is_unfinished(runs.c.status))
    .values(cancel_requested=True)
)
_SELECT_RUN = select(runs).where(runs.c.run_id == bindparam("run_id"))
_SELECT_RUN_BY_REQUEST = select(runs).where(
    runs.c.session_id == bindparam("session_id"),
    runs.c.client_request_id == bindparam("client_request_id"),
)
_MARK_STREAMING = (
    update(runs)
    .where(runs.c.run_id == bindparam("b_run_id"), is_unfinished(runs.c.status))
    .values(status=RunStatus.STREAMING.value, updated_at=bindparam("b_now"))
)
_SELECT_MESSAGES = (
    select(messages_table)
    .where(messages_table.c.session_id == bindparam("session_id"))
    .order_by(messages_table.c.message_id)
)


def _duplicate(run_id: str, client_request_id: str | None) -> Conflict:
    return Conflict(
        f"run {run_id} or request {client_request_id} already exists",
        run_id=run_id,
        client_request_id=client_request_id,
    )


def _refusal(
    session_id: str, run_id: str, client_request_id: str | None, active: Row[Any, Any]
) -> Conflict:
    """Why a run cannot start in a session whose `active` run is unfinished: a retry of that
    run (its id, or its request id) is a duplicate, as ever; anything else finds it busy."""
    if active.run_id == run_id or (
        client_request_id is not None and active.client_request_id == client_request_id
    ):
        return _duplicate(run_id, client_request_id)
    return SessionBusy(session_id, active.run_id)


class SqlStore:
    """The gateway's store on a SQLAlchemy URL (SQLite or PostgreSQL); see the module docstring."""

    def __init__(self, url: str) -> None:
        self._url = make_url(url)
        self._sqlite = self._url.get_backend_name() == "sqlite"
        self._upsert_session = UPSERT_SESSION["sqlite" if self._sqlite else "postgresql"]
        self._clock = LeaseClock(sqlite=self._sqlite)
        self._insert_leased_run: Insert = (
            _INSERT_RUN
            if self._sqlite
            else insert(runs)
            .values(lease_expires_at=self._clock.deadline)
            .returning(runs.c.lease_expires_at)
        )
        self._transactions: Transactions | None = None

    async def open(self) -> None:
        """Connect and migrate the schema to the one this code knows (once, if several
        instances start together); a schema newer than the code raises `SchemaTooNew`."""
        if self._transactions is not None:
            return
        self._transactions = open_transactions(self._url)
        try:
            await self._write(upgrade_schema)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Release every connection; the store can be opened again."""
        if self._transactions is not None:
            transactions, self._transactions = self._transactions, None
            await transactions.close()

    async def release_idle_connections(self) -> None:
        """Close the pooled connections no transaction is using (a closed store: nothing)."""
        if self._transactions is not None:
            await self._transactions.release_idle_connections()

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
        user_message: str | None = None,
        inputs: Sequence[NewMessage] = (),
        client_request_id: str | None = None,
        owner: str | None = None,
        lease_seconds: float | None = None,
        request: Mapping[str, Any] | None = None,
    ) -> RunRecord:
        """Create the session if new, save the request's messages (`inputs`, or just the
        `user_message`) and a `pending` run, atomically. Another principal's session raises
        `SessionNotFound`, a session with an unfinished run `SessionBusy`; either changes
        nothing. The run gets `owner`, fence 1, and a lease of `lease_seconds` (None: no
        lease)."""
        questions = list(inputs)
        if user_message is not None:
            questions.append(NewMessage(role="user", content=user_message, run_id=run_id))
        self._check_text(session_id, principal, run_id, client_request_id, owner)
        for question in questions:
            self._check_text(question.role, question.content, question.tool_call_id, question.name)
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
            owner=owner,
            fence=1,
            request=dict(request) if request is not None else None,
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
            "owner": owner,
            "fence": 1,
            "cancel_requested": False,
            "request": dict(request) if request is not None else None,
        }
        insert_run = _INSERT_RUN
        if lease_seconds is not None:
            insert_run = self._insert_leased_run
            lease = self._clock.parameters(now, lease_seconds)
            if self._sqlite:
                run["lease_expires_at"] = lease["b_lease_until"]
            else:
                run.update(lease)
        session = {
            "session_id": session_id,
            "principal": principal,
            "created_at": now,
            "updated_at": now,
            "title": first_title(questions),
        }

        def work(conn: Connection) -> datetime | None:
            if conn.execute(self._upsert_session, session).scalar_one() != principal:
                raise SessionNotFound(f"session {session_id} not found")  # rolls the touch back
            # A session's unfinished run is refused by `ux_runs_session_active`: no read first.
            for question in questions:
                values = message_values(session_id, question, now)
                insert_message(conn, values, question.content)
            inserted = conn.execute(insert_run, run)
            return inserted.scalar() if inserted.returns_rows else run.get("lease_expires_at")

        try:
            lease_expires_at = await self._write(work)
        except IntegrityError as exc:
            # The session has an unfinished run (here or on another instance), or the run or
            # the request already exists: the transaction rolled back, the message with it.
            active = await self._read(
                lambda conn: conn.execute(_SELECT_ACTIVE_RUN, {"session_id": session_id}).first()
            )
            if active is not None:
                raise _refusal(session_id, run_id, client_request_id, active) from exc
            raise _duplicate(run_id, client_request_id) from exc
        return replace(record, lease_expires_at=lease_expires_at)

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
            .where(runs.c.run_id == run_id, runs.c.status.in_(UNFINISHED))
            .values(**values)
        )
        await self._write(lambda conn: conn.execute(statement))

    async def checkpoint_run(self, run_id: str, *, content: str, events: list[Any]) -> None:
        """Append what a live run streamed since its previous checkpoint; a final run is
        never touched."""
        await self.checkpoint_runs([Checkpoint(run_id, content, events)])

    async def checkpoint_runs(self, checkpoints: Sequence[Checkpoint]) -> set[str]:
        """Append many live runs' new text in one transaction: a part per run, numbered after
        its last one, and `streaming` on its row. Final runs are skipped; the runs whose fenced
        checkpoint was refused (final, or fenced by another token) are returned."""
        if not checkpoints:
            return set()
        for checkpoint in checkpoints:
            self._check_text(checkpoint.content)
        now = _now()
        run_ids = sorted({c.run_id for c in checkpoints})

        def work(conn: Connection) -> set[str]:
            rows = conn.execute(_SELECT_LIVE_FENCES, {"run_ids": run_ids})
            fences: dict[str, int] = {run_id: fence for run_id, fence in rows}
            refused = {
                c.run_id
                for c in checkpoints
                if c.fence is not None and fences.get(c.run_id) != c.fence
            }
            applied = [c for c in checkpoints if c.run_id in fences and c.run_id not in refused]
            if not applied:
                return refused
            live = {c.run_id for c in applied}
            last_parts = select(run_parts.c.run_id, func.max(run_parts.c.part)).where(
                run_parts.c.run_id.in_(live)
            )
            last = {
                run_id: part
                for run_id, part in conn.execute(last_parts.group_by(run_parts.c.run_id))
            }
            append_checkpoints(conn, applied, last)
            conn.execute(_MARK_STREAMING, [{"b_run_id": run_id, "b_now": now} for run_id in live])
            return refused

        return await self._write(work)

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
        fence: int | None = None,
        ended_at: datetime | None = None,
    ) -> None:
        """Save a run's final state and its new messages (tool turns, the reply) atomically.
        The final text replaces the checkpoints: inline in the row, or as parts when long.
        With a `fence`, only an unfinished run carrying that token is saved, else `LeaseLost`.

        A message without a `run_id` is attributed to this run.
        """
        self._check_text(content, error, run_id)
        for m in messages:
            self._check_text(m.role, m.content, m.run_id, m.tool_call_id, m.name)
        now = ended_at or _now()
        statement = FINISH_RUN if fence is None else FINISH_FENCED_RUN

        def work(conn: Connection) -> None:
            saved = save_final(
                conn,
                statement,
                run_id=run_id,
                status=status,
                content=content,
                error=error,
                usage=usage,
                events=events,
                messages=messages,
                now=now,
                fence=fence,
            )
            if saved:
                return
            if fence is not None and conn.execute(_SELECT_RUN, {"run_id": run_id}).first():
                raise LeaseLost(run_id)
            raise RunNotFound(f"run {run_id} not found", run_id=run_id)

        await self._write(work)

    async def renew_leases(
        self, *, owner: str, leases: Sequence[Lease], lease_seconds: float
    ) -> RenewedLeases:
        """Extend the leases `owner` still holds (unfinished, same fence) in one statement;
        which it holds, and which of those someone asked to cancel."""
        now = _now()
        held = list(leases)
        return await self._runner().run(
            lambda conn: renew(
                conn, self._clock, owner=owner, leases=held, lease_seconds=lease_seconds, now=now
            ),
            write=True,
            control=True,
        )

    async def request_cancel(self, run_id: str) -> bool:
        """Flag an unfinished run for cancelling by its owner; False if final or missing."""
        flagged = await self._write(
            lambda conn: conn.execute(_REQUEST_CANCEL, {"b_run_id": run_id}).rowcount
        )
        return flagged > 0

    async def take_over_expired(self, *, limit: int = 100) -> list[RunRecord]:
        """Interrupt up to `limit` unfinished runs whose lease ran out or that have none,
        keeping their text, and bump their fence; the runs as finished (see `store.leases`)."""
        now = _now()
        return await self._write(lambda conn: take_over(conn, self._clock, limit=limit, now=now))

    async def unfinished_runs(self) -> list[RunRecord]:
        """Runs still `pending` or `streaming`, oldest first, with their checkpoints."""
        query = select(runs).where(runs.c.status.in_(UNFINISHED)).order_by(runs.c.created_at)

        def work(conn: Connection) -> list[RunRecord]:
            return [run_with_parts(conn, row) for row in conn.execute(query).mappings().all()]

        return await self._read(work)

    async def run_ids_of_session(self, session_id: str) -> list[str]:
        """Every run of a session (to forget them everywhere when it is deleted)."""
        query = select(runs.c.run_id).where(runs.c.session_id == session_id)
        return await self._read(lambda conn: list(conn.scalars(query)))

    async def active_run_ids(self, session_ids: Sequence[str]) -> dict[str, str]:
        """The unfinished run of each of these sessions that has one, whoever owns it."""
        if not session_ids:
            return {}
        query = select(runs.c.session_id, runs.c.run_id).where(
            runs.c.session_id.in_(list(session_ids)), runs.c.status.in_(UNFINISHED)
        )

        def work(conn: Connection) -> dict[str, str]:
            return {row.session_id: row.run_id for row in conn.execute(query)}

        return await self._read(work)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None."""

        def work(conn: Connection) -> SessionRecord | None:
            row = conn.execute(SELECT_SESSION, {"session_id": session_id}).mappings().first()
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

    async def rename_session(
        self, session_id: str, *, principal: str, title: str
    ) -> SessionRecord | None:
        """Give a principal's session a new title (its place in the list stays); None if it
        has no such session."""
        self._check_text(title)
        parameters = {"b_session_id": session_id, "b_principal": principal, "b_title": title}

        def work(conn: Connection) -> SessionRecord | None:
            row = conn.execute(RENAME_SESSION, parameters).mappings().first()
            return None if row is None else session_record(row)

        return await self._write(work)

    async def search_sessions(
        self, *, principal: str, query: str, limit: int, offset: int
    ) -> tuple[list[SessionHit], int]:
        """A page of the principal's sessions matching every word of `query` in a title or a
        user or assistant message, best first, each with its passage (see `store.search`)."""
        return await self._read(
            lambda conn: find_sessions(
                conn,
                sqlite=self._sqlite,
                principal=principal,
                query=query,
                limit=limit,
                offset=offset,
            )
        )

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

    async def delete_run(self, run_id: str) -> bool:
        """Delete a finished run and its messages; its session too if no other run is left."""

        def work(conn: Connection) -> bool:
            session_id = conn.scalar(select(runs.c.session_id).where(runs.c.run_id == run_id))
            if session_id is None:
                return False
            conn.execute(delete(messages_table).where(messages_table.c.run_id == run_id))
            conn.execute(delete(runs).where(runs.c.run_id == run_id))
            others = select(runs.c.run_id).where(runs.c.session_id == session_id).limit(1)
            if conn.scalar(others) is None:
                conn.execute(
                    delete(sessions_table).where(sessions_table.c.session_id == session_id)
                )
            return True

        return await self._write(work)

    async def delete_session(self, session_id: str) -> bool:
        """Delete a session; its messages and runs go with it (ON DELETE CASCADE)."""
        statement = delete(sessions_table).where(sessions_table.c.session_id == session_id)
        deleted = await self._write(lambda conn: conn.execute(statement).rowcount)
        return deleted > 0
