"""Persistence of sessions, messages and runs behind one small protocol."""

from martlet_molt.store.base import (
    Checkpoint,
    MessageRecord,
    NewMessage,
    RunRecord,
    SessionRecord,
    Store,
    create_store,
)

__all__ = [
    "Checkpoint",
    "MessageRecord",
    "NewMessage",
    "RunRecord",
    "SessionRecord",
    "Store",
    "create_store",
]
