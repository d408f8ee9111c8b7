"""Persistence of sessions, messages and runs behind one small protocol."""

from martlet_molt.store.base import (
    MessageRecord,
    NewMessage,
    RunRecord,
    SessionRecord,
    Store,
    create_store,
)

__all__ = ["MessageRecord", "NewMessage", "RunRecord", "SessionRecord", "Store", "create_store"]
