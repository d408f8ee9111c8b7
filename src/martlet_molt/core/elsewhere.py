"""Runs owned by another instance: read through the owner's mirror, cancelled through it.

Only with several instances. This instance holds no task and no log of such a run: it reads
the `RemoteLog` the broker fills from Redis, and it asks the owner to cancel (the broker's
message, and `cancel_requested` in the database for an owner that missed it), then waits for
the run's end. It never changes the run itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from martlet_molt.broker.base import Broker
from martlet_molt.core.stream_log import StreamLog
from martlet_molt.errors import LogTrimmed, RunNotFound
from martlet_molt.store.base import RunRecord, Store

CATCH_UP_SECONDS = 1.0
"""How long a resume waits for the owner's mirror to reach its cursor, or to appear at all."""

MIRROR_POLL_SECONDS = 0.01
"""How often a reader of a run started elsewhere a moment ago looks for its mirror."""

CANCEL_POLL_SECONDS = 0.1
"""How often a cancel of a run owned elsewhere checks the store, when its log cannot be read."""

RecordOf = Callable[[str, str], Awaitable[RunRecord]]


class Elsewhere:
    """What this instance can do with a run another instance owns."""

    def __init__(self, *, broker: Broker, store: Store, record_of: RecordOf) -> None:
        self.broker = broker
        self.store = store
        self._record_of = record_of

    async def follow(self, run_id: str, principal: str, after: int = 0) -> StreamLog | None:
        """The run's mirror, if the broker still holds it from `after` on."""
        remote = await self.broker.follow(run_id)
        if remote is None:
            return None
        if remote.principal != principal:
            raise RunNotFound(f"run {run_id} not found")
        try:
            remote.events_after(after, limit=1)
        except LogTrimmed:
            return None
        if after > remote.last_seq and not remote.closed:
            # A reader that read the owner directly may be a flush ahead of the mirror.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CATCH_UP_SECONDS):
                    while remote.last_seq < after and not remote.closed:
                        await remote.wait(remote.last_seq)
        return remote

    async def follow_when_mirrored(
        self, run_id: str, principal: str, after: int
    ) -> StreamLog | None:
        """The mirror of a run that has just started elsewhere, once it appears (bounded)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CATCH_UP_SECONDS):
                while True:
                    await asyncio.sleep(MIRROR_POLL_SECONDS)
                    remote = await self.follow(run_id, principal, after)
                    if remote is not None:
                        return remote
        return None

    async def cancel(self, run_id: str, principal: str, *, wait_seconds: float) -> None:
        """Ask the owner to cancel, then wait (bounded) until the run has ended: the owner
        hears the broker's message at once, or the database's flag at its next renewal."""
        await self.store.request_cancel(run_id)
        with contextlib.suppress(Exception):
            await self.broker.request_cancel(run_id)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_seconds):
                remote = await self.follow(run_id, principal)
                if remote is not None:
                    while not remote.closed:
                        await remote.wait(remote.last_seq)
                    return
                while True:
                    if (await self._record_of(run_id, principal)).status.is_final:
                        return
                    await asyncio.sleep(CANCEL_POLL_SECONDS)
