"""Leases: runs get an owner, a fencing token, a lease deadline and a cancel flag; a session
has at most one unfinished run.

Revision ID: 0002
Revises: 0001

Before the one-active-run index is built, every unfinished run of a session but its newest is
marked `interrupted` (their checkpointed text stays readable). `schema_version` is set to 4,
which the releases before the migrations refuse to open.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from martlet_molt.store.schema import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_UNFINISHED = ("pending", "streaming")
_LEGACY_GUARD = 4  # the releases before the migrations refuse anything above 3


def _runs() -> sa.TableClause:
    return sa.table(
        "runs",
        sa.column("run_id", sa.String),
        sa.column("session_id", sa.String),
        sa.column("status", sa.String),
        sa.column("error", sa.Text),
        sa.column("created_at", UtcDateTime),
        sa.column("updated_at", UtcDateTime),
        sa.column("completed_at", UtcDateTime),
    )


def _interrupt_all_but_the_newest_unfinished() -> None:
    runs = _runs()
    newer = runs.alias("newer")
    now = datetime.now(UTC)
    op.execute(
        runs.update()
        .where(
            runs.c.status.in_(_UNFINISHED),
            sa.exists().where(
                newer.c.session_id == runs.c.session_id,
                newer.c.status.in_(_UNFINISHED),
                sa.or_(
                    newer.c.created_at > runs.c.created_at,
                    sa.and_(
                        newer.c.created_at == runs.c.created_at, newer.c.run_id > runs.c.run_id
                    ),
                ),
            ),
        )
        .values(status="interrupted", error="interrupted", updated_at=now, completed_at=now)
    )


def upgrade() -> None:
    """Add the lease columns and the one-active-run-per-session index."""
    op.add_column("runs", sa.Column("owner", sa.String(255), nullable=True))
    op.add_column("runs", sa.Column("fence", sa.Integer, nullable=False, server_default="0"))
    op.add_column("runs", sa.Column("lease_expires_at", sa.DateTime(timezone=True)))
    op.add_column(
        "runs",
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    _interrupt_all_but_the_newest_unfinished()
    status = sa.column("status", sa.String)
    op.create_index(
        "ux_runs_session_active",
        "runs",
        ["session_id"],
        unique=True,
        sqlite_where=status.in_(_UNFINISHED),
        postgresql_where=status.in_(_UNFINISHED),
    )
    schema_version = sa.table("schema_version", sa.column("version", sa.Integer))
    op.execute(schema_version.delete())
    op.execute(schema_version.insert().values(version=_LEGACY_GUARD))


def downgrade() -> None:
    """Drop the index and the lease columns; `schema_version` says 3 again."""
    op.drop_index("ux_runs_session_active", table_name="runs")
    # Not a batch (copy and rename): dropping `runs` would cascade to `run_parts` on SQLite.
    for name in ("cancel_requested", "lease_expires_at", "fence", "owner"):
        op.drop_column("runs", name)
    schema_version = sa.table("schema_version", sa.column("version", sa.Integer))
    op.execute(schema_version.update().values(version=3))
