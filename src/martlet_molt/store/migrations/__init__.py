"""The schema's migrations (Alembic), applied when the store opens or by `martlet-molt db upgrade`.

Each revision in `versions/` is one step, applied once and recorded in `alembic_version`. They
run on the store's own connection, in the store's transaction runner (SQLite on its writer
thread, PostgreSQL through asyncpg with `run_sync`), so no other driver is needed, and the whole
upgrade is one transaction: both databases change their schema transactionally.

Instances that start together migrate once: on PostgreSQL the upgrading transaction holds an
advisory lock (`pg_advisory_xact_lock`, released when it ends), on SQLite the write lock that
every write transaction takes first. Whoever comes second finds the schema at head.

A database already at head costs one query, and Alembic is imported only when there is work.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, func, inspect, select, text
from sqlalchemy.engine import make_url

from martlet_molt.errors import SchemaTooNew

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

HEAD_REVISION = "0005"
"""The newest revision this code knows (a test checks it is the scripts' head)."""

_LOCK_KEY = 0x6D6F6C74  # PostgreSQL advisory lock held while upgrading the schema
_VERSION_TABLE = "alembic_version"


def stored_revision(conn: Connection) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    if not inspect(conn).has_table(_VERSION_TABLE):
        return None
    return conn.scalar(text(f"SELECT version_num FROM {_VERSION_TABLE}"))


def _config(conn: Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = conn
    return config


@cache
def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(Path(__file__).parent))


def known_revisions() -> set[str]:
    """Every revision in `versions/`."""
    return {script.revision for script in _scripts().walk_revisions()}


def upgrade_schema(conn: Connection) -> str:
    """Bring the database to `HEAD_REVISION` inside the caller's transaction; the revision it
    is at afterwards. A revision this code does not know raises `SchemaTooNew`."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(_LOCK_KEY)))
    current = stored_revision(conn)
    if current == HEAD_REVISION:
        return current
    if current is not None and current not in known_revisions():
        raise SchemaTooNew(current, HEAD_REVISION)
    from alembic import command

    command.upgrade(_config(conn), "head")
    return HEAD_REVISION


async def upgrade_database(url: str) -> str:
    """Upgrade the database at a store URL to head; the revision it is at."""
    from martlet_molt.store.transactions import open_transactions

    transactions = open_transactions(make_url(url))
    try:
        return await transactions.run(upgrade_schema, write=True)
    finally:
        await transactions.close()


async def database_revision(url: str) -> str | None:
    """The revision the database at a store URL is at (None: never migrated), unchanged."""
    from martlet_molt.store.transactions import open_transactions

    transactions = open_transactions(make_url(url))
    try:
        return await transactions.run(stored_revision, write=False)
    finally:
        await transactions.close()
