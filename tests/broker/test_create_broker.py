"""Picking the broker by URL, and the single-process broker."""

from __future__ import annotations

import subprocess
import sys

import pytest

from martlet_molt.broker import UnknownBrokerUrl, create_broker
from martlet_molt.broker.memory import MemoryBroker
from martlet_molt.broker.redis import RedisBroker
from martlet_molt.core.local_log import LocalLog
from martlet_molt.core.status import RunStatus
from martlet_molt.core.stream_log import StreamLog


def test_the_url_picks_the_broker() -> None:
    assert isinstance(create_broker(None, prefix="m"), MemoryBroker)
    assert isinstance(create_broker("memory://", prefix="m"), MemoryBroker)
    broker = create_broker("redis://127.0.0.1:6379/0", prefix="m", instance_id="i1")
    assert isinstance(broker, RedisBroker)
    assert broker.client_name == "m:i1"
    with pytest.raises(UnknownBrokerUrl, match="kafka"):
        create_broker("kafka://x", prefix="m")


def test_the_embedded_default_never_imports_redis() -> None:
    """One process needs no service: the default broker does not even load the client."""
    code = (
        "import sys, martlet_molt.broker as b, martlet_molt.gateway.sse;"
        "b.create_broker(None, prefix='m');"
        "sys.exit(1 if any(m == 'redis' or m.startswith('redis.') for m in sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0


def test_a_stream_buffer_is_a_stream_log() -> None:
    """The owner's log satisfies the reader protocol unchanged (checked by Pyright too)."""
    log: StreamLog = LocalLog("s")
    assert log.last_seq == 0


@pytest.mark.asyncio
async def test_the_memory_broker_shares_nothing_and_cancels_locally() -> None:
    broker = MemoryBroker()
    await broker.open()
    log = LocalLog("s")
    broker.publish(log, owner="me")
    assert log.on_append is None  # the hot path stays as it was
    assert await broker.follow(log.run_id) is None
    assert not await broker.end_run(log.run_id, status=RunStatus.INTERRUPTED, error=None)
    heard: list[str] = []
    broker.on_cancel(heard.append)
    await broker.request_cancel(log.run_id)
    assert heard == [log.run_id]
    assert broker.healthy
    await broker.wait_health(True)
    await broker.drain()
    await broker.ping()
    await broker.close()
