"""Server-Sent Events: one stream log read by one client, in the wire format its encoder
(`SseEncoder`) writes: the native `text` and `json` formats (`gateway/native_events.py`),
OpenAI's Responses events and chat completion chunks (`gateway/openai/`).

A reader writes what is available in one send (one batch per wake-up, at most `BATCH_EVENTS`
events), never one send per token, and keeps the connection alive with `: ping` comments while
the run is silent.

Who runs what: each reader is a task of its own, started and awaited by the request's task
(so a wake-up resumes only the reader's frames, not the ASGI stack's), which loops over the log
(send a batch; or finish at the end; or wait for the log, and ping when the wait has lasted the
ping interval). The wait arms no timer of its own: one ping clock per process
(`gateway/ping_clock.py`) interrupts the readers that have been waiting that long. One helper
task per response sleeps in `receive()` until the client disconnects; the reader checks it
after every wake-up (so a hang-up during silence is noticed within about one ping interval)
and cancels it when it ends. Nothing here touches the run: a reader ending, for any reason,
ends only that reader. It is written by hand rather than with sse-starlette's
`EventSourceResponse`, whose anyio task group per reader (body, pinger, shutdown and
disconnect listeners) and cancel scope per send cost more CPU per reader and per event, as
racing `receive()` against a task per log wait instead did per event, and a timer per wait
did per wake-up (measured: docs/BENCHMARKS.md, "Measurements behind the code").
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Protocol

from loguru import logger
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from martlet_molt.core.stream_log import RunEvent, StreamLog
from martlet_molt.gateway.native_events import SseFormat, native_encoder
from martlet_molt.gateway.ping_clock import Silence, ping_clock
from martlet_molt.metrics import Metrics

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CONTENT_TYPE = "text/event-stream; charset=utf-8"

# At most this many events go into one send: a reader far behind a long, fast reply (or
# replaying it) holds one bounded batch at a time, not every event it has yet to send.
BATCH_EVENTS = 512

_PING: Message = {"type": "http.response.body", "body": b": ping\n\n", "more_body": True}

SERVER_SEND = "martlet.server_send"
"""The scope key under which the app (`app.GatewayApp`) keeps the server's own `send`."""


def body_send(scope: Scope, send: Send) -> Send:
    """What a reader writes its body with: the server's own `send`, once the response has
    started through the middleware's (which must see the start to know not to send an error
    response of their own). Starlette's error and exception middleware wrap every `send` in
    a coroutine of their own, three per body chunk, for every token and reader; none of the
    app's middleware changes a body chunk (`BodyLimit` wraps only `receive`, CORS only the
    start). Without the key (the app mounted elsewhere) it is `send` itself."""
    server_send: Send | None = scope.get(SERVER_SEND)
    return send if server_send is None else server_send


class SseEncoder(Protocol):
    """One reader's wire format: turns the log's events into SSE frames. It may keep state
    from one batch to the next (numbering, what it has opened), so each reader has its own,
    made for the cursor the reader resumes from."""

    @property
    def after(self) -> int:
        """The log `seq` to read from."""
        ...

    def opening(self) -> str:
        """Frames that go out before any of the log's events ("" for none)."""
        ...

    def encode(self, events: Sequence[RunEvent]) -> str:
        """The frames for one batch of events, in order."""
        ...


def _watch_for_hang_up(receive: Receive) -> asyncio.Task[None]:
    """A task that finishes when the client goes away: `receive()` says `http.disconnect`
    (uvicorn's `send` never raises then; it drops the bytes). It sleeps until then, so it costs
    nothing per event; the reader checks `done()` after each wake-up and cancels it at the end."""

    async def until_disconnect() -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception as error:  # a connection that cannot be read has gone too
            logger.debug("receive failed while streaming: {!r}", error)

    return asyncio.ensure_future(until_disconnect())


