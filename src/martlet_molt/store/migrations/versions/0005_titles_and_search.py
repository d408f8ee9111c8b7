"""Titles and search: a session gets a `title`, and the database a full-text index of titles
and of user and assistant messages.

Revision ID: 0005
Revises: 0004

Existing sessions are titled from their first user message, as new ones are. SQLite gets FTS5
tables kept in step by triggers (see `store/search.py`); PostgreSQL stored `search_vector`
columns (`to_tsvector('simple', ...)`) on messages and their parts, and GIN indexes on them and
on the titles' vectors. Both are filled from the rows already there.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from martlet_molt.core.titles import TITLE_SOURCE_CHARS, title_from_message

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_BATCH = 500
_PART_KEY = 1 << 20  # store.search.PART_KEY, as of this revision
_ROLES = "('user', 'assistant')"

_SQLITE_UP = [
    # The inline text of user and assistant messages: `messages` is the content, nothing is
    # stored twice; the view makes `rebuild` and `snippet()` see exactly the indexed rows.
    "CREATE VIEW searchable_messages AS SELECT message_id, content FROM messages "
    f"WHERE role IN {_ROLES}",
    "CREATE VIRTUAL TABLE message_search USING fts5(content, content='searchable_messages', "
    "content_rowid='message_id', tokenize='unicode61 remove_diacritics 2')",
    f"""CREATE TRIGGER message_search_insert AFTER INSERT ON messages
        WHEN new.role IN {_ROLES} BEGIN
        INSERT INTO message_search(rowid, content) VALUES (new.message_id, new.content);
    END""",
    f"""CREATE TRIGGER message_search_delete AFTER DELETE ON messages
        WHEN old.role IN {_ROLES} BEGIN
        INSERT INTO message_search(message_search, rowid, content)
        VALUES ('delete', old.message_id, old.content);
    END""",
    # The parts of long messages (their row's text is empty): an index of their own.
    "CREATE VIRTUAL TABLE part_search USING fts5(message_id UNINDEXED, content, "
    "tokenize='unicode61 remove_diacritics 2')",
    f"""CREATE TRIGGER part_search_insert AFTER INSERT ON message_parts
        WHEN (SELECT role FROM messages WHERE message_id = new.message_id) IN {_ROLES} BEGIN
        INSERT INTO part_search(rowid, message_id, content)
        VALUES (new.message_id * {_PART_KEY} + new.part, new.message_id, new.content);
    END""",
    f"""CREATE TRIGGER part_search_delete AFTER DELETE ON message_parts BEGIN
        DELETE FROM part_search WHERE rowid = old.message_id * {_PART_KEY} + old.part;
    END""",
    "CREATE VIRTUAL TABLE title_search USING fts5(session_id UNINDEXED, title, "
    "tokenize='unicode61 remove_diacritics 2')",
    """CREATE TRIGGER title_search_insert AFTER INSERT ON sessions
        WHEN new.title IS NOT NULL BEGIN
        INSERT INTO title_search(session_id, title) VALUES (new.session_id, new.title);
    END""",
    """CREATE TRIGGER title_search_update AFTER UPDATE OF title ON sessions
        WHEN old.title IS NOT new.title BEGIN
        DELETE FROM title_search WHERE session_id = old.session_id;
        INSERT INTO title_search(session_id, title)
        SELECT new.session_id, new.title WHERE new.title IS NOT NULL;
    END""",
    """CREATE TRIGGER title_search_delete AFTER DELETE ON sessions BEGIN
        DELETE FROM title_search WHERE session_id = old.session_id;
    END""",
    # What is already there.
    "INSERT INTO message_search(message_search) VALUES ('rebuild')",
    f"""INSERT INTO part_search(rowid, message_id, content)
        SELECT p.message_id * {_PART_KEY} + p.part, p.message_id, p.content
        FROM message_parts AS p JOIN messages AS m ON m.message_id = p.message_id
        WHERE m.role IN {_ROLES}""",
    "INSERT INTO title_search(session_id, title) "
    "SELECT session_id, title FROM sessions WHERE title IS NOT NULL",
]
_SQLITE_DOWN = [
    *(
        f"DROP TRIGGER {name}"
        for name in (
            "message_search_insert",
            "message_search_delete",
            "part_search_insert",
            "part_search_delete",
            "title_search_insert",
            "title_search_update",
            "title_search_delete",
        )
    ),
    "DROP TABLE message_search",
    "DROP TABLE part_search",
    "DROP TABLE title_search",
    "DROP VIEW searchable_messages",
]
_POSTGRES_UP = [
    # Stored vectors: ranking a common word's many hits reads them instead of parsing every
    # text again (20x faster at 100,000 hits). Other roles' messages get none.
    "ALTER TABLE messages ADD COLUMN search_vector tsvector GENERATED ALWAYS AS "
    f"(CASE WHEN role IN {_ROLES} THEN to_tsvector('simple', content) END) STORED",
    "CREATE INDEX ix_messages_search ON messages USING gin (search_vector)",
    "ALTER TABLE message_parts ADD COLUMN search_vector tsvector GENERATED ALWAYS AS "
    "(to_tsvector('simple', content)) STORED",
    "CREATE INDEX ix_message_parts_search ON message_parts USING gin (search_vector)",
    # Titles are short: an index on the expression, parsed again only for the hits.
    "CREATE INDEX ix_sessions_title_search ON sessions "
    "USING gin (to_tsvector('simple', title)) WHERE title IS NOT NULL",
    # Statistics for the new columns and indexes at once: a planner without them misjudges
    # how many texts a word is in, and a search of two common words can take seconds.
    "ANALYZE messages",
    "ANALYZE message_parts",
    "ANALYZE sessions",
]
_POSTGRES_DOWN = [
    "DROP INDEX ix_sessions_title_search",
    "DROP INDEX ix_message_parts_search",
    "ALTER TABLE message_parts DROP COLUMN search_vector",
    "DROP INDEX ix_messages_search",
    "ALTER TABLE messages DROP COLUMN search_vector",
]


def _title_existing_sessions() -> None:
    """Each session with a user message is titled after its first one, as a new session is.
    Only the first `TITLE_SOURCE_CHARS` of a message are read (its first part if long)."""
    bind = op.get_bind()
    messages = sa.table(
        "messages",
        sa.column("message_id", sa.Integer),
        sa.column("session_id", sa.String),
        sa.column("role", sa.String),
        sa.column("content", sa.Text),
    )
    parts = sa.table(
        "message_parts",
        sa.column("message_id", sa.Integer),
        sa.column("part", sa.Integer),
        sa.column("content", sa.Text),
    )
    sessions = sa.table("sessions", sa.column("session_id", sa.String), sa.column("title"))
    firsts = bind.execute(
        sa.select(sa.func.min(messages.c.message_id))
        .where(messages.c.role == "user")
        .group_by(messages.c.session_id)
    )
    first_ids = sorted(message_id for (message_id,) in firsts)
    first_part = (
        sa.select(sa.func.substr(parts.c.content, 1, TITLE_SOURCE_CHARS))
        .where(parts.c.message_id == messages.c.message_id, parts.c.part == 1)
        .scalar_subquery()
    )
    heads = sa.select(
        messages.c.session_id,
        sa.func.substr(messages.c.content, 1, TITLE_SOURCE_CHARS),
        first_part,
    ).where(messages.c.message_id.in_(sa.bindparam("ids", expanding=True)))
    rename = (
        sa.update(sessions)
        .where(sessions.c.session_id == sa.bindparam("b_session_id"))
        .values(title=sa.bindparam("b_title"))
    )
    for start in range(0, len(first_ids), _BATCH):
        titles: list[dict[str, Any]] = []
        for session_id, inline, part in bind.execute(
            heads, {"ids": first_ids[start : start + _BATCH]}
        ):
            title = title_from_message(inline or part or "")
            if title is not None:
                titles.append({"b_session_id": session_id, "b_title": title})
        if titles:
            bind.execute(rename, titles)


def upgrade() -> None:
    """Add the title column, title the sessions there are, and build the search index."""
    op.add_column("sessions", sa.Column("title", sa.Text, nullable=True))
    _title_existing_sessions()
    statements = _SQLITE_UP if op.get_bind().dialect.name == "sqlite" else _POSTGRES_UP
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    """Drop the search index and the titles."""
    statements = _SQLITE_DOWN if op.get_bind().dialect.name == "sqlite" else _POSTGRES_DOWN
    for statement in statements:
        op.execute(statement)
    op.drop_column("sessions", "title")
