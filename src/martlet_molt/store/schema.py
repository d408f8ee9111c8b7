"""The SQL tables behind `SqlStore` (SQLAlchemy Core, SQLite and PostgreSQL) and row mappers.

`metadata` is the schema's current shape, for building queries; the migrations
(`store/migrations/versions/`) make it. When a table changes, change it here and add a
revision; a test checks that migrating an empty database yields exactly `metadata`, less the
full-text search objects each database has of its own kind (`store/search.py`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    RowMapping,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
)

from martlet_molt.core.status import RunStatus
from martlet_molt.store.base import MessageRecord, RunRecord, SessionRecord

UNFINISHED = (RunStatus.PENDING.value, RunStatus.STREAMING.value)
"""The statuses of a run that is still running (or was left so by a dead process)."""

# Identifiers and enum-like values; long enough for UUIDs, principals and client request ids.
_ID = 255


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is timezone-aware UTC going in and coming out, on every backend.

    PostgreSQL keeps `timestamptz`; SQLite has no time zones, so it stores naive UTC and this
    type puts the UTC zone back on read. Naive input is refused: it would be ambiguous.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Normalise to UTC; strip the zone only for SQLite, which would drop it anyway."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Always hand back an aware UTC datetime."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = MetaData()

# The releases before the migrations versioned the schema here (up to 3). It now holds 4, which
# those releases refuse to open: they would start runs without leases.
schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
)

sessions = Table(
    "sessions",
    metadata,
    Column("session_id", String(_ID), primary_key=True),
    Column("principal", String(_ID), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    # Set from the first user message when it is saved; a person may rename it.
    Column("title", Text, nullable=True),
    Index("ix_sessions_principal_updated", "principal", "updated_at"),
)

messages = Table(
    "messages",
    metadata,
    Column("message_id", Integer, primary_key=True, autoincrement=True),
    Column(
        "session_id",
        String(_ID),
        ForeignKey("sessions.session_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("role", String(32), nullable=False),
    Column("content", Text, nullable=False),
    Column("status", String(32), nullable=False),
    Column("run_id", String(_ID), nullable=True),
    Column("tool_calls", JSON(none_as_null=True), nullable=True),
    Column("tool_call_id", String(_ID), nullable=True),
    Column("name", String(_ID), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    # A tool result's outcome (`done` or `failed`) and how long the call took.
    Column("tool_status", String(16), nullable=True),
    Column("duration_ms", Integer, nullable=True),
    Index("ix_messages_session_message", "session_id", "message_id"),
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(_ID), primary_key=True),
    Column(
        "session_id",
        String(_ID),
        ForeignKey("sessions.session_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("principal", String(_ID), nullable=False),
    Column("status", String(32), nullable=False),
    Column("content", Text, nullable=False),
    Column("error", Text, nullable=True),
    Column("usage", JSON(none_as_null=True), nullable=True),
    Column("events", JSON, nullable=False),
    Column("client_request_id", String(_ID), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("completed_at", UtcDateTime, nullable=True),
    # Leases (several instances): the instance running the run, its fencing token (bumped when
    # another instance takes the run over), until when the owner holds it, and a cancel asked
    # of whichever instance owns it.
    Column("owner", String(_ID), nullable=True),
    Column("fence", Integer, nullable=False, server_default="0"),
    Column("lease_expires_at", UtcDateTime, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, server_default=false()),
    # What the request asked (OpenAI's APIs echo it: model, instructions, options, metadata).
    Column("request", JSON(none_as_null=True), nullable=True),
    Index("ix_runs_session", "session_id"),
    Index("ix_runs_status", "status"),
)

# A live run's checkpoints: each one appends the text and replay-index entries streamed since
# the previous one, so a checkpoint costs what is new, never the whole reply again. A run's
# saved state is its `runs` row followed by its parts. Finishing replaces the checkpoints with
# the final text: inline in the row, or (longer than `store.text.PART_CHARS`) as parts.
run_parts = Table(
    "run_parts",
    metadata,
    Column(
        "run_id",
        String(_ID),
        ForeignKey("runs.run_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("part", Integer, primary_key=True, autoincrement=False),
    Column("content", Text, nullable=False),
    Column("events", JSON, nullable=False),
)

# A message whose text is longer than `store.text.PART_CHARS`: its row's `content` is empty and
# its text is these parts in order, so no statement ever binds a whole long reply.
message_parts = Table(
    "message_parts",
    metadata,
    Column(
        "message_id",
        Integer,
        ForeignKey("messages.message_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("part", Integer, primary_key=True, autoincrement=False),
    Column("content", Text, nullable=False),
)

# A client's retry of the same request must find its run, never start a second one.
Index(
    "ux_runs_session_request",
    runs.c.session_id,
    runs.c.client_request_id,
    unique=True,
    sqlite_where=runs.c.client_request_id.is_not(None),
    postgresql_where=runs.c.client_request_id.is_not(None),
)

# One generation at a time per session, across every instance.
Index(
    "ux_runs_session_active",
    runs.c.session_id,
    unique=True,
    sqlite_where=runs.c.status.in_(UNFINISHED),
    postgresql_where=runs.c.status.in_(UNFINISHED),
)


def session_record(m: RowMapping) -> SessionRecord:
    """A `sessions` row as the record the protocol hands out."""
    return SessionRecord(
        session_id=m["session_id"],
        principal=m["principal"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        title=m["title"],
    )


def message_record(m: RowMapping) -> MessageRecord:
    """A `messages` row as the record the protocol hands out."""
    return MessageRecord(
        message_id=m["message_id"],
        session_id=m["session_id"],
        role=m["role"],
        content=m["content"],
        status=RunStatus(m["status"]),
        run_id=m["run_id"],
        created_at=m["created_at"],
        tool_calls=m["tool_calls"],
        tool_call_id=m["tool_call_id"],
        name=m["name"],
        tool_status=m["tool_status"],
        duration_ms=m["duration_ms"],
    )


def run_record(m: RowMapping) -> RunRecord:
    """A `runs` row as the record the protocol hands out."""
    return RunRecord(
        run_id=m["run_id"],
        session_id=m["session_id"],
        principal=m["principal"],
        status=RunStatus(m["status"]),
        content=m["content"],
        error=m["error"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        completed_at=m["completed_at"],
        usage=m["usage"],
        events=list(m["events"]),
        client_request_id=m["client_request_id"],
        owner=m["owner"],
        fence=m["fence"],
        lease_expires_at=m["lease_expires_at"],
        cancel_requested=m["cancel_requested"],
        request=m["request"],
    )
