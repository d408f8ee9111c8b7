"""Sessions as the model sees them: saved messages turned into chat context, and the rules
for session ids."""

from __future__ import annotations

import re
from collections.abc import Sequence
from uuid import uuid4

from martlet_molt.providers.base import ChatMessage
from martlet_molt.store.base import MessageRecord, NewMessage

SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
"""Session ids: 1-128 characters, letters, digits, `_`, `.` and `-`, starting alphanumeric.
They carry no path or SQL meaning anywhere."""

_SESSION_ID = re.compile(SESSION_ID_PATTERN)


def is_valid_session_id(session_id: str) -> bool:
    """Whether a client-chosen id fits the documented pattern."""
    return _SESSION_ID.fullmatch(session_id) is not None


def new_session_id() -> str:
    """A fresh session id for a client that did not name one."""
    return f"ses_{uuid4().hex}"


def to_new_message(message: ChatMessage, run_id: str) -> NewMessage:
    """A request's message (OpenAI's chat shape, text content) as it is saved in a session."""
    return NewMessage(
        role=str(message["role"]),
        content=str(message.get("content") or ""),
        run_id=run_id,
        tool_calls=message.get("tool_calls"),
        tool_call_id=message.get("tool_call_id"),
        name=message.get("name"),
    )


def to_chat_messages(
    records: Sequence[MessageRecord], system_prompt: str = ""
) -> list[ChatMessage]:
    """The context for the next model call: the system prompt, then every saved turn.

    Partial replies (failed, cancelled, interrupted) are kept: the user saw them. Empty
    assistant turns are dropped, since upstreams reject them.
    """
    messages: list[ChatMessage] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    for record in records:
        if record.role == "assistant":
            if record.tool_calls:
                messages.append(
                    {
                        "role": "assistant",
                        "content": record.content or None,
                        "tool_calls": record.tool_calls,
                    }
                )
            elif record.content:
                messages.append({"role": "assistant", "content": record.content})
        elif record.role == "tool":
            messages.append(
                {"role": "tool", "tool_call_id": record.tool_call_id, "content": record.content}
            )
        else:
            messages.append({"role": record.role, "content": record.content})
    return messages
