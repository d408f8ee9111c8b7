"""A fake OpenAI-compatible upstream: a real HTTP server speaking OpenAI's streaming wire format.

In tests::

    with FakeUpstream() as upstream:
        upstream.enqueue(Script(tokens=["Hel", "lo"], delay=0.01))
        client = AsyncOpenAI(base_url=upstream.base_url, api_key="test")
        ...
        assert upstream.wait_for_completed(1, timeout=5)

Standalone (benchmarks)::

    python -m tests.fake_upstream --port 8900 --tokens 50 --delay 0.01 --first-delay 0.2

which prints ``FAKE_UPSTREAM_READY http://127.0.0.1:8900/v1`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send
from uvicorn.config import LOGGING_CONFIG

__all__ = ["FakeUpstream", "RequestRecord", "Script", "main"]

_DEFAULT_TOKEN_COUNT = 5
_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
_SYSTEM_FINGERPRINT = "fp_fake_upstream"

_ERROR_DEFAULTS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to access this resource.", "invalid_request_error", None),
    404: ("The model does not exist.", "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


# --------------------------------------------------------------------------- scripts


@dataclass
class Script:
    """What the fake upstream does for one request (see module docs / field comments)."""

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
            count = 0 if self.tool_calls else _DEFAULT_TOKEN_COUNT
        return [self.token_text.replace("{i}", str(i)) for i in range(count)]

    @property
    def text(self) -> str:
        """The exact full text the upstream sends (concatenation of `chunks`)."""
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
            for frag in _split(call["arguments"], self.tool_arg_fragments):
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


def _split(text: str, parts: int) -> list[str]:
    """Split `text` into up to `parts` non-empty, roughly equal pieces."""
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


# --------------------------------------------------------------------------- records


@dataclass
class RequestRecord:
    """What happened to one chat-completions request (updated live; read freely)."""

    index: int
    body: dict[str, Any]
    headers: dict[str, str]
    script: Script
    model: str | None = None
    stream: bool = False
    status: int | None = None  # HTTP status sent, None until headers are sent
    chunks_sent: int = 0  # content chunks sent (text / tool-call chunks)
    completed: bool = False  # the whole response (incl. `data: [DONE]`) was sent
    client_disconnected: bool = False  # the client went away before the end
    dropped: bool = False  # the server dropped the connection on purpose (fail_after / stop)
    finished: bool = False  # the handler has returned
    started_at: float = field(default_factory=time.monotonic)
    first_chunk_at: float | None = None  # monotonic time the first content chunk was sent
    finished_at: float | None = None


class _DropConnection(Exception):
    """Raised inside the ASGI app to make uvicorn close the socket mid-response."""


class _QuietDrops(logging.Filter):
    """Hide uvicorn's traceback for connections dropped on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False for log records caused by `_DropConnection`."""
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _DropConnection)


_quiet_filter = _QuietDrops()


def _install_log_filter() -> None:
    """Attach the drop-hiding filter to uvicorn's error logger (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if _quiet_filter not in logger.filters:
        logger.addFilter(_quiet_filter)


class _Flow:
    """Per-request abort signal: set when the client disconnects or the server stops."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.reason: str | None = None

    def abort(self, reason: str) -> None:
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


@dataclass
class _AsyncWaiter:
    predicate: Callable[[FakeUpstream], bool]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


class _Server(uvicorn.Server):
    """uvicorn server that reports readiness and aborts in-flight requests on shutdown."""

    def __init__(self, config: uvicorn.Config, owner: FakeUpstream) -> None:
        super().__init__(config)
        self._owner = owner

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start listening, then signal readiness."""
        await super().startup(sockets)
        self._owner._on_ready(asyncio.get_running_loop())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Abort stalled/slow handlers first so shutdown is quick."""
        self._owner._abort_all()
        await super().shutdown(sockets)


# --------------------------------------------------------------------------- server


