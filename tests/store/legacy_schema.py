"""Databases as the releases before the migrations wrote them: their tables frozen here as
`metadata.create_all` made them (schema version 3, or 1 and 2 without the later tables), and
the version they recorded in `schema_version`."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
)
from sqlalchemy.engine import make_url

from martlet_molt.store.schema import UtcDateTime
from martlet_molt.store.transactions import Work, open_transactions

v3 = MetaData()
schema_version = Table(
    "schema_version", v3, Column("version", Integer, primary_key=True, autoincrement=False)
)
sessions = Table(
    "sessions",
    v3,
    Column("session_id", String(255), primary_key=True),
    Column("principal", String(255), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_sessions_principal_updated", "principal", "updated_at"),
)
messages = Table(
    "messages",
    v3,
    Column("message_id", Integer, primary_key=True, autoincrement=True),
    Column(
        "session_id",
        String(255),
        ForeignKey("sessions.session_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("role", String(32), nullable=False),
    Column("content", Text, nullable=False),
    Column("status", String(32), nullable=False),
    Column("run_id", String(255), nullable=True),
    Column("tool_calls", JSON(none_as_null=True), nullable=True),
    Column("tool_call_id", String(255), nullable=True),
    Column("name", String(255), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_messages_session_message", "session_id", "message_id"),
)
runs = Table(
    "runs",
    v3,
    Column("run_id", String(255), primary_key=True),
    Column(
        "session_id",
        String(255),
        ForeignKey("sessions.session_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("principal", String(255), nullable=False),
    Column("status", String(32), nullable=False),
    Column("content", Text, nullable=False),
    Column("error", Text, nullable=True),
    Column("usage", JSON(none_as_null=True), nullable=True),
    Column("events", JSON, nullable=False),
    Column("client_request_id", String(255), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("completed_at", UtcDateTime, nullable=True),
    Index("ix_runs_session", "session_id"),
    Index("ix_runs_status", "status"),
)
run_parts = Table(
    "run_parts",
    v3,
    Column("run_id", String(255), ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True),
    Column("part", Integer, primary_key=True, autoincrement=False),
    Column("content", Text, nullable=False),
    Column("events", JSON, nullable=False),
)
message_parts = Table(
    "message_parts",
    v3,
    Column(
        "message_id",
        Integer,
        ForeignKey("messages.message_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("part", Integer, primary_key=True, autoincrement=False),
    Column("content", Text, nullable=False),
)
Index(
    "ux_runs_session_request",
    runs.c.session_id,
    runs.c.client_request_id,
    unique=True,
    sqlite_where=runs.c.client_request_id.is_not(None),
    postgresql_where=runs.c.client_request_id.is_not(None),
)

TABLES_OF_VERSION = {
    1: [schema_version, sessions, messages, runs],
    2: [schema_version, sessions, messages, runs, run_parts],
    3: [schema_version, sessions, messages, runs, run_parts, message_parts],
}


async def make_legacy_database(url: str, version: int, fill: Work[None]) -> None:
    """Create the tables of `version` as its release did, record the version, and `fill` them,
    all in one transaction."""

    def work(conn: Connection) -> None:
        v3.create_all(conn, tables=TABLES_OF_VERSION[version])
        conn.execute(insert(schema_version).values(version=version))
        fill(conn)

    transactions = open_transactions(make_url(url))
    try:
        await transactions.run(work, write=True)
    finally:
        await transactions.close()
