"""The owner's side of the shared log: mirror local stream logs into Redis, in batches.

`Publisher.publish(log)` registers a run's `LocalLog` and sets its `on_append` listener,
which only marks the log dirty and wakes the flusher (the writer never waits and never
touches Redis). The flusher is one task, started by `start` and cancelled by `close`, both
called by the broker that owns the publisher. When woken it takes every dirty log, reads
each one's events past what Redis acknowledged, and sends them all in ONE `APPEND` script
call (`scripts.py`): one stream entry per run. At most one flush is in flight: what is
appended meanwhile goes into the next, so batches grow with load, and flushes start at most
once per `flush_interval` (a burst of runs costs one command per interval, not per token).

A log leaves the publisher once Redis acknowledged its `end` event (the script then set the
keys' expiry), or when the script refuses it (another instance ended the run).

When Redis cannot be reached the unacknowledged events simply stay where they are, in the
owner's log (readers on the owner read it and never notice); the flusher marks the broker
unhealthy, retries with a bounded backoff and catches up by itself once Redis answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from martlet_molt.broker.health import Backoff, Health, stop
from martlet_molt.broker.scripts import APPEND, AppendResult
from martlet_molt.broker.wire import RunKeys, encode_event, run_keys
from martlet_molt.core.local_log import LocalLog
from martlet_molt.core.stream_log import EventKind

# One run sends at most this many events in one flush; the rest go in the next.
EVENTS_PER_RUN_PER_FLUSH = 4_096


class _Mirror:
    """One published log: where it goes in Redis and how far Redis has acknowledged it."""

    __slots__ = ("acked", "keys", "log", "meta_written", "owner", "publisher")

    def __init__(self, publisher: Publisher, log: LocalLog, owner: str, keys: RunKeys) -> None:
        self.publisher = publisher
        self.log = log
        self.owner = owner
        self.keys = keys
        self.acked = 0
        self.meta_written = False

    def touch(self) -> None:
        """The log's `on_append`: mark it dirty (no I/O, no allocation but a dict slot)."""
        publisher = self.publisher
        publisher.dirty[self] = None
        if not publisher.wake.is_set():
            publisher.wake.set()


class Publisher:
    """Mirrors its owners' stream logs into Redis with one command per flush for all runs."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str,
        health: Health,
        retention_seconds: float,
        max_entries: int,
        flush_interval: float,
    ) -> None:
        self._client = client
        self._script = client.register_script(APPEND)
        self._prefix = prefix
        self._health = health
        self._retention_ms = max(1, round(retention_seconds * 1000))
        self._max_entries = max_entries
        self._flush_interval = flush_interval
        self._mirrors: dict[str, _Mirror] = {}
        self.dirty: dict[_Mirror, None] = {}
        self.wake = asyncio.Event()
        self._flushing = False
        self._flushed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.flushes = 0
        """Flushes sent (one command each), for measuring commands per event."""

    @property
    def tracked(self) -> int:
        """How many logs are mirrored and not yet fully acknowledged with their end."""
        return len(self._mirrors)

    def publish(self, log: LocalLog, *, owner: str) -> None:
        """Mirror `log` from now on: what it holds, then every new event, until its end."""
        if log.run_id in self._mirrors:
            return
        mirror = _Mirror(self, log, owner, run_keys(self._prefix, log.run_id))
        self._mirrors[log.run_id] = mirror
        log.on_append = mirror.touch
        mirror.touch()

    def start(self) -> None:
        """Start the flusher task (the broker's `open`)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="broker-flusher")

    async def drain(self) -> None:
        """Return once every event appended so far is acknowledged by Redis (or refused).
        Waits as long as Redis is away: bound it with a timeout."""
        while self.dirty or self._flushing:
            flushed = self._flushed
            await flushed.wait()

    async def close(self) -> None:
        """Stop the flusher (no more retries) and detach every log."""
        self._closing = True
        self.wake.set()
        await stop(self._task)
        self._task = None
        for mirror in list(self._mirrors.values()):
            self._drop(mirror)
        self.dirty.clear()

    def _drop(self, mirror: _Mirror) -> None:
        self._mirrors.pop(mirror.log.run_id, None)
        self.dirty.pop(mirror, None)
        if mirror.log.on_append == mirror.touch:
            mirror.log.on_append = None

    def _notify_flushed(self) -> None:
        self._flushed.set()
        self._flushed = asyncio.Event()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff()
        started = -self._flush_interval
        while True:
            await self.wake.wait()
            if self._closing:
                return
            pause = started + self._flush_interval - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)  # pacing: let a burst of runs share one command
            self.wake.clear()
            batch = list(self.dirty)
            self.dirty.clear()
            started = loop.time()
            self._flushing = True
            try:
                await self._flush(batch)
            except Exception as error:  # kept and retried: the flusher must never die
                if isinstance(error, RedisError):
                    self._health.lost(error)
                else:
                    logger.exception("flushing run logs failed")
                for mirror in batch:
                    if mirror.log.run_id in self._mirrors:
                        self.dirty[mirror] = None
                self.wake.set()
                self._flushing = False
                await backoff.wait()
                continue
            finally:
                self._flushing = False
                self._notify_flushed()
            backoff.reset()
            self._health.back()

    async def _flush(self, batch: Sequence[_Mirror]) -> None:
        keys: list[str] = []
        args: list[bytes | str | int] = [self._retention_ms, self._max_entries]
        sent: list[tuple[_Mirror, int]] = []
        for mirror in batch:
            log = mirror.log
            if log.run_id not in self._mirrors:
                continue
            events = log.events_after(mirror.acked, limit=EVENTS_PER_RUN_PER_FLUSH)
            if not events and mirror.meta_written:
                continue
            ends = bool(events) and events[-1].kind is EventKind.END
            keys += (mirror.keys.log, mirror.keys.meta)
            args += (mirror.owner, log.session_id, log.principal, mirror.acked + 1)
            args += (len(events), 1 if ends else 0)
            args += [encode_event(event) for event in events]
            sent.append((mirror, mirror.acked + len(events)))
        if not sent:
            return
        self.flushes += 1
        reply = cast("list[int]", await self._script(keys=keys, args=args))
        for index, (mirror, upto) in enumerate(sent):
            result, last = AppendResult(int(reply[2 * index])), int(reply[2 * index + 1])
            self._settle(mirror, upto, result, last)

    def _settle(self, mirror: _Mirror, upto: int, result: AppendResult, last: int) -> None:
        log = mirror.log
        if result is AppendResult.REFUSED:
            logger.warning("run {}: the shared log refused this owner's events", log.run_id)
            self._drop(mirror)
            return
        mirror.meta_written = True
        if result is AppendResult.GAP:
            logger.warning("run {}: shared log lost events after {}; resending", log.run_id, last)
            mirror.acked = last
        else:
            mirror.acked = upto
        if mirror.acked < log.last_seq:
            self.dirty[mirror] = None
            self.wake.set()
        elif log.closed:
            self._drop(mirror)
