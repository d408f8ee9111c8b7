"""One clock for every SSE reader's ping deadline, instead of a timer per reader per wait.

A reader waits on its log with no timeout of its own. While any reader is connected, one task
per event loop ticks (every second, or a quarter of the shortest ping interval if that is
shorter) and interrupts each reader that has been waiting for at least its ping interval: it
cancels the reader's task, as `asyncio.timeout` does when it expires, and the reader takes
that cancellation back (`Task.uncancel`) and sends `: ping`. So a wake-up for a new event costs
the reader no timer to arm and disarm; a ping goes out between one ping interval and one tick
after the last write. A cancellation from anybody else (a server shutting down) goes through.
(Measured: docs/BENCHMARKS.md, "Measurements behind the code".)
"""

from __future__ import annotations

import asyncio
import weakref

from martlet_molt.core.stream_log import StreamLog

MAX_TICK_SECONDS = 1.0


class Silence:
    """One reader's entry in the clock: when its wait runs out, and whether it is waiting."""

    __slots__ = ("_loop_time", "deadline", "rang", "task", "waiting")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self._loop_time = task.get_loop().time
        self.deadline = 0.0
        self.waiting = False
        self.rang = False

    async def wait(self, log: StreamLog, after: int, ping_seconds: float) -> bool:
        """Wait for an event past `after` (or the log's end) with no timer of its own; True
        if the clock rang first, the wait having lasted `ping_seconds`. Only the clock's
        cancellation is taken back: anybody else's goes through."""
        cancelling = self.task.cancelling()
        self.deadline = self._loop_time() + ping_seconds
        self.waiting = True
        try:
            await log.wait(after)
        except asyncio.CancelledError:
            if not self.rang or self.task.uncancel() > cancelling:
                raise
        finally:
            rang, self.waiting, self.rang = self.rang, False, False
        return rang


class PingClock:
    """The ping deadlines of every reader on one event loop, kept by one ticking task that
    runs only while some reader is connected."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._readers: set[Silence] = set()
        self._tick = MAX_TICK_SECONDS
        self._task: asyncio.Task[None] | None = None

    def join(self, ping_seconds: float) -> Silence:
        """Register the current task as a reader pinged after `ping_seconds` of waiting."""
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("a reader joins the ping clock from its own task")
        silence = Silence(task)
        self._readers.add(silence)
        self._tick = min(self._tick, ping_seconds / 4)
        if self._task is None:
            self._task = self._loop.create_task(self._run(), name="sse-ping-clock")
        return silence

    def leave(self, silence: Silence) -> None:
        """Forget a reader that ended; the clock stops with the last one."""
        self._readers.discard(silence)
        if not self._readers and self._task is not None:
            self._task.cancel()
            self._task = None
            self._tick = MAX_TICK_SECONDS

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            now = self._loop.time()
            for silence in self._readers:
                if silence.waiting and not silence.rang and now >= silence.deadline:
                    silence.rang = True
                    silence.task.cancel()


_clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PingClock] = (
    weakref.WeakKeyDictionary()
)


def ping_clock() -> PingClock:
    """The running event loop's ping clock (one per loop: a process serves from one)."""
    loop = asyncio.get_running_loop()
    clock = _clocks.get(loop)
    if clock is None:
        clock = _clocks[loop] = PingClock(loop)
    return clock
