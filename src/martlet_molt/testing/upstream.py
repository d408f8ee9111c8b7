"""`FakeUpstream`: a real HTTP server on loopback that answers OpenAI's chat-completions API
from scripts, so a client's streaming, retries and failure handling meet real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import cycle
from types import TracebackType
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from martlet_molt.testing import wire
from martlet_molt.testing.history import RequestHistory, RequestRecord
from martlet_molt.testing.responder import (
    Abort,
    ChatResponder,
    install_log_filter,
    send_json,
)
from martlet_molt.testing.script import Script
from martlet_molt.testing.server import LoopbackServer

_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})


class FakeUpstream:
    """Fake OpenAI-compatible server on 127.0.0.1, run in a background thread (tests) or in
    the calling thread (`serve_forever`, the command line)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        default_script: Script | None = None,
        models: list[str] | None = None,
        max_records: int | None = None,
    ) -> None:
        """Configure and bind the socket (does not serve yet); `port=0` picks a free port."""
        self.host = host
        self.default_script: Script = default_script if default_script is not None else Script()
        self.scripts_by_model: dict[str, Script] = {}
        self.models: list[str] = list(models) if models is not None else [wire.DEFAULT_MODEL]
        self.history = RequestHistory(max_records=max_records)
        self._queue: deque[Script] = deque()
        self._rotation: Iterator[Script] | None = None
        self._aborts: set[Abort] = set()
        self._server = LoopbackServer(
            self._asgi, host=host, port=port, name="fake upstream", on_stopping=self._abort_all
        )
        self.port: int = self._server.port
        self._starlette = Starlette(
            routes=[
                Route("/v1/models", self._models_endpoint, methods=["GET"]),
                Route("/models", self._models_endpoint, methods=["GET"]),
                Route("/_fake/stats", self._stats_endpoint, methods=["GET"]),
            ]
        )

    @property
    def max_records(self) -> int | None:
        """How many request records are kept (None: all)."""
        return self.history.max_records

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``: what a client is pointed at."""
        return f"{self.url}/v1"

    def start(self, timeout: float = 10.0) -> FakeUpstream:
        """Start serving in a daemon thread; returns once connections are accepted."""
        install_log_filter()
        self._server.start(timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Abort in-flight requests, shut the server down and join its thread."""
        self._server.stop(timeout)

    def serve_forever(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve in the calling (main) thread until SIGINT/SIGTERM; `on_ready` gets the base
        URL once connections are accepted. For the command line."""
        install_log_filter()
        self._server.serve_forever(None if on_ready is None else lambda: on_ready(self.base_url))

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

    def _abort_all(self) -> None:
        for abort in list(self._aborts):
            abort.set("shutdown")

    # ----------------------------------------------------------------- scripting

    def enqueue(self, *scripts: Script) -> None:
        """Queue scripts; each request takes the next one (FIFO) unless its model matches."""
        with self.history.lock:
            self._queue.extend(scripts)

    def rotate(self, scripts: Iterable[Script]) -> None:
        """Answer the requests the queue leaves over with these scripts in turn, starting over
        when they are used up (instead of `default_script`), so a demo can be repeated."""
        chosen = list(scripts)
        with self.history.lock:
            self._rotation = cycle(chosen) if chosen else None

    @property
    def queued_count(self) -> int:
        """Queued scripts no request has taken yet."""
        with self.history.lock:
            return len(self._queue)

    def clear_queue(self) -> None:
        """Forget queued scripts no request took (a run that ended early leaves some)."""
        with self.history.lock:
            self._queue.clear()

    def clear(self) -> None:
        """Forget queued scripts and all recorded requests/counters."""
        with self.history.lock:
            self._queue.clear()
            self.history.clear()

    def _pick_script(self, model: str | None) -> Script:
        with self.history.lock:
            if model is not None and model in self.scripts_by_model:
                return self.scripts_by_model[model]
            if self._queue:
                return self._queue.popleft()
            if self._rotation is not None:
                return next(self._rotation)
            return self.default_script

    # ----------------------------------------------------------------- recording

    @property
    def requests(self) -> list[dict[str, Any]]:
        """JSON bodies of received chat-completions requests, in arrival order."""
        return [r.body for r in self.history.records]

    @property
    def records(self) -> list[RequestRecord]:
        """Live `RequestRecord` objects, in arrival order."""
        return self.history.records

    @property
    def last_record(self) -> RequestRecord | None:
        """The most recent `RequestRecord`, or None."""
        return self.history.last

    @property
    def request_count(self) -> int:
        """Total chat-completions requests received."""
        with self.history.lock:
            return self.history.total

    @property
    def completed_count(self) -> int:
        """Requests whose full response was sent."""
        with self.history.lock:
            return self.history.completed

    @property
    def disconnect_count(self) -> int:
        """Requests whose client went away before the end."""
        with self.history.lock:
            return self.history.disconnects

    @property
    def in_flight(self) -> int:
        """Chat-completions requests currently being handled."""
        with self.history.lock:
            return self.history.in_flight

    @property
    def open_connections(self) -> int:
        """TCP connections currently open to the server (including idle keep-alive ones)."""
        return self._server.open_connections

    # ----------------------------------------------------------------- waiting

    def wait_until(self, predicate: Callable[[FakeUpstream], bool], timeout: float = 5.0) -> bool:
        """Block until `predicate(self)` is true (an exception counts as false); False on
        timeout. Woken by every change, so no polling."""
        return self.history.wait_until(lambda: predicate(self), timeout)

    def wait_for_requests(self, n: int = 1, timeout: float = 5.0) -> bool:
        """Block until at least `n` requests have arrived."""
        return self.history.wait_until(lambda: self.history.total >= n, timeout)

    def wait_for_completed(self, n: int = 1, timeout: float = 5.0) -> bool:
        """Block until at least `n` responses were sent in full."""
        return self.history.wait_until(lambda: self.history.completed >= n, timeout)

    def wait_for_disconnect(self, timeout: float = 5.0, n: int = 1) -> bool:
        """Block until at least `n` clients went away mid-response."""
        return self.history.wait_until(lambda: self.history.disconnects >= n, timeout)

    def wait_for_idle(self, timeout: float = 5.0) -> bool:
        """Block until no chat-completions request is in flight."""
        return self.history.wait_until(lambda: self.history.in_flight == 0, timeout)

    # `timeout` (not asyncio.timeout) on purpose: same call shape as the sync waiters.
    async def wait_until_async(
        self,
        predicate: Callable[[FakeUpstream], bool],
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> bool:
        """Await `predicate(self)` without blocking the caller's event loop; False on timeout."""
        return await self.history.wait_until_async(lambda: predicate(self), timeout)

    async def wait_for_requests_async(self, n: int = 1, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
        """Async `wait_for_requests`."""
        return await self.history.wait_until_async(lambda: self.history.total >= n, timeout)

    async def wait_for_completed_async(self, n: int = 1, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
        """Async `wait_for_completed`."""
        return await self.history.wait_until_async(lambda: self.history.completed >= n, timeout)

    async def wait_for_disconnect_async(self, timeout: float = 5.0, n: int = 1) -> bool:  # noqa: ASYNC109
        """Async `wait_for_disconnect`."""
        return await self.history.wait_until_async(lambda: self.history.disconnects >= n, timeout)

    async def wait_for_idle_async(self, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
        """Async `wait_for_idle`."""
        return await self.history.wait_until_async(lambda: self.history.in_flight == 0, timeout)

    # ----------------------------------------------------------------- ASGI

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in _CHAT_PATHS:
            if scope["method"] != "POST":
                await send_json(send, 405, wire.error_body(405, "Method not allowed.", None))
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
        stats = self.history.stats()
        stats["open_connections"] = self.open_connections
        return JSONResponse(stats)

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
            await send_json(send, 400, wire.error_body(400, "Body is not a JSON object.", None))
            return
        body_dict: dict[str, Any] = body  # pyright: ignore[reportUnknownVariableType]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        model = body_dict.get("model")
        model = model if isinstance(model, str) else None
        script = self._pick_script(model)
        record = self.history.begin(body_dict, headers, script, model)

        abort = Abort()
        self._aborts.add(abort)

        async def watch() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    abort.set("client")
                    return

        watcher = asyncio.create_task(watch())
        try:
            await ChatResponder(self.history, record, script, abort, send).respond()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            self._aborts.discard(abort)
            self.history.update(record, finished=True, finished_at=time.monotonic())
