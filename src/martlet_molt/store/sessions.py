"""A session's own row: created or touched when a run starts (titled by its first user
message), read, and renamed. The statements `SqlStore` runs for them, built once at import."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from martlet_molt.core.titles import TITLE_SOURCE_CHARS, title_from_message
from martlet_molt.store.base import NewMessage
from martlet_molt.store.schema import sessions
from martlet_molt.store.text import head_of


def _session_upsert(dialect_insert: Any) -> Any:
    """Create a session or touch it, handing back its owner either way; a session without a
    title yet gets the one its new messages give."""
    upsert = dialect_insert(sessions)
    return upsert.on_conflict_do_update(
        index_elements=[sessions.c.session_id],
        set_={
            "updated_at": upsert.excluded.updated_at,
            "title": func.coalesce(sessions.c.title, upsert.excluded.title),
        },
    ).returning(sessions.c.principal)


UPSERT_SESSION = {
    "sqlite": _session_upsert(sqlite_insert),
    "postgresql": _session_upsert(pg_insert),
}
"""By dialect: insert the session row (`session_id`, `principal`, times, `title`) or touch it."""

SELECT_SESSION = select(sessions).where(sessions.c.session_id == bindparam("session_id"))

RENAME_SESSION = (
    update(sessions)
    .where(
        sessions.c.session_id == bindparam("b_session_id"),
        sessions.c.principal == bindparam("b_principal"),
    )
    .values(title=bindparam("b_title"))
    .returning(*sessions.c)
)
"""Only the principal's own session; `updated_at` stays: renaming is not activity."""


def first_title(messages: Sequence[NewMessage]) -> str | None:
    """The title the first user message with visible text gives a session."""
    for message in messages:
        if message.role == "user":
            title = title_from_message(head_of(message.content, TITLE_SOURCE_CHARS))
            if title is not None:
                return title
    return None
