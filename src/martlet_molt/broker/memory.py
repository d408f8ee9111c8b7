"""The single-process broker: nothing to share, so publishing costs nothing.

Every run's log is in this process, so readers read it directly (`follow` has nothing to
offer) and cancel requests go straight to this process's callbacks. It has no tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from martlet_molt.core.local_log import LocalLog
from martlet_molt.core.status import RunStatus
from martlet_molt.core.stream_log import StreamLog


class MemoryBroker:
    """The broker of a deployment of one instance (the default)."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[str], None]] = []
        self._forget_callbacks: list[Callable[[str], None]] = []

    async def open(self) -> None:
        """Nothing to connect."""

    async def close(self) -> None:
        """Nothing to disconnect."""

    async def ping(self) -> None:
        """Always answers."""

    @property
    def healthy(self) -> bool:
        """Always True: there is no service to lose."""
        return True

    async def wait_health(self, healthy: bool) -> None:
        """Return at once when asked for health; never returns when asked for its loss."""
        if not healthy:
            await asyncio.get_running_loop().create_future()

    def publish(self, log: LocalLog, *, owner: str) -> None:
        """Nothing to do: readers read `log` itself."""

    async def drain(self) -> None:
        """Nothing is ever pending."""

    async def follow(self, run_id: str) -> StreamLog | None:
        """None: a run of this process is read from its own log."""
        return None

    async def end_run(self, run_id: str, *, status: RunStatus, error: str | None) -> bool:
        """False: there is no other instance whose run could be taken over."""
        return False

    async def request_cancel(self, run_id: str) -> None:
        """Deliver the request to this process's callbacks."""
        for callback in self._callbacks:
            callback(run_id)

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        """Call `callback(run_id)` for each cancel request."""
        self._callbacks.append(callback)

    async def forget(self, run_ids: Sequence[str]) -> None:
        """Tell this process's callbacks (it holds nothing else)."""
        for run_id in run_ids:
            for callback in self._forget_callbacks:
                callback(run_id)

    def on_forget(self, callback: Callable[[str], None]) -> None:
        """Call `callback(run_id)` for each forgotten run."""
        self._forget_callbacks.append(callback)
