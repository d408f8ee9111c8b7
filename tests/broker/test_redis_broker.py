"""What only the Redis broker does: batch writes, expire ended runs, take over a dead owner's
run, survive a cut connection, carry cancel requests, and keep its connections few."""

from __future__ import annotations

import asyncio
import gc

import pytest
from redis.asyncio import Redis

from martlet_molt.broker.redis import RedisBroker
from martlet_molt.broker.wire import run_keys
from martlet_molt.core.local_log import LocalLog
from martlet_molt.core.status import RunStatus
from martlet_molt.core.stream_log import RunEvent, StreamLog
from tests.broker.conftest import REDIS_URL, BrokerFactory
from tests.web.cut_proxy import CutProxy

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def _started(session_id: str = "s") -> LocalLog:
    log = LocalLog(session_id, principal="p")
    log.start()
    return log


async def _collect(log: StreamLog, after: int = 0) -> list[RunEvent]:
    return [event async for event in log.read(after)]


async def _follow(broker: RedisBroker, run_id: str) -> StreamLog:
    log = await broker.follow(run_id)
    assert log is not None
    return log


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


async def test_a_burst_goes_out_in_few_entries(
    make_broker: BrokerFactory, redis_client: Redis, prefix: str
) -> None:
    """A thousand tokens appended in one turn cost a handful of entries, not a thousand."""
    owner, reader_side = await make_broker(), await make_broker()
    log = _started()
    owner.publish(log, owner="a")
    for i in range(1_000):
        log.put_sync(f"{i} ")
    log.complete()
    await asyncio.wait_for(owner.drain(), 10)
    entries = await redis_client.xlen(run_keys(prefix, log.run_id).log)
    assert 1 <= entries <= 3
    assert owner.flushes <= 3
    reader = await _follow(reader_side, log.run_id)
    assert [e.seq for e in reader.events_after(0)] == list(range(1, 1_002))
    assert owner.publishing == 0  # its end acknowledged: no longer tracked


async def test_a_log_published_late_sends_what_it_holds(make_broker: BrokerFactory) -> None:
    """Publishing a log mid-run mirrors everything already in it, then the rest."""
    owner, reader_side = await make_broker(), await make_broker()
    log = _started()
    for i in range(10):
        log.put_sync(str(i))
    owner.publish(log, owner="a")
    await asyncio.wait_for(owner.drain(), 10)
    reader = await _follow(reader_side, log.run_id)
    waiting = asyncio.create_task(_collect(reader))
    log.put_sync("10")
    log.complete()
    assert [e.seq for e in await asyncio.wait_for(waiting, 10)] == list(range(1, 13))


async def test_an_unknown_run_is_not_followed(make_broker: BrokerFactory) -> None:
    """`follow` answers None for a run Redis does not hold."""
    broker = await make_broker()
    assert await broker.follow("run_missing") is None


async def test_keys_expire_after_the_end(
    make_broker: BrokerFactory, redis_client: Redis, prefix: str
) -> None:
    """A live run's keys never expire; once its end is stored they expire after retention."""
    owner = await make_broker(retention_seconds=60)
    log = _started()
    owner.publish(log, owner="a")
    log.put_sync("x")
    await asyncio.wait_for(owner.drain(), 10)
    keys = run_keys(prefix, log.run_id)
    assert await redis_client.pttl(keys.log) == -1
    assert await redis_client.pttl(keys.meta) == -1
    log.complete()
    await asyncio.wait_for(owner.drain(), 10)
    for key in (keys.log, keys.meta):
        assert 50_000 < await redis_client.pttl(key) <= 60_000


async def test_end_run_ends_an_orphan_and_fences_its_old_owner(
    make_broker: BrokerFactory, redis_client: Redis, prefix: str
) -> None:
    """Another instance ends a silent owner's run: remote readers end with its status, and
    the old owner, back from its pause, can append nothing more."""
    with CutProxy(_port(REDIS_URL)) as proxy:
        owner = await make_broker(f"redis://127.0.0.1:{proxy.port}")
        taker, reader_side = await make_broker(), await make_broker()
        log = _started()
        owner.publish(log, owner=owner.instance_id)
        for i in range(5):
            log.put_sync(f"{i}")
        await asyncio.wait_for(owner.drain(), 10)
        reader = await _follow(reader_side, log.run_id)
        waiting = asyncio.create_task(_collect(reader))
        proxy.cut()  # the owner stops (SIGSTOP): Redis no longer hears from it
        log.put_sync("unsent")
        await asyncio.wait_for(owner.wait_health(False), 10)
        appended = await taker.end_run(log.run_id, status=RunStatus.INTERRUPTED, error="owner lost")
        assert appended
        events = await asyncio.wait_for(waiting, 10)
        assert [e.seq for e in events] == list(range(1, 8))
        assert (reader.status, reader.error) == (RunStatus.INTERRUPTED, "owner lost")
        assert not await taker.end_run(log.run_id, status=RunStatus.FAILED, error=None)
        proxy.restore()  # the owner comes back (SIGCONT) and flushes
        log.put_sync("late")
        log.complete()
        await asyncio.wait_for(owner.drain(), 10)
        assert owner.publishing == 0  # refused, no longer tracked
        assert await redis_client.xlen(run_keys(prefix, log.run_id).log) == 2
        again = await _follow(await make_broker(), log.run_id)
        assert [e.seq for e in again.events_after(0)] == list(range(1, 8))
        assert await redis_client.pttl(run_keys(prefix, log.run_id).log) > 0


