"""Persistence of sessions, messages and runs behind one small protocol (`base.Store`), and
`create_store`, which picks the backend for a URL: the modules below import `base`, never this
package's top, so nothing imports in a circle."""

from __future__ import annotations

from martlet_molt.store.base import (
    Checkpoint,
    Lease,
    MessageRecord,
    NewMessage,
    RenewedLeases,
    RunRecord,
    SessionRecord,
    Store,
)

__all__ = [
    "Checkpoint",
    "Lease",
    "MessageRecord",
    "NewMessage",
    "RenewedLeases",
    "RunRecord",
    "SessionRecord",
    "Store",
    "create_store",
]


def create_store(url: str) -> Store:
    """Pick the backend for a SQLAlchemy URL (SQLite or PostgreSQL); import it lazily."""
    from martlet_molt.store.sql import SqlStore

    return SqlStore(url)
