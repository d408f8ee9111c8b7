"""The rows that hold texts in parts: a live run's checkpoints, a long final reply, a long
message. Each function is a piece of a `SqlStore` transaction, over its `Connection`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    Integer,
    RowMapping,
    String,
    Text,
    bindparam,
    delete,
    insert,
    select,
)

from martlet_molt.store.base import Checkpoint, RunRecord
from martlet_molt.store.schema import message_parts, messages, run_parts, run_record
from martlet_molt.store.text import PART_CHARS, StoredText, inline_or_parts, parts_of

_BATCH_CHARS = 4 * PART_CHARS  # checkpoint parts sent in one `executemany`, at most

_SELECT_RUN_PARTS = (
    select(run_parts.c.content, run_parts.c.events)
    .where(run_parts.c.run_id == bindparam("run_id"))
    .order_by(run_parts.c.part)
)
_INSERT_RUN_PART = insert(run_parts).values(
    run_id=bindparam("p_run_id", type_=String),
    part=bindparam("p_part"),
    content=bindparam("p_content", type_=Text),
    events=bindparam("p_events", type_=JSON),
)
_DROP_RUN_PARTS = delete(run_parts).where(run_parts.c.run_id == bindparam("run_id"))
_INSERT_MESSAGE = insert(messages)
_INSERT_MESSAGE_PART = insert(message_parts).values(
    message_id=bindparam("p_message_id", type_=Integer),
    part=bindparam("p_part"),
    content=bindparam("p_content", type_=Text),
)
_SELECT_MESSAGE_PARTS = (
    select(message_parts.c.message_id, message_parts.c.content)
    .join(messages, messages.c.message_id == message_parts.c.message_id)
    .where(messages.c.session_id == bindparam("session_id"))
    .order_by(message_parts.c.message_id, message_parts.c.part)
)


def run_with_parts(conn: Connection, row: RowMapping) -> RunRecord:
    """A run as saved: its row followed by its parts (a live run's checkpoints, or a long
    final reply)."""
    record = run_record(row)
    if record.status.is_final and record.content:
        return record  # a final text is either inline or in parts, never both
    parts = conn.execute(_SELECT_RUN_PARTS, {"run_id": record.run_id}).all()
    if not parts:
        return record
    content = record.content + "".join(part.content for part in parts)
    events = list(record.events)
    for part in parts:
        events.extend(part.events)
    return replace(record, content=content, events=events)


def append_checkpoints(
    conn: Connection, checkpoints: Sequence[Checkpoint], last_part: dict[str, int]
) -> None:
    """Append each checkpoint as parts numbered after its run's `last_part`: one part, or
    several for a long increment; the new replay-index entries go with the first."""
    batch: list[dict[str, Any]] = []
    batch_chars = 0
    for checkpoint in checkpoints:
        number = last_part.get(checkpoint.run_id, 0)
        events = checkpoint.events
        for text in parts_of(checkpoint.content) if checkpoint.content else iter(("",)):
            number += 1
            batch.append(
                {
                    "p_run_id": checkpoint.run_id,
                    "p_part": number,
                    "p_content": text,
                    "p_events": events,
                }
            )
            events = []
            batch_chars += len(text)
            if batch_chars >= _BATCH_CHARS:
                conn.execute(_INSERT_RUN_PART, batch)
                batch, batch_chars = [], 0
    if batch:
        conn.execute(_INSERT_RUN_PART, batch)


def replace_run_parts(conn: Connection, run_id: str, parts: Iterator[str] | None) -> None:
    """Drop a run's checkpoints and write its final text's parts (if it has any) instead."""
    conn.execute(_DROP_RUN_PARTS, {"run_id": run_id})
    for number, text in enumerate(parts or (), start=1):
        conn.execute(
            _INSERT_RUN_PART,
            {"p_run_id": run_id, "p_part": number, "p_content": text, "p_events": []},
        )


def insert_message(conn: Connection, values: dict[str, Any], content: StoredText) -> None:
    """Insert a message row; a long text goes into its parts."""
    inline, parts = inline_or_parts(content)
    result = conn.execute(_INSERT_MESSAGE, {**values, "content": inline})
    if parts is None:
        return
    (message_id,) = result.inserted_primary_key or (None,)
    for number, text in enumerate(parts, start=1):
        conn.execute(
            _INSERT_MESSAGE_PART,
            {"p_message_id": message_id, "p_part": number, "p_content": text},
        )


def message_texts_in_parts(conn: Connection, session_id: str) -> dict[int, str]:
    """The texts of a session's messages that are held in parts, by message id."""
    pieces: dict[int, list[str]] = {}
    for message_id, content in conn.execute(_SELECT_MESSAGE_PARTS, {"session_id": session_id}):
        pieces.setdefault(message_id, []).append(content)
    return {message_id: "".join(texts) for message_id, texts in pieces.items()}