async def test_end_run_of_a_run_never_shared_only_fences_it(
    make_broker: BrokerFactory, redis_client: Redis, prefix: str
) -> None:
    """No stream: nothing is appended (its events are in the store, not here), but the old
    owner's later appends are refused."""
    owner, taker = await make_broker(), await make_broker()
    log = _started()
    assert not await taker.end_run(log.run_id, status=RunStatus.INTERRUPTED, error="lost")
    owner.publish(log, owner="a")
    log.put_sync("x")
    await asyncio.wait_for(owner.drain(), 10)
    assert owner.publishing == 0
    assert await redis_client.exists(run_keys(prefix, log.run_id).log) == 0
    assert await taker.follow(log.run_id) is None


async def test_a_flush_survives_a_redis_cut(make_broker: BrokerFactory) -> None:
    """The owner's connection to Redis is cut mid-run while it keeps appending: it goes
    unhealthy, catches up by itself when Redis is back, and a remote reader gets every
    event exactly once. Readers on the owner never notice."""
    with CutProxy(_port(REDIS_URL)) as proxy:
        owner = await make_broker(f"redis://127.0.0.1:{proxy.port}")
        reader_side = await make_broker()
        log = _started()
        owner.publish(log, owner="a")
        for i in range(50):
            log.put_sync(f"{i} ")
        await asyncio.wait_for(owner.drain(), 10)
        remote = asyncio.create_task(_collect(await _follow(reader_side, log.run_id)))
        local = asyncio.create_task(_collect(log))
        proxy.cut()
        for i in range(50, 100):
            log.put_sync(f"{i} ")
            await asyncio.sleep(0)
        await asyncio.wait_for(owner.wait_health(False), 10)
        assert not owner.healthy
        for i in range(100, 120):
            log.put_sync(f"{i} ")
        proxy.restore()
        await asyncio.wait_for(owner.wait_health(True), 10)
        for i in range(120, 150):
            log.put_sync(f"{i} ")
            await asyncio.sleep(0)
        log.complete()
        remote_events, local_events = await asyncio.wait_for(asyncio.gather(remote, local), 20)
        assert [e.seq for e in remote_events] == list(range(1, 152))
        assert remote_events == local_events == list(log.events_after(0))


async def test_cancel_reaches_every_instance(make_broker: BrokerFactory) -> None:
    """A cancel request made on one instance reaches the callbacks of the others."""
    asking, owner = await make_broker(), await make_broker()
    heard: asyncio.Queue[str] = asyncio.Queue()
    owner.on_cancel(heard.put_nowait)
    await asyncio.wait_for(owner.subscribed(), 10)
    await asking.request_cancel("run_x")
    assert await asyncio.wait_for(heard.get(), 10) == "run_x"


async def test_cancel_listener_subscribes_again_after_a_cut(make_broker: BrokerFactory) -> None:
    """The subscription comes back by itself once Redis is reachable again."""
    with CutProxy(_port(REDIS_URL)) as proxy:
        owner = await make_broker(f"redis://127.0.0.1:{proxy.port}")
        asking = await make_broker()
        heard: asyncio.Queue[str] = asyncio.Queue()
        owner.on_cancel(heard.put_nowait)
        await asyncio.wait_for(owner.subscribed(), 10)
        proxy.cut()
        await asyncio.wait_for(owner.wait_health(False), 10)
        proxy.restore()
        await asyncio.wait_for(owner.subscribed(), 10)
        await asyncio.wait_for(owner.wait_health(True), 10)
        await asking.request_cancel("run_y")
        assert await asyncio.wait_for(heard.get(), 10) == "run_y"


async def _connections(redis_client: Redis, name: str) -> int:
    clients = await redis_client.client_list()  # pyright: ignore[reportUnknownMemberType]
    return sum(1 for client in clients if str(client.get("name", "")).startswith(f"{name}:"))


async def test_following_a_thousand_runs_takes_a_few_connections(
    make_broker: BrokerFactory, redis_client: Redis
) -> None:
    """An instance following 1,000 runs holds a small fixed number of connections; a run
    followed while the followers are blocked is read at once, not after the block timeout;
    a log no reader holds is dropped from the follow set."""
    owner = await make_broker()
    reader_side = await make_broker(block_seconds=30.0)
    logs = [_started(f"s{i}") for i in range(1_000)]
    for log in logs:
        owner.publish(log, owner="a")
        log.put_sync("first")
    await asyncio.wait_for(owner.drain(), 20)
    followed = list(
        await asyncio.wait_for(
            asyncio.gather(*(_follow(reader_side, log.run_id) for log in logs)), 30
        )
    )
    assert reader_side.following == 1_000
    assert await _connections(redis_client, reader_side.client_name) <= 7
    assert await _connections(redis_client, owner.client_name) <= 7
    # Both followers are blocked now (for up to 30 s): a new run must be read at once.
    late = _started("late")
    owner.publish(late, owner="a")
    await asyncio.wait_for(owner.drain(), 10)
    late_reader = await _follow(reader_side, late.run_id)
    late.put_sync("now")
    assert await late_reader.wait(0, timeout=5)
    logs[0].put_sync("second")
    assert await followed[0].wait(1, timeout=5)
    assert followed[0].events_after(1)[0].text == "second"
    del followed, late_reader
    gc.collect()
    assert reader_side.following == 0


async def test_readers_of_one_run_share_one_remote_log(make_broker: BrokerFactory) -> None:
    """Concurrent and later `follow`s of one run on one instance return the same log."""
    owner, reader_side = await make_broker(), await make_broker()
    log = _started()
    owner.publish(log, owner="a")
    await asyncio.wait_for(owner.drain(), 10)
    first, second = await asyncio.gather(
        _follow(reader_side, log.run_id), _follow(reader_side, log.run_id)
    )
    assert first is second is await _follow(reader_side, log.run_id)
    assert reader_side.following == 1