class SseResponse(Response):
    """An SSE response reading one stream log from `after`: replay, then live, until the end
    event. One task per reader (the request's own) writes each batch, or a ping after
    `ping_seconds` of silence, and ends early if the client hung up. `metrics`, if given,
    counts the reader while it is connected and a hang-up."""

    def __init__(
        self,
        log: StreamLog,
        *,
        encoder: SseEncoder,
        ping_seconds: float,
        headers: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
        status_code: int = 200,  # FastAPI's OpenAPI reads this default
    ) -> None:
        self.status_code = status_code
        self.background: BackgroundTask | None = None  # FastAPI may set it; runs after
        self.log = log
        self.encoder = encoder
        self.ping_seconds = ping_seconds
        self.metrics = metrics
        # The content type goes in as a header, not as the class's `media_type`, so FastAPI
        # documents the routes' error responses as JSON (which they are).
        self.init_headers({**SSE_HEADERS, **(headers or {}), "Content-Type": CONTENT_TYPE})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        send = body_send(scope, send)
        if not await self._follow(receive, send):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.background is not None:
            await self.background()

    async def _follow(self, receive: Receive, send: Send) -> bool:
        """Stream until the end event or a hang-up; True if the body is already complete."""
        log, metrics = self.log, self.metrics
        reader_logger = logger.bind(session_id=log.session_id)
        hung_up = _watch_for_hang_up(receive)
        reader_logger.debug(
            "reader connected to run {} after seq {}", log.run_id, self.encoder.after
        )
        if metrics is not None:
            metrics.reader_connected()
        finished = False
        try:
            # A cancellation of the request reaches the reader's task through this await.
            finished = await asyncio.ensure_future(self._send_events(send, hung_up))
        finally:
            hung_up.cancel()
            if metrics is not None:
                metrics.reader_disconnected(finished=finished)
            if finished:
                reader_logger.debug("reader of run {} got the end", log.run_id)
            else:
                reader_logger.info("reader of run {} disconnected", log.run_id)
        return finished

    async def _send_events(self, send: Send, hung_up: asyncio.Task[None]) -> bool:
        """Write the log from the cursor on; True once the end event went out (with the end
        of the body, in one write), False if the client hung up first."""
        cursor = self.encoder.after
        opening = self.encoder.opening()
        if opening:
            await send({"type": "http.response.body", "body": opening.encode(), "more_body": True})
        clock = ping_clock()
        silence = clock.join(self.ping_seconds)
        try:
            return await self._follow_log(send, hung_up, cursor, silence)
        finally:
            clock.leave(silence)

    async def _follow_log(
        self, send: Send, hung_up: asyncio.Task[None], cursor: int, silence: Silence
    ) -> bool:
        """`_send_events` past the opening, with this reader's entry in the ping clock."""
        log, encode, ping_seconds = self.log, self.encoder.encode, self.ping_seconds
        while not hung_up.done():
            batch = log.events_after(cursor, limit=BATCH_EVENTS)
            if batch:
                cursor = batch[-1].seq
                last = log.closed and cursor == log.last_seq
                payload = encode(batch)
                if payload or last:
                    await send(
                        {
                            "type": "http.response.body",
                            "body": payload.encode(),
                            "more_body": not last,
                        }
                    )
                if last:
                    return True
                if len(batch) == BATCH_EVENTS:
                    await asyncio.sleep(0)  # catching up: let the other readers have a turn
            elif log.closed:  # nothing past the cursor: the end was sent before it
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return True
            elif (
                await silence.wait(log, cursor, ping_seconds)
                and not hung_up.done()
                and log.last_seq == cursor
                and not log.closed
            ):
                await send(_PING)
        return False


def sse_response(
    log: StreamLog,
    *,
    after: int,
    wire_format: SseFormat,
    ping_seconds: float,
    headers: dict[str, str] | None = None,
    metrics: Metrics | None = None,
) -> SseResponse:
    """An SSE response reading `log` from `after` in a native format: replay, then live,
    until the end event. `metrics`, if given, counts the reader while it is connected and a
    hang-up."""
    return SseResponse(
        log,
        encoder=native_encoder(wire_format, after),
        ping_seconds=ping_seconds,
        headers=headers,
        metrics=metrics,
    )
