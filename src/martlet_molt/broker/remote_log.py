"""A run's stream log as another instance reads it: a copy that follows the run in Redis.

`RemoteLog` implements `StreamLog` from the run's Redis stream. The broker fills it: first
with what the stream holds (`XRANGE`, in `RedisBroker.follow`), then with what its shared
follower reads live (`follower.py`); each batch of entries goes through `add_entries`, which
drops events the log already has and wakes its readers. Readers never touch Redis: they read
the copy like any log, with one cursor into one sequence (no seam between replay and live).

It holds the events from the oldest entry the stream still had when it was loaded. A cursor
before that raises `LogTrimmed` (never a silent skip): the caller answers from the store.
Its status is `streaming` until the `end` event arrives, then the final status it carries.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from martlet_molt.broker.wire import decode_entry, entry_id
from martlet_molt.core.status import RunStatus
from martlet_molt.core.stream_log import (
    EventKind,
    RunEvent,
    replay_batches,
    replay_events,
    replay_text,
)
from martlet_molt.errors import LogTrimmed

Entry = tuple[bytes, Mapping[bytes, bytes]]
"""A stream entry as redis-py returns it: id and fields."""


class RemoteLog:
    """One run's log, read from Redis on an instance that does not run it."""

    def __init__(self, run_id: str, *, session_id: str, principal: str, key: str) -> None:
        self.run_id = run_id
        self.session_id = session_id
        self.principal = principal
        self.key = key
        """The run's stream key, as the follower reads it."""
        self._events: list[RunEvent] = []
        self._base = 0  # the events held are seq _base+1 .. _base+len(_events)
        self._texts: list[str] = []
        self._joined: str | None = ""
        self._status = RunStatus.STREAMING
        self._error: str | None = None
        self._usage: Mapping[str, Any] | None = None
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def status(self) -> RunStatus:
        """`streaming` until the `end` event is read, then the status it carries."""
        return self._status

    @property
    def closed(self) -> bool:
        """True once the `end` event is read: readers can finish."""
        return self._status.is_final

    @property
    def last_seq(self) -> int:
        """The `seq` of the newest event read."""
        return self._base + len(self._events)

    @property
    def first_held(self) -> int:
        """The oldest `seq` this copy can replay (earlier ones were trimmed from Redis)."""
        return self._base + 1

    @property
    def last_entry_id(self) -> str:
        """Where the follower reads on from."""
        return entry_id(self.last_seq)

    @property
    def error(self) -> str | None:
        """Why the run failed, from its `end` event."""
        return self._error

    @property
    def usage(self) -> Mapping[str, Any] | None:
        """The token usage carried by the `end` event, if any."""
        return self._usage

    @property
    def full_content(self) -> str:
        """The text of the events held (the whole reply unless the stream was trimmed)."""
        if self._joined is None:
            self._joined = "".join(self._texts)
            self._texts = [self._joined]
        return self._joined

    # -- filled by the broker ------------------------------------------------------------

    def add_entries(self, entries: Sequence[Entry]) -> None:
        """Take stream entries read from Redis (in order); wakes the readers if any is new."""
        before = self.last_seq
        for entry, fields in entries:
            for event in decode_entry(entry, fields):
                self._add(event)
        if self.last_seq != before or self.closed:
            self._wake()

    def _add(self, event: RunEvent) -> None:
        if event.seq <= self.last_seq or self.closed:
            return
        if event.seq > self.last_seq + 1:
            # Entries were trimmed before this copy read them: it now starts here, and a
            # cursor before this point gets `LogTrimmed`.
            self._events, self._texts, self._joined = [], [], ""
            self._base = event.seq - 1
        self._events.append(event)
        if event.kind is EventKind.DELTA:
            self._texts.append(event.text)
            self._joined = None
        elif event.kind is EventKind.END:
            data = event.data or {}
            self._error = data.get("error")
            self._usage = data.get("usage")
            self._status = RunStatus(data.get("status", RunStatus.FAILED.value))

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    # -- reading -------------------------------------------------------------------------

    def events_after(self, after: int, limit: int | None = None) -> Sequence[RunEvent]:
        """The events with `seq > after` held: all, or the first `limit`. Raises
        `LogTrimmed` if some of them are no longer held."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        after = max(after, 0)
        if after < self._base:
            raise LogTrimmed(self.run_id, after=after, first_held=self.first_held)
        start = after - self._base
        end = len(self._events) if limit is None else start + limit
        return self._events[start:end]

    async def wait(self, after: int, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until an event past `after` is read or the log ended; False on timeout."""
        if self.last_seq > after or self.closed:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            if timeout is None:
                await waiter
                return True
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            return False
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return True

    def read_batches(
        self, after: int = 0, limit: int | None = None
    ) -> AsyncIterator[Sequence[RunEvent]]:
        """Every event past `after`, in batches of what is available, until the end event."""
        return replay_batches(self, after, limit)

    def read(self, after: int = 0) -> AsyncIterator[RunEvent]:
        """Every event past `after`, one by one, until the end event."""
        return replay_events(self, after)

    def stream(self) -> AsyncIterator[str]:
        """The reply's text pieces from the start."""
        return replay_text(self)
