"""The broker for several instances: run logs in Redis streams (layout in `wire.py`).

Connections, named `<prefix>:<instance>:<role>` with `CLIENT SETNAME`, a fixed number per
instance whatever the number of runs or readers:

- `cmd`: a small pool for commands (the flusher's one script call per flush, loading a
  followed run, `end_run`, `CLIENT UNBLOCK`, `PUBLISH`);
- `follow<i>`: one per `Follower`, each blocked in `XREAD` over its share of followed runs;
- `cancel`: the cancel channel's subscription.

Tasks, all started by `open` and cancelled by `close`: the publisher's flusher
(`publisher.py`), one loop per follower (`follower.py`), the cancel listener (`cancel.py`)
and a health probe. Each reports to one `Health`, so `healthy` is False while Redis is away
and True again, by itself, once any of them gets an answer; the probe pings with a bounded
backoff while the broker is unhealthy, so a failure seen by a one-off command (`follow`,
`end_run`) recovers even when no loop is retrying. `close` first gives what is still
unsent a bounded chance to reach Redis (if it is reachable), then stops retrying.

Not Redis Cluster ready: a flush touches every run's keys in one script.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable, Sequence
from typing import cast
from uuid import uuid4

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from martlet_molt.broker.base import DEFAULT_MAX_ENTRIES, DEFAULT_RETENTION_SECONDS
from martlet_molt.broker.cancel import CancelChannel
from martlet_molt.broker.follower import Follower
from martlet_molt.broker.health import Backoff, Health, stop
from martlet_molt.broker.publisher import Publisher
from martlet_molt.broker.remote_log import Entry, RemoteLog
from martlet_molt.broker.scripts import END_RUN
from martlet_molt.broker.wire import cancel_channel, encode_end, run_keys
from martlet_molt.core.local_log import LocalLog
from martlet_molt.core.status import RunStatus
from martlet_molt.core.stream_log import StreamLog
from martlet_molt.errors import BrokerUnavailable

COMMAND_CONNECTIONS = 4
FOLLOWERS = 1
BLOCK_SECONDS = 5.0
FLUSH_INTERVAL_SECONDS = 0.003
CONNECT_TIMEOUT_SECONDS = 2.0
COMMAND_TIMEOUT_SECONDS = 5.0
CLOSE_DRAIN_SECONDS = 2.0
# Entries per `XRANGE` when loading a followed run.
LOAD_ENTRIES = 1_000


class RedisBroker:
    """Shares run logs, takeovers and cancel requests between instances through Redis."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        instance_id: str | None = None,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        followers: int = FOLLOWERS,
        block_seconds: float = BLOCK_SECONDS,
        flush_interval_seconds: float = FLUSH_INTERVAL_SECONDS,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.instance_id = instance_id or uuid4().hex[:12]
        self.client_name = f"{prefix}:{self.instance_id}"
        """Every connection's name starts with this (`CLIENT LIST` shows them)."""
        self._retention_ms = max(1, round(retention_seconds * 1000))
        self._max_entries = max_entries
        self._health = Health()
        self._commands = self._client("cmd", COMMAND_CONNECTIONS, COMMAND_TIMEOUT_SECONDS)
        self._end_script = self._commands.register_script(END_RUN)
        self._publisher = Publisher(
            self._commands,
            prefix=prefix,
            health=self._health,
            retention_seconds=retention_seconds,
            max_entries=max_entries,
            flush_interval=flush_interval_seconds,
        )
        self._followers = [
            Follower(
                self._client(f"follow{i}", 1, block_seconds + COMMAND_TIMEOUT_SECONDS, single=True),
                commands=self._commands,
                health=self._health,
                block_seconds=block_seconds,
            )
            for i in range(followers)
        ]
        self._cancel = CancelChannel(
            self._client("cancel", 1, None),
            commands=self._commands,
            channel=cancel_channel(prefix),
            health=self._health,
        )
        self._remote: weakref.WeakValueDictionary[str, RemoteLog] = weakref.WeakValueDictionary()
        self._loading: dict[str, asyncio.Future[RemoteLog | None]] = {}
        self._probe: asyncio.Task[None] | None = None

    def _client(
        self, role: str, connections: int, timeout: float | None, *, single: bool = False
    ) -> Redis:
        pool = BlockingConnectionPool.from_url(  # pyright: ignore[reportUnknownMemberType]
            self.url,
            max_connections=connections,
            client_name=f"{self.client_name}:{role}",
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        return Redis(connection_pool=pool, single_connection_client=single)

    # -- life cycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Start the flusher, the followers and the cancel listener; if Redis does not
        answer yet the broker starts unhealthy and recovers by itself."""
        self._publisher.start()
        for follower in self._followers:
            follower.start()
        self._cancel.start()
        if self._probe is None:
            self._probe = asyncio.create_task(self._probe_while_unhealthy(), name="broker-probe")
        with contextlib.suppress(BrokerUnavailable):
            await self.ping()

    async def _probe_while_unhealthy(self) -> None:
        backoff = Backoff()
        while True:
            await self._health.wait_for(False)
            backoff.reset()
            while not self._health.healthy:
                await backoff.wait()
                with contextlib.suppress(BrokerUnavailable):
                    await self.ping()

    async def close(self) -> None:
        """Give unsent events a bounded chance to reach Redis, then stop every task."""
        if self._health.healthy:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_DRAIN_SECONDS):
                    await self._publisher.drain()
        await stop(self._probe)
        self._probe = None
        await self._publisher.close()
        for follower in self._followers:
            await follower.close()
        await self._cancel.close()
        await self._commands.aclose()
        await self._commands.connection_pool.disconnect()

    async def ping(self) -> None:
        """Check Redis answers now; raises `BrokerUnavailable` if it does not."""
        try:
            await self._commands.ping()  # pyright: ignore[reportUnknownMemberType]
        except RedisError as error:
            self._health.lost(error)
            raise BrokerUnavailable("Redis does not answer", url=self.url) from error
        self._health.back()

    @property
    def healthy(self) -> bool:
        """False while Redis is unreachable; True again by itself when it answers."""
        return self._health.healthy

    async def wait_health(self, healthy: bool) -> None:
        """Return once `healthy` is `healthy`."""
        await self._health.wait_for(healthy)

    @property
    def publishing(self) -> int:
        """Published logs whose end Redis has not acknowledged yet."""
        return self._publisher.tracked

    @property
    def following(self) -> int:
        """Runs this instance reads live from Redis for its readers."""
        return sum(len(follower) for follower in self._followers)

    @property
    def flushes(self) -> int:
        """Flush commands sent so far (one per flush, for all runs in it)."""
        return self._publisher.flushes

    # -- owner side ----------------------------------------------------------------------

    def publish(self, log: LocalLog, *, owner: str) -> None:
        """Mirror `log` into Redis from now on, in batches, until its end is stored."""
        self._publisher.publish(log, owner=owner)

    async def drain(self) -> None:
        """Return once every event published so far is stored in Redis (or refused)."""
        await self._publisher.drain()

    # -- reader side ---------------------------------------------------------------------

    async def follow(self, run_id: str) -> StreamLog | None:
        """The run's log as Redis holds it, followed live; None if Redis has no such run.
        Raises `BrokerUnavailable` if Redis does not answer. A cursor before the oldest
        entry kept raises `LogTrimmed` from `events_after`: check with
        `events_after(cursor, limit=1)` before a response starts."""
        log = self._remote.get(run_id)
        if log is not None:
            return log
        loading = self._loading.get(run_id)
        if loading is None:
            loading = asyncio.ensure_future(self._load(run_id))
            self._loading[run_id] = loading
            loading.add_done_callback(lambda _: self._loading.pop(run_id, None))
        return await asyncio.shield(loading)

    async def _load(self, run_id: str) -> RemoteLog | None:
        keys = run_keys(self.prefix, run_id)
        try:
            async with self._commands.pipeline(transaction=False) as pipe:
                pipe.hgetall(keys.meta)
                pipe.xrange(keys.log, "-", "+", count=LOAD_ENTRIES)
                meta, entries = await pipe.execute()
            if b"owner" not in meta:
                return None
            log = RemoteLog(
                run_id,
                session_id=meta[b"session_id"].decode(),
                principal=meta[b"principal"].decode(),
                key=keys.log,
            )
            log.add_entries(entries)
            pages = self._max_entries // LOAD_ENTRIES + 2
            while len(entries) == LOAD_ENTRIES and pages > 0:
                pages -= 1
                page = await self._commands.xrange(
                    keys.log, f"({log.last_entry_id}", "+", count=LOAD_ENTRIES
                )
                entries = cast("list[Entry]", page)
                log.add_entries(entries)
        except RedisError as error:
            self._health.lost(error)
            raise BrokerUnavailable("Redis does not answer", url=self.url) from error
        self._health.back()
        self._remote[run_id] = log
        if not log.closed:
            await min(self._followers, key=len).add(log)
        return log

    # -- takeover and cancel -------------------------------------------------------------

    async def end_run(self, run_id: str, *, status: RunStatus, error: str | None) -> bool:
        """End a dead owner's run after what Redis holds, unless it already ended; True if
        this appended the end. Fences the run: its old owner's later appends are refused."""
        keys = run_keys(self.prefix, run_id)
        items = encode_end(status=status.value, error=error)
        try:
            appended = await self._end_script(
                keys=[keys.log, keys.meta], args=[self._retention_ms, self._max_entries, *items]
            )
        except RedisError as failure:
            self._health.lost(failure)
            raise BrokerUnavailable("Redis does not answer", url=self.url) from failure
        return bool(appended)

    async def request_cancel(self, run_id: str) -> None:
        """Ask every instance, the run's owner among them, to cancel `run_id`."""
        try:
            await self._cancel.request(run_id)
        except RedisError as error:
            self._health.lost(error)
            raise BrokerUnavailable("Redis does not answer", url=self.url) from error

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        """Call `callback(run_id)` for every cancel request of the deployment."""
        self._cancel.on_cancel(callback)

    async def forget(self, run_ids: Sequence[str]) -> None:
        """Delete the runs' keys and tell every instance to drop what it holds of them."""
        if not run_ids:
            return
        try:
            keys = [run_keys(self.prefix, run_id) for run_id in run_ids]
            await self._commands.unlink(*(k for pair in keys for k in (pair.log, pair.meta)))
            for run_id in run_ids:
                self._remote.pop(run_id, None)
                await self._cancel.forget(run_id)
        except RedisError as error:
            self._health.lost(error)
            raise BrokerUnavailable("Redis does not answer", url=self.url) from error

    def on_forget(self, callback: Callable[[str], None]) -> None:
        """Call `callback(run_id)` for every run any instance of the deployment forgets."""
        self._cancel.on_forget(callback)

    async def subscribed(self) -> None:
        """Return once cancel requests are heard (the subscription is in place)."""
        await self._cancel.subscribed()
