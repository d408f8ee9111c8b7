"""The Redis a cluster test needs: a key prefix of its own, so tests never see each other's
data and can run side by side (the database: tests/databases.py).

Redis is `MARTLET_TEST_REDIS_URL` (default redis://127.0.0.1:6379/0): each test gets a unique
`MARTLET_REDIS_PREFIX`, whose keys are deleted afterwards. A Redis that does not answer skips
the test, or fails it under `CI=true`.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

from redis import Redis
from redis.exceptions import RedisError

from tests.databases import SERVICE_TIMEOUT, unavailable

REDIS_URL = os.environ.get("MARTLET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

MAX_SCAN_ROUNDS = 10_000
"""SCAN calls at most when deleting a test's Redis keys."""


def delete_prefix(client: Redis, prefix: str) -> None:
    """Delete every key under `prefix` (a bounded SCAN)."""
    cursor = 0
    for _ in range(MAX_SCAN_ROUNDS):
        cursor, keys = client.scan(cursor, match=f"{prefix}*", count=1000)
        if keys:
            client.unlink(*keys)
        if cursor == 0:
            return
    raise RuntimeError(f"Redis keys under {prefix!r} not deleted in {MAX_SCAN_ROUNDS} SCANs")


@contextlib.contextmanager
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix only this test uses; its keys are deleted afterwards."""
    client = Redis.from_url(
        REDIS_URL, socket_timeout=SERVICE_TIMEOUT, socket_connect_timeout=SERVICE_TIMEOUT
    )
    try:
        try:
            client.ping()
        except (RedisError, OSError) as exc:
            unavailable(f"Redis at {REDIS_URL} is unreachable: {exc!r}")
        prefix = f"martlet_test_{uuid.uuid4().hex[:12]}"
        try:
            yield prefix
        finally:
            delete_prefix(client, prefix)
    finally:
        client.close()
