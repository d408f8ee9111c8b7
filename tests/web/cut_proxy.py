"""A TCP proxy on 127.0.0.1 whose connections a test can cut: `cut()` resets every open
connection and refuses new ones until `restore()`. A browser behind it loses the network for
real (its streams end with a connection reset), not just in emulation."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType


class CutProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target_port>, in a background thread."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self._cut = False
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cut-proxy", daemon=True)

    @property
    def url(self) -> str:
        """Root URL through the proxy."""
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer.transport, up_writer.transport)
        self._transports.update(pair)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._transports.difference_update(pair)
            for transport in pair:
                transport.abort()

    def _abort_all(self) -> None:
        self._cut = True
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    def _allow(self) -> None:
        self._cut = False

    def cut(self) -> None:
        """Reset every open connection and refuse new ones."""
        self._call(self._abort_all)

    def restore(self) -> None:
        """Accept connections again."""
        self._call(self._allow)

    def _call(self, fn: object) -> None:
        done = threading.Event()

        def run() -> None:
            assert callable(fn)
            fn()
            done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(5):
            raise RuntimeError("proxy loop did not answer")

    def start(self) -> CutProxy:
        """Listen; returns once the port is known."""
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("proxy did not start")
        return self

    def stop(self) -> None:
        """Close everything and end the thread."""

        async def close() -> None:
            self._abort_all()
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        future = asyncio.run_coroutine_threadsafe(close(), self._loop)
        with contextlib.suppress(Exception):
            future.result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> CutProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.CancelledError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        if writer.can_write_eof():
            writer.write_eof()
