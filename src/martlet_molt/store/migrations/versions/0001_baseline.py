"""Baseline: the schema as the releases before the migrations made it (their version 3).

Revision ID: 0001
Revises:

A database those releases wrote has a `schema_version` table (1, 2 or 3) and no
`alembic_version`: it gets the tables its version lacked (1: `run_parts` and `message_parts`,
2: `message_parts`) and is then at this revision, keeping every row. An empty database gets
every table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = 255
_LEGACY_VERSION = 3  # the last version the releases before the migrations wrote


def _tables() -> list[sa.Table]:
    """The version-3 tables, frozen here: later revisions change them, never this one."""
    meta = sa.MetaData()
    stamp = sa.DateTime(timezone=True)
    schema_version = sa.Table(
        "schema_version",
        meta,
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    )
    sa.Table(
        "sessions",
        meta,
        sa.Column("session_id", sa.String(_ID), primary_key=True),
        sa.Column("principal", sa.String(_ID), nullable=False),
        sa.Column("created_at", stamp, nullable=False),
        sa.Column("updated_at", stamp, nullable=False),
        sa.Index("ix_sessions_principal_updated", "principal", "updated_at"),
    )
    messages = sa.Table(
        "messages",
        meta,
        sa.Column("message_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "session_id",
            sa.String(_ID),
            sa.ForeignKey("sessions.session_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(_ID), nullable=True),
        sa.Column("tool_calls", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("tool_call_id", sa.String(_ID), nullable=True),
        sa.Column("name", sa.String(_ID), nullable=True),
        sa.Column("created_at", stamp, nullable=False),
        sa.Index("ix_messages_session_message", "session_id", "message_id"),
    )
    runs = sa.Table(
        "runs",
        meta,
        sa.Column("run_id", sa.String(_ID), primary_key=True),
        sa.Column(
            "session_id",
            sa.String(_ID),
            sa.ForeignKey("sessions.session_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("principal", sa.String(_ID), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("usage", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("events", sa.JSON, nullable=False),
        sa.Column("client_request_id", sa.String(_ID), nullable=True),
        sa.Column("created_at", stamp, nullable=False),
        sa.Column("updated_at", stamp, nullable=False),
        sa.Column("completed_at", stamp, nullable=True),
        sa.Index("ix_runs_session", "session_id"),
        sa.Index("ix_runs_status", "status"),
    )
    sa.Index(
        "ux_runs_session_request",
        runs.c.session_id,
        runs.c.client_request_id,
        unique=True,
        sqlite_where=runs.c.client_request_id.is_not(None),
        postgresql_where=runs.c.client_request_id.is_not(None),
    )
    sa.Table(
        "run_parts",
        meta,
        sa.Column(
            "run_id",
            sa.String(_ID),
            sa.ForeignKey("runs.run_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("part", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("events", sa.JSON, nullable=False),
    )
    sa.Table(
        "message_parts",
        meta,
        sa.Column(
            "message_id",
            sa.Integer,
            sa.ForeignKey(messages.c.message_id, ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("part", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("content", sa.Text, nullable=False),
    )
    return [schema_version, *(t for t in meta.sorted_tables if t is not schema_version)]


def upgrade() -> None:
    """Create the version-3 tables a database lacks; record version 3 in a new database."""
    bind = op.get_bind()
    existing = set(sa.inspect(bind).get_table_names())
    tables = _tables()
    schema_version = tables[0]
    for table in tables:
        if table.name not in existing:
            table.create(bind)  # with its indexes
    if bind.scalar(sa.select(sa.func.count()).select_from(schema_version)) == 0:
        op.execute(schema_version.insert().values(version=_LEGACY_VERSION))


def downgrade() -> None:
    """Drop every table."""
    bind = op.get_bind()
    for table in reversed(_tables()[1:]):
        table.drop(bind)
    _tables()[0].drop(bind)
