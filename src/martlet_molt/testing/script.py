"""`Script`: what the fake upstream does for one request (text, pace, faults, tool calls)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import ConfigDict

DEFAULT_TOKEN_COUNT = 5
"""Text chunks of a script that names neither `tokens` nor `token_count` nor tool calls."""


@dataclass
class Script:
    """One request's reply, described as data so a test (or a JSON file) can ask for exactly
    the stream, the timing and the failure it wants to put a client through."""

    # Read from JSON files (`load_scripts`): a misspelt field or a wrong type is refused.
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid", strict=True)

    # Text: explicit chunks, or `token_count` chunks generated from `token_text`
    # ("{i}" is replaced by the chunk index). If neither is given: no text when
    # `tool_calls` is set, else 5 generated chunks.
    tokens: list[str] | None = None
    token_count: int | None = None
    token_text: str = "tok{i} "
    # Timing (seconds).
    delay: float = 0.0  # between consecutive chunks
    first_delay: float = 0.0  # after headers, before the first (role) chunk
    headers_delay: float = 0.0  # before sending the response headers
    # Faults. "after N" counts content chunks (text / tool-call chunks), 0 = before the first.
    fail_after: int | None = None  # abruptly close the socket mid-body
    malformed_after: int | None = None  # send `data: {not json`, then carry on
    stall_after: int | None = None  # send nothing more until the client goes away
    error_event_after: int | None = None  # send `data: {"error": ...}` then end (no [DONE])
    error_status: int | None = None  # answer with this HTTP status + OpenAI error JSON
    error_body: dict[str, Any] | str | None = None  # dict: whole JSON body; str: message
    retry_after: str | None = None  # `retry-after` header on the error response
    # Tool calls: [{"name": ..., "arguments": dict | str, "id": optional}].
    tool_calls: list[dict[str, Any]] | None = None
    tool_arg_fragments: int = 3  # how many fragments each call's arguments are split into
    # Ending.
    finish_reason: str | None = None  # default "stop", or "tool_calls" when tool calls exist
    usage: bool = True  # send the usage chunk when stream_options.include_usage is set
    prompt_tokens: int | None = None  # default: word count of the request's messages
    completion_tokens: int | None = None  # default: number of content chunks
    response_headers: dict[str, str] = field(default_factory=lambda: {})

    def __post_init__(self) -> None:
        """Normalise tool calls: give each an id and JSON-string arguments."""
        if self.tool_calls is not None:
            normalised: list[dict[str, Any]] = []
            for call in self.tool_calls:
                if not isinstance(call.get("name"), str):
                    raise ValueError('every tool call needs a "name" (a string)')
                args = call.get("arguments", {})
                normalised.append(
                    {
                        "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                        "name": call["name"],
                        "arguments": args if isinstance(args, str) else json.dumps(args),
                    }
                )
            self.tool_calls = normalised

    @property
    def chunks(self) -> list[str]:
        """The text chunks this script streams, in order."""
        if self.tokens is not None:
            return list(self.tokens)
        count = self.token_count
        if count is None:
            count = 0 if self.tool_calls else DEFAULT_TOKEN_COUNT
        return [self.token_text.replace("{i}", str(i)) for i in range(count)]

    @property
    def text(self) -> str:
        """The exact full text the upstream sends (concatenation of `chunks`), for asserting
        what a client or a saved reply should hold."""
        return "".join(self.chunks)

    @property
    def deltas(self) -> list[dict[str, Any]]:
        """The `delta` objects of all content chunks (text, then tool-call header/fragments)."""
        out: list[dict[str, Any]] = [{"content": c} for c in self.chunks]
        for index, call in enumerate(self.tool_calls or []):
            out.append(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["name"], "arguments": ""},
                        }
                    ]
                }
            )
            for frag in split_evenly(call["arguments"], self.tool_arg_fragments):
                out.append({"tool_calls": [{"index": index, "function": {"arguments": frag}}]})
        return out

    @property
    def chunk_count(self) -> int:
        """Number of content chunks (what `chunks_sent` reaches on a full stream)."""
        return len(self.deltas)

    @property
    def resolved_finish_reason(self) -> str:
        """The finish_reason sent in the last choice chunk."""
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"


def split_evenly(text: str, parts: int) -> list[str]:
    """Split `text` into up to `parts` non-empty, roughly equal pieces, as a model streams a
    tool call's arguments in fragments."""
    if not text:
        return []
    parts = max(1, min(parts, len(text)))
    size, extra = divmod(len(text), parts)
    out: list[str] = []
    pos = 0
    for i in range(parts):
        n = size + (1 if i < extra else 0)
        out.append(text[pos : pos + n])
        pos += n
    return out
