"""Uvicorn, taught that a server's open SSE readers end when their runs end.

Plain uvicorn, on SIGTERM, first waits for open connections and only then runs the app's
shutdown; an SSE reader never closes by itself, so that wait would never end (or end by cutting
readers off). Here the server first stops accepting connections (a balancer's next one is
refused and goes to another instance; a sibling worker on a shared socket takes it), then the
run manager drains: new runs are refused, running ones get the grace period, the rest are
interrupted with their partial replies saved; every reader receives its end event and its
connection finishes; then uvicorn shuts down as usual.
"""

from __future__ import annotations

import gc
import socket

import uvicorn
from fastapi import FastAPI
from loguru import logger

from martlet_molt.core.runs import RunManager

# After the drain, connections still open (idle keep-alives, slow clients) get this long.
CONNECTION_CLOSE_SECONDS = 5.0

YOUNG_COLLECTION_THRESHOLD = 10_000
"""Allocations between two young collections in a serving process (CPython's default: 700).
A run keeps a few hundred objects alive while it streams, so with hundreds of runs under way
the default walks the same live runs again and again, and promotes them into the middle
generation, whose passes walk them once more (measured: docs/BENCHMARKS.md, "Measurements
behind the code")."""


class GatewayServer(uvicorn.Server):
    """A uvicorn server that drains runs before it closes connections."""

    def __init__(
        self,
        app: FastAPI,
        *,
        host: str = "127.0.0.1",
        port: int = 8001,
        freeze_heap: bool = False,
    ) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            ws="none",  # no WebSocket routes: nothing to load for them
            timeout_graceful_shutdown=int(CONNECTION_CLOSE_SECONDS),
        )
        super().__init__(config)
        self.app = app
        self.freeze_heap = freeze_heap

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start as uvicorn does; then, if asked, move everything alive so far (modules,
        models, the app) out of the cyclic collector's reach: its full passes would otherwise
        walk those hundreds of thousands of objects again and again, pausing every stream.
        The young generation is collected less often, too (`YOUNG_COLLECTION_THRESHOLD`).
        Only for a process that is the server (`martlet-molt serve`), not for one that hosts
        it among other work: frozen objects are never collected."""
        await super().startup(sockets)
        if self.freeze_heap:
            gc.collect()
            gc.freeze()
            _, middle, oldest = gc.get_threshold()
            gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, oldest)
            logger.debug("{} objects frozen out of garbage collection", gc.get_freeze_count())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, drain runs (readers get their end events), then shut down as
        uvicorn does."""
        self._stop_accepting()
        runs: RunManager | None = getattr(self.app.state, "runs", None)
        if runs is not None:
            await runs.close()
        await super().shutdown(sockets)

    def _stop_accepting(self) -> None:
        """Close the listening sockets and the idle keep-alive connections, so new requests go
        elsewhere during the drain; responses in progress (SSE readers) go on, and their
        connections close when they end."""
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
