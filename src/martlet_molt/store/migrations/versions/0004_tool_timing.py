"""Tool timing: a saved tool result keeps whether the call failed and how long it took.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the nullable `tool_status` and `duration_ms` columns (older messages have none)."""
    op.add_column("messages", sa.Column("tool_status", sa.String(16), nullable=True))
    op.add_column("messages", sa.Column("duration_ms", sa.Integer, nullable=True))


def downgrade() -> None:
    """Drop them."""
    for name in ("duration_ms", "tool_status"):
        op.drop_column("messages", name)
