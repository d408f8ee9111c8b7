"""A response's input messages as OpenAI's `input_items` list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from martlet_molt.store.base import MessageRecord


def input_item(message: MessageRecord) -> dict[str, Any]:
    """One saved input message as an input item (an assistant turn as an output message)."""
    item_id = f"msg_in_{message.message_id}"
    if message.role == "assistant":
        part: dict[str, Any] = {"type": "output_text", "text": message.content, "annotations": []}
        return {
            "id": item_id,
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [part],
        }
    return {
        "id": item_id,
        "type": "message",
        "role": message.role,
        "status": "completed",
        "content": [{"type": "input_text", "text": message.content}],
    }


def input_item_list(
    messages: Sequence[MessageRecord], *, order: str, limit: int, after: str | None
) -> dict[str, Any]:
    """A page of input items, as `GET /v1/responses/{id}/input_items` returns it."""
    items = [input_item(message) for message in messages]
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }
