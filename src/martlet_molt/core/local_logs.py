"""Every stream log this process holds, within bounds: active ones until they end, finished
ones for a retention period (readers resume from them without the store)."""

from __future__ import annotations

from datetime import UTC, datetime

from martlet_molt.core.local_log import LocalLog
from martlet_molt.core.status import RunStatus
from martlet_molt.errors import TooManyRuns


class LocalLogs:
    """Holds every stream log: active ones until they end, finished ones for a retention period,
    within bounds on their number and size so memory never grows without limit."""

    def __init__(
        self,
        max_buffers: int = 1_000,
        *,
        retention_seconds: float = 900.0,
        max_finished: int = 2_000,
        max_finished_chars: int = 200_000_000,
    ) -> None:
        self.max_buffers = max_buffers
        self.retention_seconds = retention_seconds
        self.max_finished = max_finished
        self.max_finished_chars = max_finished_chars
        self._buffers: dict[str, LocalLog] = {}
        # The logs that were active when last looked at: pruned of ended ones only when at the
        # limit, so starting a run never scans every finished log held for retention.
        self._active: dict[str, LocalLog] = {}

    def create(
        self, session_id: str, max_size: int | None = None, *, run_id: str | None = None
    ) -> LocalLog:
        """A new log for a new run. Raises `TooManyRuns` when `max_buffers` logs are active."""
        if len(self._active) >= self.max_buffers and self.active_count() >= self.max_buffers:
            self._cleanup_old_buffers()
            if self.active_count() >= self.max_buffers:
                raise TooManyRuns(f"{self.max_buffers} runs are already active; try again later")
        buffer = LocalLog(session_id, run_id=run_id, max_chars=max_size)
        self._buffers[buffer.run_id] = buffer
        self._active[buffer.run_id] = buffer
        return buffer

    def add(self, buffer: LocalLog) -> None:
        """Hold a log built elsewhere (for example, rebuilt from the store)."""
        self._buffers[buffer.run_id] = buffer
        if not buffer.closed:
            self._active[buffer.run_id] = buffer

    def get(self, run_id: str) -> LocalLog | None:
        """The log of a run, if still held."""
        return self._buffers.get(run_id)

    def remove(self, run_id: str) -> bool:
        """Forget a log (cancelling it first if it was still active)."""
        buffer = self._buffers.pop(run_id, None)
        self._active.pop(run_id, None)
        if buffer is None:
            return False
        if not buffer.closed:
            if buffer.status is RunStatus.PENDING:
                buffer.start()
            buffer.cancel()
        return True

    def run_ids_of_session(self, session_id: str) -> list[str]:
        """The runs of one session whose logs are held."""
        return [b.run_id for b in self._buffers.values() if b.session_id == session_id]

    def active_count(self) -> int:
        """How many held logs have not ended."""
        self._active = {run_id: b for run_id, b in self._active.items() if not b.closed}
        return len(self._active)

    def __len__(self) -> int:
        return len(self._buffers)

    def _cleanup_old_buffers(self, now: datetime | None = None) -> int:
        """Evict finished logs past retention, then the oldest beyond the count and size caps."""
        now = now or datetime.now(UTC)
        finished = sorted(
            (b for b in self._buffers.values() if b.closed and b.completed_at is not None),
            key=lambda b: b.completed_at or now,
        )
        held_chars = sum(b.content_length for b in finished)
        evicted = 0
        for index, buffer in enumerate(finished):
            assert buffer.completed_at is not None
            expired = (now - buffer.completed_at).total_seconds() >= self.retention_seconds
            too_many = len(finished) - index > self.max_finished
            too_big = held_chars > self.max_finished_chars
            if not (expired or too_many or too_big):
                break
            del self._buffers[buffer.run_id]
            self._active.pop(buffer.run_id, None)
            held_chars -= buffer.content_length
            evicted += 1
        return evicted

    def evict(self, now: datetime | None = None) -> int:
        """Run the eviction pass; returns how many logs were dropped."""
        return self._cleanup_old_buffers(now)
