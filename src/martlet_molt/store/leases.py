"""Leases and fencing: which instance runs a live run, until when, and with which token.

The instance that starts a run owns it (`runs.owner`, fence 1) and renews its lease while it
runs. When a lease runs out, any instance may take the run over: it becomes `interrupted`,
keeping its checkpointed text, and its fence goes up by one, so every later write of the old
owner (which carries the old fence) changes nothing. Lease times are the database's clock on
PostgreSQL (`now()`), so instances whose clocks disagree still agree on who holds what; SQLite
is one machine's file, so Python's UTC clock serves.

Each function is a piece of a `SqlStore` transaction, over its `Connection`.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Float, bindparam, func, select, tuple_, update

from martlet_molt.core.status import RunStatus
from martlet_molt.core.tool_rounds import saved_run_messages
from martlet_molt.store.base import INTERRUPTED_ERROR, Lease, RenewedLeases, RunRecord
from martlet_molt.store.final import FINISH_TAKEN_OVER_RUN, is_unfinished, save_final
from martlet_molt.store.parts import run_with_parts
from martlet_molt.store.schema import UtcDateTime, runs


class LeaseClock:
    """Lease deadlines and expiry on one backend's clock: the database's on PostgreSQL,
    Python's (given as `now`) on SQLite."""

    def __init__(self, *, sqlite: bool) -> None:
        self.sqlite = sqlite
        if sqlite:
            deadline: Any = bindparam("b_lease_until", type_=UtcDateTime)
            now: Any = bindparam("b_lease_now", type_=UtcDateTime)
        else:
            seconds = bindparam("b_lease_seconds", type_=Float)
            deadline = func.now() + func.make_interval(0, 0, 0, 0, 0, 0, seconds)
            now = func.now()
        self.deadline: Any = deadline
        """The SQL for `now + lease_seconds`, bound by `parameters`."""
        self.expired: Any = runs.c.lease_expires_at.is_(None) | (runs.c.lease_expires_at < now)
        """The SQL for "its lease ran out, or it has none", bound by `parameters`."""

    def parameters(self, now: datetime, lease_seconds: float = 0.0) -> dict[str, Any]:
        """The values `deadline` (a lease of `lease_seconds` from `now`) and `expired` need."""
        if self.sqlite:
            until = now + timedelta(seconds=lease_seconds)
            return {"b_lease_until": until, "b_lease_now": now}
        return {"b_lease_seconds": lease_seconds}


def renew(
    conn: Connection,
    clock: LeaseClock,
    *,
    owner: str,
    leases: list[Lease],
    lease_seconds: float,
    now: datetime,
) -> RenewedLeases:
    """Extend, in one statement, the leases `owner` still holds: unfinished, same owner, same
    fence."""
    if not leases:
        return RenewedLeases()
    statement = (
        update(runs)
        .where(
            runs.c.owner == owner,
            is_unfinished(runs.c.status),
            tuple_(runs.c.run_id, runs.c.fence).in_([(x.run_id, x.fence) for x in leases]),
        )
        .values(lease_expires_at=clock.deadline)
        .returning(runs.c.run_id, runs.c.cancel_requested)
    )
    held: set[str] = set()
    cancel: set[str] = set()
    for run_id, cancel_requested in conn.execute(statement, clock.parameters(now, lease_seconds)):
        held.add(run_id)
        if cancel_requested:
            cancel.add(run_id)
    return RenewedLeases(held=held, cancel_requested=cancel)


def take_over(conn: Connection, clock: LeaseClock, *, limit: int, now: datetime) -> list[RunRecord]:
    """Interrupt up to `limit` unfinished runs whose lease ran out (or that have none), oldest
    first, as their owner would have on shutdown; the runs as finished. On PostgreSQL the rows
    are locked, skipping those another transaction holds: two instances never take one run."""
    query = (
        select(runs)
        .where(is_unfinished(runs.c.status), clock.expired)
        .order_by(runs.c.created_at, runs.c.run_id)
        .limit(limit)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite has one writer anyway
    )
    taken: list[RunRecord] = []
    for row in conn.execute(query, clock.parameters(now)).mappings().all():
        record = run_with_parts(conn, row)
        kept = saved_run_messages(
            record.run_id, record.content, record.events, RunStatus.INTERRUPTED
        )
        save_final(
            conn,
            FINISH_TAKEN_OVER_RUN,
            run_id=record.run_id,
            status=RunStatus.INTERRUPTED,
            content=record.content,
            error=INTERRUPTED_ERROR,
            usage=record.usage,
            events=record.events,
            messages=kept,
            now=now,
        )
        taken.append(
            replace(
                record,
                status=RunStatus.INTERRUPTED,
                error=INTERRUPTED_ERROR,
                fence=record.fence + 1,
                updated_at=now,
                completed_at=now,
            )
        )
    return taken
