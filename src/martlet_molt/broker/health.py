"""The broker's view of Redis: reachable or not, and how long its loops wait to try again.

Every loop that talks to Redis (the publisher's flusher, the followers, the cancel listener)
reports here: `lost` on a connection error, `back` on a success. `healthy` is therefore False
while Redis is unreachable and flips back by itself with the first success after it returns.
"""

from __future__ import annotations

import asyncio
import contextlib

from loguru import logger

BACKOFF_FIRST_SECONDS = 0.05
BACKOFF_MAX_SECONDS = 2.0
STOP_SECONDS = 2.0


class Health:
    """Whether Redis answers, as the broker's loops last saw it; awaitable both ways."""

    def __init__(self) -> None:
        self._healthy = True
        self._changed = asyncio.Event()

    @property
    def healthy(self) -> bool:
        """False from a failed command until the next one that succeeds."""
        return self._healthy

    def lost(self, error: BaseException) -> None:
        """A command failed for want of Redis."""
        if self._healthy:
            logger.warning("Redis unreachable: {!r}", error)
            self._set(False)

    def back(self) -> None:
        """A command succeeded."""
        if not self._healthy:
            logger.info("Redis reachable again")
            self._set(True)

    def _set(self, healthy: bool) -> None:
        self._healthy = healthy
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, healthy: bool) -> None:
        """Return once `healthy` is `healthy` (at once if it is)."""
        while self._healthy is not healthy:
            await self._changed.wait()


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel one of the broker's loops and wait for it, boundedly: a cancellation that
    lands inside the client's own read timeout can be swallowed by it, so each loop also
    checks its closing flag, and this never waits longer than `STOP_SECONDS`."""
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.wait({task}, timeout=STOP_SECONDS)
    if task.done():
        with contextlib.suppress(asyncio.CancelledError):
            task.result()
    else:
        logger.warning("broker task {} did not stop in time", task.get_name())


class Backoff:
    """Bounded exponential delays between attempts of one loop; `reset` after a success."""

    def __init__(
        self, first: float = BACKOFF_FIRST_SECONDS, maximum: float = BACKOFF_MAX_SECONDS
    ) -> None:
        self.first = first
        self.maximum = maximum
        self._next = first

    def reset(self) -> None:
        """The last attempt succeeded: the next failure waits the shortest delay again."""
        self._next = self.first

    async def wait(self) -> None:
        """Sleep the current delay, then double it (up to the maximum)."""
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        await asyncio.sleep(delay)
