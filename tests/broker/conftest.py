"""Fixtures for the broker suites: real Redis over real connections, every test in its own
key prefix (the Redis at `MARTLET_TEST_REDIS_URL`, default the local one, is shared).

An unreachable Redis skips the Redis cases on a developer's machine and fails them under
`CI=true`. `make_pair` gives the contract suite a writer and a way to open readers, for each
implementation: `memory` reads the writer's own log; `redis` publishes it from one broker and
reads it through another (two instances, separate connections).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from martlet_molt.broker.redis import RedisBroker
from martlet_molt.core.local_log import LocalLog
from martlet_molt.core.stream_log import StreamLog

REDIS_URL = os.environ.get("MARTLET_TEST_REDIS_URL", "redis://127.0.0.1:6379")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


async def _connect() -> Redis:
    """A plain client; skips the test (fails it in CI) if Redis is unreachable."""
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2)  # pyright: ignore[reportUnknownMemberType]
    try:
        await client.ping()  # pyright: ignore[reportUnknownMemberType]
    except (RedisError, OSError) as error:
        await client.aclose()
        reason = f"Redis at {REDIS_URL} is unreachable: {error!r}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return client


async def _delete_prefix(client: Redis, name: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{name}:*", count=1000)]
    if keys:
        await client.delete(*keys)


@pytest_asyncio.fixture
async def redis_client() -> AsyncIterator[Redis]:
    """A plain client for inspecting Redis."""
    client = await _connect()
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def prefix(redis_client: Redis) -> AsyncIterator[str]:
    """A key prefix only this test uses; its keys are deleted afterwards."""
    name = f"test:{uuid.uuid4().hex[:12]}"
    yield name
    await _delete_prefix(redis_client, name)


BrokerFactory = Callable[..., Awaitable[RedisBroker]]


@pytest_asyncio.fixture
async def make_broker(prefix: str) -> AsyncIterator[BrokerFactory]:
    """Open Redis brokers (instances) of this test's deployment; all closed at the end."""
    opened: list[RedisBroker] = []

    async def factory(url: str = REDIS_URL, **options: Any) -> RedisBroker:
        broker = RedisBroker(url, prefix=prefix, **options)
        opened.append(broker)
        await broker.open()
        return broker

    yield factory
    for broker in reversed(opened):
        await broker.close()


@dataclass
class LogPair:
    """A run's log as its writer holds it, and how its readers open it."""

    writer: LocalLog
    open_reader: Callable[[], Awaitable[StreamLog]]
    settle: Callable[[], Awaitable[None]]
    """Wait until every event written so far is where readers find it."""
    max_entries: int | None
    """How many entries the shared log keeps at most (None: everything)."""


PairFactory = Callable[..., Awaitable[LogPair]]


async def _nothing() -> None:
    return None


@pytest_asyncio.fixture(params=["memory", "redis"])
async def make_pair(request: pytest.FixtureRequest) -> AsyncIterator[PairFactory]:
    """Writer/reader pairs of one implementation: `make_pair(**broker_options)`."""
    if request.param == "memory":

        async def memory_pair(**_: Any) -> LogPair:
            writer = LocalLog("s", principal="p")
            writer.start()

            async def open_reader() -> StreamLog:
                return writer

            return LogPair(writer, open_reader, _nothing, None)

        yield memory_pair
        return
    client = await _connect()
    name = f"test:{uuid.uuid4().hex[:12]}"
    opened: list[RedisBroker] = []

    async def redis_pair(**options: Any) -> LogPair:
        owner = RedisBroker(REDIS_URL, prefix=name, **options)
        other = RedisBroker(REDIS_URL, prefix=name, **options)
        for broker in (owner, other):
            opened.append(broker)
            await broker.open()
        writer = LocalLog("s", principal="p")
        writer.start()
        owner.publish(writer, owner=owner.instance_id)
        await owner.drain()

        async def open_reader() -> StreamLog:
            log = await other.follow(writer.run_id)
            assert log is not None
            return log

        return LogPair(writer, open_reader, owner.drain, options.get("max_entries", 10_000))

    yield redis_pair
    for broker in reversed(opened):
        await broker.close()
    await _delete_prefix(client, name)
    await client.aclose()
