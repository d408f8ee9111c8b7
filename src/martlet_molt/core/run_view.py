"""`RunView`: a run as clients see it, the same whether it is read from a live log or the store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from martlet_molt.core.local_log import LocalLog
from martlet_molt.core.status import RunStatus
from martlet_molt.store.base import RunRecord


@dataclass(frozen=True, slots=True)
class RunView:
    """A run as clients see it, whether it is live in memory or only in the store."""

    run_id: str
    session_id: str
    status: RunStatus
    content: str
    error: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    usage: dict[str, Any] | None

    @classmethod
    def of_log(cls, log: LocalLog) -> RunView:
        """The view of a live (or recently finished) run."""
        return cls(
            log.run_id,
            log.session_id,
            log.status,
            log.full_content,
            log.error,
            log.created_at,
            # A saved run's row was last updated when it ended, which is what it reads as.
            log.completed_at if log.closed and log.completed_at else log.updated_at,
            log.completed_at,
            log.usage,
        )

    @classmethod
    def of_record(cls, record: RunRecord) -> RunView:
        """The view of a run known only to the store."""
        return cls(
            record.run_id,
            record.session_id,
            record.status,
            record.content,
            record.error,
            record.created_at,
            record.updated_at,
            record.completed_at,
            record.usage,
        )
