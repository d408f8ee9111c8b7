"""Finding old chats: full-text search over session titles and message text, with the passage
that matched. Each function is a piece of a `SqlStore` transaction, over its `Connection`.

The database's own full-text engine does the work, never a `LIKE` scan:

- SQLite: FTS5 tables (revision 0005 makes them; triggers keep them in step with every insert
  and delete, cascades included). `message_search` indexes the user and assistant messages held
  inline, with `messages` itself as its content (through the `searchable_messages` view, so
  nothing is stored twice); `part_search` the parts of long messages (rowid = message id *
  `PART_KEY` + part); `title_search` the titles. Ranked by `bm25`, passages by `snippet()`.
- PostgreSQL: GIN indexes on `to_tsvector('simple', ...)` of the same three texts, queried with
  the same expressions; ranked by `ts_rank`, passages by `ts_headline`.

Both use no stemming (chats are in any language) and match each word as a prefix, so a search
box finds "Lisbon" from "lisb". A long message is searched part by part (`store.text`): the
words of one query are found together within one part (64 Ki characters). A person's query is
never handed to the engine's own syntax: only its words are kept (letters and digits), each
quoted, all of them required. Tool results and system prompts are not searched: they are not
what a person remembers a chat by.

A session is found once, by its best passage; a title match counts double.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Float, Integer, String, Text, text

from martlet_molt.store.base import SessionHit, SessionRecord
from martlet_molt.store.schema import UtcDateTime

SEARCHED_ROLES = ("user", "assistant")
"""The messages a search looks through."""

MAX_TERMS = 16
"""Words of a query beyond this many are ignored."""

MAX_TERM_CHARS = 64
"""A longer word is cut to this length (and still matches as a prefix)."""

PART_KEY = 1 << 20
"""`part_search` rowids: message id * PART_KEY + part number (a message has far fewer parts)."""

SQLITE_SEARCH_TABLES = ("message_search", "part_search", "title_search")
"""The FTS5 tables (each with its own `<name>_*` shadow tables) that revision 0005 makes."""

POSTGRES_SEARCH_INDEXES = (
    "ix_messages_search",
    "ix_message_parts_search",
    "ix_sessions_title_search",
)
"""The GIN indexes that revision 0005 makes on PostgreSQL."""

_MARK, _END_MARK = "\ue000", "\ue001"
"""Private-use characters around each match in a passage, turned into offsets here."""

_WORD = re.compile(r"[^\W_]+")
_SPACE = re.compile(r"\s+")
_SNIPPET_TOKENS = 16
_WHOLE_TEXT_CHARS = 160
_MARKS = f'StartSel="{_MARK}", StopSel="{_END_MARK}"'
_HEADLINE = f'{_MARKS}, MaxWords=24, MinWords=10, MaxFragments=2, FragmentDelimiter=" … "'
_WHOLE_HEADLINE = f"{_MARKS}, HighlightAll=true"


def search_terms(query: str) -> list[str]:
    """The words of a person's query, lower-cased, each once, in order: whatever else it holds
    (quotes, `*`, operators, punctuation) is dropped, so no input is a syntax error."""
    words = _WORD.findall(unicodedata.normalize("NFC", query).lower())
    return list(dict.fromkeys(word[:MAX_TERM_CHARS] for word in words))[:MAX_TERMS]


def fts5_query(terms: Sequence[str]) -> str:
    """An FTS5 query requiring every term, each quoted and matched as a prefix."""
    return " ".join(f'"{term}"*' for term in terms)


def tsquery(terms: Sequence[str]) -> str:
    """The same as a PostgreSQL `to_tsquery` text: quoted lexemes, prefixes, all required."""
    return " & ".join(f"'{term}':*" for term in terms)


_ROLES = ", ".join(f"'{role}'" for role in SEARCHED_ROLES)

_SQLITE_HITS = """
    SELECT m.session_id AS session_id, 'message' AS source, message_search.rowid AS doc,
           bm25(message_search) AS score
    FROM message_search JOIN messages AS m ON m.message_id = message_search.rowid
    WHERE message_search MATCH :match
    UNION ALL
    SELECT m.session_id, 'part', part_search.rowid, bm25(part_search)
    FROM part_search JOIN messages AS m ON m.message_id = part_search.message_id
    WHERE part_search MATCH :match
    UNION ALL
    SELECT title_search.session_id, 'title', title_search.rowid, 2 * bm25(title_search)
    FROM title_search
    WHERE title_search MATCH :match
"""

_POSTGRES_HITS = f"""
    SELECT m.session_id AS session_id, 'message' AS source, m.message_id::bigint AS doc,
           -ts_rank(to_tsvector('simple', m.content), to_tsquery('simple', :match)) AS score
    FROM messages AS m
    WHERE m.role IN ({_ROLES})
      AND to_tsvector('simple', m.content) @@ to_tsquery('simple', :match)
    UNION ALL
    SELECT m.session_id, 'part', p.message_id::bigint * {PART_KEY} + p.part,
           -ts_rank(to_tsvector('simple', p.content), to_tsquery('simple', :match))
    FROM message_parts AS p JOIN messages AS m ON m.message_id = p.message_id
    WHERE m.role IN ({_ROLES})
      AND to_tsvector('simple', p.content) @@ to_tsquery('simple', :match)
    UNION ALL
    SELECT s.session_id, 'title', 0,
           -2 * ts_rank(to_tsvector('simple', s.title), to_tsquery('simple', :match))
    FROM sessions AS s
    WHERE s.title IS NOT NULL
      AND to_tsvector('simple', s.title) @@ to_tsquery('simple', :match)
