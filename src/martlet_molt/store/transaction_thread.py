"""A thread of the SQLite store's own that runs the transactions queued for it in batches.

The event loop queues a transaction (`submit`) and awaits its future; the thread takes every
transaction waiting when it wakes and runs them together:

- one wake-up of the thread and one of the loop per batch, not per transaction;
- one database transaction per batch (group commit): a burst of new chats is one `BEGIN
  IMMEDIATE ... COMMIT` on the writer, and one snapshot on a reader.

A batch commits only if every transaction in it returned. When one raises, the whole batch is
rolled back and each of its transactions runs again alone, so each is still committed or rolled
back on its own, as if it had never shared a batch. Transactions are plain functions of a
`Connection` with no effect outside it, so running one twice is harmless.

Each batch takes a connection from the engine's pool and gives it back. The figures behind the
batching are in docs/BENCHMARKS.md, "Measurements behind the code".
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine

T = TypeVar("T")
Work = Callable[[Connection], T]

MAX_BATCH = 64
"""Transactions run in one batch at most: bounds how long the first of them waits for the last."""


@dataclass
class _Transaction(Generic[T]):
    """One queued transaction and where its outcome goes."""

    work: Work[T]
    future: asyncio.Future[T]
    result: Any = None
    error: BaseException | None = None
    settled: bool = False  # `result` or `error` is final


class TransactionThread:
    """Runs queued transactions on a thread of its own, in batches."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        *,
        execution_options: dict[str, Any] | None = None,
    ) -> None:
        self._engine = engine
        self._options = execution_options or {}
        # `None` asks the thread to stop once it has run what was queued before it.
        self._queue: queue.SimpleQueue[_Transaction[Any] | None] = queue.SimpleQueue()
        self._stopping = False
        self._last: Callable[[], None] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self.pending = 0
        """Transactions submitted whose outcome has not reached their caller yet."""
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Work[T]) -> asyncio.Future[T]:
        """Queue `work` as a transaction; the future holds what it returned or raised."""
        if self._stopping:
            raise RuntimeError("the store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put(_Transaction(work, future))
        self.pending += 1
        return future

    async def stop(self, last: Callable[[], None] | None = None) -> None:
        """Finish what is queued, run `last` on the thread, and end."""
        self._stopped = asyncio.get_running_loop().create_future()
        self._last = last
        self._stopping = True
        self._queue.put(None)
        await self._stopped

    def _serve(self) -> None:
        error: BaseException | None = None
        try:
            stop = False
            while not stop:
                batch, stop = self._next_batch()
                if batch:
                    self._run(batch)
                    self._settle(batch)
                    del batch  # not kept while idle: the work and results (replies) it holds
        finally:
            try:
                if self._last is not None:
                    self._last()
            except BaseException as exc:  # reported to whoever awaits `stop`
                error = exc
            stopped = self._stopped
            if stopped is not None:
                stopped.get_loop().call_soon_threadsafe(_finish, stopped, error)

    def _run(self, batch: list[_Transaction[Any]]) -> None:
        """Run a batch; whatever goes wrong, every transaction in it ends with an outcome."""
        try:
            # A pooled connection per batch: one held for the thread's life kept ~4 MB more
            # after a disconnect storm (docs/BENCHMARKS.md).
            with self._engine.connect() as conn:
                _run_batch(conn.execution_options(**self._options), batch)
        except BaseException as exc:  # no connection (a file that cannot be opened, say)
            for transaction in batch:
                if not transaction.settled:
                    transaction.error, transaction.settled = exc, True

    def _settle(self, batch: list[_Transaction[Any]]) -> None:
        """Hand the outcomes to their loops: one wake-up per loop for the whole batch."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Transaction[Any]]] = {}
        for transaction in batch:
            by_loop.setdefault(transaction.future.get_loop(), []).append(transaction)
        for loop, transactions in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
                loop.call_soon_threadsafe(self._resolve, transactions)

    def _resolve(self, transactions: list[_Transaction[Any]]) -> None:
        self.pending -= len(transactions)
        for transaction in transactions:
            if transaction.future.cancelled():
                continue  # its caller left; the transaction went its own way
            if transaction.error is not None:
                transaction.future.set_exception(transaction.error)
            else:
                transaction.future.set_result(transaction.result)

    def _next_batch(self) -> tuple[list[_Transaction[Any]], bool]:
        """Wait for a transaction, then take those queued behind it; True once asked to stop."""
        batch: list[_Transaction[Any]] = []
        item = self._queue.get()
        while item is not None:
            batch.append(item)
            if len(batch) == MAX_BATCH:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False
        return batch, True


def _run_batch(conn: Connection, batch: list[_Transaction[Any]]) -> None:
    """All of `batch` in one transaction; if any raises, each again in its own."""
    if len(batch) > 1:
        try:
            with conn.begin():
                for transaction in batch:
                    transaction.result = transaction.work(conn)
            for transaction in batch:
                transaction.settled = True
            return
        except BaseException:
            pass  # rolled back: below, each is committed or rolled back alone
    for transaction in batch:
        try:
            with conn.begin():
                transaction.result = transaction.work(conn)
        except BaseException as exc:
            transaction.error = exc
        transaction.settled = True


def _finish(stopped: asyncio.Future[None], error: BaseException | None) -> None:
    if stopped.done():
        return
    if error is not None:
        stopped.set_exception(error)
    else:
        stopped.set_result(None)
