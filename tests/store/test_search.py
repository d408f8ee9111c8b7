"""Titles, renaming and full-text search in the `Store` contract, on SQLite (FTS5) and
PostgreSQL (tsvector, GIN) alike (see conftest)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Connection, text

from martlet_molt.core.status import RunStatus
from martlet_molt.errors import SessionNotFound
from martlet_molt.store.base import NewMessage, SessionHit
from martlet_molt.store.search import (
    POSTGRES_SEARCH_INDEXES,
    SQLITE_SEARCH_TABLES,
    any_of,
    fts5_term,
    highlighted,
    search_terms,
    tsquery_term,
)
from martlet_molt.store.sql import SqlStore
from martlet_molt.store.text import PART_CHARS, TextPieces
from tests.store.test_sql_store import finish, is_postgres, start


async def found(store: SqlStore, query: str, principal: str = "alice") -> list[str]:
    """The ids of the sessions a search finds, in order."""
    hits, total = await store.search_sessions(principal=principal, query=query, limit=50, offset=0)
    assert total == len(hits)
    return [hit.session.session_id for hit in hits]


def marked(hit: SessionHit) -> list[str]:
    """The highlighted words of a hit's passage."""
    return [hit.snippet[start:end] for start, end in hit.highlights]


# ---------------------------------------------------------------- titles


@pytest.mark.asyncio
async def test_a_session_is_titled_after_its_first_user_message(store: SqlStore) -> None:
    await start(store, 1, user_message="  Plan a trip\n\nto   Lisbon  ")
    long = "Tell me everything about the history of the Portuguese empire in the sixteenth age"
    await start(store, 2, user_message=long)
    await start(store, 3, user_message=" \n\t ")
    system = NewMessage(role="system", content="You are terse.")
    question = NewMessage(role="user", content="What is SSE?")
    await start(store, 4, user_message=None, inputs=[system, question])

    titles = {n: (await store.get_session(f"s{n}")) for n in range(1, 5)}
    assert {n: s.title if s else "missing" for n, s in titles.items()} == {
        1: "Plan a trip to Lisbon",
        2: "Tell me everything about the history of the Portuguese…",
        3: None,
        4: "What is SSE?",
    }
    # Later messages keep the title; a session still without one gets it from the next.
    await finish(store, "r1")
    await start(store, 1, run_id="r1b", user_message="Something else entirely")
    await finish(store, "r3")
    await start(store, 3, run_id="r3b", user_message="Now with words")
    [listed], _ = await store.list_sessions(principal="alice", limit=1, offset=0)
    assert (listed.session_id, listed.title) == ("s3", "Now with words")
    first = await store.get_session("s1")
    assert first is not None
    assert first.title == "Plan a trip to Lisbon"


@pytest.mark.asyncio
async def test_a_long_first_message_in_parts_titles_its_session(store: SqlStore) -> None:
    pieces = TextPieces(["Summarise this ", "long document: " + "x" * PART_CHARS, " and more"])
    await start(store, user_message=None, inputs=[NewMessage(role="user", content=pieces)])
    session = await store.get_session("s1")
    assert session is not None
    assert session.title == "Summarise this long document…"
    [message] = await store.list_messages("s1")
    assert message.content == str(pieces)


@pytest.mark.asyncio
async def test_renaming_changes_only_the_title(store: SqlStore) -> None:
    await start(store, 1, user_message="first chat")
    await finish(store, "r1")
    await start(store, 2, user_message="second chat")
    before = await store.get_session("s1")
    assert before is not None

    renamed = await store.rename_session("s1", principal="alice", title="Trip 🚋 «Lisboa»")
    assert renamed is not None
    assert renamed.title == "Trip 🚋 «Lisboa»"
    assert (renamed.created_at, renamed.updated_at) == (before.created_at, before.updated_at)
    assert await store.get_session("s1") == renamed
    listed, _ = await store.list_sessions(principal="alice", limit=5, offset=0)
    assert [s.session_id for s in listed] == ["s2", "s1"]  # renaming is not activity

    # Another principal's session, or none, is not found and stays as it was.
    assert await store.rename_session("s1", principal="bob", title="mine now") is None
    assert await store.rename_session("nope", principal="alice", title="x") is None
    assert await store.get_session("s1") == renamed
    with pytest.raises(SessionNotFound):
        await start(store, 1, run_id="r9", principal="bob")
    assert await store.get_session("s1") == renamed


# ---------------------------------------------------------------- search


