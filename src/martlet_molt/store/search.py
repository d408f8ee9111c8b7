"""Finding old chats: full-text search over session titles and message text, with the passage
that matched. Each function is a piece of a `SqlStore` transaction, over its `Connection`.

The database's own full-text engine does the work, never a `LIKE` scan:

- SQLite: FTS5 tables (revision 0005 makes them; triggers keep them in step with every insert
  and delete, cascades included). `message_search` indexes the user and assistant messages held
  inline, with `messages` itself as its content (through the `searchable_messages` view, so
  nothing is stored twice); `part_search` the parts of long messages (rowid = message id *
  `PART_KEY` + part); `title_search` the titles. Ranked by `bm25`, passages by `snippet()`.
- PostgreSQL: a stored `search_vector` (`to_tsvector('simple', ...)`, a generated column) on
  messages and their parts, and GIN indexes on them and on the titles' vectors, queried with
  the same expressions; ranked by `ts_rank`, passages by `ts_headline`.

Both use no stemming (chats are in any language) and match each word as a prefix, so a search
box finds "Lisbon" from "lisb". A chat is found when it holds every word of the query
somewhere, in its title or any of its messages (one word may be in the question, another in
the answer); it is ranked by the sum of each word's best rank (a title match counts double),
and shown with the passage of the text that holds the most of the words. A person's query is
never handed to the engine's own syntax: only its words are kept (letters and digits), each
quoted and looked up on its own. Tool results and system prompts are not searched: they are
not what a person remembers a chat by. A long message is indexed part by part (`store.text`),
so a passage comes from one part (64 Ki characters).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import Connection, Integer, String, Text, text

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

POSTGRES_SEARCH_COLUMN = "search_vector"
"""The generated tsvector column revision 0005 adds to `messages` and `message_parts`."""

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


def fts5_term(term: str) -> str:
    """An FTS5 query for one word: quoted (so it is never syntax), matched as a prefix."""
    return f'"{term}"*'


def tsquery_term(term: str) -> str:
    """The same as a PostgreSQL `to_tsquery` text: a quoted lexeme, matched as a prefix."""
    return f"'{term}':*"


def any_of(terms: Sequence[str], *, sqlite: bool) -> str:
    """A query matching any of the terms: what a passage highlights."""
    if sqlite:
        return " OR ".join(fts5_term(term) for term in terms)
    return " | ".join(tsquery_term(term) for term in terms)


_ROLES = ", ".join(f"'{role}'" for role in SEARCHED_ROLES)


def _sqlite_hits(n: int) -> str:
    """Every text of the principal's that holds term `n`: its session, where it is, its rank."""
    return f"""
    SELECT {n} AS term, m.session_id AS session_id, 'message' AS source,
           message_search.rowid AS doc, bm25(message_search) AS score
    FROM message_search
    JOIN messages AS m ON m.message_id = message_search.rowid
    JOIN sessions AS s ON s.session_id = m.session_id AND s.principal = :principal
    WHERE message_search MATCH :t{n}
    UNION ALL
    SELECT {n}, m.session_id, 'part', part_search.rowid, bm25(part_search)
    FROM part_search
    JOIN messages AS m ON m.message_id = part_search.message_id
    JOIN sessions AS s ON s.session_id = m.session_id AND s.principal = :principal
    WHERE part_search MATCH :t{n}
    UNION ALL
    SELECT {n}, s.session_id, 'title', title_search.rowid, 2 * bm25(title_search)
    FROM title_search
    JOIN sessions AS s ON s.session_id = title_search.session_id AND s.principal = :principal
    WHERE title_search MATCH :t{n}
    """


