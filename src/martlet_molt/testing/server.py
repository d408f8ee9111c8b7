"""`LoopbackServer`: uvicorn serving one ASGI app on a socket bound up front (so the port is
known before serving), in a daemon thread for tests or in the main thread for a command."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp
from uvicorn.config import LOGGING_CONFIG


class _Server(uvicorn.Server):
    """uvicorn server that reports readiness and warns its owner before shutting down."""

    def __init__(
        self,
        config: uvicorn.Config,
        on_started: Callable[[asyncio.AbstractEventLoop], None],
        on_stopping: Callable[[], None],
    ) -> None:
        super().__init__(config)
        self._on_started = on_started
        self._on_stopping = on_stopping

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start listening, then signal readiness."""
        await super().startup(sockets)
        self._on_started(asyncio.get_running_loop())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Let the owner abort stalled/slow handlers first so shutdown is quick."""
        self._on_stopping()
        await super().shutdown(sockets)


class LoopbackServer:
    """One ASGI app behind uvicorn on `host:port` (`port=0`: a free one, known at once), so
    a test can point a client at it before it serves and stop it in a bounded time."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str,
        port: int,
        name: str,
        on_stopping: Callable[[], None],
    ) -> None:
        """Bind the socket; `on_stopping` runs in the server's loop when it begins to stop."""
        self._app = app
        self._name = name
        self._on_stopping = on_stopping
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: _Server | None = None
        self._startup_error: BaseException | None = None
        self._on_ready: Callable[[], None] | None = None
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]

    def _make_server(self, *, in_thread: bool) -> _Server:
        config = uvicorn.Config(
            self._app,
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
        self._server = _Server(config, self._started, self._on_stopping)
        return self._server

    def _started(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ready.set()
        if self._on_ready is not None:
            self._on_ready()

    def start(self, timeout: float) -> None:
        """Serve in a daemon thread; return once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError(f"{self._name} already started")
        server = self._make_server(in_thread=True)

        def run() -> None:
            try:
                server.run(sockets=[self._sock])
            except BaseException as exc:  # surface startup failures to start()
                self._startup_error = exc
            finally:
                self._ready.set()

        self._thread = threading.Thread(target=run, name=f"{self._name}-{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._loop is None:
            raise RuntimeError(f"{self._name} failed to start: {self._startup_error!r}")

    def stop(self, timeout: float) -> None:
        """Warn the owner (in the server's loop), shut the server down, join its thread."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            self._sock.close()
            return
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._on_stopping)
        server.should_exit = True
        thread.join(timeout)
        self._thread = None
        self._sock.close()

    def serve_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        """Serve in the calling (main) thread until SIGINT/SIGTERM, with uvicorn's logging;
        `on_ready` runs once connections are accepted."""
        self._on_ready = on_ready
        server = self._make_server(in_thread=False)
        server.run(sockets=[self._sock])

    @property
    def open_connections(self) -> int:
        """TCP connections currently open (including idle keep-alive ones)."""
        server = self._server
        return len(server.server_state.connections) if server is not None else 0
