"""Answering one chat-completions request as its `Script` says: a stream or a whole
completion, paced, cut, stalled or failed on cue, with every step recorded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any

from starlette.types import Send

from martlet_molt.testing import wire
from martlet_molt.testing.history import RequestHistory, RequestRecord
from martlet_molt.testing.script import Script


class DropConnection(Exception):
    """Raised inside the ASGI app to make uvicorn close the socket mid-response: how the fake
    upstream simulates a connection that dies."""


class _QuietDrops(logging.Filter):
    """Hide uvicorn's traceback for connections dropped on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False for log records caused by `DropConnection`."""
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DropConnection)


_quiet_filter = _QuietDrops()


def install_log_filter() -> None:
    """Keep uvicorn's error log free of the drops a script asked for (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if _quiet_filter not in logger.filters:
        logger.addFilter(_quiet_filter)


class Abort:
    """One request's stop signal: set when its client disconnects or the server stops, so a
    paced or stalled reply ends at once."""

    def __init__(self) -> None:
        """Not set yet."""
        self.event = asyncio.Event()
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        """Stop the request; the first reason given ("client" or "shutdown") is kept."""
        if self.reason is None:
            self.reason = reason
        self.event.set()

    async def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`; return True if aborted."""
        if self.event.is_set():
            return True
        if seconds <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), seconds)
        return self.event.is_set()


async def send_json(
    send: Send, status: int, body: Any, extra_headers: dict[str, str] | None = None
) -> None:
    """Send a whole JSON response."""
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    for key, value in (extra_headers or {}).items():
        headers.append((key.lower().encode(), value.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


class ChatResponder:
    """Plays one request's script onto its ASGI `send`, recording progress in the history."""

    def __init__(
        self,
        history: RequestHistory,
        record: RequestRecord,
        script: Script,
        abort: Abort,
        send: Send,
    ) -> None:
        """Bind the request's record, script, stop signal and `send`."""
        self.history = history
        self.record = record
        self.script = script
        self.abort = abort
        self.send = send

    async def respond(self) -> None:
        """Answer as the request asked: streamed or whole."""
        try:
            if self.record.stream:
                await self._stream()
            else:
                await self._complete()
        except DropConnection:
            self.history.update(self.record, dropped=True)
            raise

    def _aborted(self) -> None:
        """Record why the request stopped; raise to drop the socket when the server stops."""
        if self.abort.reason == "client":
            self.history.update(self.record, client_disconnected=True)
        else:
            raise DropConnection("server stopping")

    async def _error_sent(self) -> bool:
        """Wait for the headers' delay, then send the scripted HTTP error if any; return True
        if the request is done."""
        script = self.script
        if await self.abort.sleep(script.headers_delay):
            self._aborted()
            return True
        if script.error_status is None:
            return False
        status = script.error_status
        if isinstance(script.error_body, dict):
            payload: Any = script.error_body
        else:
            payload = wire.error_body(status, script.error_body)
        extra = dict(script.response_headers)
        if script.retry_after is not None:
            extra["retry-after"] = script.retry_after
        await send_json(self.send, status, payload, extra)
        self.history.update(self.record, status=status, completed=True)
        return True

    async def _emit(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def _stream(self) -> None:
        script, record, abort = self.script, self.record, self.abort
        if await self._error_sent():
            return
        include_usage = bool(wire.member(record.body.get("stream_options"), "include_usage"))
        chunks = wire.ChunkEncoder(record.model or wire.DEFAULT_MODEL, include_usage=include_usage)
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-request-id", f"req_{uuid.uuid4().hex[:16]}".encode()),
        ]
        for key, value in script.response_headers.items():
            headers.append((key.lower().encode(), value.encode()))
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        self.history.update(record, status=200)

        if await abort.sleep(script.first_delay):
            return self._aborted()
        await self._emit(chunks.delta({"role": "assistant", "content": "", "refusal": None}))

        deltas = script.deltas
        for i in range(len(deltas) + 1):
            # Checkpoint "after i chunks".
            if script.fail_after == i:
                raise DropConnection(f"fail_after={i}")
            if script.stall_after == i:
                await abort.event.wait()
                return self._aborted()
            if script.malformed_after == i:
                await self._emit(wire.MALFORMED)
            if script.error_event_after == i:
                error = wire.error_body(
                    500, "The server had an error while processing your request."
                )
                await self._emit(wire.sse_event(error))
                await self.send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if i == len(deltas):
                break
            if i > 0 and script.delay > 0:
                if await abort.sleep(script.delay):
                    return self._aborted()
            else:
                await asyncio.sleep(0)  # let a client disconnect be noticed
                if abort.event.is_set():
                    return self._aborted()
            await self._emit(chunks.delta(deltas[i]))
            if i == 0:
                self.history.update(record, chunks_sent=1, first_chunk_at=time.monotonic())
            else:
                self.history.update(record, chunks_sent=i + 1)

        tail = chunks.delta({}, script.resolved_finish_reason)
        if include_usage and script.usage:
            tail += chunks.usage(wire.usage(record.body, script))
        tail += wire.DONE
        await self.send({"type": "http.response.body", "body": tail, "more_body": False})
        self.history.update(record, completed=True)

    async def _complete(self) -> None:
        script, record, abort = self.script, self.record, self.abort
        if await self._error_sent():
            return
        if await abort.sleep(script.first_delay):
            return self._aborted()
        if script.stall_after is not None:
            await abort.event.wait()
            return self._aborted()
        body = wire.completion(record.body, script, record.model or wire.DEFAULT_MODEL)
        payload = json.dumps(body, ensure_ascii=False).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        for key, value in script.response_headers.items():
            headers.append((key.lower().encode(), value.encode()))
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        self.history.update(record, status=200)
        if script.fail_after is not None:
            # Send part of the body, then cut the connection.
            half = payload[: len(payload) // 2]
            await self._emit(half)
            raise DropConnection("fail_after (non-streaming)")
        if script.malformed_after is not None:
            await self._emit(payload[: len(payload) // 2])
            raise DropConnection("malformed (non-streaming)")
        await self.send({"type": "http.response.body", "body": payload, "more_body": False})
        self.history.update(record, chunks_sent=script.chunk_count, completed=True)
