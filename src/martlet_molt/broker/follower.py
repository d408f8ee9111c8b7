"""Live reading of other instances' runs: a few blocking connections shared by all readers.

A `Follower` owns one dedicated Redis connection and one task (started by `start`, cancelled
by `close`, both called by the broker that owns it). The task loops on one `XREAD BLOCK` over
every run it follows, each from its `RemoteLog`'s last entry id, and hands what it reads to
the logs. So an instance's remote readers cost a fixed number of connections (the broker's
`followers`), however many runs or readers there are.

A newly followed run must not wait out the block: `add` bumps a generation and, if the loop
is blocked on an older set, wakes it with `CLIENT UNBLOCK` from the command connection; the
loop then reads again with the new set. Ids are explicit, so a wake-up loses nothing.

The follower holds its logs weakly: a `RemoteLog` no reader holds any more disappears, and
the next `XREAD` leaves it out. A log that read its `end` event is dropped at once. On a
connection error the loop reports it (`Health`), waits a bounded backoff and reads on from
the same ids once Redis is back.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping, Sequence
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from martlet_molt.broker.health import Backoff, Health, stop
from martlet_molt.broker.remote_log import Entry, RemoteLog

# Entries read per run per `XREAD`; a run further behind is read on in the next turn.
ENTRIES_PER_READ = 1_000
# `CLIENT UNBLOCK` tries before leaving a wake-up to the block timeout (each is a round trip
# while the loop's `XREAD` is on its way to Redis).
WAKE_ATTEMPTS = 50

StreamReply = Sequence[tuple[bytes, Sequence[Entry]]]


class Follower:
    """One blocking connection reading every run assigned to it."""

    def __init__(
        self, client: Redis, *, commands: Redis, health: Health, block_seconds: float
    ) -> None:
        self._client = client
        self._commands = commands
        self._health = health
        self._block_ms = max(1, round(block_seconds * 1000))
        self._logs: weakref.WeakValueDictionary[str, RemoteLog] = weakref.WeakValueDictionary()
        self._generation = 0
        self._reading_generation = -1  # the generation the current XREAD was built from
        self._client_id: int | None = None
        self._added = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def __len__(self) -> int:
        return len(self._logs)

    def start(self) -> None:
        """Start the reading task."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="broker-follower")

    async def close(self) -> None:
        """Stop reading and close the connection."""
        self._closing = True
        self._added.set()
        await stop(self._task)
        self._task = None
        await self._client.aclose()
        await self._client.connection_pool.disconnect()

    async def add(self, log: RemoteLog) -> None:
        """Follow `log` from its last entry on, waking the loop so it starts at once."""
        self._logs[log.key] = log
        self._generation += 1
        generation = self._generation
        self._added.set()
        for _ in range(WAKE_ATTEMPTS):
            if self._reading_generation < 0 or self._reading_generation >= generation:
                return  # not blocked, or blocked on a set that includes `log`
            client_id = self._client_id
            if client_id is None:
                return  # reconnecting: the next read takes the new set
            try:
                if await self._commands.client_unblock(client_id):  # pyright: ignore[reportUnknownMemberType]
                    return
            except RedisError:
                return  # the loop has trouble too and will rebuild its read

    async def _run(self) -> None:
        backoff = Backoff()
        while not self._closing:
            if not len(self._logs):
                self._added.clear()
                await self._added.wait()
                continue
            try:
                if self._client_id is None:
                    self._client_id = int(await self._client.client_id())  # pyright: ignore[reportUnknownMemberType]
                # A comprehension: no loop variable keeps a log alive while the read blocks.
                streams = {key: log.last_entry_id for key, log in list(self._logs.items())}
                if not streams:  # every log was dropped meanwhile
                    continue
                self._reading_generation = self._generation
                try:
                    answer = await self._client.xread(
                        streams,  # pyright: ignore[reportArgumentType]
                        count=ENTRIES_PER_READ,
                        block=self._block_ms,
                    )
                    reply = cast("StreamReply | Mapping[bytes, Sequence[Entry]] | None", answer)
                finally:
                    self._reading_generation = -1
            except RedisError as error:
                self._client_id = None
                self._health.lost(error)
                await backoff.wait()
                continue
            backoff.reset()
            self._health.back()
            self._deliver(reply or ())

    def _deliver(self, reply: StreamReply | Mapping[bytes, Sequence[Entry]]) -> None:
        pairs = reply.items() if isinstance(reply, Mapping) else reply
        for raw_key, entries in pairs:
            key = raw_key.decode()
            log = self._logs.get(key)
            if log is None:
                continue
            log.add_entries(entries)
            if log.closed:
                self._logs.pop(key, None)
