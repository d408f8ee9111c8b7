"""Saving a run's outcome: once, and again while the database cannot be reached.

The run's task calls `save_outcome` after the model stream ended, whatever ended it. A failure
that means "the database is away" (`store/reachability.py`) is retried with growing pauses for
`MARTLET_SAVE_RETRY_SECONDS` while the text waits in the run's log; any other failure is
reported at once. A save refused for a stale fencing token means another instance took the run
over and saved its outcome already.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from datetime import datetime

from loguru import logger

from martlet_molt.core.agent import Agent
from martlet_molt.core.local_log import LocalLog
from martlet_molt.core.status import RunStatus
from martlet_molt.errors import LeaseLost, MartletError
from martlet_molt.store.base import Store
from martlet_molt.store.reachability import is_unreachable

TAKEN_OVER_ERROR = "interrupted: another instance took the run over"
"""Why an owner that lost its lease ends its own copy of the log."""

RETRY_PAUSES = (0.1, 0.25, 0.5, 1.0, 2.0)
"""Seconds between attempts; the last repeats until the retry time is spent."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What readers are told: the status and error saved, or why nothing could be."""

    status: RunStatus
    error: str | None
    taken_over: bool = False


async def save_outcome(
    store: Store,
    log: LocalLog,
    agent: Agent,
    outcome: Outcome,
    *,
    fence: int | None,
    ended: datetime,
    retry_seconds: float,
) -> Outcome:
    """Save the run's final state and messages; the outcome readers are to be told."""
    deadline = time.monotonic() + retry_seconds
    for attempt in itertools.count():
        try:
            await store.finish_run(
                log.run_id,
                status=outcome.status,
                content=log.text_from(),
                error=outcome.error,
                usage=log.usage,
                events=log.replay_index() + log.closing_index(outcome.status, outcome.error),
                messages=agent.messages_to_save(log, outcome.status),
                fence=fence,
                ended_at=ended,
            )
            return outcome
        except LeaseLost:
            logger.warning("run {} was taken over before its save", log.run_id)
            return Outcome(RunStatus.INTERRUPTED, TAKEN_OVER_ERROR, taken_over=True)
        except MartletError as exc:
            logger.opt(exception=exc).error("run {} could not be saved", log.run_id)
            return Outcome(RunStatus.FAILED, f"the reply could not be saved: {exc.message}")
        except Exception as exc:
            pause = RETRY_PAUSES[min(attempt, len(RETRY_PAUSES) - 1)]
            if not is_unreachable(exc) or time.monotonic() + pause > deadline:
                logger.opt(exception=exc).error("run {} could not be saved", log.run_id)
                return Outcome(RunStatus.FAILED, f"the reply could not be saved: {exc}")
            logger.warning("saving run {} failed, retrying: {!r}", log.run_id, exc)
            await asyncio.sleep(pause)
    raise AssertionError("unreachable")
