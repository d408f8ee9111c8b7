"""A fresh PostgreSQL database per test, for the store suite and the cluster tests alike.

The server is the one `MARTLET_TEST_POSTGRES_URL` names (default the local trust-auth `test`
database); each test gets a new database there, dropped afterwards (connections and all), so
tests never see each other's tables and can run side by side. A server that does not answer
skips the test, or fails it under `CI=true`.

    async with postgres_database() as url:   # in async fixtures
    with postgres_database_sync() as url:    # in sync ones (it runs its own event loop)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

POSTGRES_URL = os.environ.get(
    "MARTLET_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

SERVICE_TIMEOUT = 5.0
"""Seconds a service may take to accept a connection."""


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it under CI (where every service must be there)."""
    if IN_CI:
        pytest.fail(f"cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


async def _execute_as_admin(statement: str) -> None:
    admin = create_async_engine(
        POSTGRES_URL,
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args={"timeout": SERVICE_TIMEOUT},
    )
    try:
        async with admin.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await admin.dispose()


async def _create() -> str:
    name = f"martlet_test_{uuid.uuid4().hex[:16]}"
    try:
        await _execute_as_admin(f'CREATE DATABASE "{name}"')
    except (OSError, SQLAlchemyError) as exc:
        unavailable(f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc!r}")
    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


async def _drop(url: str) -> None:
    name = make_url(url).database
    await _execute_as_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A URL to a new, empty PostgreSQL database, dropped afterwards."""
    url = await _create()
    try:
        yield url
    finally:
        await _drop(url)


T = TypeVar("T")


def _run_alone(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end on a thread of its own: the caller's thread may already
    run an event loop (Playwright's sync API does)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


@contextlib.contextmanager
def postgres_database_sync() -> Iterator[str]:
    """`postgres_database` for synchronous fixtures."""
    url = _run_alone(_create)
    try:
        yield url
    finally:
        _run_alone(lambda: _drop(url))


async def fetch_rows(url: str, sql: str, *parameters: object) -> list[tuple[object, ...]]:
    """Rows of one query on a database (what the gateways saved, read from outside)."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            result = await conn.exec_driver_sql(sql, parameters)
            return [tuple(row) for row in result.all()]
    finally:
        await engine.dispose()
