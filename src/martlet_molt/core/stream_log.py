"""What a reader needs from a run's stream log, whoever holds it, and the events it holds.

The run's own instance holds the log itself (`core.local_log.LocalLog`); another instance
reads a copy that follows it through the broker (`broker.remote_log.RemoteLog`). Readers
(`gateway/sse.py`, `POST /chat`) type against `StreamLog` only, so they read either the same
way: replay past a cursor with `events_after`, then `wait` for more, until the `end` event
(`closed`).

`replay_batches` is the one reading loop, shared by every implementation's `read_batches`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from martlet_molt.core.status import RunStatus


class EventKind(StrEnum):
    """What a stream log event says."""

    DELTA = "delta"
    TOOL_CALL = "tool_call"
    TOOL_RESULT = "tool_result"
    ERROR = "error"
    END = "end"


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One event of a run. Deltas carry `text`; the others carry `data`."""

    seq: int
    kind: EventKind
    text: str = ""
    data: Mapping[str, Any] | None = None


class StreamLog(Protocol):
    """The reader side of one run's append-only, replayable event sequence (`seq` 1, 2, ...)."""

    @property
    def run_id(self) -> str:
        """The run whose events these are."""
        ...

    @property
    def session_id(self) -> str:
        """The session the run answers in."""
        ...

    @property
    def principal(self) -> str:
        """Who started the run: only they may read it."""
        ...

    @property
    def status(self) -> RunStatus:
        """Where the run is in its life cycle, as far as this log knows."""
        ...

    @property
    def closed(self) -> bool:
        """True once the `end` event is in the log: readers can finish."""
        ...

    @property
    def last_seq(self) -> int:
        """The `seq` of the newest event held (0 when empty)."""
        ...

    @property
    def error(self) -> str | None:
        """Why the run failed, if it did."""
        ...

    @property
    def full_content(self) -> str:
        """The text streamed so far, exactly."""
        ...

    def events_after(self, after: int, limit: int | None = None) -> Sequence[RunEvent]:
        """The events with `seq > after` already held: all, or the first `limit`."""
        ...

    async def wait(self, after: int, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until there is an event past `after` or the log ended; False on timeout."""
        ...

    def read_batches(
        self, after: int = 0, limit: int | None = None
    ) -> AsyncIterator[Sequence[RunEvent]]:
        """Every event past `after`, in batches of what is available, until the end event."""
        ...

    def read(self, after: int = 0) -> AsyncIterator[RunEvent]:
        """Every event past `after`, one by one, until the end event."""
        ...

    def stream(self) -> AsyncIterator[str]:
        """The reply's text pieces from the start."""
        ...


async def replay_batches(
    log: StreamLog, after: int = 0, limit: int | None = None
) -> AsyncIterator[Sequence[RunEvent]]:
    """Replay past `after`, then follow live, from one cursor into one sequence: no seam
    where an event could be lost or repeated."""
    cursor = after
    while True:
        batch = log.events_after(cursor, limit)
        if batch:
            cursor = batch[-1].seq
            yield batch
            continue
        if log.closed:
            return
        await log.wait(cursor)


async def replay_events(log: StreamLog, after: int = 0) -> AsyncIterator[RunEvent]:
    """`replay_batches`, one event at a time."""
    async for batch in replay_batches(log, after):
        for event in batch:
            yield event


async def replay_text(log: StreamLog) -> AsyncIterator[str]:
    """The text pieces of the log's deltas, from the start."""
    async for event in replay_events(log):
        if event.kind is EventKind.DELTA:
            yield event.text


async def until_closed(log: StreamLog) -> None:
    """Wait for the log's end event (a reader that wants the whole outcome, not the stream)."""
    while not log.closed:
        await log.wait(log.last_seq)
