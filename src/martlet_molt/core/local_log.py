"""The stream log a run's own instance holds: an append-only, replayable sequence of one
run's events (the handoff's `StreamBuffer`; see `core.stream_buffer`).

The run's task is the only writer. It appends events numbered `seq` = 1, 2, 3, ... and never
waits for anybody. Any number of readers each keep their own cursor: `read(after=n)` replays
what is already there and then follows live from the same list, so there is no seam between
replay and live where an event could be lost or repeated. A reader that disconnects just stops
reading; the writer does not notice.

The text is held once (`core.log_text`): delta events keep their pieces, and the full text is
joined lazily and cached. The log ends with exactly one `end` event carrying the final status.
"""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast
from uuid import uuid4

from loguru import logger

from martlet_molt.core.log_text import LogText
from martlet_molt.core.status import ALLOWED_TRANSITIONS, RunStatus
from martlet_molt.core.stream_log import EventKind, RunEvent
from martlet_molt.errors import InvalidTransition, ReplyTooLong
from martlet_molt.store.text import TextPieces

_KINDS = list(EventKind)
_KIND_CODES = {kind: code for code, kind in enumerate(_KINDS)}


def new_run_id() -> str:
    """A fresh, unguessable run id."""
    return f"run_{uuid4().hex}"


def _now() -> datetime:
    return datetime.now(UTC)