@pytest.mark.asyncio
async def test_search_finds_words_in_messages_and_titles(store: SqlStore) -> None:
    await start(store, 1, user_message="Plan a trip to Lisbon in May")
    await finish(
        store,
        "r1",
        messages=[NewMessage(role="assistant", content="Ride the old trams up to the castle.")],
    )
    await start(store, 2, user_message="Explain server-sent events")
    await start(store, 3, user_message="Lisbon, for someone else", principal="bob")

    assert await found(store, "lisbon") == ["s1"]
    assert await found(store, "LISB") == ["s1"]  # any case, as a prefix
    [hit], _ = await store.search_sessions(principal="alice", query="lisbon", limit=5, offset=0)
    assert (hit.matched, marked(hit)) == ("message", ["Lisbon"])  # the title is shown anyway
    assert await found(store, "trams castle") == ["s1"]  # the assistant's words
    assert await found(store, "trams events") == []  # every word is needed
    assert await found(store, "lisbon castle") == ["s1"]  # in any of the chat's texts
    [hit], _ = await store.search_sessions(
        principal="alice", query="castle old lisbon", limit=5, offset=0
    )
    assert (hit.matched, marked(hit)) == ("message", ["old", "castle"])  # the most words
    assert await found(store, "lisbon", principal="bob") == ["s3"]
    assert await found(store, "nowhere") == []

    [hit], _ = await store.search_sessions(principal="alice", query="castle", limit=5, offset=0)
    assert hit.matched == "message"
    assert hit.snippet == "Ride the old trams up to the castle."
    assert marked(hit) == ["castle"]
    assert hit.session.title == "Plan a trip to Lisbon in May"

    await store.rename_session("s2", principal="alice", title="Streaming notes")
    assert await found(store, "streaming") == ["s2"]
    [hit], _ = await store.search_sessions(principal="alice", query="stream", limit=5, offset=0)
    assert (hit.matched, hit.snippet, marked(hit)) == ("title", "Streaming notes", ["Streaming"])
    # The old title is gone from the index; the message that gave it is still searchable.
    await store.rename_session("s1", principal="alice", title="Holiday")
    [hit], _ = await store.search_sessions(principal="alice", query="plan", limit=5, offset=0)
    assert (hit.session.session_id, hit.matched) == ("s1", "message")
    assert hit.snippet == "Plan a trip to Lisbon in May"
    await store.start_run(
        session_id="s4",
        principal="alice",
        run_id="r4",
        inputs=[NewMessage(role="user", content="Holiday plans")],
    )
    assert sorted(await found(store, "holiday")) == ["s1", "s4"]


@pytest.mark.asyncio
async def test_tool_results_and_system_prompts_are_not_searched(store: SqlStore) -> None:
    system = NewMessage(role="system", content="You speak like a pirate.")
    await start(store, user_message=None, inputs=[system, NewMessage("user", "weather?")])
    call = {"id": "c1", "type": "function", "function": {"name": "forecast", "arguments": "{}"}}
    await finish(
        store,
        "r1",
        messages=[
            NewMessage(role="assistant", content="", tool_calls=[call]),
            NewMessage(role="tool", content="drizzle", tool_call_id="c1", name="forecast"),
            NewMessage(role="assistant", content="Expect sunshine."),
        ],
    )
    assert await found(store, "pirate") == []
    assert await found(store, "drizzle") == []
    assert await found(store, "sunshine") == ["s1"]