class FakeUpstream:
    """Fake OpenAI-compatible server on 127.0.0.1, run in a background thread."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        default_script: Script | None = None,
        models: list[str] | None = None,
        max_records: int | None = None,
    ) -> None:
        """Configure (does not start); `port=0` picks a free port."""
        self.host = host
        self.default_script: Script = default_script if default_script is not None else Script()
        self.scripts_by_model: dict[str, Script] = {}
        self.models: list[str] = list(models) if models is not None else ["fake-model"]
        self.max_records = max_records
        self._queue: deque[Script] = deque()
        self._cond = threading.Condition(threading.RLock())
        self._records: list[RequestRecord] = []
        self._total = 0
        self._completed = 0
        self._disconnects = 0
        self._last_disconnect_at: float | None = None  # monotonic, for cancel latency
        self._drops = 0
        self._in_flight = 0
        self._async_waiters: list[_AsyncWaiter] = []
        self._flows: set[_Flow] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: _Server | None = None
        self._startup_error: BaseException | None = None
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        self._starlette = Starlette(
            routes=[
                Route("/v1/models", self._models_endpoint, methods=["GET"]),
                Route("/models", self._models_endpoint, methods=["GET"]),
                Route("/_fake/stats", self._stats_endpoint, methods=["GET"]),
            ]
        )

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    def _make_server(self, *, in_thread: bool) -> _Server:
        config = uvicorn.Config(
            self._asgi,
            lifespan="off",
            interface="asgi3",
            proxy_headers=False,
            ws="none",
            access_log=False,
            log_config=None if in_thread else LOGGING_CONFIG,
            log_level=None if in_thread else "warning",
            timeout_graceful_shutdown=3,
            timeout_keep_alive=30,
        )
        _install_log_filter()
        self._server = _Server(config, self)
        return self._server

    def start(self, timeout: float = 10.0) -> FakeUpstream:
        """Start serving in a daemon thread; returns once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError("FakeUpstream already started")
        server = self._make_server(in_thread=True)

        def run() -> None:
            try:
                server.run(sockets=[self._sock])
            except BaseException as exc:  # surface startup failures to start()
                self._startup_error = exc
            finally:
                self._ready.set()

        self._thread = threading.Thread(target=run, name=f"fake-upstream-{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._loop is None:
            raise RuntimeError(f"fake upstream failed to start: {self._startup_error!r}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Abort in-flight requests, shut the server down and join its thread."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            self._sock.close()
            return
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._abort_all)
        server.should_exit = True
        thread.join(timeout)
        self._thread = None
        self._sock.close()

    def serve_forever(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve in the calling (main) thread until SIGINT/SIGTERM; for the CLI."""
        self._on_ready_cb = on_ready
        server = self._make_server(in_thread=False)
        server.run(sockets=[self._sock])

    def __enter__(self) -> FakeUpstream:
        """Start the server."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    _on_ready_cb: Callable[[str], None] | None = None

    def _on_ready(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ready.set()
        if self._on_ready_cb is not None:
            self._on_ready_cb(self.base_url)

    def _abort_all(self) -> None:
        for flow in list(self._flows):
            flow.abort("shutdown")

    # ----------------------------------------------------------------- scripting

    def enqueue(self, *scripts: Script) -> None:
        """Queue scripts; each request takes the next one (FIFO) unless its model matches."""
        with self._cond:
            self._queue.extend(scripts)

    def clear_queue(self) -> None:
        """Forget queued scripts no request took (a run that ended early leaves some)."""
        with self._cond:
            self._queue.clear()

    def clear(self) -> None:
        """Forget queued scripts and all recorded requests/counters."""
        with self._cond:
            self._queue.clear()
            self._records.clear()
            self._total = self._completed = self._disconnects = self._drops = 0

    def _pick_script(self, model: str | None) -> Script:
        with self._cond:
            if model is not None and model in self.scripts_by_model:
                return self.scripts_by_model[model]
            if self._queue:
                return self._queue.popleft()
            return self.default_script

    # ----------------------------------------------------------------- recording

    @property
    def requests(self) -> list[dict[str, Any]]:
        """JSON bodies of received chat-completions requests, in arrival order."""
        with self._cond:
            return [r.body for r in self._records]

    @property
    def records(self) -> list[RequestRecord]:
        """Live `RequestRecord` objects, in arrival order."""
        with self._cond:
            return list(self._records)

    @property
    def last_record(self) -> RequestRecord | None:
        """The most recent `RequestRecord`, or None."""
        with self._cond:
            return self._records[-1] if self._records else None

    @property
    def request_count(self) -> int:
        """Total chat-completions requests received."""
        with self._cond:
            return self._total

    @property
    def completed_count(self) -> int:
        """Requests whose full response was sent."""
        with self._cond:
            return self._completed

    @property
    def disconnect_count(self) -> int:
        """Requests whose client went away before the end."""
        with self._cond:
            return self._disconnects

    @property
    def in_flight(self) -> int:
        """Chat-completions requests currently being handled."""
        with self._cond:
            return self._in_flight

    @property
    def open_connections(self) -> int:
        """TCP connections currently open to the server (including idle keep-alive ones)."""
        server = self._server
        return len(server.server_state.connections) if server is not None else 0

    def _update(self, record: RequestRecord, **changes: Any) -> None:
        with self._cond:
            for key, value in changes.items():
                setattr(record, key, value)
            if changes.get("completed"):
                self._completed += 1
            if changes.get("client_disconnected"):
                self._disconnects += 1
                self._last_disconnect_at = time.monotonic()
            if changes.get("dropped"):
                self._drops += 1
            if changes.get("finished"):
                self._in_flight -= 1
            self._notify()

    def _check(self, predicate: Callable[[FakeUpstream], bool]) -> bool:
        """Evaluate a wait predicate; an exception (e.g. IndexError: no record yet) is False."""
        try:
            return bool(predicate(self))
        except Exception:
            return False

    def _notify(self) -> None:
        """Wake sync waiters and resolve satisfied async waiters (lock held)."""
        self._cond.notify_all()
        for waiter in list(self._async_waiters):
            if self._check(waiter.predicate):
                self._async_waiters.remove(waiter)
                with contextlib.suppress(RuntimeError):  # waiter's loop already closed
                    waiter.loop.call_soon_threadsafe(_resolve, waiter.future)

    # ----------------------------------------------------------------- waiting

    def wait_until(self, predicate: Callable[[FakeUpstream], bool], timeout: float = 5.0) -> bool:
        """Block until `predicate(self)` is true; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._check(predicate), timeout)

    def wait_for_requests(self, n: int = 1, timeout: float = 5.0) -> bool:
        """Block until at least `n` requests have arrived."""
        return self.wait_until(lambda u: u._total >= n, timeout)

    def wait_for_completed(self, n: int = 1, timeout: float = 5.0) -> bool:
        """Block until at least `n` responses were sent in full."""
        return self.wait_until(lambda u: u._completed >= n, timeout)

    def wait_for_disconnect(self, timeout: float = 5.0, n: int = 1) -> bool:
        """Block until at least `n` clients went away mid-response."""
        return self.wait_until(lambda u: u._disconnects >= n, timeout)

    def wait_for_idle(self, timeout: float = 5.0) -> bool:
        """Block until no chat-completions request is in flight."""
        return self.wait_until(lambda u: u._in_flight == 0, timeout)

    # `timeout` (not asyncio.timeout) on purpose: same call shape as the sync waiters.
    async def wait_until_async(
        self,
        predicate: Callable[[FakeUpstream], bool],
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> bool:
        """Await `predicate(self)` without blocking the caller's event loop; False on timeout."""
        loop = asyncio.get_running_loop()
        waiter = _AsyncWaiter(predicate, loop, loop.create_future())
        with self._cond:
            if self._check(predicate):
                return True
            self._async_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter.future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._cond:
                if waiter in self._async_waiters:
                    self._async_waiters.remove(waiter)

    async def wait_for_requests_async(self, n: int = 1, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
        """Async `wait_for_requests`."""
        return await self.wait_until_async(lambda u: u._total >= n, timeout)

    async def wait_for_completed_async(self, n: int = 1, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
        """Async `wait_for_completed`."""
        return await self.wait_until_async(lambda u: u._completed >= n, timeout)

    async def wait_for_disconnect_async(self, timeout: float = 5.0, n: int = 1) -> bool:  # noqa: ASYNC109
        """Async `wait_for_disconnect`."""
        return await self.wait_until_async(lambda u: u._disconnects >= n, timeout)

    async def wait_for_idle_async(self, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
        """Async `wait_for_idle`."""
        return await self.wait_until_async(lambda u: u._in_flight == 0, timeout)

    # ----------------------------------------------------------------- ASGI

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in _CHAT_PATHS:
            if scope["method"] != "POST":
                await self._send_json(send, 405, _error_body(405, "Method not allowed.", None))
                return
            await self._chat(scope, receive, send)
            return
        await self._starlette(scope, receive, send)

    async def _models_endpoint(self, request: Request) -> JSONResponse:
        names = list(dict.fromkeys([*self.models, *self.scripts_by_model]))
        created = int(time.time())
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "fake-upstream"}
            for name in names
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _stats_endpoint(self, request: Request) -> JSONResponse:
        with self._cond:
            stats = {
                "requests": self._total,
                "completed": self._completed,
                "client_disconnected": self._disconnects,
                "last_disconnect_at": self._last_disconnect_at,
                "dropped": self._drops,
                "in_flight": self._in_flight,
            }
        stats["open_connections"] = self.open_connections
        return JSONResponse(stats)

    @staticmethod
    async def _send_json(
        send: Send, status: int, body: Any, extra_headers: dict[str, str] | None = None
    ) -> None:
        payload = json.dumps(body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        for key, value in (extra_headers or {}).items():
            headers.append((key.lower().encode(), value.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = bytearray()
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            await self._send_json(send, 400, _error_body(400, "Body is not a JSON object.", None))
            return
        body_dict: dict[str, Any] = body
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        model = body_dict.get("model")
        model = model if isinstance(model, str) else None
        script = self._pick_script(model)
        with self._cond:
            record = RequestRecord(
                index=self._total,
                body=body_dict,
                headers=headers,
                script=script,
                model=model,
                stream=bool(body_dict.get("stream")),
            )
            self._total += 1
            self._in_flight += 1
            self._records.append(record)
            if self.max_records is not None and len(self._records) > self.max_records:
                del self._records[: len(self._records) - self.max_records]
            self._notify()

        flow = _Flow()
        self._flows.add(flow)

        async def watch() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    flow.abort("client")
                    return

        watcher = asyncio.create_task(watch())
        try:
            if record.stream:
                await self._stream(record, script, flow, send)
            else:
                await self._complete(record, script, flow, send)
        except _DropConnection:
            self._update(record, dropped=True)
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            self._flows.discard(flow)
            self._update(record, finished=True, finished_at=time.monotonic())

    def _aborted(self, record: RequestRecord, flow: _Flow) -> None:
        """Record why the flow stopped; raise to drop the socket when the server is stopping."""
        if flow.reason == "client":
            self._update(record, client_disconnected=True)
        else:
            raise _DropConnection("server stopping")

    async def _maybe_error(
        self, record: RequestRecord, script: Script, flow: _Flow, send: Send
    ) -> bool:
        """Send the scripted HTTP error, if any; return True if the request is done."""
        if await flow.sleep(script.headers_delay):
            self._aborted(record, flow)
            return True
        if script.error_status is None:
            return False
        status = script.error_status
        if isinstance(script.error_body, dict):
            payload: Any = script.error_body
        else:
            payload = _error_body(status, script.error_body)
        extra = dict(script.response_headers)
        if script.retry_after is not None:
            extra["retry-after"] = script.retry_after
        await self._send_json(send, status, payload, extra)
        self._update(record, status=status, completed=True)
        return True

    def _usage(self, record: RequestRecord, script: Script) -> dict[str, int]:
        prompt = script.prompt_tokens
        if prompt is None:
            prompt = 0
            messages = record.body.get("messages")
            for msg in messages if isinstance(messages, list) else []:
                content = msg.get("content") if isinstance(msg, dict) else None
                prompt += len(str(content).split()) if content is not None else 0
        completion = script.completion_tokens
        if completion is None:
            completion = script.chunk_count
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    async def _stream(self, record: RequestRecord, script: Script, flow: _Flow, send: Send) -> None:
        if await self._maybe_error(record, script, flow, send):
            return
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        model = record.model or "fake-model"
        options = record.body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            obj: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": _SYSTEM_FINGERPRINT,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                obj["usage"] = None
            return _sse(obj)

        async def emit(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-request-id", f"req_{uuid.uuid4().hex[:16]}".encode()),
        ]
        for key, value in script.response_headers.items():
            headers.append((key.lower().encode(), value.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        self._update(record, status=200)

        if await flow.sleep(script.first_delay):
            return self._aborted(record, flow)
        await emit(chunk({"role": "assistant", "content": "", "refusal": None}))

        deltas = script.deltas
        for i in range(len(deltas) + 1):
            # Checkpoint "after i chunks".
            if script.fail_after == i:
                raise _DropConnection(f"fail_after={i}")
            if script.stall_after == i:
                await flow.event.wait()
                return self._aborted(record, flow)
            if script.malformed_after == i:
                await emit(b"data: {not json\n\n")
            if script.error_event_after == i:
                error = _error_body(500, "The server had an error while processing your request.")
                await emit(_sse(error))
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if i == len(deltas):
                break
            if i > 0 and script.delay > 0:
                if await flow.sleep(script.delay):
                    return self._aborted(record, flow)
            else:
                await asyncio.sleep(0)  # let a client disconnect be noticed
                if flow.event.is_set():
                    return self._aborted(record, flow)
            await emit(chunk(deltas[i]))
            if i == 0:
                self._update(record, chunks_sent=1, first_chunk_at=time.monotonic())
            else:
                self._update(record, chunks_sent=i + 1)

        tail = chunk({}, script.resolved_finish_reason)
        if include_usage and script.usage:
            usage_obj = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": _SYSTEM_FINGERPRINT,
                "choices": [],
                "usage": self._usage(record, script),
            }
            tail += _sse(usage_obj)
        tail += b"data: [DONE]\n\n"
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        self._update(record, completed=True)

    async def _complete(
        self, record: RequestRecord, script: Script, flow: _Flow, send: Send
    ) -> None:
        if await self._maybe_error(record, script, flow, send):
            return
        if await flow.sleep(script.first_delay):
            return self._aborted(record, flow)
        if script.stall_after is not None:
            await flow.event.wait()
            return self._aborted(record, flow)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": script.text if (script.chunks or not script.tool_calls) else None,
            "refusal": None,
        }
        if script.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
                for call in script.tool_calls
            ]
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": record.model or "fake-model",
            "system_fingerprint": _SYSTEM_FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": script.resolved_finish_reason,
                }
            ],
            "usage": self._usage(record, script),
        }
        payload = json.dumps(body, ensure_ascii=False).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        for key, value in script.response_headers.items():
            headers.append((key.lower().encode(), value.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        self._update(record, status=200)
        if script.fail_after is not None:
            # Send part of the body, then cut the connection.
            half = payload[: len(payload) // 2]
            await send({"type": "http.response.body", "body": half, "more_body": True})
            raise _DropConnection("fail_after (non-streaming)")
        if script.malformed_after is not None:
            payload = payload[: len(payload) // 2]
            await send({"type": "http.response.body", "body": payload, "more_body": True})
            raise _DropConnection("malformed (non-streaming)")
        await send({"type": "http.response.body", "body": payload, "more_body": False})
        self._update(record, chunks_sent=script.chunk_count, completed=True)


def _error_body(
    status: int, message: str | None = None, code: str | None = "__default__"
) -> dict[str, Any]:
    """An OpenAI-style error envelope for `status`."""
    default_msg, err_type, default_code = _ERROR_DEFAULTS.get(
        status,
        ("Upstream error.", "server_error" if status >= 500 else "invalid_request_error", None),
    )
    return {
        "error": {
            "message": message if message is not None else default_msg,
            "type": err_type,
            "param": None,
            "code": default_code if code == "__default__" else code,
        }
    }


# --------------------------------------------------------------------------- CLI


SHORT_REPLY_TOKENS = 20
"""Chunks of the short replies `--short-first` serves before the configured ones."""


def main(argv: list[str] | None = None) -> None:
    """Run the fake upstream as a standalone process (for benchmarks)."""
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible streaming upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--tokens", type=int, default=20, help="chunks per reply")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument("--first-delay", type=float, default=0.0, help="seconds before 1st chunk")
    parser.add_argument("--headers-delay", type=float, default=0.0, help="seconds before headers")
    parser.add_argument("--token-text", default="tok{i} ", help='chunk text; "{i}" = index')
    parser.add_argument("--max-records", type=int, default=1000, help="request records kept")
    parser.add_argument(
        "--short-first",
        type=int,
        default=0,
        help=f"answer the first N requests with {SHORT_REPLY_TOKENS} default chunks (warm-ups)",
    )
    args = parser.parse_args(argv)
    script = Script(
        token_count=args.tokens,
        token_text=args.token_text,
        delay=args.delay,
        first_delay=args.first_delay,
        headers_delay=args.headers_delay,
    )
    upstream = FakeUpstream(
        host=args.host, port=args.port, default_script=script, max_records=args.max_records
    )
    upstream.enqueue(*(Script(token_count=SHORT_REPLY_TOKENS) for _ in range(args.short_first)))
    upstream.serve_forever(lambda url: print(f"FAKE_UPSTREAM_READY {url}", flush=True))


if __name__ == "__main__":
    main()