class LocalLog:
    """One run's stream log, held by the instance that runs it."""

    def __init__(
        self,
        session_id: str,
        *,
        run_id: str | None = None,
        max_chars: int | None = None,
        principal: str = "",
    ) -> None:
        self.session_id = session_id
        self.run_id = run_id or new_run_id()
        self.principal = principal
        self.max_chars = max_chars
        # Per event, compactly: its kind, and the text length so far after it (so a delta's
        # text is `_text[end of previous event : its end]`); other events' data by seq.
        self._kinds = bytearray()
        self._ends = array("q")
        self._data: dict[int, Mapping[str, Any]] = {}
        self._text = LogText()
        self._chars = 0
        self._status = RunStatus.PENDING
        self._error: str | None = None
        self._usage: dict[str, Any] | None = None
        self._finish_reason: str | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self.created_at = _now()
        self.updated_at = self.created_at
        self.completed_at: datetime | None = None
        self.first_token_at: datetime | None = None
        # Told after every append (a broker mirroring this log elsewhere); None: nobody is.
        self.on_append: Callable[[], None] | None = None

    # -- state ---------------------------------------------------------------------------

    @property
    def status(self) -> RunStatus:
        """Where the run is in its life cycle."""
        return self._status

    @property
    def full_content(self) -> str:
        """All text the model streamed so far, exactly."""
        return self._text.whole()

    @property
    def content_length(self) -> int:
        """Characters of text held, without joining them."""
        return self._chars

    @property
    def error(self) -> str | None:
        """Why the run failed, if it did."""
        return self._error

    @property
    def usage(self) -> dict[str, Any] | None:
        """Token usage reported by the upstream, if any."""
        return self._usage

    @property
    def last_seq(self) -> int:
        """The `seq` of the newest event (0 when empty)."""
        return len(self._kinds)

    @property
    def closed(self) -> bool:
        """True once the `end` event is in the log: readers can finish."""
        return self._status.is_final

    def _move_to(self, status: RunStatus) -> None:
        if status not in ALLOWED_TRANSITIONS[self._status]:
            raise InvalidTransition(
                f"run {self.run_id} cannot go from {self._status} to {status}",
                run_id=self.run_id,
            )
        logger.debug("run {} {} -> {}", self.run_id, self._status.value, status.value)
        self._status = status

    # -- writing -------------------------------------------------------------------------

    def _append(self, kind: EventKind, data: Mapping[str, Any] | None = None) -> None:
        self._kinds.append(_KIND_CODES[kind])
        self._ends.append(self._chars)
        if data is not None:
            self._data[len(self._kinds)] = data
        self.updated_at = _now()
        if self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()
        if self.on_append is not None:
            self.on_append()

    def _require_streaming(self) -> None:
        if self._status is not RunStatus.STREAMING:
            raise InvalidTransition(
                f"run {self.run_id} is {self._status}, not streaming", run_id=self.run_id
            )

    def start(self) -> None:
        """Mark the run as streaming: the upstream call is under way."""
        self._move_to(RunStatus.STREAMING)

    def put_sync(self, chunk: str, metadata: Mapping[str, Any] | None = None) -> None:
        """Append a text delta. Raises `ReplyTooLong` (after keeping what fits) at the cap."""
        self._require_streaming()
        if not chunk:
            return
        if self.max_chars is not None and self._chars + len(chunk) > self.max_chars:
            room = self.max_chars - self._chars
            if room > 0:
                self.put_sync(chunk[:room], metadata)
            raise ReplyTooLong(
                f"reply exceeded the limit of {self.max_chars} characters",
                limit=self.max_chars,
            )
        if self.first_token_at is None:
            self.first_token_at = _now()
        self._text.add(chunk)
        self._chars += len(chunk)
        self._append(EventKind.DELTA, metadata)

    async def put(self, chunk: str, metadata: Mapping[str, Any] | None = None) -> None:
        """Append a text delta (never waits for readers; async for the handoff's callers)."""
        self.put_sync(chunk, metadata)

    def add_tool_call(self, *, call_id: str, name: str, arguments: str) -> None:
        """Record that the model called a tool."""
        self._require_streaming()
        self._append(
            EventKind.TOOL_CALL, data={"id": call_id, "name": name, "arguments": arguments}
        )

    def add_tool_result(
        self,
        *,
        call_id: str,
        name: str,
        content: str,
        failed: bool = False,
        duration_ms: int | None = None,
    ) -> None:
        """Record what a tool returned, whether it failed, and how long it took."""
        self._require_streaming()
        data: dict[str, Any] = {"tool_call_id": call_id, "name": name, "content": content}
        data["status"] = "failed" if failed else "done"
        if duration_ms is not None:
            data["duration_ms"] = duration_ms
        self._append(EventKind.TOOL_RESULT, data=data)

    def _closing_events(
        self, status: RunStatus, error: str | None
    ) -> list[tuple[EventKind, dict[str, Any]]]:
        closing: list[tuple[EventKind, dict[str, Any]]] = []
        if error is not None:
            closing.append((EventKind.ERROR, {"message": error}))
        end: dict[str, Any] = {"status": status.value, "usage": self._usage, "error": error}
        if self._finish_reason is not None:
            end["finish_reason"] = self._finish_reason
        closing.append((EventKind.END, end))
        return closing

    def closing_index(self, status: RunStatus, error: str | None) -> list[Any]:
        """The replay index entries of the events that will end the log with `status`: saved
        with the outcome, so a log rebuilt from the store ends exactly as the live one."""
        return [
            {"kind": kind.value, "data": data} for kind, data in self._closing_events(status, error)
        ]

    def _end(self, status: RunStatus, error: str | None = None) -> None:
        self._move_to(status)
        self._error = error
        self.completed_at = _now()
        for kind, data in self._closing_events(status, error):
            self._append(kind, data=data)

    def set_usage(self, usage: Mapping[str, Any]) -> None:
        """Remember the upstream's token usage; it goes out with the `end` event."""
        self._usage = dict(usage)

    def set_finish_reason(self, reason: str | None) -> None:
        """Remember why the model stopped (`stop`, `length`, ...); it goes out with the `end`
        event, so a reader can tell a reply cut at its token limit from a finished one."""
        self._finish_reason = reason

    def complete(self) -> None:
        """End the run successfully (call only once the reply is saved)."""
        self._end(RunStatus.COMPLETED)

    def fail(self, error: str) -> None:
        """End the run with an error that readers will see."""
        self._end(RunStatus.FAILED, error)

    def cancel(self) -> None:
        """End the run because somebody cancelled it."""
        self._end(RunStatus.CANCELLED)

    def interrupt(self, error: str = "interrupted") -> None:
        """End the run because the server stopped before it finished."""
        self._end(RunStatus.INTERRUPTED, error)

    # -- reading -------------------------------------------------------------------------

    def events_after(self, after: int, limit: int | None = None) -> Sequence[RunEvent]:
        """The events with `seq > after` that are already in the log: all of them, or the
        first `limit` (a reader far behind then builds a bounded batch, not the whole rest)."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        first = max(after, 0)
        last = len(self._kinds) if limit is None else min(len(self._kinds), first + limit)
        return [self._event(seq) for seq in range(first + 1, last + 1)]

    def _event(self, seq: int) -> RunEvent:
        kind = _KINDS[self._kinds[seq - 1]]
        data = self._data.get(seq)
        if kind is not EventKind.DELTA:
            return RunEvent(seq, kind, "", data)
        start = self._ends[seq - 2] if seq > 1 else 0
        return RunEvent(seq, kind, self._text.slice(start, self._ends[seq - 1]), data)

    async def wait(self, after: int, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until the log has an event past `after` or has ended; False on timeout."""
        if len(self._kinds) > after or self.closed:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            if timeout is None:  # no timer to arm and cancel (SSE readers: `PingClock`)
                await waiter
                return True
            # Not `wait_for`: it wakes this task through a callback and a second future, a
            # loop iteration later, by when a writer relaying a burst has moved on.
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            return False
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return True

    async def read_batches(
        self, after: int = 0, limit: int | None = None
    ) -> AsyncIterator[Sequence[RunEvent]]:
        """Every event past `after`, in batches of what is available (at most `limit` events
        each, if given), until the end event."""
        cursor = after
        while True:
            batch = self.events_after(cursor, limit)
            if batch:
                cursor = batch[-1].seq
                yield batch
                continue
            if self.closed:
                return
            await self.wait(cursor)

    async def read(self, after: int = 0) -> AsyncIterator[RunEvent]:
        """Every event past `after`, one by one: replay, then live, until the end event."""
        async for batch in self.read_batches(after):
            for event in batch:
                yield event

    async def stream(self) -> AsyncIterator[str]:
        """The reply's text pieces from the start (the handoff's reader interface)."""
        async for event in self.read():
            if event.kind is EventKind.DELTA:
                yield event.text

    # -- persistence ---------------------------------------------------------------------

    def _chars_through(self, seq: int) -> int:
        return self._ends[seq - 1] if seq > 0 else 0

    def content_after(self, after: int) -> TextPieces:
        """The text of the events past `after`: what a checkpoint adds to the saved reply."""
        return self.text_from(self._chars_through(after))

    def text_from(self, start: int = 0) -> TextPieces:
        """The text from character `start` on, as the log's own pieces: saving a long reply
        hands it to the store without ever joining it into one string."""
        return TextPieces(self._text.pieces(start, self._chars))

    def replay_index(self, after: int = 0) -> list[Any]:
        """The compact form the store keeps, for the events past `after`: an int per delta
        (its length), a dict otherwise."""
        index: list[Any] = []
        previous = self._chars_through(after)
        for seq in range(after + 1, len(self._kinds) + 1):
            kind = _KINDS[self._kinds[seq - 1]]
            end = self._ends[seq - 1]
            if kind is EventKind.DELTA:
                index.append(end - previous)
            else:
                index.append({"kind": kind.value, "data": dict(self._data.get(seq) or {})})
            previous = end
        return index

    @classmethod
    def from_saved(
        cls,
        *,
        run_id: str,
        session_id: str,
        principal: str,
        status: RunStatus,
        content: str,
        error: str | None,
        usage: Mapping[str, Any] | None,
        index: Sequence[Any],
    ) -> LocalLog:
        """Rebuild a finished log from the store, with the live run's sequence numbers."""
        log = cls(session_id, run_id=run_id, principal=principal)
        log._status = RunStatus.STREAMING
        offset = 0
        ended = False
        for item in index:
            if isinstance(item, int):
                log.put_sync(content[offset : offset + item])
                offset += item
            elif isinstance(item, Mapping):
                entry = cast("Mapping[str, Any]", item)
                kind = EventKind(entry["kind"])
                ended = ended or kind is EventKind.END
                log._append(kind, data=entry.get("data") or {})
        if offset < len(content):
            log.put_sync(content[offset:])
        log._usage = dict(usage) if usage else None
        log._error = error
        if not ended and status.is_final:
            for kind, data in log._closing_events(status, error):
                log._append(kind, data=data)
        log._status = status
        return log

    def to_dict(self) -> dict[str, Any]:
        """A summary for logs and debugging."""
        return {
            "run_id": self.run_id,
            "session_id": self.session_id,
            "status": self._status.value,
            "content_length": self._chars,
            "events": len(self._kinds),
            "error": self._error,
            "created_at": self.created_at.isoformat(),
            "completed_at": self.completed_at.isoformat() if self.completed_at else None,
        }
