"""A run's final state: the one way to save it, whether its owner finishes it (`finish_run`) or
another instance takes it over after its lease ran out (`take_over_expired`).

Each function is a piece of a `SqlStore` transaction, over its `Connection`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Update, bindparam, or_, update

from martlet_molt.core.status import RunStatus
from martlet_molt.store.base import JsonObject, NewMessage
from martlet_molt.store.parts import insert_message, replace_run_parts
from martlet_molt.store.schema import UNFINISHED, runs, sessions
from martlet_molt.store.text import StoredText, inline_or_parts


def is_unfinished(status: Any) -> Any:
    """`status` is pending or streaming; spelled out, since `IN (...)` expands per statement,
    which executemany cannot do."""
    return or_(*(status == value for value in UNFINISHED))


FINISH_RUN = (
    update(runs)
    .where(runs.c.run_id == bindparam("b_run_id"))
    .values(
        status=bindparam("b_status"),
        content=bindparam("b_content"),
        error=bindparam("b_error"),
        usage=bindparam("b_usage"),
        events=bindparam("b_events"),
        updated_at=bindparam("b_now"),
        completed_at=bindparam("b_now"),
    )
    # Not the content or events just written: they can be megabytes, and the caller has them.
    .returning(runs.c.session_id)
)
"""Whatever the run's state (a single-process gateway's finish)."""

FINISH_FENCED_RUN = FINISH_RUN.where(
    runs.c.fence == bindparam("b_fence"), is_unfinished(runs.c.status)
)
"""Only while the run is unfinished and carries the owner's fencing token."""

FINISH_TAKEN_OVER_RUN = FINISH_RUN.values(fence=runs.c.fence + 1)
"""A takeover: the token goes up, so the old owner's writes are refused from now on."""

_TOUCH_SESSION = (
    update(sessions)
    .where(sessions.c.session_id == bindparam("b_session_id"))
    .values(updated_at=bindparam("b_now"))
)


def message_values(session_id: str, message: NewMessage, at: datetime) -> dict[str, Any]:
    """A message row's values but its text, which `insert_message` places."""
    return {
        "session_id": session_id,
        "role": message.role,
        "status": message.status.value,
        "run_id": message.run_id,
        "tool_calls": message.tool_calls,
        "tool_call_id": message.tool_call_id,
        "name": message.name,
        "created_at": at,
        "tool_status": message.tool_status,
        "duration_ms": message.duration_ms,
    }


def save_final(
    conn: Connection,
    statement: Update,
    *,
    run_id: str,
    status: RunStatus,
    content: StoredText,
    error: str | None,
    usage: JsonObject | None,
    events: list[Any],
    messages: Sequence[NewMessage],
    now: datetime,
    fence: int | None = None,
) -> bool:
    """Write the run's final row with `statement`, its final text in place of its checkpoints,
    and its new messages (a message without a `run_id` is this run's); touch its session.
    False, having written nothing, if the statement matched no row."""
    inline, parts = inline_or_parts(content)
    final: dict[str, Any] = {
        "b_run_id": run_id,
        "b_status": status.value,
        "b_content": inline,
        "b_error": error,
        "b_usage": usage,
        "b_events": events,
        "b_now": now,
    }
    if fence is not None:
        final["b_fence"] = fence
    session_id = conn.execute(statement, final).scalar()
    if session_id is None:
        return False
    replace_run_parts(conn, run_id, parts)
    for m in messages:  # one by one: ids must follow the given order
        values = message_values(session_id, replace(m, run_id=m.run_id or run_id), now)
        insert_message(conn, values, m.content)
    conn.execute(_TOUCH_SESSION, {"b_session_id": session_id, "b_now": now})
    return True
