"""The services a cluster test needs: a fresh PostgreSQL database and a Redis key prefix of
its own, so tests never see each other's data and can run side by side.

PostgreSQL is the server `MARTLET_TEST_POSTGRES_URL` names (default the local trust-auth `test`
database): each test gets a new database, dropped afterwards. Redis is `MARTLET_TEST_REDIS_URL`
(default redis://127.0.0.1:6379/0): each test gets a unique `MARTLET_REDIS_PREFIX`, whose keys
are deleted afterwards. A service that does not answer skips the test, or fails it under
`CI=true`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from typing import NoReturn
from urllib.parse import urlsplit

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

POSTGRES_URL = os.environ.get(
    "MARTLET_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("MARTLET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

SERVICE_TIMEOUT = 5.0
"""Seconds a service may take to answer one command."""

MAX_SCAN_ROUNDS = 10_000
"""SCAN calls at most when deleting a test's Redis keys."""


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it under CI (where every service must be there)."""
    if IN_CI:
        pytest.fail(f"cluster tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


# -- PostgreSQL --------------------------------------------------------------------------


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


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A URL to a new, empty PostgreSQL database, dropped (connections and all) afterwards."""
    name = f"martlet_cluster_{uuid.uuid4().hex[:16]}"
    try:
        asyncio.run(_execute_as_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, SQLAlchemyError) as exc:
        unavailable(f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc!r}")
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_execute_as_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def fetch_rows(url: str, sql: str, *parameters: object) -> list[tuple[object, ...]]:
    """Rows of one query on a database (what the gateways saved, read from outside)."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            result = await conn.exec_driver_sql(sql, parameters)
            return [tuple(row) for row in result.all()]
    finally:
        await engine.dispose()


# -- Redis -------------------------------------------------------------------------------


Reply = str | int | None | list["Reply"]
"""A Redis reply: simple or bulk string, integer, nil, or an array of replies."""


class RedisConnection:
    """Just enough of the Redis protocol (RESP) for a test's set-up and clean-up."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._sock = socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 6379), timeout=SERVICE_TIMEOUT
        )
        self._file = self._sock.makefile("rb")
        database = parts.path.strip("/")
        if database and database != "0":
            self.command("SELECT", database)

    def command(self, *args: str) -> Reply:
        """Send one command; its reply (an error reply raises)."""
        payload = f"*{len(args)}\r\n".encode()
        for arg in args:
            data = arg.encode()
            payload += b"$%d\r\n%s\r\n" % (len(data), data)
        self._sock.sendall(payload)
        return self._reply()

    def _reply(self) -> Reply:
        line = self._file.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"Redis answered an error: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._file.read(size + 2)[:-2].decode()
        if kind == b"*":
            return [self._reply() for _ in range(int(rest))]
        raise RuntimeError(f"Redis sent something unexpected: {line!r}")

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under `prefix` (bounded SCAN)."""
        cursor = "0"
        for _ in range(MAX_SCAN_ROUNDS):
            reply = self.command("SCAN", cursor, "MATCH", f"{prefix}*", "COUNT", "1000")
            match reply:
                case [str(next_cursor), list(keys)]:
                    cursor = next_cursor
                    if keys:
                        self.command("UNLINK", *(str(key) for key in keys))
                case _:
                    raise RuntimeError(f"Redis answered SCAN with {reply!r}")
            if cursor == "0":
                return

    def close(self) -> None:
        """Close the connection."""
        self._file.close()
        self._sock.close()


@contextlib.contextmanager
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix only this test uses; its keys are deleted afterwards."""
    try:
        connection = RedisConnection(REDIS_URL)
        answer = connection.command("PING")
    except (OSError, RuntimeError) as exc:
        unavailable(f"Redis at {REDIS_URL} is unreachable: {exc!r}")
    if answer != "PONG":
        unavailable(f"Redis at {REDIS_URL} answered PING with {answer!r}")
    prefix = f"martlet_test_{uuid.uuid4().hex[:12]}"
    try:
        yield prefix
    finally:
        try:
            connection.delete_prefix(prefix)
        finally:
            connection.close()
