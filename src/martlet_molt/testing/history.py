"""What the fake upstream has seen: one `RequestRecord` per request, running counts, and
waiting for a condition on them from a test's thread or event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from martlet_molt.testing.script import Script


@dataclass
class RequestRecord:
    """What happened to one chat-completions request (updated live; read freely), so a test
    can assert what its client sent and how far the reply got."""

    index: int
    body: dict[str, Any]
    headers: dict[str, str]
    script: Script
    model: str | None = None
    stream: bool = False
    status: int | None = None  # HTTP status sent, None until headers are sent
    chunks_sent: int = 0  # content chunks sent (text / tool-call chunks)
    completed: bool = False  # the whole response (incl. `data: [DONE]`) was sent
    client_disconnected: bool = False  # the client went away before the end
    dropped: bool = False  # the server dropped the connection on purpose (fail_after / stop)
    finished: bool = False  # the handler has returned
    started_at: float = field(default_factory=time.monotonic)
    first_chunk_at: float | None = None  # monotonic time the first content chunk was sent
    finished_at: float | None = None


@dataclass
class _AsyncWaiter:
    check: Callable[[], bool]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class RequestHistory:
    """The records and counts of every request, shared by the server's thread and the test's:
    one lock guards them, and every change wakes whoever waits for a condition on them."""

    def __init__(self, *, max_records: int | None = None) -> None:
        """Keep at most `max_records` records (None: all); the counts cover every request."""
        self.lock = threading.RLock()
        self.max_records = max_records
        self._changed = threading.Condition(self.lock)
        self._records: list[RequestRecord] = []
        self._async_waiters: list[_AsyncWaiter] = []
        self.total = 0
        self.completed = 0
        self.disconnects = 0
        self.last_disconnect_at: float | None = None  # monotonic, for cancel latency
        self.drops = 0
        self.in_flight = 0

    @property
    def records(self) -> list[RequestRecord]:
        """The kept records, in arrival order (a copy: the server appends meanwhile)."""
        with self.lock:
            return list(self._records)

    @property
    def last(self) -> RequestRecord | None:
        """The most recent record, or None."""
        with self.lock:
            return self._records[-1] if self._records else None

    def begin(
        self, body: dict[str, Any], headers: dict[str, str], script: Script, model: str | None
    ) -> RequestRecord:
        """Record a request that has just arrived and is now in flight."""
        with self.lock:
            record = RequestRecord(
                index=self.total,
                body=body,
                headers=headers,
                script=script,
                model=model,
                stream=bool(body.get("stream")),
            )
            self.total += 1
            self.in_flight += 1
            self._records.append(record)
            if self.max_records is not None and len(self._records) > self.max_records:
                del self._records[: len(self._records) - self.max_records]
            self._notify()
        return record

    def update(self, record: RequestRecord, **changes: Any) -> None:
        """Change a record's fields and the counts they imply, then wake the waiters."""
        with self.lock:
            for key, value in changes.items():
                setattr(record, key, value)
            if changes.get("completed"):
                self.completed += 1
            if changes.get("client_disconnected"):
                self.disconnects += 1
                self.last_disconnect_at = time.monotonic()
            if changes.get("dropped"):
                self.drops += 1
            if changes.get("finished"):
                self.in_flight -= 1
            self._notify()

    def clear(self) -> None:
        """Forget every record and count (requests in flight stay counted as such)."""
        with self.lock:
            self._records.clear()
            self.total = self.completed = self.disconnects = self.drops = 0

    def stats(self) -> dict[str, Any]:
        """The counts as one consistent snapshot (`GET /_fake/stats`)."""
        with self.lock:
            return {
                "requests": self.total,
                "completed": self.completed,
                "client_disconnected": self.disconnects,
                "last_disconnect_at": self.last_disconnect_at,
                "dropped": self.drops,
                "in_flight": self.in_flight,
            }

    @staticmethod
    def _holds(check: Callable[[], bool]) -> bool:
        """Evaluate a wait condition; an exception (e.g. IndexError: no record yet) is False."""
        try:
            return bool(check())
        except Exception:
            return False

    def _notify(self) -> None:
        """Wake sync waiters and resolve satisfied async waiters (lock held)."""
        self._changed.notify_all()
        for waiter in list(self._async_waiters):
            if self._holds(waiter.check):
                self._async_waiters.remove(waiter)
                with contextlib.suppress(RuntimeError):  # waiter's loop already closed
                    waiter.loop.call_soon_threadsafe(_resolve, waiter.future)

    def wait_until(self, check: Callable[[], bool], timeout: float) -> bool:
        """Block until `check()` is true; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._holds(check), timeout)

    # `timeout` (not asyncio.timeout) on purpose: same call shape as the sync waiter.
    async def wait_until_async(self, check: Callable[[], bool], timeout: float) -> bool:  # noqa: ASYNC109
        """Await `check()` without blocking the caller's event loop; False on timeout."""
        loop = asyncio.get_running_loop()
        waiter = _AsyncWaiter(check, loop, loop.create_future())
        with self.lock:
            if self._holds(check):
                return True
            self._async_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter.future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self.lock:
                if waiter in self._async_waiters:
                    self._async_waiters.remove(waiter)
