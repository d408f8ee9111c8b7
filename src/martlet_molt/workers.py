"""`martlet-molt serve --workers N`: N gateway processes serving one listening socket.

The parent (the supervisor) binds the socket once, starts N worker processes (each a whole
`GatewayServer` on that socket: its own app, run manager and heap freeze), and then only
watches: it owns the workers, replaces one that dies, and on SIGTERM or SIGINT sends each
worker SIGTERM and exits once all have drained. A worker runs in its own process group, so a
terminal's Ctrl-C reaches the supervisor alone (each worker gets exactly one SIGTERM from it),
and a worker whose supervisor died (SIGKILL) drains and exits by itself.

Workers share nothing in memory: a run lives in the worker that started it until the shared
stream log (Redis) lets any worker serve any run, which is why `serve` asks for
`MARTLET_REDIS_URL` with more than one worker.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import FrameType

from loguru import logger

from martlet_molt.config import Settings

STARTUP_FAILURE = 3
"""A worker's exit code when it could not start serving (the app's start-up failed): every
replacement would fail the same way, so the supervisor stops instead."""

LISTEN_BACKLOG = 2048
"""Connections the kernel queues on the shared socket before the workers accept them."""

DRAIN_MARGIN_SECONDS = 15.0
"""Beyond `MARTLET_SHUTDOWN_GRACE_SECONDS`, how long a worker may take to save, close its
connections and stop after SIGTERM before the supervisor kills it."""

REPLACEMENTS_PER_MINUTE = 10
"""More workers dying than this within a minute means something is broken (not bad luck):
the supervisor stops rather than restart them in a loop."""

_spawn = multiprocessing.get_context("spawn")


def listen(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts on (bound once, by the supervisor)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def worker_settings(settings: Settings, number: int) -> Settings:
    """A worker's settings: the supervisor's, except a distinct instance id when one is set
    (`a` becomes `a.1`, `a.2`, a replacement `a.3`), since each worker owns its own runs."""
    if settings.instance_id is None:
        return settings
    return settings.model_copy(update={"instance_id": f"{settings.instance_id}.{number}"})


@dataclass
class _Worker:
    number: int
    process: BaseProcess

    @property
    def pid(self) -> int:
        return self.process.pid or 0


@dataclass
class WorkerPool:
    """The supervisor: starts `count` workers on one socket, keeps `count` alive, stops them."""

    settings: Settings
    host: str
    port: int
    count: int
    _workers: list[_Worker] = field(default_factory=lambda: [])
    _started: int = 0
    _stopping: bool = False
    _signal: int = 0
    _replaced_at: list[float] = field(default_factory=lambda: [])

    def run(self, sock: socket.socket) -> int:
        """Serve until SIGTERM or SIGINT; the exit code: 0 when every worker drained, 1 when a
        worker could not start or had to be killed."""
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        previous_wakeup = signal.set_wakeup_fd(wake_write)
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for _ in range(self.count):
                self._start_worker(sock)
            logger.info(
                "serving on http://{}:{} with {} workers (supervisor pid {})",
                self.host,
                self.port,
                self.count,
                os.getpid(),
            )
            failed = self._watch(sock, wake_read)
            if self._signal:
                logger.info("{}: stopping the workers", signal.Signals(self._signal).name)
            sock.close()
            return 1 if self._stop_all() or failed else 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_wakeup)
            os.close(wake_read)
            os.close(wake_write)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only a flag: logging here could deadlock on a lock the interrupted code holds.
        self._signal = self._signal or signum
        self._stopping = True

    def _start_worker(self, sock: socket.socket) -> None:
        self._started += 1
        number = self._started
        process = _spawn.Process(
            target=_work,
            args=(worker_settings(self.settings, number), sock, self.host, self.port),
            name=f"martlet-worker-{number}",
        )
        process.start()
        self._workers.append(_Worker(number, process))
        logger.info("worker {} started (pid {})", number, process.pid)

    def _watch(self, sock: socket.socket, wake_read: int) -> bool:
        """Wait for a signal or a worker's end; replace workers that die. True when a worker
        could not start, or workers die too often."""
        while not self._stopping:
            sentinels = [worker.process.sentinel for worker in self._workers]
            multiprocessing.connection.wait([*sentinels, wake_read])
            _drain_pipe(wake_read)
            for worker in [w for w in self._workers if not w.process.is_alive()]:
                worker.process.join()
                self._workers.remove(worker)
                code = worker.process.exitcode
                if code == STARTUP_FAILURE:
                    logger.error("worker {} could not start; stopping", worker.number)
                    self._stopping = True
                    return True
                if self._stopping:
                    continue
                now = time.monotonic()
                self._replaced_at = [t for t in self._replaced_at if now - t < 60] + [now]
                if len(self._replaced_at) > REPLACEMENTS_PER_MINUTE:
                    logger.error(
                        "workers keep dying ({} in a minute); stopping", len(self._replaced_at)
                    )
                    self._stopping = True
                    return True
                logger.warning(
                    "worker {} (pid {}) exited with {}; starting a replacement",
                    worker.number,
                    worker.pid,
                    code,
                )
                self._start_worker(sock)
        return False

    def _stop_all(self) -> bool:
        """SIGTERM every worker, wait for their drains (bounded); True if one had to be
        killed."""
        for worker in self._workers:
            if worker.process.is_alive():
                os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds + DRAIN_MARGIN_SECONDS
        killed = False
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                logger.error("worker {} did not drain in time; killing it", worker.number)
                worker.process.kill()
                worker.process.join()
                killed = True
        logger.info("all workers stopped")
        return killed


def _drain_pipe(fd: int) -> None:
    os.set_blocking(fd, False)
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _exit_with_supervisor() -> None:
    """Drain and exit (SIGTERM to itself) if the supervisor dies without stopping us."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def _work(settings: Settings, sock: socket.socket, host: str, port: int) -> None:
    """A worker process: one whole gateway on the shared socket."""
    os.setpgrp()  # a terminal's Ctrl-C goes to the supervisor, which sends us SIGTERM
    from martlet_molt.logs import configure_logging

    configure_logging(settings.log_level)
    _exit_with_supervisor()
    from martlet_molt.app import create_app
    from martlet_molt.server import GatewayServer

    server = GatewayServer(create_app(settings), host=host, port=port, freeze_heap=True)
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def serve_workers(settings: Settings, *, host: str, port: int, count: int) -> int:
    """Bind `host:port` and serve it with `count` worker processes; returns the exit code."""
    sock = listen(host, port)
    return WorkerPool(settings, host, port, count).run(sock)
