"""Run requests: what a run was asked (model, instructions, options, metadata), as the API
that took the request echoes it back.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the nullable `request` column (older runs have none)."""
    op.add_column("runs", sa.Column("request", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    """Drop the `request` column."""
    op.drop_column("runs", "request")
