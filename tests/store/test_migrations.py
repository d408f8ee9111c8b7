"""The schema's migrations, on SQLite and PostgreSQL alike: a new database, databases the
releases before the migrations wrote (schema versions 1 to 3, with their data), instances that
start together, a database newer than the code, and `martlet-molt db`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, insert, text

from martlet_molt.core.status import RunStatus
from martlet_molt.errors import SchemaTooNew
from martlet_molt.store import migrations
from martlet_molt.store.migrations import HEAD_REVISION, database_revision, upgrade_database
from martlet_molt.store.schema import metadata
from martlet_molt.store.search import (
    POSTGRES_SEARCH_COLUMN,
    POSTGRES_SEARCH_INDEXES,
    SQLITE_SEARCH_TABLES,
)
from martlet_molt.store.sql import SqlStore
from tests.store import legacy_schema as v3
from tests.store.test_sql_store import start

T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


async def _revision_and_guard(store: SqlStore) -> tuple[str | None, list[Any]]:
    def work(conn: Connection) -> tuple[str | None, list[Any]]:
        versions = conn.execute(text("SELECT version FROM schema_version")).scalars().all()
        return migrations.stored_revision(conn), list(versions)

    return await store._read(work)  # pyright: ignore[reportPrivateUsage]


def test_head_revision_is_the_head_of_the_scripts() -> None:
    scripts = ScriptDirectory(str(Path(migrations.__file__).parent))
    assert scripts.get_heads() == [HEAD_REVISION]
    assert migrations.known_revisions() == {"0001", "0002", "0003", "0004", "0005"}


def _not_search(name: str | None, type_: str, parent_names: Any) -> bool:
    """Leave out the full-text search objects: each database has its own kind, which
    `metadata` does not describe (`test_search.py` checks them)."""
    if name is None:
        return True
    if type_ == "table":
        return not any(
            name == table or name.startswith(f"{table}_") for table in SQLITE_SEARCH_TABLES
        )
    if type_ == "column":
        return name != POSTGRES_SEARCH_COLUMN
    return not (type_ == "index" and name in POSTGRES_SEARCH_INDEXES)


@pytest.mark.asyncio
async def test_a_new_database_migrates_to_exactly_the_tables_of_the_code(store_url: str) -> None:
    store = SqlStore(store_url)
    await store.open()
    try:

        def differences(conn: Connection) -> list[Any]:
            context = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "compare_server_default": True,
                    "include_name": _not_search,
                },
            )
            return list(compare_metadata(context, metadata))

        assert await store._read(differences) == []  # pyright: ignore[reportPrivateUsage]
        assert await _revision_and_guard(store) == (HEAD_REVISION, [4])
    finally:
        await store.close()


def _fill(version: int) -> Any:
    """Rows as a release of `version` left them: s1 has a finished run and a live one with
    checkpoints, s2 two unfinished runs (an older release allowed it)."""
    parts = version >= 2

    def fill(conn: Connection) -> None:
        for session_id in ("s1", "s2"):
            conn.execute(
                insert(v3.sessions).values(
                    session_id=session_id, principal="alice", created_at=T0, updated_at=_at(9)
                )
            )
        message: dict[str, Any] = {
            "session_id": "s1",
            "status": "completed",
            "tool_calls": None,
            "tool_call_id": None,
            "name": None,
        }
        conn.execute(
            insert(v3.messages).values(
                **message, role="user", content="question", run_id="r1", created_at=_at(1)
            )
        )
        reply = "a long reply" if version < 3 else ""
        result = conn.execute(
            insert(v3.messages).values(
                **message, role="assistant", content=reply, run_id="r1", created_at=_at(2)
            )
        )
        if version == 3:
            (message_id,) = result.inserted_primary_key or (None,)
            conn.execute(
                insert(v3.message_parts),
                [
                    {"message_id": message_id, "part": 1, "content": "a long "},
                    {"message_id": message_id, "part": 2, "content": "reply"},
                ],
            )
        run: dict[str, Any] = {
            "principal": "alice",
            "error": None,
            "usage": None,
            "client_request_id": None,
            "completed_at": None,
        }
        conn.execute(
            insert(v3.runs),
            [
                {
                    **run,
                    "run_id": "r1",
                    "session_id": "s1",
                    "status": "completed",
                    "content": "" if parts else "a long reply",
                    "usage": {"total_tokens": 5},
                    "events": [12],
                    "client_request_id": "req-1",
                    "created_at": _at(1),
                    "updated_at": _at(2),
                    "completed_at": _at(2),
                },
                {
                    **run,
                    "run_id": "r2",
                    "session_id": "s1",
                    "status": "streaming",
                    "content": "" if parts else "Hello",
                    "events": [] if parts else [5],
                    "created_at": _at(3),
                    "updated_at": _at(4),
                },
                {
                    **run,
                    "run_id": "r3",
                    "session_id": "s2",
                    "status": "streaming",
                    "content": "" if parts else "old",
                    "events": [] if parts else [3],
                    "created_at": _at(5),
                    "updated_at": _at(5),
                },
                {
                    **run,
                    "run_id": "r4",
                    "session_id": "s2",
                    "status": "pending",
                    "content": "",
                    "events": [],
                    "created_at": _at(6),
                    "updated_at": _at(6),
                },
            ],
        )
        if parts:
            conn.execute(
                insert(v3.run_parts),
                [
                    {"run_id": "r1", "part": 1, "content": "a long ", "events": []},
                    {"run_id": "r1", "part": 2, "content": "reply", "events": []},
                    {"run_id": "r2", "part": 1, "content": "Hel", "events": [3]},
                    {"run_id": "r2", "part": 2, "content": "lo", "events": [2]},
                    {"run_id": "r3", "part": 1, "content": "old", "events": [3]},
                ],
            )

    return fill


@pytest.mark.asyncio
@pytest.mark.parametrize("version", [1, 2, 3])
async def test_a_database_of_an_older_release_upgrades_keeping_its_data(
    store_url: str, version: int
) -> None:
    await v3.make_legacy_database(store_url, version, _fill(version))
    assert await database_revision(store_url) is None

    store = SqlStore(store_url)
    await store.open()
    try:
        assert await _revision_and_guard(store) == (HEAD_REVISION, [4])
        saved = await store.list_messages("s1")
        assert [(m.role, m.content, m.run_id) for m in saved] == [
            ("user", "question", "r1"),
            ("assistant", "a long reply", "r1"),
        ]
        finished = await store.get_run("r1")
        assert finished is not None
        assert (finished.status, finished.content, finished.usage, finished.events) == (
            RunStatus.COMPLETED,
            "a long reply",
            {"total_tokens": 5},
            [12],
        )
        assert finished.completed_at == _at(2)
        assert (finished.owner, finished.fence, finished.lease_expires_at) == (None, 0, None)
        assert finished.cancel_requested is False
        live = await store.get_run("r2")
        assert live is not None
        assert (live.status, live.content) == (RunStatus.STREAMING, "Hello")
        assert live.events == ([3, 2] if version >= 2 else [5])
        # A session may now have one unfinished run: the older of s2's was interrupted.
        older, newer = await store.get_run("r3"), await store.get_run("r4")
        assert older is not None
        assert newer is not None
        assert (older.status, older.error, older.content) == (
            RunStatus.INTERRUPTED,
            "interrupted",
            "old",
        )
        assert older.completed_at is not None
        assert older.completed_at > _at(9)
        assert (newer.status, newer.completed_at) == (RunStatus.PENDING, None)
        assert [r.run_id for r in await store.unfinished_runs()] == ["r2", "r4"]
        found = await store.find_run_by_request(session_id="s1", client_request_id="req-1")
        assert found == finished
        # The runs a single-process gateway left have no lease: another instance takes them.
        taken = await store.take_over_expired()
        assert [(r.run_id, r.content, r.fence) for r in taken] == [
            ("r2", "Hello", 1),
            ("r4", "", 1),
        ]
        await start(store, session_id="s2", run_id="r5")
        # Sessions are titled after their first user message, and what was there is searchable.
        titled = await store.get_session("s1")
        assert titled is not None
        assert titled.title == "question"
        [found], total = await store.search_sessions(
            principal="alice", query="repl", limit=5, offset=0
        )
        assert (found.session.session_id, found.matched, total) == ("s1", "message", 1)
        assert found.snippet.endswith("reply")  # from a part (3) or the row (1, 2)
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_instances_starting_together_migrate_once(store_url: str) -> None:
    stores = [SqlStore(store_url) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert await _revision_and_guard(stores[0]) == (HEAD_REVISION, [4])
        await start(stores[1])
        assert await stores[2].get_run("r1") is not None
    finally:
        await asyncio.gather(*(s.close() for s in stores))


@pytest.mark.asyncio
async def test_a_database_newer_than_the_code_is_refused(store_url: str) -> None:
    store = SqlStore(store_url)
    await store.open()
    await store._write(  # pyright: ignore[reportPrivateUsage]
        lambda conn: conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    )
    await store.close()
    newer = SqlStore(store_url)
    with pytest.raises(
        SchemaTooNew, match=f"revision 9999, newer than this code's {HEAD_REVISION}"
    ):
        await newer.open()
    with pytest.raises(RuntimeError, match="not open"):
        await newer.ping()  # a refused open leaves the store closed
    assert await database_revision(store_url) == "9999"


@pytest.mark.asyncio
async def test_upgrade_database_is_idempotent(store_url: str) -> None:
    assert await database_revision(store_url) is None
    assert await upgrade_database(store_url) == HEAD_REVISION
    assert await upgrade_database(store_url) == HEAD_REVISION
    assert await database_revision(store_url) == HEAD_REVISION


def _command(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTLET_")}
    env["MARTLET_DATABASE_URL"] = f"sqlite:///{tmp_path / 'db' / 'martlet.db'}"
    return subprocess.run(
        [sys.executable, "-m", "martlet_molt", "db", *args],
        cwd=tmp_path,  # no .env is read
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_db_commands_upgrade_and_show_the_revision(tmp_path: Path) -> None:
    before = _command(tmp_path, "current")
    assert (before.returncode, before.stdout.strip()) == (0, f"none (head: {HEAD_REVISION})")
    upgraded = _command(tmp_path, "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == f"at revision {HEAD_REVISION}"
    after = _command(tmp_path, "current")
    assert (after.returncode, after.stdout.strip()) == (0, f"{HEAD_REVISION} (head)")
    assert asyncio.run(database_revision(f"sqlite:///{tmp_path / 'db' / 'martlet.db'}")) == (
        HEAD_REVISION
    )


@pytest.mark.asyncio
async def test_the_leases_revision_downgrades_keeping_the_rows(store_url: str) -> None:
    store = SqlStore(store_url)
    await store.open()
    try:
        await start(store)
        await store.checkpoint_run("r1", content="part", events=[4])

        def downgrade(conn: Connection) -> None:
            config = Config()
            config.set_main_option("script_location", str(Path(migrations.__file__).parent))
            config.attributes["connection"] = conn
            command.downgrade(config, "0001")

        await store._write(downgrade)  # pyright: ignore[reportPrivateUsage]
        assert await _revision_and_guard(store) == ("0001", [3])
    finally:
        await store.close()
    again = SqlStore(store_url)
    await again.open()
    try:
        record = await again.get_run("r1")
        assert record is not None
        assert (record.content, record.events, record.fence) == ("part", [4], 0)
    finally:
        await again.close()
