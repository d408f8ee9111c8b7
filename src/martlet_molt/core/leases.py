"""Leases: how several instances share runs without ever generating one twice.

Only with several instances (`MARTLET_REDIS_URL`). Each run is owned by the instance that
started it, and the owner holds a lease on it in the database (`runs.owner`, `fence`,
`lease_expires_at`). Who does what:

- The owner's `LeaseKeeper` renews the leases of all its live runs in one statement every third
  of `MARTLET_RUN_LEASE_SECONDS`. A run it no longer holds (another instance took it over) is
  handed to `on_lost`: the run manager stops it (closing the upstream request) and saves
  nothing, since the owner's writes would carry a stale fencing token and be refused anyway. A
  run whose cancel was asked on another instance is handed to `on_cancel` (the broker's pub/sub
  message is the fast path; this is the one that survives a lost message).
- Every instance's keeper looks for runs whose lease has expired (their owner died, was
  partitioned away or paused) about once a second and takes them over: the database marks them
  `interrupted`, keeps the text of their last checkpoint and bumps their fencing token in one
  transaction, and the broker ends their logs so that remote readers finish.
- After the database was unreachable, every owner's renewals failed too: the keeper takes over
  nothing until the database has answered it for a whole renewal interval, so the owners that
  survived the outage renew first and keep their runs.

The keeper owns its two chores; `close` cancels them. It never cancels a run itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

from loguru import logger

from martlet_molt.broker.base import Broker
from martlet_molt.core.status import RunStatus
from martlet_molt.store.base import INTERRUPTED_ERROR, Lease, Store

RENEWALS_PER_LEASE = 3
"""The owner renews this many times per lease period, so one late renewal loses nothing."""

TAKEOVER_INTERVAL_SECONDS = 1.0
"""How often an instance looks for expired leases (at most; a short lease looks more often)."""


class LeaseKeeper:
    """Renews this instance's leases and takes over the runs of instances that died."""

    def __init__(
        self,
        *,
        store: Store,
        broker: Broker,
        owner: str,
        lease_seconds: float,
        held: Callable[[], Sequence[Lease]],
        on_lost: Callable[[str], None],
        on_cancel: Callable[[str], None],
    ) -> None:
        self.store = store
        self.broker = broker
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.renew_interval = lease_seconds / RENEWALS_PER_LEASE
        self.takeover_interval = min(TAKEOVER_INTERVAL_SECONDS, lease_seconds / 4)
        self._held = held
        self._on_lost = on_lost
        self._on_cancel = on_cancel
        self._store_answering_since: float | None = time.monotonic()
        self._renewed_at = time.monotonic()
        self._chores: list[asyncio.Task[None]] = []

    def open(self) -> None:
        """Start renewing and watching for expired leases."""
        self._chores = [
            asyncio.create_task(self._renew_periodically(), name="lease renewal"),
            asyncio.create_task(self._take_over_periodically(), name="lease takeover"),
        ]

    async def close(self) -> None:
        """Stop both chores (the runs' leases then lapse unless they were saved)."""
        for chore in self._chores:
            chore.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chore
        self._chores = []

    def _store_answered(self, answered: bool) -> None:
        if not answered:
            self._store_answering_since = None
        elif self._store_answering_since is None:
            self._store_answering_since = time.monotonic()

    async def renew(self) -> None:
        """Renew every live run's lease once; report lost runs and cancels asked elsewhere."""
        leases = list(self._held())
        if not leases:
            return
        try:
            renewed = await self.store.renew_leases(
                owner=self.owner, leases=leases, lease_seconds=self.lease_seconds
            )
        except Exception as exc:
            self._store_answered(False)
            logger.warning("renewing {} leases failed: {!r}", len(leases), exc)
            return
        self._store_answered(True)
        self._renewed_at = time.monotonic()
        still_held = {lease.run_id for lease in self._held()}  # runs saved meanwhile are not lost
        for lease in leases:
            if lease.run_id not in renewed.held and lease.run_id in still_held:
                self._on_lost(lease.run_id)
        for run_id in renewed.cancel_requested:
            self._on_cancel(run_id)

    async def take_over_expired(self) -> int:
        """End the runs whose owners stopped renewing: `interrupted`, with their checkpointed
        text kept and their logs ended for remote readers. Returns how many."""
        taken = await self.store.take_over_expired()
        for record in taken:
            logger.warning(
                "run {} of session {} taken over from {} ({} chars kept)",
                record.run_id,
                record.session_id,
                record.owner or "a single-process gateway",
                len(record.content),
            )
            try:
                await self.broker.end_run(
                    record.run_id, status=RunStatus.INTERRUPTED, error=INTERRUPTED_ERROR
                )
            except Exception as exc:  # the saved outcome stands; readers fall back to the store
                logger.warning("ending the log of run {} failed: {!r}", record.run_id, exc)
        return len(taken)

    async def _renew_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.renew_interval)
            await self.renew()

    async def _take_over_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.takeover_interval)
            since = self._store_answering_since
            if since is None or time.monotonic() - since < self.renew_interval:
                # Right after an outage the survivors' renewals go first.
                with contextlib.suppress(Exception):
                    await self.store.ping()
                    self._store_answered(True)
                continue
            try:
                # A renewal that is overdue (an outage this instance survived) goes first, so
                # that it never takes over its own runs.
                if time.monotonic() - self._renewed_at > self.renew_interval:
                    await self.renew()
                await self.take_over_expired()
            except Exception as exc:
                self._store_answered(False)
                logger.warning("looking for expired leases failed: {!r}", exc)
