"""A real gateway for tests: `create_app(settings)` served by the product's own server class on
127.0.0.1, in a background thread."""

from __future__ import annotations

import asyncio
import socket
import threading
from types import TracebackType

from martlet_molt.app import create_app
from martlet_molt.config import Settings
from martlet_molt.server import GatewayServer as ProductServer


class _ThreadedServer(ProductServer):
    """The product's server, reporting readiness and leaving signals to the test runner."""

    def __init__(self, settings: Settings, ready: threading.Event) -> None:
        super().__init__(create_app(settings))
        self._ready_event = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._ready_event.set()

    def install_signal_handlers(self) -> None:
        return


class GatewayServer:
    """The gateway on a free loopback port, served from a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._ready = threading.Event()
        self._server = _ThreadedServer(settings, self._ready)
        self.app = self._server.app
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Root URL of the gateway."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> GatewayServer:
        """Serve until `stop`; returns once the app's lifespan has started."""
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[self._sock])),
            name=f"gateway-{self.port}",
            daemon=True,
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("gateway did not start")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Shut down as SIGTERM would and wait for the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError("gateway did not stop")
        self._sock.close()

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
