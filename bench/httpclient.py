"""A small HTTP/1.1 client for load: one asyncio protocol per connection, httptools parsing.

The same code reads the gateway and the upstream directly, so a ratio between the two measures
the servers, not two different clients: the gateway's native `text` format, OpenAI chat chunks
and OpenAI Responses events, each parsed as far as finding every text delta and the end. Each
response is read on a fresh connection (`Connection: close`). Arrival times are taken once per
socket read (`time.monotonic()`, which is CLOCK_MONOTONIC and so comparable with the upstream's
send stamps).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast

import httptools

_RESPONSE_ENDS = frozenset(
    {"response.completed", "response.incomplete", "response.failed", "error"}
)


class Mode(StrEnum):
    """How a response body is read."""

    GATEWAY = "gateway"  # the gateway's `text` SSE: `id:` + `data: <text>`, `[DONE]` at the end
    DIRECT = "direct"  # OpenAI chunks: `data: {json}`, `[DONE]` at the end
    RESPONSES = "responses"  # OpenAI Responses events; `response.completed` ends the stream
    RAW = "raw"  # any body, kept whole (JSON answers)


@dataclass(slots=True)
class Response:
    """What one request saw."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict[str, str])
    t_sent: float = 0.0
    t_headers: float = 0.0
    t_end: float = 0.0
    times: list[float] = field(default_factory=list[float])  # one per content event
    texts: list[str] = field(default_factory=list[str])
    ids: list[int] = field(default_factory=list[int])
    done: bool = False  # the stream's end marker arrived (`[DONE]`)
    dropped: bool = False  # we hung up on purpose
    error: str | None = None
    body: bytes = b""

    @property
    def text(self) -> str:
        """All content text received, joined."""
        return "".join(self.texts)

    def json(self) -> Any:
        """A RAW body parsed as JSON."""
        return json.loads(self.body)


class _Protocol(asyncio.Protocol):
    """Sends one request, parses the answer, records arrival times, hangs up when told."""

    def __init__(
        self,
        request: bytes,
        mode: Mode,
        stop_after: int | None,
        done: asyncio.Future[None],
        result: Response,
        on_headers: Callable[[Response], None] | None,
    ) -> None:
        self.request = request
        self.mode = mode
        self.stop_after = stop_after
        self.done = done
        self.result = result
        self.on_headers = on_headers
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.now = 0.0
        self.pending = b""
        self.body_parts: list[bytes] = []

    # -- asyncio ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        self.result.t_sent = time.monotonic()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.now = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._finish("unexpected upgrade")
        except httptools.HttpParserError as exc:
            if not self.done.done():
                self._finish(f"bad HTTP: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self._finish(f"connection lost: {exc or 'closed by server'}")

    # -- httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.result.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.result.status = self.parser.get_status_code()
        self.result.t_headers = self.now
        if self.on_headers is not None:
            self.on_headers(self.result)
        if self.stop_after == 0 and self.mode is not Mode.RAW:
            self._hang_up()

    def on_body(self, body: bytes) -> None:
        if self.done.done():
            return
        if self.mode is Mode.RAW or self.result.status != 200:
            self.body_parts.append(body)
            return
        data = self.pending + body if self.pending else body
        *blocks, self.pending = data.split(b"\n\n")
        for block in blocks:
            if block:
                self._event(block)
            if self.done.done():
                return

    def on_message_complete(self) -> None:
        if not self.done.done():
            self.result.body = b"".join(self.body_parts)
            if self.mode is Mode.RAW or self.result.done:
                self._finish(None)
            elif self.result.status != 200:
                self._finish(f"HTTP {self.result.status}: {self.result.body[:300]!r}")
            else:
                self._finish("no end marker")

    # -- SSE ----------------------------------------------------------------------------------

    def _event(self, block: bytes) -> None:
        data: list[str] = []
        event_id = 0
        kind = ""
        for line in block.decode().split("\n"):
            if line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
            elif line.startswith("id:"):
                event_id = int(line[3:])
            elif line.startswith("event:"):
                kind = line[6:].strip()
        if not data:
            return  # a comment (ping)
        payload = "\n".join(data)
        if payload == "[DONE]":
            self.result.done = True
            self.result.t_end = self.now
            return
        if self.mode is Mode.GATEWAY:
            if payload.startswith("[ERROR]"):
                self._finish(payload)
                return
            text = payload
        elif self.mode is Mode.RESPONSES:
            if kind in _RESPONSE_ENDS:
                if kind != "response.completed":
                    self._finish(f"{kind}: {payload[:300]}")
                    return
                self.result.done = True
                self.result.t_end = self.now
                return
            if kind != "response.output_text.delta":
                return
            text = json.loads(payload)["delta"]
        else:
            chunk = json.loads(payload)
            choices = chunk.get("choices") or ()
            text = choices[0]["delta"].get("content") if choices else None
            if not text:
                return
        self.result.times.append(self.now)
        self.result.texts.append(text)
        self.result.ids.append(event_id)
        if self.stop_after is not None and len(self.result.texts) >= self.stop_after:
            self._hang_up()

    def _hang_up(self) -> None:
        self.result.dropped = True
        self.result.t_end = self.now
        if self.transport is not None:
            self.transport.abort()
        if not self.done.done():
            self.done.set_result(None)

    def _finish(self, error: str | None) -> None:
        self.result.error = error
        if not self.result.t_end:
            self.result.t_end = self.now or time.monotonic()
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)


def build_request(
    method: str, port: int, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> bytes:
    """The bytes of one HTTP/1.1 request to 127.0.0.1:port."""
    payload = b"" if body is None else json.dumps(body).encode()
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Accept: text/event-stream, application/json",
        "Connection: close",
        f"Content-Length: {len(payload)}",
    ]
    if body is not None:
        lines.append("Content-Type: application/json")
    lines.extend(f"{key}: {value}" for key, value in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def request(
    port: int,
    method: str,
    path: str,
    *,
    mode: Mode,
    body: Any = None,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
    timeout: float = 60.0,  # noqa: ASYNC109
    result: Response | None = None,
    on_headers: Callable[[Response], None] | None = None,
) -> Response:
    """Send one request to 127.0.0.1:port and read the answer (or hang up after `stop_after`
    content events; 0 = right after the headers). Never raises: failures are in `.error`.

    `result`, if given, is filled in as data arrives (so another task can watch it);
    `on_headers` is called once the status line and headers are in."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    raw = build_request(method, port, path, body, headers)
    result = result if result is not None else Response()
    protocol = _Protocol(raw, mode, stop_after, done, result, on_headers)
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: protocol, "127.0.0.1", port)
            await done
    except TimeoutError:
        protocol.result.error = "timeout"
    except OSError as exc:
        protocol.result.error = f"connect failed: {exc}"
    finally:
        if protocol.transport is not None and not protocol.transport.is_closing():
            protocol.transport.abort()
    return protocol.result
