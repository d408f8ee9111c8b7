"""Persistence of sessions, messages and runs behind one small protocol."""

from martlet_molt.store.base import (
    Checkpoint,
    Lease,
    MessageRecord,
    NewMessage,
    RenewedLeases,
    RunRecord,
    SessionRecord,
    Store,
    create_store,
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