def _postgres_hits(n: int) -> str:
    """The same on PostgreSQL, on the stored `search_vector`s and the titles' expression, which
    their GIN indexes are built on."""
    query = f"to_tsquery('simple', :t{n})"
    return f"""
    SELECT {n} AS term, m.session_id AS session_id, 'message' AS source,
           m.message_id::bigint AS doc, -ts_rank(m.search_vector, {query}) AS score
    FROM messages AS m
    JOIN sessions AS s ON s.session_id = m.session_id AND s.principal = :principal
    WHERE m.role IN ({_ROLES}) AND m.search_vector @@ {query}
    UNION ALL
    SELECT {n}, m.session_id, 'part', p.message_id::bigint * {PART_KEY} + p.part,
           -ts_rank(p.search_vector, {query})
    FROM message_parts AS p
    JOIN messages AS m ON m.message_id = p.message_id
    JOIN sessions AS s ON s.session_id = m.session_id AND s.principal = :principal
    WHERE m.role IN ({_ROLES}) AND p.search_vector @@ {query}
    UNION ALL
    SELECT {n}, s.session_id, 'title', 0, -2 * ts_rank(to_tsvector('simple', s.title), {query})
    FROM sessions AS s
    WHERE s.principal = :principal AND s.title IS NOT NULL
      AND to_tsvector('simple', s.title) @@ {query}
    """


def _found(terms: int, sqlite: bool) -> str:
    """The principal's sessions holding every term somewhere (title or any message), ranked
    by the sum of each term's best rank."""
    hits = "\n    UNION ALL\n".join(
        (_sqlite_hits if sqlite else _postgres_hits)(n) for n in range(terms)
    )
    return f"""
        WITH hits AS MATERIALIZED ({hits}),
        found AS MATERIALIZED (
            SELECT session_id, SUM(score) AS score
            FROM (
                SELECT session_id, term, MIN(score) AS score
                FROM hits GROUP BY session_id, term
            ) AS per_term
            GROUP BY session_id HAVING COUNT(*) = {terms}
        )
    """


_COLUMNS: dict[str, Any] = {
    "session_id": String,
    "source": String,
    "doc": Integer,
    "principal": String,
    "title": Text,
    "created_at": UtcDateTime,
    "updated_at": UtcDateTime,
    "total": Integer,
}


@cache
def _page(terms: int, sqlite: bool) -> Any:
    """One page of what `_found` finds, each session with the text holding the most terms
    (a message before the title, which lists show anyway; then the best ranked, then the
    latest): looked for only among the page's sessions."""
    return text(
        _found(terms, sqlite)
        + """,
        page AS MATERIALIZED (
            SELECT f.session_id, f.score, s.principal, s.title, s.created_at, s.updated_at,
                   COUNT(*) OVER () AS total
            FROM found AS f JOIN sessions AS s ON s.session_id = f.session_id
            ORDER BY f.score, s.updated_at DESC, f.session_id
            LIMIT :limit OFFSET :offset
        ),
        texts AS (
            SELECT h.session_id, h.source, h.doc, ROW_NUMBER() OVER (
                PARTITION BY h.session_id
                ORDER BY COUNT(*) DESC, CASE WHEN h.source = 'title' THEN 1 ELSE 0 END,
                         SUM(h.score), h.doc DESC
            ) AS n
            FROM hits AS h JOIN page AS p ON p.session_id = h.session_id
            GROUP BY h.session_id, h.source, h.doc
        )
        SELECT p.session_id, t.source, t.doc, p.principal, p.title, p.created_at,
               p.updated_at, p.total
        FROM page AS p JOIN texts AS t ON t.session_id = p.session_id AND t.n = 1
        ORDER BY p.score, p.updated_at DESC, p.session_id
        """
    ).columns(**_COLUMNS)


@cache
def _count(terms: int, sqlite: bool) -> Any:
    return text(_found(terms, sqlite) + "SELECT COUNT(*) FROM found")


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
    term = fts5_term if sqlite else tsquery_term
    parameters: dict[str, Any] = {f"t{n}": term(word) for n, word in enumerate(terms)}
    parameters.update(principal=principal, limit=limit, offset=offset)
    rows = conn.execute(_page(len(terms), sqlite), parameters).all()
    if not rows:
        total = conn.scalar(_count(len(terms), sqlite), parameters) if offset else 0
        return [], int(total or 0)
    match = any_of(terms, sqlite=sqlite)
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
