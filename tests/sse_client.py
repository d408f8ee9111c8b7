"""An SSE reader for tests that follows the browser EventSource parsing rules exactly, over a
real httpx stream, and keeps comments (pings) so tests can see them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class SseEvent:
    """One dispatched event, as an EventSource would hand it to a page."""

    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        """The data parsed as JSON."""
        return json.loads(self.data)


@dataclass
class SseStream:
    """What a reader saw on one connection."""

    status_code: int = 0
    headers: dict[str, str] = field(default_factory=dict[str, str])
    events: list[SseEvent] = field(default_factory=list[SseEvent])
    comments: list[str] = field(default_factory=list[str])

    @property
    def texts(self) -> list[str]:
        """`data` of every event."""
        return [e.data for e in self.events]


async def split_lines(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """Split text at CR, LF and CRLF only (`str.splitlines` would also split at U+2028 and
    friends, which SSE does not)."""
    buffer = ""
    async for chunk in chunks:
        buffer += chunk
        start = 0
        while True:
            cr, lf = buffer.find("\r", start), buffer.find("\n", start)
            ends = [i for i in (cr, lf) if i != -1]
            if not ends:
                break
            end = min(ends)
            if buffer[end] == "\r":
                if end + 1 == len(buffer):
                    break  # a CR at the very end may be the first half of CRLF
                width = 2 if buffer[end + 1] == "\n" else 1
            else:
                width = 1
            yield buffer[start:end]
            start = end + width
        buffer = buffer[start:]
    if buffer:
        yield buffer.rstrip("\r")


async def parse_lines(lines: AsyncIterator[str], stream: SseStream) -> AsyncIterator[SseEvent]:
    """Turn lines (already split at CR, LF or CRLF) into events per the HTML spec."""
    data: list[str] = []
    event_type = ""
    last_id: str | None = None
    async for line in lines:
        if line == "":
            if data:
                event = SseEvent(event_type or "message", "\n".join(data), last_id)
                stream.events.append(event)
                yield event
            data, event_type = [], ""
            continue
        if line.startswith(":"):
            stream.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event_type = value
        elif name == "id" and "\0" not in value:
            last_id = value


async def read_sse(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
) -> SseStream:
    """Read an SSE response to its end, or hang up after `stop_after` events (a real
    disconnect: the connection is closed mid-stream)."""
    stream = SseStream()
    async with client.stream(method, url, json=json_body, headers=headers) as response:
        stream.status_code = response.status_code
        stream.headers = dict(response.headers)
        if response.status_code != 200:
            await response.aread()
            stream.comments.append(response.text)
            return stream
        async for _ in parse_lines(split_lines(response.aiter_text()), stream):
            if stop_after is not None and len(stream.events) >= stop_after:
                break
    return stream