"""


def _best_per_session(hits: str) -> str:
    """Each of the principal's sessions once, by its best hit (ties: the latest message)."""
    return f"""
        WITH hits AS ({hits}),
        best AS (
            SELECT h.session_id, h.source, h.doc, h.score,
                   s.principal, s.title, s.created_at, s.updated_at,
                   ROW_NUMBER() OVER (
                       PARTITION BY h.session_id ORDER BY h.score, h.doc DESC
                   ) AS n
            FROM hits AS h JOIN sessions AS s ON s.session_id = h.session_id
            WHERE s.principal = :principal
        )
    """


_COLUMNS: dict[str, Any] = {
    "session_id": String,
    "source": String,
    "doc": Integer,
    "score": Float,
    "principal": String,
    "title": Text,
    "created_at": UtcDateTime,
    "updated_at": UtcDateTime,
    "total": Integer,
}


def _page(hits: str) -> Any:
    return text(
        _best_per_session(hits)
        + """
        SELECT session_id, source, doc, score, principal, title, created_at, updated_at,
               COUNT(*) OVER () AS total
        FROM best WHERE n = 1
        ORDER BY score, updated_at DESC, session_id
        LIMIT :limit OFFSET :offset
        """
    ).columns(**_COLUMNS)


def _count(hits: str) -> Any:
    return text(_best_per_session(hits) + "SELECT COUNT(*) FROM best WHERE n = 1")


_PAGE = {"sqlite": _page(_SQLITE_HITS), "postgresql": _page(_POSTGRES_HITS)}
_COUNT = {"sqlite": _count(_SQLITE_HITS), "postgresql": _count(_POSTGRES_HITS)}

_SQLITE_PASSAGES = {
    source: text(
        f"SELECT snippet({table}, {column}, :mark, :end_mark, '…', {_SNIPPET_TOKENS}) "
        f"FROM {table} WHERE {table} MATCH :match AND rowid = :doc"
    )
    for source, table, column in (
        ("message", "message_search", 0),
        ("part", "part_search", 1),
        ("title", "title_search", 1),
    )
}
_POSTGRES_PASSAGES = {
    # A short text is its own passage (ts_headline would drop its edge words and punctuation).
    source: text(
        f"SELECT ts_headline('simple', {column}, to_tsquery('simple', :match), "
        f"CASE WHEN length({column}) <= {_WHOLE_TEXT_CHARS} THEN :whole ELSE :options END) "
        f"FROM {where}"
    )
    for source, column, where in (
        ("message", "content", "messages WHERE message_id = :message_id"),
        ("part", "content", "message_parts WHERE message_id = :message_id AND part = :part"),
        ("title", "title", "sessions WHERE session_id = :session_id"),
    )
}


def highlighted(passage: str) -> tuple[str, list[tuple[int, int]]]:
    """A passage with its match marks taken out, on one line, and where the marks were: a list
    of [start, end) character offsets into the returned text."""
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    length, start = 0, None
    for piece in re.split(f"([{_MARK}{_END_MARK}])", _SPACE.sub(" ", passage).strip()):
        if piece == _MARK:
            start = length
        elif piece == _END_MARK:
            if start is not None and length > start:
                spans.append((start, length))
            start = None
        else:
            out.append(piece)
            length += len(piece)
    return "".join(out), spans


def _passage(conn: Connection, sqlite: bool, row: Any, match: str) -> str:
    if sqlite:
        parameters = {"match": match, "doc": row.doc, "mark": _MARK, "end_mark": _END_MARK}
        return str(conn.scalar(_SQLITE_PASSAGES[row.source], parameters) or "")
    message_id, part = divmod(row.doc, PART_KEY) if row.source == "part" else (row.doc, 0)
    parameters = {
        "match": match,
        "options": _HEADLINE,
        "whole": _WHOLE_HEADLINE,
        "message_id": message_id,
        "part": part,
        "session_id": row.session_id,
    }
    return str(conn.scalar(_POSTGRES_PASSAGES[row.source], parameters) or "")


def find_sessions(
    conn: Connection, *, sqlite: bool, principal: str, query: str, limit: int, offset: int
) -> tuple[list[SessionHit], int]:
    """One page of the principal's sessions that match `query`, best first (then the most
    recently active), each with its best passage; and how many match in all."""
    terms = search_terms(query)
    if not terms:
        return [], 0
    dialect = "sqlite" if sqlite else "postgresql"
    match = fts5_query(terms) if sqlite else tsquery(terms)
    parameters = {"match": match, "principal": principal, "limit": limit, "offset": offset}
    rows = conn.execute(_PAGE[dialect], parameters).all()
    if not rows:
        total = conn.scalar(_COUNT[dialect], parameters) if offset else 0
        return [], int(total or 0)
    hits: list[SessionHit] = []
    for row in rows:
        passage, spans = highlighted(_passage(conn, sqlite, row, match))
        session = SessionRecord(
            session_id=row.session_id,
            principal=row.principal,
            created_at=row.created_at,
            updated_at=row.updated_at,
            title=row.title,
        )
        hits.append(
            SessionHit(session, passage, spans, "title" if row.source == "title" else "message")
        )
    return hits, int(rows[0].total)
