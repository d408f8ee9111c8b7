"""A session as a file a person keeps: Markdown to read (a heading per message, tool calls and
results in code blocks), and the file name it is saved under, made from its title.

The JSON export is the API's own shapes (`gateway/routes/export.py`); this module needs no web
framework, so anything holding a session's records can render it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from martlet_molt.core.status import RunStatus
from martlet_molt.store.base import MessageRecord, SessionRecord

FILENAME_CHARS = 80
"""The longest file name stem made from a title."""

_ROLES = {"user": "User", "assistant": "Assistant", "tool": "Tool result", "system": "System"}
_NOT_IN_A_NAME = re.compile(r"[^\w]+")
_BACKTICKS = re.compile(r"`+")


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fenced(body: str, language: str = "") -> str:
    """A code block that no run of backticks inside `body` can close early."""
    longest = max((len(run) for run in _BACKTICKS.findall(body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{body}\n{fence}"


def _code(value: str) -> str:
    """Inline code for a short value (a name, an id)."""
    longest = max((len(run) for run in _BACKTICKS.findall(value)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{ticks}{pad}{value}{pad}{ticks}"


def _arguments(arguments: Any) -> str:
    """A tool call's arguments as a block: pretty JSON when they are JSON, else verbatim."""
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError:
            return _fenced(arguments, "text")
    else:
        parsed = arguments
    return _fenced(json.dumps(parsed, ensure_ascii=False, indent=2), "json")


def _duration(duration_ms: int | None) -> str | None:
    if duration_ms is None:
        return None
    return f"{duration_ms} ms" if duration_ms < 100 else f"{duration_ms / 1000:.1f} s"


def _heading(message: MessageRecord) -> str:
    parts = [_ROLES.get(message.role, message.role.capitalize())]
    if message.role == "tool":
        parts[0] += f" · {message.name or 'tool'}"
        parts.extend(p for p in (message.tool_status, _duration(message.duration_ms)) if p)
    elif message.status is not RunStatus.COMPLETED:
        parts.append(message.status.value)
    parts.append(_when(message.created_at))
    return "## " + " · ".join(parts)


def _message(message: MessageRecord) -> Iterator[str]:
    yield _heading(message)
    if message.role == "tool":
        if message.tool_call_id:
            yield f"For call {_code(message.tool_call_id)}:"
        yield _fenced(message.content, "text")
        return
    if message.content:
        yield message.content
    for call in message.tool_calls or []:
        function: dict[str, Any] = call.get("function") or {}
        name = str(function.get("name") or call.get("name") or "tool")
        yield f"**Tool call** {_code(name)} · {_code(str(call.get('id') or ''))}"
        yield _arguments(function.get("arguments", call.get("arguments", "")))


def to_markdown(
    session: SessionRecord, messages: Sequence[MessageRecord], *, exported_at: datetime
) -> str:
    """The whole chat as Markdown: its title as the heading, when it was held, then each
    message under a heading naming its role, time and (when not completed) its status."""
    blocks = [
        f"# {session.title or f'Chat {session.session_id}'}",
        "\n".join(
            [
                f"- Session: {_code(session.session_id)}",
                f"- Started: {_when(session.created_at)}",
                f"- Last active: {_when(session.updated_at)}",
                f"- Exported: {_when(exported_at)}",
            ]
        ),
    ]
    for message in messages:
        blocks.extend(_message(message))
    return "\n\n".join(blocks) + "\n"


def filename_stem(session: SessionRecord, *, ascii_only: bool = False) -> str:
    """A file name (without extension) for the session: its title's words joined by `-`, at
    most `FILENAME_CHARS` long; the session id when the title gives none."""
    title = unicodedata.normalize("NFKC", session.title or "")
    if ascii_only:  # accents dropped ("Ü" is "U"), anything else not ASCII is a separator
        title = "".join(
            c if c.isascii() else "" if unicodedata.combining(c) else " "
            for c in unicodedata.normalize("NFKD", title)
        )
    words = _NOT_IN_A_NAME.sub("-", title).strip("-_")
    stem = words[:FILENAME_CHARS].rstrip("-_")
    return stem or session.session_id


def content_disposition(session: SessionRecord, extension: str) -> str:
    """`attachment` with the file name: plain ASCII for every client, and UTF-8 (RFC 6266)
    for those that read it, so a title in any script survives."""
    plain = f"{filename_stem(session, ascii_only=True)}.{extension}"
    full = f"{filename_stem(session)}.{extension}"
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(full, safe='')}"
