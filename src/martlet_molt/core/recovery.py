"""Start-up recovery: runs a dead process left unfinished become `interrupted`.

A generation is never re-run on its own: it costs money. Its partial reply is kept, and so
are the tool calls it made, with the results that came back before the process died.
"""

from __future__ import annotations

from loguru import logger

from martlet_molt.core.status import RunStatus
from martlet_molt.core.tool_rounds import saved_run_messages
from martlet_molt.store.base import INTERRUPTED_ERROR, Store


async def interrupt_orphaned_runs(store: Store) -> int:
    """Mark every unfinished run interrupted, saving its partial reply; returns how many."""
    orphans = await store.unfinished_runs()
    for record in orphans:
        await store.finish_run(
            record.run_id,
            status=RunStatus.INTERRUPTED,
            content=record.content,
            error=INTERRUPTED_ERROR,
            usage=record.usage,
            events=record.events,
            messages=saved_run_messages(
                record.run_id, record.content, record.events, RunStatus.INTERRUPTED
            ),
        )
        logger.warning(
            "run {} of session {} was interrupted by a restart ({} chars kept)",
            record.run_id,
            record.session_id,
            len(record.content),
        )
    return len(orphans)