@pytest.mark.asyncio
async def test_long_messages_are_searched_in_every_part(store: SqlStore) -> None:
    filler = "lorem " * (PART_CHARS // 6)
    reply = TextPieces([filler, "the needle is here ", filler, "and a haystack at the end"])
    await start(store)
    await finish(
        store,
        "r1",
        content=reply,
        messages=[NewMessage(role="assistant", content=reply)],
    )
    [hit], _ = await store.search_sessions(principal="alice", query="needle", limit=5, offset=0)
    assert hit.matched == "message"
    assert marked(hit) == ["needle"]
    assert "needle is here" in hit.snippet
    assert len(hit.snippet) < 300
    assert await found(store, "haystack") == ["s1"]


@pytest.mark.asyncio
async def test_deleting_takes_chats_out_of_the_index(store: SqlStore) -> None:
    for n in (1, 2, 3):
        await start(store, n, user_message=f"kiwi number {n}")
        await finish(store, f"r{n}", messages=[NewMessage("assistant", f"mango reply {n}")])
    await store.start_run(session_id="s3", principal="alice", run_id="r3b", user_message="fig")
    await finish(store, "r3b", messages=[NewMessage("assistant", "papaya")])
    assert await found(store, "kiwi") == ["s3", "s2", "s1"]  # as good: the newest first

    assert await store.delete_session("s2")
    assert await found(store, "kiwi") == ["s3", "s1"]
    assert await found(store, "mango") == ["s3", "s1"]
    assert await store.delete_run("r3b")  # the session keeps its other run
    assert await found(store, "papaya") == []
    assert await found(store, "fig") == []
    assert await found(store, "mango") == ["s3", "s1"]
    assert await store.delete_run("r1")  # its last run: the session goes, title and all
    assert await found(store, "kiwi") == ["s3"]

    def index_size(conn: Connection) -> int:
        if conn.dialect.name != "sqlite":
            return 0
        return sum(
            int(conn.scalar(text(f"SELECT COUNT(*) FROM {table}")) or 0)
            for table in ("part_search", "title_search")
        )

    assert await store._read(index_size) == (0 if is_postgres(store) else 1)  # pyright: ignore[reportPrivateUsage]


@pytest.mark.asyncio
async def test_pages_of_results_and_their_total(store: SqlStore) -> None:
    for n in range(1, 8):
        await start(store, n, user_message=f"olive {n}")
    first, total = await store.search_sessions(principal="alice", query="olive", limit=3, offset=0)
    rest, total2 = await store.search_sessions(principal="alice", query="olive", limit=5, offset=3)
    beyond, total3 = await store.search_sessions(
        principal="alice", query="olive", limit=5, offset=10
    )
    assert (total, total2, total3) == (7, 7, 7)
    assert [h.session.session_id for h in first + rest] == [f"s{n}" for n in range(7, 0, -1)]
    assert beyond == []
    assert await store.search_sessions(principal="bob", query="olive", limit=5, offset=3) == (
        [],
        0,
    )


@pytest.mark.parametrize(
    "query",
    [
        '"',
        '"unclosed',
        "*",
        "olive*",
        "NEAR(olive tree, 2)",
        "olive AND OR NOT",
        "col:olive",
        "{title}: olive",
        "' OR 1=1 --",
        "olive & !tree | (x)",
        "olive:*",
        "\\",
        "^olive",
        "-olive +tree",
        "ölive",
        "x" * 5000,
        " ".join(["olive"] * 100),
        "\x00olive",
        "🫒 olive",
    ],
)
@pytest.mark.asyncio
async def test_any_query_is_plain_words_never_a_syntax_error(store: SqlStore, query: str) -> None:
    await start(store, user_message="An olive tree grows slowly")
    hits, total = await store.search_sessions(principal="alice", query=query, limit=5, offset=0)
    assert total == len(hits)
    words = search_terms(query)
    if words and all("olive".startswith(w) or "tree".startswith(w) for w in words):
        assert [h.session.session_id for h in hits] == ["s1"], words


@pytest.mark.asyncio
async def test_the_database_index_does_the_search(store: SqlStore) -> None:
    """The search is an index lookup, never a scan of every message's text."""

    def objects(conn: Connection) -> set[str]:
        if conn.dialect.name == "sqlite":
            rows = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))
        else:
            rows = conn.execute(text("SELECT indexname FROM pg_indexes"))
        return {name for (name,) in rows}

    def plan(conn: Connection) -> str:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        lines = conn.execute(
            text(
                "EXPLAIN SELECT message_id FROM messages WHERE role IN ('user', 'assistant') "
                "AND search_vector @@ to_tsquery('simple', 'olive:*')"
            )
        )
        return "\n".join(line for (line,) in lines)

    present = await store._read(objects)  # pyright: ignore[reportPrivateUsage]
    if is_postgres(store):
        assert set(POSTGRES_SEARCH_INDEXES) <= present
        assert "ix_messages_search" in await store._read(plan)  # pyright: ignore[reportPrivateUsage]
    else:
        assert set(SQLITE_SEARCH_TABLES) <= present


@pytest.mark.asyncio
async def test_a_finished_run_saved_after_a_takeover_is_searchable(store: SqlStore) -> None:
    await start(store, user_message="quince jam", owner="a", lease_seconds=0.01)
    await store.checkpoint_run("r1", content="Boil the quince slowly", events=[22])
    async with asyncio.timeout(5):
        while True:
            if await store.take_over_expired():
                break
            await asyncio.sleep(0.01)
    [hit], _ = await store.search_sessions(principal="alice", query="boil", limit=5, offset=0)
    assert (hit.matched, hit.snippet, marked(hit)) == (
        "message",
        "Boil the quince slowly",
        ["Boil"],
    )
    run = await store.get_run("r1")
    assert run is not None
    assert run.status is RunStatus.INTERRUPTED


# ---------------------------------------------------------------- the pure helpers


def test_search_terms_keep_only_words() -> None:
    assert search_terms('Lisbon "trams" * AND-castle_gate') == [
        "lisbon",
        "trams",
        "and",
        "castle",
        "gate",
    ]
    assert search_terms("a a A") == ["a"]
    assert search_terms('*"()') == []
    assert len(search_terms(" ".join(f"w{i}" for i in range(40)))) == 16
    assert fts5_term("a") == '"a"*'
    assert tsquery_term("a") == "'a':*"
    assert any_of(["a", "b"], sqlite=True) == '"a"* OR "b"*'
    assert any_of(["a", "b"], sqlite=False) == "'a':* | 'b':*"


def test_highlighted_turns_marks_into_offsets() -> None:
    passage, spans = highlighted("…the \ue000old\ue001\n\n \ue000trams\ue001 go…")
    assert passage == "…the old trams go…"
    assert [passage[a:b] for a, b in spans] == ["old", "trams"]
    assert highlighted("no marks") == ("no marks", [])
