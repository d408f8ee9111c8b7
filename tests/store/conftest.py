"""Fixtures that run the store suite against SQLite (a temp file) and a local PostgreSQL.

PostgreSQL: each test gets its own freshly created database (tests/databases.py), dropped
afterwards, so tests never see each other's tables. If the server is unreachable the
PostgreSQL cases are skipped, unless `CI=true`, where they fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from martlet_molt.store.sql import SqlStore
from tests.databases import postgres_database


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL to an empty database of each backend (the SQLite file's directory is missing)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'nested' / 'dir' / 'martlet.db'}"
        return
    async with postgres_database() as url:
        yield url


@pytest_asyncio.fixture
async def store(store_url: str) -> AsyncIterator[SqlStore]:
    """An open store on an empty database, closed after the test."""
    s = SqlStore(store_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
